"""Security and reliability of user-supplied inputs.

- Checkpoints and model folders never execute code: a crafted pickle (``__reduce__`` that would create a
  marker file) is refused on every loading path with :class:`InputError` / exit code 2.
- Memory bombs are refused before allocating (``HRTEM_MAX_MEMORY_GB``, default 80 % of the RAM): proven
  by running the CLI under an address-space limit of 4 GiB.
- ``--device`` is validated up front by ``hrtem train``, ``hrtem evaluate`` and ``hrtem segment``.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from models_synthetic import write_dataset

from hrtem_dataset.cli import main
from hrtem_dataset.errors import InputError

torch.set_num_threads(2)

TINY = dict(encoder="tu-resnet18", encoder_depth=3, decoder_channels=(16, 8, 8))
TINY_CLI = ["--encoder", "tu-resnet18", "--encoder-depth", "3", "--decoder-channels", "16,8,8"]
MODEL_PIXEL = 0.2  # Å
AS_LIMIT = 4 << 30  # address-space limit of the memory-bomb subprocesses


def run_cli(argv: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def one_error_line(stderr: str, *must_contain) -> str:
    """Exactly one ``error:`` line, the last on stderr (progress notes of finished stages may precede it)."""
    lines = stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert "Traceback" not in stderr, stderr
    for s in must_contain:
        assert str(s) in errors[0], (s, errors[0])
    return errors[0]


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file appears iff the pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def craft_checkpoint(path: Path, marker: Path) -> Path:
    """A torch.save file shaped like a training checkpoint whose model entry is the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _Payload(marker), "model_config": {"encoder": "tu-resnet18"}, "step": 0}, path)
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained tiny U-Net saved as a model folder (expects 0.2 Å pixels)."""
    from models import build_model, save_pretrained

    torch.manual_seed(0)
    return save_pretrained(build_model(**TINY, pixel_size=MODEL_PIXEL), tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds") / "ds", sizes={"train": 4, "validation": 2, "test": 2},
                         seed=3)


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    return craft_checkpoint(tmp_path / "evil.pt", marker), marker


# --------------------------------------------------------------------------------------------------
# 1. No code execution from checkpoints
# --------------------------------------------------------------------------------------------------


def test_payload_is_live(tmp_path):
    """Control: the crafted file does run code under an unsafe load (so the tests below mean something)."""
    marker = tmp_path / "control"
    path = craft_checkpoint(tmp_path / "control.pt", marker)
    obj = torch.load(path, weights_only=False)
    obj["model"].close()
    assert marker.exists()


def test_init_from_crafted_checkpoint_refused(evil, dataset_dir, tmp_path):
    from models.train import load_initial_model

    path, marker = evil
    with pytest.raises(InputError, match="evil.pt"):
        load_initial_model(path)
    out = tmp_path / "out"
    rc, _, stderr = run_cli(["train", "--init-from", path, "--dataset", dataset_dir, "--out", out, "--steps", "1",
                             "--quiet"])
    assert rc == 2
    one_error_line(stderr, "--init-from", "evil.pt")
    # a training output folder given to --init-from: its checkpoints/last.pt is the crafted file
    folder = tmp_path / "prev"
    craft_checkpoint(folder / "checkpoints" / "last.pt", marker)
    rc, _, stderr = run_cli(["train", "--init-from", folder, "--dataset", dataset_dir, "--out", out, "--steps", "1",
                             "--quiet"])
    assert rc == 2
    one_error_line(stderr, "last.pt")
    assert not marker.exists() and not out.exists()


def test_init_from_not_a_checkpoint(tmp_path):
    from models.train import load_initial_model

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(InputError, match="junk.pt"):
        load_initial_model(junk)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(InputError, match="list.pt"):
        load_initial_model(tmp_path / "list.pt")


def test_resume_checkpoint_roundtrip_and_crafted_refused(dataset_dir, tmp_path):
    """A real checkpoint (with optimiser/schedule state and validation history) loads under weights_only;
    a crafted one at OUT/checkpoints/last.pt is refused by the resume path."""
    from models import train
    from models.train import CHECKPOINT, load_checkpoint, load_initial_model

    kw = dict(**TINY, steps=2, batch_size=4, lr=1e-3, seed=0, progress=False, max_samples=4)
    out = tmp_path / "run"
    res = train(dataset_dir, out, **kw)
    assert res["completed"] and res["history"] and "val_iou" in res["history"][-1]
    ckpt = load_checkpoint(out / CHECKPOINT)
    assert {"model", "optimizer", "scheduler", "scaler", "history", "fingerprint"} <= set(ckpt)
    assert load_initial_model(out / CHECKPOINT).hrtem_config.encoder_depth == 3

    marker = tmp_path / "PWNED"
    craft_checkpoint(out / CHECKPOINT, marker)
    with pytest.raises(InputError, match="last.pt"):
        train(dataset_dir, out, **kw)
    assert not marker.exists()


def test_model_folder_with_crafted_weights_refused(tiny_model, tmp_path):
    import shutil

    from models import from_pretrained

    marker = tmp_path / "PWNED"
    # model.safetensors holding a pickle: safetensors never unpickles, the file is rejected
    folder = tmp_path / "evil_model"
    folder.mkdir()
    shutil.copy(tiny_model / "config.json", folder / "config.json")
    craft_checkpoint(folder / "model.safetensors", marker)
    with pytest.raises(InputError, match="model.safetensors"):
        from_pretrained(folder)
    # only pickled weights (pytorch_model.bin / .pt): never loaded, there is no pickle fallback
    folder2 = tmp_path / "bin_model"
    folder2.mkdir()
    shutil.copy(tiny_model / "config.json", folder2 / "config.json")
    craft_checkpoint(folder2 / "pytorch_model.bin", marker)
    craft_checkpoint(folder2 / "model.pt", marker)
    with pytest.raises(InputError, match="model.safetensors"):
        from_pretrained(folder2)
    image = tmp_path / "img.npy"
    np.save(image, np.random.default_rng(0).random((32, 32), dtype=np.float32))
    for f in (folder, folder2):
        rc, _, stderr = run_cli(["segment", image, "--model", f, "--out", tmp_path / "mask.png"])
        assert rc == 2
        one_error_line(stderr, f.name)
    assert not marker.exists() and not (tmp_path / "mask.png").exists()


# --------------------------------------------------------------------------------------------------
# 2. Memory bombs refused up front
# --------------------------------------------------------------------------------------------------


def _limit_address_space() -> None:  # preexec_fn: runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def run_limited(argv: list, env_update: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI in a subprocess whose address space is limited to 4 GiB (so a refusal cannot be an
    allocation that happened to fit)."""
    env = {k: v for k, v in os.environ.items() if k != "HRTEM_MAX_MEMORY_GB"}
    env.update(env_update or {})
    return subprocess.run([sys.executable, "-c", "import sys; from hrtem_dataset.cli import main; sys.exit(main())",
                           *[str(a) for a in argv]], capture_output=True, text=True, env=env,
                          preexec_fn=_limit_address_space, timeout=120)


