"""The project fits the ecosystem: smp loads its models, torch loads its datasets, the Hub card names the repo,
the CLI shows progress on stderr only, flags are validated, and ``hrtem_dataset.models`` cannot be shadowed."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hrtem_dataset.cli import main
from hrtem_dataset.dataset import collate, torch_loader, write_dataset_config
from hrtem_dataset.errors import InputError
from hrtem_dataset.seeding import derive_seed
from hrtem_dataset.specs import DatasetSpec, SplitSpec

ROOT = Path(__file__).resolve().parents[1]
TINY = {"encoder": "tu-resnet18", "encoder_depth": 2, "decoder_channels": (16, 8)}


def run_cli(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------------------
# 1. models: segmentation-models-pytorch loads them; our metadata is in hrtem.json
# ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from models import build_model, save_pretrained

    torch.manual_seed(0)
    m = build_model(**TINY, pixel_size=0.4)
    d = tmp_path_factory.mktemp("m") / "model"
    save_pretrained(m, d, metrics={"f1": 0.8, "iou": 0.7}, training={"steps": 3},
                    dataset={"id": str(tmp_path_factory.getbasetemp() / "built" / "dataset"), "hub": False,
                             "name": "hrtem-demo", "config": "demo", "version": "0.2.0", "eval_split": "validation",
                             "n_train": 4, "n_eval": 2})
    return d


def test_smp_from_pretrained_gives_identical_outputs(saved):
    import segmentation_models_pytorch as smp

    from hrtem_dataset.models import from_pretrained

    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["_model_class"] == "Unet" and cfg["encoder_weights"] is None and cfg["encoder_name"] == "tu-resnet18"
    assert not {"model", "metrics", "dataset", "training"} & set(cfg)  # only smp's own keys
    ours = from_pretrained(saved)
    theirs = smp.from_pretrained(str(saved)).eval()
    assert type(theirs).__name__ == "Unet"
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    meta = json.loads((saved / "hrtem.json").read_text())
    assert meta["model"]["pixel_size"] == pytest.approx(0.4) and meta["model"]["threshold"] == 0.5
    assert meta["version"] == "0.2.0" and meta["metrics"]["f1"] == pytest.approx(0.8)
    assert ours.hrtem_metadata["dataset"]["name"] == "hrtem-demo"


def test_model_card_is_smp_library_without_local_paths(saved, tmp_path):
    from huggingface_hub import ModelCard

    card = ModelCard.load(saved / "README.md")
    assert card.data.library_name == "segmentation-models-pytorch"
    text = card.content
    assert str(saved.parents[1]) not in text and "/built/dataset" not in text  # no local path
    assert "`hrtem-demo`" in text and "version 0.2.0" in text
    assert 'smp.from_pretrained("<org>/hrtem-unet-resnet18")' in text
    # the card's smp snippet runs as written (with the local folder for the repo id)
    snippet = text.split("```python\n")[1].split("```")[0].replace("<org>/hrtem-unet-resnet18", str(saved))
    scope: dict = {}
    exec(compile(snippet, "card-snippet", "exec"), scope)  # noqa: S102 - our own card
    assert tuple(scope["p"].shape) == (1, 256, 256)


def test_card_and_metadata_report_the_same_test_metrics(saved, tmp_path):
    import shutil

    from huggingface_hub import ModelCard

    from models.hub import card_with_evaluation

    d = tmp_path / "published"
    shutil.copytree(saved, d)
    card_with_evaluation(d, {"f1": 0.61, "iou": 0.52, "precision": 0.7, "recall": 0.55, "n_images": 8}, "test")
    meta = json.loads((d / "hrtem.json").read_text())
    assert meta["dataset"]["eval_split"] == "test" and meta["validation_metrics"]["f1"] == pytest.approx(0.8)
    card = ModelCard.load(d / "README.md")
    reported = {m.metric_type: m.metric_value for m in card.data.eval_results}
    assert {m.dataset_split for m in card.data.eval_results} == {"test"}
    assert reported == {k: pytest.approx(meta["metrics"][k], abs=1e-4) for k in reported}
    assert set(reported) == {"f1", "iou", "precision", "recall"}


def test_old_folders_load_and_are_migrated_on_update(saved, tmp_path):
    import shutil

    import segmentation_models_pytorch as smp

    from models.hub import from_pretrained, set_threshold

    d = tmp_path / "old"
    shutil.copytree(saved, d)
    meta = json.loads((d / "hrtem.json").read_text())
    (d / "hrtem.json").unlink()
    (d / "config.json").write_text(json.dumps(meta))  # the former layout: everything in config.json
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        y_new, y_old = from_pretrained(saved)(x), from_pretrained(d)(x)
    assert torch.equal(y_new, y_old)
    assert from_pretrained(d).hrtem_config.pixel_size == pytest.approx(0.4)
    assert set_threshold(d, 0.3)
    assert json.loads((d / "hrtem.json").read_text())["model"]["threshold"] == 0.3
    assert json.loads((d / "config.json").read_text())["_model_class"] == "Unet"
    with torch.no_grad():
        assert torch.equal(smp.from_pretrained(str(d)).eval()(x), y_old)


def test_publishing_a_model_tags_its_version_and_names_the_repo(saved):
    rc, out, err = run_cli(["publish", saved, "--repo-id", "lab/hrtem-unet", "--dry-run"])
    assert rc == 0, err
    assert out.split() == ["README.md", "config.json", "hrtem.json", "model.safetensors"]
    assert "tag v0.2.0" in err and "model repo lab/hrtem-unet" in err
    assert 'card: model = smp.from_pretrained("lab/hrtem-unet").eval()' in err
    assert "<org>/" not in err


# ------------------------------------------------------------------------------------------------------
# 2./3. datasets in torch; the dataset card names the real repo
# ------------------------------------------------------------------------------------------------------

SHAPE = (24, 20)


def _rows(spec: DatasetSpec) -> dict[str, list[dict]]:
    """Rows of the pipeline's schema (as in tests/test_dataset.py), two images per structure."""
    out: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    x, y = np.mgrid[: SHAPE[0], : SHAPE[1]]
    for i in range(spec.n_structures):
        g = np.random.default_rng([spec.seed, i])
        inst = np.zeros(SHAPE, np.int32)
        n = 1 + i % 2  # 1 or 2 particles: `materials` lists of different lengths
        for k in range(1, n + 1):
            cx, cy = g.uniform(5, SHAPE[0] - 5), g.uniform(5, SHAPE[1] - 5)
            inst[((x - cx) ** 2 + (y - cy) ** 2 < 9) & (inst == 0)] = k
        particles = [{"material": "Au", "shape": "sphere", "radius": 10.0, "twins": 1}] * n
        structure = {"seed": derive_seed(spec.seed, "structure", i), "particles": particles, "n_particles": n,
                     "substrate": {"kind": "amorphous_carbon", "thickness": 30.0}}
        for k in range(2):
            seed = derive_seed(spec.seed, "image", i, k)
            row = {"mask": inst > 0, "instances": inst, "sample_id": f"s{i:05d}-{k:03d}", "structure_id": f"s{i:05d}",
                   "seed": seed, "pixel_size": 0.2, "zero_defocus": -31.5, "structure": structure,
                   "engine": "torch", "engine_version": "2", "energy": 300e3, "sampling": (0.1, 0.1), "phonons": 2}
            if spec.kind == "images":
                row.update(image=g.normal(1.0, 0.2, SHAPE).astype(np.float32), defocus=10.0, Cs=0.0, dose=None,
                           focal_spread=20.0, angular_spread=0.2, aberrations={})
            else:
                row["waves"] = (g.normal(1, 0.1, (2, 2 * SHAPE[0], 2 * SHAPE[1]))
                                + 1j * g.normal(0, 0.1, (2, 2 * SHAPE[0], 2 * SHAPE[1]))).astype(np.complex64)
            out[spec.split_of(i)].append(row)
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "dataset"
    for kind, name in (("images", "tiny"), ("exit_waves", "waves")):
        spec = DatasetSpec(name="hrtem-test", config_name=name, kind=kind, version="0.1.0", seed=7,
                           splits=SplitSpec(train=3, validation=1, test=1), shard_size=2)
        write_dataset_config(_rows(spec), spec, root)
    return root


