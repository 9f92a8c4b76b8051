"""Property-based fuzzing of every ``hrtem`` command with malformed input (hypothesis, deterministic).

Every generated case is an input that must be refused at validation, before any simulation or training:
malformed YAML, specs with one field replaced by NaN / ±inf / 0 / negative / huge / a wrong type / an
unknown key, bad numbers on numeric flags, bad input files (empty, binary garbage, truncated, wrong format,
absent) and bad output targets (an existing file, a folder holding other files, a path inside a file, an
unwritable folder). For each case the contract of the README is asserted:

- exit code 2 and exactly one stderr line starting with ``error: ``, the last one, naming the field, flag or
  file (the only other stderr lines allowed are progress notes of stages that finished before it);
- no traceback (an exception escaping :func:`hrtem_dataset.cli.main` fails the test with it);
- nothing created and nothing existing changed: the case folder, the shared fixtures and the working
  directory are snapshotted (paths, bytes, mtimes) before and after.

Cases run in process (``hrtem_dataset.cli.main(argv)``) with the working directory set to the case folder.
``derandomize=True`` makes every run generate the same cases (about 440 on 2 cores in ~70 s).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hrtem_dataset.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY_CLI = ["--encoder", "tu-resnet18", "--encoder-depth", "3", "--decoder-channels", "16,8,8"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

EXAMPLES = {"spec": 150, "yaml_file": 50, "flags": 140, "data_file": 100, "output": 60}


def fuzz_settings(name: str):
    return settings(max_examples=EXAMPLES[name], deadline=None, derandomize=True, database=None,
                    print_blob=False, suppress_health_check=list(HealthCheck))


# --------------------------------------------------------------------------------------------------
# Shared small valid fixtures (built once; every case checks that they are left unchanged)
# --------------------------------------------------------------------------------------------------

SCENE_SPEC = {
    "cell": {"x": 24.0, "y": 24.0},
    "substrate": {"kind": "amorphous_carbon", "thickness": 6.0, "density": 2.0, "min_distance": 1.4},
    "vacuum": 3.0,
    "min_separation": 4.0,
    "particles": [{"material": "Au", "shape": "sphere", "radius": 5.0, "twins": 0, "stacking_faults": 0,
                   "orientation": "[110]", "tilt_mrad": 1.0, "position": [12.0, 12.0]}],
}


def _demo_config() -> dict:
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg["structures"]["particles"]["materials"] = {"values": ["Au", "Pt"], "weights": [1.0, 1.0]}
    return cfg


def _study_spec() -> dict:
    return {"name": "fuzz", "version": "0.1.0", "description": "fuzz", "seed": 1,
            "base": str(REPO / "configs" / "studies" / "datasets" / "study-base.yaml"),
            "quantity": [2, 4], "seeds": 1,
            "training": {"encoder": "tu-resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 8],
                         "steps": 2, "batch_size": 2, "lr": 0.002, "image_size": 32},
            "evaluation": {"simulated": str(REPO / "configs" / "studies" / "datasets" / "study-eval.yaml")}}


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    import torch
    from ase import Atoms
    from models_synthetic import write_dataset
    from PIL import Image

    from hrtem_dataset.structures import write_extxyz
    from models import build_model, save_pretrained

    d = tmp_path_factory.mktemp("fuzz-fixtures")
    (d / "scene.yaml").write_text(yaml.safe_dump(SCENE_SPEC, sort_keys=False))
    (d / "demo.yaml").write_text(yaml.safe_dump(_demo_config(), sort_keys=False))
    (d / "dist.yaml").write_text(yaml.safe_dump(_demo_config()["structures"], sort_keys=False))
    (d / "study.yaml").write_text(yaml.safe_dump(_study_spec(), sort_keys=False))
    atoms = Atoms("C2Au", positions=[[2.0, 2.0, 2.0], [4.0, 3.0, 2.5], [5.0, 5.0, 6.0]], cell=[10.0, 10.0, 9.0],
                  pbc=True)
    atoms.set_array("particle_id", np.array([-1, -1, 0], np.int32))
    write_extxyz(atoms, d / "scene.extxyz")
    Image.fromarray((np.random.default_rng(0).random((48, 48)) * 255).astype(np.uint8)).save(d / "mic.png")
    torch.manual_seed(0)
    save_pretrained(build_model("tu-resnet18", encoder_depth=3, decoder_channels=(16, 8, 8), pixel_size=0.2),
                    d / "model")
    write_dataset(d / "ds", sizes={"train": 2, "validation": 1, "test": 1}, seed=1)
    _checkable_dataset(d / "cds")
    return d


def _checkable_dataset(root: Path) -> None:
    """The part of a built dataset folder ``hrtem dataset check`` reads: specs/<config>.yaml (+ .json) and
    data/<config>/<split>-*.parquet with a structure_id column (no structure in two splits)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cfg = _demo_config()
    (root / "specs").mkdir(parents=True)
    (root / "specs" / "demo.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (root / "specs" / "demo.json").write_text('{"features": {}, "splits": {}}\n')
    (root / "data" / "demo").mkdir(parents=True)
    for i, split in enumerate(["train", "validation", "test"]):
        pq.write_table(pa.table({"structure_id": [f"s{i}a", f"s{i}b"]}),
                       root / "data" / "demo" / f"{split}-00000-of-00001.parquet")


# --------------------------------------------------------------------------------------------------
# Running one case and checking the contract
# --------------------------------------------------------------------------------------------------


def snapshot(*roots: Path) -> dict:
    """Every path under ``roots`` with (kind, size, mtime_ns, bytes) for files; folders by presence."""
    snap = {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames:
                snap[os.path.join(dirpath, name)] = ("dir",)
            for name in filenames:
                p = os.path.join(dirpath, name)
                st_ = os.lstat(p)
                with open(p, "rb") as fh:
                    snap[p] = ("file", st_.st_size, st_.st_mtime_ns, fh.read())
    return snap


def _diff(before: dict, after: dict) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"added {added}, removed {removed}, changed {changed}"


@contextlib.contextmanager
def case_dir(fx: Path):
    """A fresh folder for one case, the working directory while the case runs."""
    d = Path(tempfile.mkdtemp(prefix="case-", dir=fx.parent))
    cwd = os.getcwd()
    os.chdir(d)
    try:
        yield d
    finally:
        os.chdir(cwd)
        for p in [d, *d.rglob("*")]:  # undo chmods of "unwritable" targets before removing
            with contextlib.suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    p.chmod(stat.S_IRWXU)
        shutil.rmtree(d, ignore_errors=True)


def expect_refused(argv: list, names: list, roots: list[Path]) -> str:
    """Run ``hrtem argv``; assert exit code 2, one ``error:`` line naming every item of ``names`` and no
    change under ``roots``. Returns the error line."""
    argv = [str(a) for a in argv]
    before = snapshot(*roots)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    stderr = err.getvalue()
    lines = stderr.strip().splitlines()
    assert rc == 2, f"hrtem {' '.join(argv)}: exit code {rc}, stderr {stderr[-1500:]!r}"
    assert "Traceback" not in stderr, stderr
    # exactly one `error:` line, the last one (progress notes of stages that finished may come before it)
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], f"hrtem {' '.join(argv)}: stderr {stderr!r}"
    assert not any("error" in ln.lower() for ln in lines[:-1]), f"hrtem {' '.join(argv)}: stderr {stderr!r}"
    line = errors[0]
    for name in names:  # a tuple: any one of them
        alternatives = name if isinstance(name, tuple) else (name,)
        assert any(str(a) in line for a in alternatives), f"hrtem {' '.join(argv)}: {name!r} not named in {line!r}"
    after = snapshot(*roots)
    assert before == after, f"hrtem {' '.join(argv)}: {_diff(before, after)}"
    return line


# --------------------------------------------------------------------------------------------------
# 1. Specs with one field replaced
# --------------------------------------------------------------------------------------------------

ALWAYS_BAD = ["nan", "inf", "-inf", "bool", "list", "dict", "unknown_key"]
MAYBE_BAD = ["zero", "negative", "huge_float", "huge_int", "string", "null"]
REPLACEMENT = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "bool": True, "list": [{"x": 1}],
               "dict": {"zz_bogus": 1}, "zero": 0, "negative": -1, "huge_float": 1e300, "huge_int": 2**70,
               "string": "abc", "null": None}