def _scene(cell: float) -> Atoms:
    atoms = Atoms("CAu", positions=[[1.0, 1.0, 1.0], [2.0, 2.0, 3.0]], cell=[cell, cell, 6.0], pbc=True)
    atoms.set_array("particle_id", np.array([-1, 0], np.int32))
    return atoms


def test_simulate_huge_grid_refused_before_allocating(tmp_path):
    from hrtem_dataset.structures import write_extxyz

    scene = write_extxyz(_scene(2000.0), tmp_path / "huge.extxyz")
    out = tmp_path / "waves.npz"
    r = run_limited(["simulate", scene, "--out", out, "--sampling", "0.006"])
    assert r.returncode == 2, r.stderr[-2000:]
    line = one_error_line(r.stderr, "GiB", "333334 x 333334", "limit", "HRTEM_MAX_MEMORY_GB")
    assert "needs ~" in line
    assert not out.exists()


def test_max_memory_env_var(tmp_path, monkeypatch):
    from hrtem_dataset.limits import check_memory, memory_limit, physical_memory
    from hrtem_dataset.structures import write_extxyz

    monkeypatch.delenv("HRTEM_MAX_MEMORY_GB", raising=False)
    assert memory_limit() == int(0.8 * physical_memory())
    scene = write_extxyz(_scene(20.0), tmp_path / "small.extxyz")
    out = tmp_path / "w.npz"
    monkeypatch.setenv("HRTEM_MAX_MEMORY_GB", "0.001")
    rc, _, stderr = run_cli(["simulate", scene, "--out", out])
    assert rc == 2
    one_error_line(stderr, "200 x 200", "over the limit of 0.001 GiB", "HRTEM_MAX_MEMORY_GB")
    assert not out.exists()
    for bad in ("lots", "-1", "0", "nan", "inf"):
        monkeypatch.setenv("HRTEM_MAX_MEMORY_GB", bad)
        with pytest.raises(InputError, match="HRTEM_MAX_MEMORY_GB"):
            check_memory("x", 1)
        rc, _, stderr = run_cli(["simulate", scene, "--out", out])
        assert rc == 2
        one_error_line(stderr, "HRTEM_MAX_MEMORY_GB", repr(bad))
    monkeypatch.setenv("HRTEM_MAX_MEMORY_GB", "0.5")
    rc, _, stderr = run_cli(["simulate", scene, "--out", out])
    assert rc == 0, stderr
    assert out.is_file()