def _load(folder, config, tmp_path):
    import datasets

    return datasets.load_dataset(str(folder), config, cache_dir=str(tmp_path / "hf-cache"))


def test_torch_loader_images_batches(folder, tmp_path):
    ds = _load(folder, "tiny", tmp_path)
    assert "materials" in ds["train"].column_names
    batches = list(torch_loader(ds["train"], batch_size=4))
    assert [tuple(b[0].shape) for b in batches] == [(4, 1, *SHAPE), (2, 1, *SHAPE)]
    for image, mask in batches:
        assert image.dtype == torch.float32 and mask.dtype == torch.int64 and image.shape == mask.shape
        assert set(mask.unique().tolist()) <= {0, 1}
    # the same pixels as the dataset rows, index for index
    row = ds["train"].with_format("numpy")[0]
    assert np.array_equal(batches[0][0][0, 0].numpy(), row["image"])
    assert np.array_equal(batches[0][1][0, 0].numpy(), (np.asarray(row["mask"]) > 0).astype(np.int64))
    # collate as a collate_fn over with_format("torch"): the list columns are dropped, shapes agree
    from torch.utils.data import DataLoader

    image, mask = next(iter(DataLoader(ds["train"].with_format("torch"), batch_size=3, collate_fn=collate)))
    assert tuple(image.shape) == tuple(mask.shape) == (3, 1, *SHAPE)
    assert torch.equal(image, batches[0][0][:3]) and torch.equal(mask, batches[0][1][:3])