UNKNOWN_KEY = "zz_unknown_field"


def _leaves(obj, path=()):
    """Paths to every scalar and every mapping in ``obj`` (lists entered)."""
    if isinstance(obj, dict):
        yield path
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    else:
        yield path


def _get(obj, path):
    for k in path:
        obj = obj[k]
    return obj


def _mutate(spec: dict, path: tuple, kind: str):
    """(mutated spec, the field name the error must mention) or None when ``kind`` does not apply."""
    spec = copy.deepcopy(spec)
    old = _get(spec, path)
    if kind == "unknown_key":
        if not isinstance(old, dict) or (path and path[-1] == "surface_energies"):
            return None
        old[UNKNOWN_KEY] = 1
        return spec, UNKNOWN_KEY
    if isinstance(old, dict) or not path:
        return None
    new = REPLACEMENT[kind]
    if type(new) is type(old) and new == old:
        return None
    if kind == "bool" and isinstance(old, bool):
        return None
    parent = _get(spec, path[:-1])
    parent[path[-1]] = new
    keys = [str(k) for k in path if isinstance(k, str)]
    return spec, tuple(keys[-2:])  # the field or its parent (e.g. ``shapes`` for ``shapes.values[0]``)


SPEC_COMMANDS = {
    # name: (fixture spec, spec class used to pre-validate "maybe bad" mutations, argv maker)
    "structures build": (lambda: copy.deepcopy(SCENE_SPEC), "SceneSpec",
                         lambda f, w: ["structures", "build", f, "--out", w / "scene.extxyz"]),
    "structures sample": (lambda: _demo_config()["structures"], "StructureDistributionSpec",
                          lambda f, w: ["structures", "sample", f, "--n", "1", "--out", w / "scenes"]),
    "materialize": (_demo_config, "DatasetSpec", lambda f, w: ["materialize", f, "--out", w / "out"]),
    "study run": (_study_spec, "StudySpec", lambda f, w: ["study", "run", f, "--out", w / "out"]),
}