def test_other_engines_refuse_huge_grids(monkeypatch):
    from hrtem_dataset.simulation.abtem_engine import exit_waves_abtem
    from hrtem_dataset.simulation.prismatic_engine import exit_waves_prismatic

    monkeypatch.delenv("HRTEM_MAX_MEMORY_GB", raising=False)
    atoms = _scene(2000.0)
    configs = atoms.positions[None]
    with pytest.raises(InputError, match=r"abtem engine.*333334 x 333334"):
        exit_waves_abtem(atoms, configs, sampling=0.006)
    with pytest.raises(InputError, match=r"prismatic engine.*333334 x 333334"):
        exit_waves_prismatic(atoms, configs, sampling=0.006)
    monkeypatch.setenv("HRTEM_MAX_MEMORY_GB", "0.001")
    small = _scene(20.0)
    with pytest.raises(InputError, match="abtem engine"):
        exit_waves_abtem(small, small.positions[None], sampling=0.1)


def test_segment_huge_resampling_refused_before_allocating(tiny_model, tmp_path):
    image = tmp_path / "img.npy"
    np.save(image, np.random.default_rng(0).random((64, 64), dtype=np.float32))
    out = tmp_path / "mask.png"
    r = run_limited(["segment", image, "--model", tiny_model, "--out", out, "--pixel-size", "200"])
    assert r.returncode == 2, r.stderr[-2000:]
    one_error_line(r.stderr, "needs ~", "GiB", "64000 x 64000", "limit", "HRTEM_MAX_MEMORY_GB")
    assert not out.exists()
    # the same image at a sensible pixel size segments fine
    rc, _, stderr = run_cli(["segment", image, "--model", tiny_model, "--out", out, "--pixel-size", "0.4"])
    assert rc == 0, stderr
    assert out.is_file()


# --------------------------------------------------------------------------------------------------
# --device validated up front
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["bogus", "cuda", "meta"])
def test_device_validated_up_front(device, tiny_model, tmp_path):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    missing = tmp_path / "missing"  # data that would fail to load: the device must be checked first
    out = tmp_path / "out"
    commands = [
        ["segment", missing / "img.png", "--model", tiny_model, "--out", tmp_path / "m.png", "--device", device],
        ["evaluate", "--model", tiny_model, "--dataset", missing, "--device", device],
        ["train", "--dataset", missing, "--out", out, *TINY_CLI, "--steps", "1", "--device", device, "--quiet"],
    ]
    for argv in commands:
        rc, _, stderr = run_cli(argv)
        assert rc == 2, (argv, stderr)
        one_error_line(stderr, "--device", device)
    assert not out.exists() and not (tmp_path / "m.png").exists()