def test_torch_loader_exit_waves_batches(folder, tmp_path):
    ds = _load(folder, "waves", tmp_path)
    waves, mask = next(iter(torch_loader(ds["train"], batch_size=2, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))))
    assert waves.dtype == torch.complex64 and tuple(waves.shape) == (2, 2, 2 * SHAPE[0], 2 * SHAPE[1])
    assert mask.dtype == torch.int64 and tuple(mask.shape) == (2, 1, *SHAPE)
    with pytest.raises(InputError, match="torch_loader"):
        torch_loader(ds)  # a DatasetDict, not a split
    with pytest.raises(InputError, match="'mask'"):
        torch_loader(ds["train"].remove_columns("mask"))


def test_publish_dry_run_writes_the_repo_id_into_the_card(folder):
    from hrtem_dataset.dataset import publish

    before = (folder / "README.md").read_text()
    assert "<org>/hrtem-test" in before
    res = publish(folder, "lab/hrtem-test", dry_run=True)
    assert "<org>/" not in res.card and 'load_dataset("lab/hrtem-test", "tiny")' in res.card
    assert (folder / "README.md").read_text() == before  # a dry run changes nothing
    rc, out, err = run_cli(["publish", folder, "--repo-id", "lab/hrtem-test", "--dry-run"])
    assert rc == 0, err
    assert 'card: ds = load_dataset("lab/hrtem-test", "tiny", revision="v0.1.0")' in err
    assert "<org>/" not in err and "README.md" in out.split()


# ------------------------------------------------------------------------------------------------------
# 4./5. progress on stderr (quiet with --quiet), JSON stdout stays clean; shared --device/--engine/-V
# ------------------------------------------------------------------------------------------------------

HRTEM = str(Path(sys.executable).with_name("hrtem"))


