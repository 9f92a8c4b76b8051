"""Behaviour guard of the architecture refactor (issue 10): the tiny configuration of the pipeline tests,
built stage by stage and trained for 3 steps, must give byte-identical parquet files and model weights to
those recorded before the stage modules replaced ``hrtem_dataset/pipeline.py``.

The digests were recorded on the project's CPU environment (torch CPU kernels, pyarrow writer); a change of
those libraries may change them too — re-record only after checking the change is theirs, not ours. The
model's bytes also depend on the instruction set oneDNN's convolutions use (AVX-512 machines train to other
float32 roundings than AVX2 ones), so the build and training run in a subprocess with oneDNN held to AVX2
(``ONEDNN_MAX_CPU_ISA``), the instruction set the digests were recorded with, on any x86-64 machine.

Re-recorded once, on purpose, for 0.2.0: the torch engine's default transmission scheme changed (functions used
as they are, no longer band-limited), its CPU path takes cos/sin from numpy (float32 rounding: ≤ 2e-6 on the
waves), and the package version in every row's lineage changed with them. With ``antialias_transmission=True``
and torch's cos/sin the engine gave the previous code's exit waves byte for byte (checked on batched scenes with
phonons and on ``simulate_scene``'s scene and particle waves before re-recording); with numpy's, to ≤ 2e-6.

One set of digests per CPU family seen: the same code gives other bytes on a Xeon of family 6 model 207 (AVX-512
with FP16 and AMX, 2026-12-01) than on the machine that recorded the first set — the code before that session's
changes included, so the second set is that code's output there, not a change of ours (holding MKL, torch and numpy
to AVX2 code paths there did not reproduce the first set either)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from dagster_helpers import isolated_hf_datasets_cache, tiny_spec_dict  # noqa: F401 (autouse fixture)

from hrtem_dataset import pipeline as pl
from hrtem_dataset.specs import DatasetSpec
from models.stage import train_model

DIGESTS = [  # (parquet digests by path, model.safetensors digest), one per CPU family (see the module docstring)
    ({"data/tiny/test-00000-of-00001.parquet": "0e278806a4caf7dacfaf1fbc1e91bb99cc55a6c185b8bfc3b13c12e5da7f6683",
      "data/tiny/train-00000-of-00001.parquet": "a94fe75a1384f3f96d63e3a9558fcbbeb6264d1002e898730d91875dfc0a4b81",
      "data/tiny/validation-00000-of-00001.parquet": "5f2a0f11494bd47c8d0e712f34ba2adc5edccae0c76ed2754be46e72b0fb05fa"},
     "f737766ee38eff1a911c7391c89cc22bd127c425a0262ecef29112264edc37c4"),
    ({"data/tiny/test-00000-of-00001.parquet": "f5bd1117b8be297035033023a4af46c0c1203d11737fedc60f076dc5956c9d41",
      "data/tiny/train-00000-of-00001.parquet": "f55f4a993327c49ce1f732a44bf8d1185433ab824c272da36fd916ee0a343faf",
      "data/tiny/validation-00000-of-00001.parquet": "86d472598f13229dbc844eec7bea45fc6814d58e6984c73b532d1bdb54bee84b"},
     "27025551af8216d8da32e68ca6944de201cff791984e58bde87087ec23cdef7f"),
]


def _cpu() -> str:
    """This machine's CPU as /proc/cpuinfo names it (vendor, family, model, model name), for the failure message."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()[:10]
        fields = {k.strip(): v for k, v in (line.split(":", 1) for line in lines if ":" in line)}
    except OSError:
        return "an unknown CPU"
    get = lambda k: fields.get(k, "?").strip()  # noqa: E731
    return f"{get('vendor_id')} family {get('cpu family')} model {get('model')} ({get('model name')})"


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_and_train(root) -> tuple[dict[str, str], str]:
    """Digests of the dataset's parquet files (by path in the folder) and of the trained model.safetensors."""
    spec = DatasetSpec.model_validate(tiny_spec_dict(model=True))
    pl.plan_structures(spec, root)
    for shard in range(spec.n_shards):
        pl.build_structures_shard(spec, shard, root)
        pl.simulate_shard(spec, shard, root)
        pl.image_shard(spec, shard, root)
    folder = pl.dataset_dir(spec, root)
    pl.assemble_dataset(spec, root)
    model = train_model(spec, root, device="cpu")
    parquet = {p.relative_to(folder).as_posix(): _sha(p) for p in sorted(folder.rglob("*.parquet"))}
    return parquet, _sha(pl.config_dir(spec, root) / "model" / "model.safetensors") if model else ""


def test_same_spec_same_bytes_as_before_the_refactor(tmp_path):
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2",  # read when oneDNN starts: hence the fresh process
           "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(tmp_path)], env=env, cwd=tests.parent,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    parquet, model = json.loads(r.stdout.strip().splitlines()[-1])
    assert (parquet, model) in DIGESTS, (
        f"new digests {(parquet, model)} on {_cpu()}: if the code before the change gives them too on this CPU, "
        "add them to DIGESTS as this CPU family's set (see the module docstring); otherwise the bytes changed")
    # the Dagster code versions are the workspace fingerprints the stages wrote (one source for both)
    from dagster_project.assets import code_versions
    from hrtem_dataset import workspace

    spec = DatasetSpec.model_validate(tiny_spec_dict(model=True))
    fp, versions = workspace.stage_fingerprints(spec), code_versions(spec)
    on_disk = {"structures": workspace.stage_fingerprint_on_disk(spec, "structures", tmp_path),
               "waves": workspace.stage_fingerprint_on_disk(spec, "waves", tmp_path),
               "images": workspace.stage_fingerprint_on_disk(spec, "images", tmp_path),
               "model": (workspace.model_dir(spec, tmp_path) / ".hrtem-fingerprint").read_text().strip()}
    assert on_disk == {k: fp[k] for k in on_disk}
    for asset, key in (("structures", "structures"), ("exit_waves", "waves"), ("imaged_samples", "images"),
                       ("dataset_splits", "dataset"), ("trained_model", "model")):
        assert versions[asset].endswith("+" + fp[key]), asset


# ---------------------------------------------------------------- import direction (issue 10)

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    """`lint-imports` (contracts in pyproject.toml: layers + forbidden imports) passes on this tree."""
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([str(exe), "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "broken" in r.stdout and " 0 broken" in r.stdout


def test_no_import_cycle_between_modules():
    """No cycle among the project's modules, function-level imports included (grimp reads them all): so no
    function-level import dodges a cycle; the ones left defer heavy optional dependencies (abTEM, Prismatic,
    Dagster and the models behind a CLI command)."""
    import grimp

    g = grimp.build_graph("hrtem_dataset", "models", "dagster_project", cache_dir=None)
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 10_000))
    try:
        for m in sorted(g.modules):
            if m not in index:
                visit(m)
    finally:
        sys.setrecursionlimit(old)
    assert cycles == []


if __name__ == "__main__":  # the digests of a build in the folder argv[1] (see the module docstring)
    print(json.dumps(build_and_train(Path(sys.argv[1]))))