def _validates(data: dict, cls_name: str, path: Path) -> bool:
    from hrtem_dataset import specs
    from hrtem_dataset.errors import InputError

    if cls_name == "StudySpec":
        from dagster_project.study_run import validate_study

        try:
            validate_study(path)
        except InputError:
            return False
        return True
    try:
        specs.validate_spec(data, getattr(specs, cls_name), str(path))
    except InputError:
        return False
    return True


def refused_by_validator(valid: bool, message: str) -> None:
    assert not valid, message


@fuzz_settings("spec")
@given(data=st.data())
def test_spec_with_one_field_replaced(fx, data):
    from hypothesis import assume

    command = data.draw(st.sampled_from(sorted(SPEC_COMMANDS)), label="command")
    make, cls_name, argv_of = SPEC_COMMANDS[command]
    spec = make()
    paths = list(_leaves(spec))
    path = data.draw(st.sampled_from(paths), label="field")
    kind = data.draw(st.sampled_from(ALWAYS_BAD + MAYBE_BAD), label="replacement")
    mutated = _mutate(spec, path, kind)
    assume(mutated is not None)
    new_spec, field = mutated
    with case_dir(fx) as w:
        f = w / "spec.yaml"
        f.write_text(yaml.safe_dump(new_spec, sort_keys=False))
        if kind in MAYBE_BAD or command in ("materialize", "study run"):
            valid = _validates(new_spec, cls_name, f)
            assume(not valid or kind in ALWAYS_BAD)  # a "maybe bad" value that is fine here: not a case
            # an always-bad value accepted by the validator would run a whole pipeline: fail right here
            refused_by_validator(valid, f"{command}: {'.'.join(map(str, path))} = {kind} accepted by {cls_name}")
            if valid:
                return
        expect_refused(argv_of(f, w), ["spec.yaml", field], [w, fx])


# --------------------------------------------------------------------------------------------------
# 2. Malformed YAML files for the commands that read YAML
# --------------------------------------------------------------------------------------------------

YAML_COMMANDS = {name: (make, argv_of) for name, (make, _, argv_of) in SPEC_COMMANDS.items()}