def _hrtem(args, cwd, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([HRTEM, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from ase import Atoms

    from hrtem_dataset.structures import write_extxyz

    rng = np.random.default_rng(0)
    c = rng.uniform([0, 0, 2.0], [10.0, 10.0, 5.0], (30, 3))
    au = np.array([[5.0, 5.0, 8.0], [6.4, 5.0, 8.0], [5.0, 6.4, 8.0], [5.7, 5.7, 9.2]])
    atoms = Atoms(["C"] * len(c) + ["Au"] * len(au), positions=np.vstack([c, au]), cell=[10.0, 10.0, 12.0], pbc=True)
    atoms.set_array("particle_id", np.r_[-np.ones(len(c), int), np.zeros(len(au), int)].astype(np.int32))
    path = tmp_path_factory.mktemp("scene") / "scene.extxyz"
    write_extxyz(atoms, path)
    return path


def test_simulate_progress_on_stderr_quiet_silent_json_clean(scene, tmp_path):
    r = _hrtem(["simulate", scene, "--out", tmp_path / "a.npz"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["gpts"] == [100, 100]  # stdout: exactly one JSON line
    assert "multislice: 34 atoms, 2 waves (torch, auto): done in" in r.stderr
    q = _hrtem(["simulate", scene, "--out", tmp_path / "b.npz", "--quiet"], tmp_path)
    assert q.returncode == 0 and q.stderr == ""
    assert json.loads(q.stdout) == {**json.loads(r.stdout), "out": str(tmp_path / "b.npz")}


def test_materialize_progress_per_stage_shard_and_training_step_and_quiet(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from dagster_helpers import write_tiny_config

    cfg = write_tiny_config(tmp_path)
    r = _hrtem(["materialize", cfg, "--out", tmp_path / "out"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "shard 00001 (structures, exit_waves, imaged_samples): done in" in r.stderr
    assert "shards " in r.stderr and "2/2" in r.stderr  # the shard bar
    assert any(line.lstrip().startswith("train ") and "3/3" in line for line in r.stderr.splitlines())  # steps
    assert "dataset_splits and downstream: done in" in r.stderr
    assert r.stdout.startswith("dataset: ") and "dg dev --target-path" in r.stdout  # no progress on stdout
    q = _hrtem(["materialize", cfg, "--out", tmp_path / "out", "-q"], tmp_path)
    assert q.returncode == 0 and q.stderr == "", q.stderr
    assert "(0 shards run, 2 reused)" in q.stdout


def test_every_command_takes_quiet_and_device_is_one_validated_option():
    import typer.main

    from hrtem_dataset.cli import app

    root = typer.main.get_command(app)
    commands = []
    for name, cmd in root.commands.items():
        subs = getattr(cmd, "commands", None)
        commands += [(f"{name} {n}", c) for n, c in subs.items()] if subs else [(name, cmd)]
    assert len(commands) >= 11
    for name, cmd in commands:
        opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        assert "--quiet" in opts and "-q" in opts, name
        device = [p for p in cmd.params if "--device" in p.opts]
        if device:
            assert device[0].metavar in ("[auto|cpu|cuda|cuda:N]", "[auto|cpu|cuda]"), name
            assert device[0].default in ("auto", None), name  # None: the config's own (auto in every config)
    rc, out, _ = run_cli(["-V"])
    assert rc == 0 and out.strip() == __import__("hrtem_dataset").__version__


@pytest.mark.parametrize("argv", [
    ["simulate", "scene.extxyz", "--out", "w.npz", "--device", "gpu"],
    ["simulate", "scene.extxyz", "--out", "w.npz", "--engine", "multislice"],
    ["materialize", "configs/demo.yaml", "--device", "cuda:x"],
    ["study", "run", "configs/studies/quality.yaml", "--out", "x", "--device", "tpu"],
    ["train", "--out", "m", "--dataset", "d", "--device", "cuda:"],
    ["evaluate", "--model", "m", "--dataset", "d", "--device", "nope"],
    ["segment", "img.png", "--model", "m", "--out", "m.png", "--device", "gpu0"],
])
def test_bad_device_or_engine_one_line_exit_2(argv):
    rc, out, err = run_cli(argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and ("--device" in err or "--engine" in err), err


def test_device_cuda_without_cuda_is_refused_up_front():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    for argv in (["evaluate", "--model", "m", "--dataset", "d", "--device", "cuda"],
                 ["simulate", "s.extxyz", "--out", "w.npz", "--device", "cuda"]):
        rc, _, err = run_cli(argv)
        assert rc == 2 and err.startswith("error: --device:") and "CUDA is not available" in err, err


def test_help_shows_engine_and_device_choices():
    for argv in (["simulate", "--help"], ["materialize", "--help"]):
        r = subprocess.run([HRTEM, *argv], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
        assert "torch|abtem|prismatic" in r.stdout and "[auto|cpu|cuda]" in r.stdout, r.stdout
    r = subprocess.run([HRTEM, "segment", "--help"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert "[auto|cpu|cuda|cuda:N]" in r.stdout


# ------------------------------------------------------------------------------------------------------
# 7. hrtem_dataset.models: not shadowed by a models/ folder in the working directory
# ------------------------------------------------------------------------------------------------------

def test_hrtem_dataset_models_works_next_to_an_unrelated_models_folder(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("WHOSE = 'the user'\n")  # e.g. a Django app's models
    (tmp_path / "models" / "user.py").write_text("class User: pass\n")
    code = """
import json, numpy as np
from hrtem_dataset.models import build_model, from_pretrained, save_pretrained, segment
m = build_model("tu-resnet18", encoder_depth=2, decoder_channels=(16, 8), pixel_size=0.5)
save_pretrained(m, "model")
model = from_pretrained("model")
np.save("img.npy", np.random.default_rng(0).random((64, 64)).astype(np.float32))
res = segment("img.npy", model, pixel_size=0.5)
print(json.dumps({"shape": list(res["mask"].shape), "px": model.hrtem_config.pixel_size}))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"shape": [64, 64], "px": 0.5}
    # the plain top-level name is the user's folder there: that is what the re-export avoids
    r = subprocess.run([sys.executable, "-c", "from models import from_pretrained"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "cannot import name 'from_pretrained'" in r.stderr
    import hrtem_dataset.models as hm
    import models

    assert hm.from_pretrained is models.from_pretrained and set(hm.__all__) == set(models.__all__)