def test_resolve_device():
    from models.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda")
    assert resolve_device("auto") == resolve_device(None)
    with pytest.raises(InputError, match="--device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_segment_output_targets_checked_before_any_work(tiny_model, tmp_path):
    """--out that is a folder, or a --csv that would overwrite a non-CSV file, is refused up front:
    nothing is written and nothing existing changes."""
    from PIL import Image

    img = tmp_path / "mic.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(img)
    (tmp_path / "dir.png").mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, out, err = run_cli(["segment", img, "--model", tiny_model, "--out", tmp_path / "dir.png",
                            "--pixel-size", "0.2", "--device", "cpu"])
    assert rc == 2 and out == ""
    one_error_line(err, "--out", "dir.png", "folder")
    rc, out, err = run_cli(["segment", img, "--model", tiny_model, "--out", tmp_path / "m.png",
                            "--csv", notes, "--pixel-size", "0.2", "--device", "cpu"])
    assert rc == 2
    one_error_line(err, "--csv", "notes.txt")
    assert notes.read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not any((tmp_path / "dir.png").iterdir())


def test_second_materialize_writer_on_one_folder_is_refused(tmp_path):
    """While one process holds an output folder, a second `hrtem materialize` into it exits 2 with one
    line before writing anything (no second SQLite instance, no interleaved files)."""
    from filelock import FileLock

    from dagster_project.run import LOCK_NAME

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               f"l = FileLock({str(out / LOCK_NAME)!r}); l.acquire(); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        config = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
        r = subprocess.run([sys.executable, "-m", "hrtem_dataset.cli", "materialize", str(config), "--out", str(out)],
                           capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
        assert r.returncode == 2, r.stderr
        one_error_line(r.stderr, "--out", "another `hrtem materialize` is writing")
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # no .dagster, no workspace
    finally:
        holder.kill()
        holder.wait()
    # once the holder is gone the lock is free again (an OS lock dies with its process)
    lock = FileLock(str(out / LOCK_NAME), timeout=0)
    lock.acquire()
    lock.release()


@pytest.mark.parametrize("flag,value", [("--val-every", "0"), ("--image-size", "100000"), ("--image-size", "8")])
def test_train_rejects_out_of_range_numbers_before_writing(dataset_dir, tmp_path, flag, value):
    rc, out, err = run_cli(["train", "--dataset", dataset_dir, "--config", "default", "--out", tmp_path / "o",
                            "--steps", "1", "--device", "cpu", "--quiet", flag, value])
    assert rc == 2 and out == ""
    one_error_line(err, flag)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------------
# Workspace stage folders, DIR/model and DIR/.dagster
# --------------------------------------------------------------------------------------------------


def _demo_spec():
    from hrtem_dataset.specs import DatasetSpec, load_spec

    return load_spec(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml", DatasetSpec)


def test_stage_shard_lock_makes_a_second_writer_wait(tmp_path):
    """While another process holds the lock of shard 0 of the structures stage folder, building that shard
    waits; once the lock is free it builds (or reuses) the files."""
    import time

    from hrtem_dataset import pipeline as pl

    spec, root = _demo_spec(), tmp_path / "ws"
    lock = pl.config_dir(spec, root) / "structures" / ".shard-00000.lock"
    hold = 4.0
    holder = subprocess.Popen([sys.executable, "-c", "import os, time; from filelock import FileLock; "
                               f"os.makedirs({str(lock.parent)!r}, exist_ok=True); l = FileLock({str(lock)!r}); "
                               f"l.acquire(); print('held', flush=True); time.sleep({hold})"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        stats = pl.build_structures_shard(spec, 0, root)
        waited = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    assert waited >= hold - 1.0, waited
    assert stats["computed"] + stats["reused"] == stats["structures"] == len(pl.shard_indices(spec, 0))
    assert all(pl.structure_path(spec, i, root).is_file() for i in pl.shard_indices(spec, 0))


def test_publish_model_keeps_a_users_file_in_dir_model(tmp_path):
    from hrtem_dataset import pipeline as pl
    from models.stage import publish_model

    spec, root = _demo_spec(), tmp_path / "ws"
    model = pl.config_dir(spec, root) / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"x": 1}\n')
    (model / "model.safetensors").write_bytes(b"weights")
    dest = tmp_path / "out" / "model"
    dest.mkdir(parents=True)
    (dest / "my-notes.txt").write_text("mine\n")
    (dest / "config.json").write_text("old\n")
    publish_model(spec, root, dest)
    assert (dest / "my-notes.txt").read_text() == "mine\n"
    assert (dest / "config.json").read_text() == '{"x": 1}\n' and (dest / "model.safetensors").read_bytes() == b"weights"


def _stale_workspace(spec, root: Path) -> None:
    """A workspace whose structures stage folder was built from another spec: the structures run raises
    InputError after the config has loaded and the instance exists."""
    from hrtem_dataset import pipeline as pl

    d = pl.config_dir(spec, root) / "structures"
    d.mkdir(parents=True)
    (d / "_fingerprint.json").write_text('{"fingerprint": "another-spec"}\n')
    (d / "old.extxyz").write_text("x\n")


def test_materialize_user_error_after_config_loads_leaves_no_dagster_home(tmp_path):
    spec = _demo_spec()
    config = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    ws = tmp_path / "ws"
    _stale_workspace(spec, ws)
    # a new output folder: nothing at all is left
    out = tmp_path / "new-out"
    rc, _, err = run_cli(["materialize", config, "--out", out, "--workspace", ws])
    assert rc == 2
    assert "built from a different spec" in err.strip().splitlines()[-1]
    assert not out.exists()
    # an existing output folder with the user's files: they stay as they were, no .dagster appears
    out2 = tmp_path / "existing"
    out2.mkdir()
    (out2 / "notes.txt").write_text("mine\n")
    rc, _, err = run_cli(["materialize", config, "--out", out2, "--workspace", ws])
    assert rc == 2
    assert not (out2 / ".dagster").exists()
    assert (out2 / "notes.txt").read_text() == "mine\n"
    assert {p.name for p in out2.iterdir()} <= {"notes.txt", ".hrtem-materialize.lock"}