def _png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@st.composite
def bad_yaml_file(draw, text: str):
    kind = draw(st.sampled_from(["empty", "binary", "truncated", "scalar", "list", "png", "tabs", "absent",
                                 "folder", "duplicate-anchor"]))
    if kind == "empty":
        return kind, b""
    if kind == "binary":
        return kind, b"\x00\xff\xfe" + draw(st.binary(min_size=1, max_size=64))
    if kind == "truncated":  # cut inside the first third: a required field or a bracket is always missing
        cut = draw(st.integers(1, len(text) // 3))
        return kind, text[:cut].encode() + b"{["
    if kind == "scalar":
        return kind, draw(st.sampled_from([b"42\n", b"just text\n", b".nan\n", b"~\n", b"true\n"]))
    if kind == "list":
        return kind, b"- a\n- b\n"
    if kind == "png":
        return kind, _png_bytes()
    if kind == "tabs":
        return kind, b"name:\n\t- x: [1, 2\n"
    if kind == "duplicate-anchor":
        return kind, b"a: *undefined_alias\n"
    return kind, None


@fuzz_settings("yaml_file")
@given(data=st.data())
def test_malformed_yaml_file(fx, data):
    command = data.draw(st.sampled_from(sorted(YAML_COMMANDS)), label="command")
    make, argv_of = YAML_COMMANDS[command]
    text = yaml.safe_dump(make(), sort_keys=False)
    kind, content = data.draw(bad_yaml_file(text), label="file")
    with case_dir(fx) as w:
        f = w / "spec.yaml"
        if kind == "folder":
            f.mkdir()
        elif content is not None:
            f.write_bytes(content)
        expect_refused(argv_of(f, w), ["spec.yaml"], [w, fx])


# --------------------------------------------------------------------------------------------------
# 3. Numbers and choices on flags
# --------------------------------------------------------------------------------------------------

NAN_INF = ["nan", "inf", "-inf"]
NOT_INT = ["abc", "1.5", "", "0x"]
HUGE = str(2**70)


def _simulate(fx, w):
    return ["simulate", fx / "scene.extxyz", "--out", w / "w.npz", "--sampling", "0.2"]


def _build(fx, w):
    return ["structures", "build", fx / "scene.yaml", "--out", w / "s.extxyz"]


def _sample(fx, w):
    return ["structures", "sample", fx / "dist.yaml", "--n", "1", "--out", w / "scenes"]


def _train(fx, w):
    return ["train", "--dataset", fx / "ds", "--out", w / "model", "--steps", "1", "--batch-size", "2", "--quiet",
            "--device", "cpu", *TINY_CLI]


def _segment(fx, w):
    return ["segment", fx / "mic.png", "--model", fx / "model", "--out", w / "m.png", "--pixel-size", "0.2",
            "--device", "cpu"]


def _evaluate(fx, w):
    return ["evaluate", "--model", fx / "model", "--dataset", fx / "ds", "--device", "cpu"]


def _materialize(fx, w):
    return ["materialize", fx / "demo.yaml", "--out", w / "out"]


FLAGS = [  # (argv maker, flag, bad values)
    (_simulate, "--energy", [*NAN_INF, "0", "-1", "1e30", "abc"]),
    (_simulate, "--sampling", [*NAN_INF, "0", "-0.1", "abc"]),
    (_simulate, "--slice-thickness", [*NAN_INF, "0", "-1", "abc"]),
    (_simulate, "--phonons", ["-1", "abc", "1.5", HUGE]),
    (_simulate, "--seed", ["-1", HUGE, str(2**63), "abc", "1.5"]),
    (_simulate, "--engine", ["bogus", "", "TORCH!"]),
    (_simulate, "--parametrization", ["bogus", ""]),
    (_simulate, "--device", ["bogus", "", "cuda:99"]),
    (_build, "--seed", ["-1", HUGE, str(2**63), "abc", "nan"]),
    (_sample, "--n", ["0", "-1", "abc", HUGE, "nan"]),
    (_sample, "--seed", ["-1", HUGE, "abc"]),
    (_train, "--epochs", ["0", "-1", "abc", "nan"]),
    (_train, "--steps", ["0", "-1", "abc", HUGE]),
    (_train, "--batch-size", ["0", "-1", "abc", HUGE]),
    (_train, "--lr", [*NAN_INF, "0", "-1", "abc"]),
    (_train, "--image-size", ["0", "-1", "8", "100000", HUGE, "abc"]),
    (_train, "--seed", ["-1", HUGE, "abc"]),
    (_train, "--val-every", ["0", "-1", "abc"]),
    (_train, "--encoder-depth", ["0", "-1", "6", HUGE, "abc"]),
    (_train, "--decoder-channels", ["0,8,8", "a,b,c", "-1,8,8", "16,,8", HUGE + ",8,8", "nan"]),
    (_train, "--schedule", ["bogus", ""]),
    (_train, "--freeze", ["bogus", "ENCODER"]),
    (_train, "--augment", ["bogus", ""]),
    (_train, "--encoder", ["no-such-encoder", "tu-no_such_timm_model"]),
    (_train, "--device", ["bogus", "cuda:99"]),
    (_segment, "--pixel-size", [*NAN_INF, "0", "-1", "abc"]),
    (_segment, "--tile", ["0", "-1", "abc", HUGE]),
    (_segment, "--overlap", ["-1", "abc", HUGE]),
    (_segment, "--device", ["bogus", "cuda:99"]),
    (_evaluate, "--device", ["bogus", "cuda:99"]),
    (_evaluate, "--pixel-size", [*NAN_INF, "0", "-1", "abc"]),
    (_train, "--user-pixel-size", [*NAN_INF, "0", "-1", "abc"]),
    (_evaluate, "--split", ["bogus"]),
    (_evaluate, "--config", ["bogus"]),
    (_train, "--config", ["bogus"]),
    (_materialize, "--engine", ["bogus"]),
    (_materialize, "--device", ["bogus"]),
]


@fuzz_settings("flags")
@given(data=st.data())
def test_bad_number_or_choice_on_flag(fx, data):
    make, flag, values = data.draw(st.sampled_from(FLAGS), label="flag")
    value = data.draw(st.sampled_from(values), label="value")
    if value == "cuda:99":
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() > 99:  # pragma: no cover
            return
    with case_dir(fx) as w:
        # the flag, or the field it sets (``--energy`` -> ``energy``, ``--encoder-depth`` -> ``encoder_depth``)
        expect_refused([*make(fx, w), flag, value], [(flag, flag.lstrip("-").replace("-", "_"))], [w, fx])


# --------------------------------------------------------------------------------------------------
# 4. Bad input files and folders
# --------------------------------------------------------------------------------------------------


def _write_extxyz(path: Path, kind: str) -> None:
    from ase import Atoms

    from hrtem_dataset.structures import write_extxyz

    if kind == "no-atoms":
        atoms = Atoms(cell=[10.0, 10.0, 9.0], pbc=True)
    elif kind == "far-outside":
        atoms = Atoms("CAu", positions=[[2.0, 2.0, 2.0], [500.0, -300.0, 4.0]], cell=[10.0, 10.0, 9.0], pbc=True)
    elif kind == "nan-position":
        atoms = Atoms("CAu", positions=[[2.0, 2.0, 2.0], [np.nan, 3.0, 4.0]], cell=[10.0, 10.0, 9.0], pbc=True)
    elif kind == "zero-cell":
        atoms = Atoms("CAu", positions=[[2.0, 2.0, 2.0], [3.0, 3.0, 4.0]], cell=[0.0, 10.0, 9.0], pbc=True)
    else:
        raise AssertionError(kind)
    if len(atoms):
        atoms.set_array("particle_id", np.array([-1, 0], np.int32))
    else:
        atoms.set_array("particle_id", np.zeros(0, np.int32))
    write_extxyz(atoms, path)


def _bad_bytes(kind: str, valid: bytes, draw) -> bytes | None:
    if kind == "empty":
        return b""
    if kind == "binary":
        return b"\x00\xff" + draw(st.binary(min_size=8, max_size=128))
    if kind == "truncated":
        return valid[: draw(st.integers(1, max(1, len(valid) // 2)))]
    if kind == "wrong-format":
        return b"name: not this format\nvalues: [1, 2, 3]\n"
    return None  # absent


FILE_KINDS = ["empty", "binary", "truncated", "wrong-format", "absent"]


@st.composite
def data_file_case(draw, fx: Path):
    """(setup(w) -> (argv, names)): one bad input file or folder for one command."""
    target = draw(st.sampled_from(["scene", "segment-image", "model", "init-from", "dataset-train",
                                   "dataset-evaluate", "dataset-check", "dataset-card", "study-report",
                                   "publish", "user-data"]))
    if target == "scene":
        kind = draw(st.sampled_from([*FILE_KINDS, "no-atoms", "far-outside", "nan-position", "zero-cell",
                                     "folder"]))
        valid = (fx / "scene.extxyz").read_bytes()
        content = _bad_bytes(kind, valid, draw) if kind in FILE_KINDS else None

        def setup(w):
            f = w / "in.extxyz"
            if kind in ("no-atoms", "far-outside", "nan-position", "zero-cell"):
                _write_extxyz(f, kind)
            elif kind == "folder":
                f.mkdir()
            elif content is not None:
                f.write_bytes(content)
            return ["simulate", f, "--out", w / "w.npz", "--sampling", "0.2"], ["in.extxyz"]
        return target, kind, setup
    if target == "segment-image":
        kind = draw(st.sampled_from(FILE_KINDS))
        content = _bad_bytes(kind, (fx / "mic.png").read_bytes(), draw)

        def setup(w):
            f = w / "in.png"
            if content is not None:
                f.write_bytes(content)
            return ["segment", f, "--model", fx / "model", "--out", w / "m.png", "--pixel-size", "0.2",
                    "--device", "cpu"], ["in.png"]
        return target, kind, setup
    if target == "model":  # a model folder for segment / evaluate (config.json is read without hrtem.json)
        part = draw(st.sampled_from(["hrtem.json", "config.json", "model.safetensors", "folder"]))
        kinds = [k for k in FILE_KINDS if not (part == "hrtem.json" and k == "absent")]
        kind = draw(st.sampled_from(kinds))
        command = draw(st.sampled_from(["segment", "evaluate"]))
        content = None if part == "folder" else _bad_bytes(kind, (fx / "model" / part).read_bytes(), draw)

        def setup(w):
            m = w / "mymodel"
            if part == "folder":
                if kind != "absent":
                    m.mkdir()  # an empty folder
                names = ["mymodel"]
            else:
                shutil.copytree(fx / "model", m)
                if part == "config.json":
                    (m / "hrtem.json").unlink()
                if content is None:
                    (m / part).unlink()
                else:
                    (m / part).write_bytes(content)
                names = [part] if kind != "absent" or part == "model.safetensors" else ["mymodel"]
            if command == "segment":
                return ["segment", fx / "mic.png", "--model", m, "--out", w / "m.png", "--pixel-size", "0.2",
                        "--device", "cpu"], names
            return ["evaluate", "--model", m, "--dataset", fx / "ds", "--device", "cpu"], names
        return target, f"{command}:{part}:{kind}", setup
    if target == "init-from":
        kind = draw(st.sampled_from(FILE_KINDS))
        content = _bad_bytes(kind, (fx / "model" / "model.safetensors").read_bytes(), draw)

        def setup(w):
            f = w / "init.pt"
            if content is not None:
                f.write_bytes(content)
            return [*_train(fx, w), "--init-from", f], ["init.pt"]
        return target, kind, setup
    if target in ("dataset-train", "dataset-evaluate", "dataset-check", "dataset-card"):
        kinds = ["absent", "empty-folder", "a-file"]
        if target == "dataset-card":
            kinds += ["bad-summary", "summary-not-json", "spec-nan"]
        else:
            kinds += ["corrupt-parquet", "truncated-parquet"] + (["corrupt-readme"] if target != "dataset-check" else [])
        kind = draw(st.sampled_from(kinds))
        cut = draw(st.integers(8, 400))

        def setup(w):
            d = w / "myds"
            if kind == "empty-folder":
                d.mkdir()
            elif kind == "a-file":
                d.write_text("not a folder\n")
            elif kind != "absent":
                shutil.copytree(fx / ("cds" if target in ("dataset-check", "dataset-card") else "ds"), d)
                pq = sorted(d.rglob("*.parquet"))
                if kind == "corrupt-parquet":
                    pq[0].write_bytes(b"PAR1" + b"\x00garbage" * 20 + b"PAR1")
                elif kind == "truncated-parquet":
                    pq[0].write_bytes(pq[0].read_bytes()[:cut])
                elif kind == "bad-summary":
                    (d / "specs" / "demo.json").write_text('{"splits": {"train": {}}}\n')
                elif kind == "summary-not-json":
                    (d / "specs" / "demo.json").write_bytes(b"\x00{not json")
                elif kind == "spec-nan":
                    (d / "specs" / "demo.yaml").write_text((d / "specs" / "demo.yaml").read_text().replace(
                        "substrate_density: 2.0", "substrate_density: .nan"))
                else:
                    (d / "README.md").write_bytes(b"---\nconfigs: [\x00\n---\n")
            names = ["myds"]  # train and evaluate name the dataset folder (and the split)
            if kind in ("corrupt-parquet", "truncated-parquet") and target == "dataset-check":
                names = [sorted(d.rglob("*.parquet"))[0].name]
            elif kind in ("bad-summary", "summary-not-json"):
                names = ["demo.json"]
            elif kind == "spec-nan":
                names = ["demo.yaml", "substrate_density"]
            if target == "dataset-train":
                argv = ["train", "--dataset", d, "--out", w / "model", "--steps", "1", "--batch-size", "2",
                        "--quiet", "--device", "cpu", *TINY_CLI]
            elif target == "dataset-evaluate":
                argv = ["evaluate", "--model", fx / "model", "--dataset", d, "--device", "cpu"]
            elif target == "dataset-check":
                argv = ["dataset", "check", d]
            else:
                argv = ["dataset", "card", d]
            return argv, names
        return target, kind, setup
    if target == "study-report":
        kind = draw(st.sampled_from(["absent", "empty-folder", "a-file", "empty-json", "binary-json", "list-json"]))

        def setup(w):
            d = w / "mystudy"
            if kind == "a-file":
                d.write_text("x\n")
            elif kind != "absent":
                d.mkdir()
                content = {"empty-json": b"", "binary-json": b"\x00\xff{", "list-json": b"[1, 2]"}.get(kind)
                if content is not None:
                    (d / "study.json").write_bytes(content)
            return ["study", "report", d], ["mystudy"]
        return target, kind, setup
    if target == "publish":
        kind = draw(st.sampled_from(["absent", "empty-folder", "a-file", "no-card"]))

        def setup(w):
            d = w / "mypub"
            if kind == "a-file":
                d.write_text("x\n")
            elif kind == "empty-folder":
                d.mkdir()
            elif kind == "no-card":
                d.mkdir()
                (d / "data.bin").write_bytes(b"\x00" * 10)
            return ["publish", d, "--repo-id", "someone/x", "--dry-run"], ["mypub"]
        return target, kind, setup
    # user-data: a folder of labelled micrographs for train
    kind = draw(st.sampled_from(["absent", "empty-folder", "no-mask", "bad-mask", "binary-image"]))

    def setup(w):
        d = w / "lab"
        if kind != "absent":
            d.mkdir()
        if kind in ("no-mask", "bad-mask"):
            shutil.copy(fx / "mic.png", d / "a.png")
            if kind == "bad-mask":
                (d / "a_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        elif kind == "binary-image":
            (d / "a.png").write_bytes(b"\x00\xff garbage")
            shutil.copy(fx / "mic.png", d / "a_mask.png")
        names = {"no-mask": ["a.png"], "bad-mask": ["a_mask.png"], "binary-image": ["a.png"]}.get(kind, ["lab"])
        return ["train", "--user-data", d, "--user-pixel-size", "0.2", "--out", w / "model", "--steps", "1",
                "--quiet", "--device", "cpu", *TINY_CLI], names
    return target, kind, setup


@fuzz_settings("data_file")
@given(data=st.data())
def test_bad_input_file(fx, data):
    target, kind, setup = data.draw(data_file_case(fx), label="input")
    with case_dir(fx) as w:
        argv, names = setup(w)
        expect_refused(argv, names, [w, fx])


# --------------------------------------------------------------------------------------------------
# 5. Bad output targets (with otherwise valid input)
# --------------------------------------------------------------------------------------------------

OUTPUT_COMMANDS = {  # name: (argv maker given the output path, whether --out is a folder)
    "simulate": (lambda fx, o: ["simulate", fx / "scene.extxyz", "--out", o, "--sampling", "0.2"], False),
    "structures build": (lambda fx, o: ["structures", "build", fx / "scene.yaml", "--out", o], False),
    "structures build --prismatic": (lambda fx, o: ["structures", "build", fx / "scene.yaml", "--out",
                                                    fx.parent / "fuzz-ok.extxyz", "--prismatic", o], False),
    "structures sample": (lambda fx, o: ["structures", "sample", fx / "dist.yaml", "--n", "1", "--out", o], True),
    "train": (lambda fx, o: ["train", "--dataset", fx / "ds", "--out", o, "--steps", "1", "--batch-size", "2",
                             "--quiet", "--device", "cpu", *TINY_CLI], True),
    "segment": (lambda fx, o: ["segment", fx / "mic.png", "--model", fx / "model", "--out", o, "--pixel-size",
                               "0.2", "--device", "cpu"], False),
    "segment --csv": (lambda fx, o: ["segment", fx / "mic.png", "--model", fx / "model", "--out",
                                     fx.parent / "fuzz-ok.png", "--csv", o, "--pixel-size", "0.2", "--device", "cpu"],
                      False),
    "materialize": (lambda fx, o: ["materialize", fx / "demo.yaml", "--out", o], True),
    "study run": (lambda fx, o: ["study", "run", fx / "study.yaml", "--out", o], True),
}
OUTPUT_KINDS = ["existing-folder-for-file", "existing-file-for-folder", "folder-with-other-files", "inside-a-file",
                "unwritable", "non-csv-file"]


def _applies(command: str, is_dir: bool, kind: str) -> bool:
    if kind == "existing-folder-for-file":
        return not is_dir
    if kind == "existing-file-for-folder":
        return is_dir
    if kind == "folder-with-other-files":  # materialize / study run share DIR with other things by design
        return is_dir and command not in ("materialize", "study run")
    if kind == "non-csv-file":
        return command == "segment --csv"
    return True


@fuzz_settings("output")
@given(data=st.data())
def test_bad_output_target(fx, data):
    from hypothesis import assume

    command = data.draw(st.sampled_from(sorted(OUTPUT_COMMANDS)), label="command")
    argv_of, is_dir = OUTPUT_COMMANDS[command]
    kind = data.draw(st.sampled_from(OUTPUT_KINDS), label="target")
    assume(_applies(command, is_dir, kind))
    with case_dir(fx) as w:
        name = {"segment": "m.png", "segment --csv": "notes.txt" if kind == "non-csv-file" else "m.csv",
                "simulate": "w.npz", "structures build": "s.extxyz",
                "structures build --prismatic": "s.xyz"}.get(command, "outdir")
        if kind == "existing-folder-for-file":
            o = w / name
            o.mkdir()
            (o / "keep.txt").write_text("keep\n")
        elif kind in ("existing-file-for-folder", "non-csv-file"):
            o = w / name
            o.write_text("my notes\n")
        elif kind == "folder-with-other-files":
            o = w / name
            o.mkdir()
            (o / "notes.txt").write_text("mine\n")
        elif kind == "inside-a-file":
            (w / "afile").write_text("x\n")
            o = w / "afile" / name
        elif not IS_ROOT:  # unwritable
            ro = w / "ro"
            ro.mkdir()
            o = ro / name
            ro.chmod(0o555)
        else:  # root ignores permission bits; nobody can create files in /sys
            o = Path("/sys") / name
        expect_refused(argv_of(fx, o), [o.name if kind != "inside-a-file" else "afile"], [w, fx, fx.parent / "fuzz-ok.png",
                                                                                    fx.parent / "fuzz-ok.extxyz"])


def test_case_count():
    """At least 300 distinct cases per run: the flag and output-target spaces are finite (hypothesis stops
    when it has tried them all), the others are bounded by ``max_examples``."""
    flag_cases = sum(len(values) for _, _, values in FLAGS)
    assert EXAMPLES["spec"] + EXAMPLES["yaml_file"] + EXAMPLES["data_file"] + min(EXAMPLES["flags"], flag_cases) >= 300
