"""Tiny dataset configurations shared by the pipeline and Dagster tests (kept small for 2-core CI)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def tiny_spec_dict(*, model: bool = True, name: str = "tiny", train: int = 2, validation: int = 1, test: int = 1,
                   shard_size: int = 2, seed: int = 3) -> dict:
    """4 structures (2/1/1) in 2 shards: 28 Å cells, one Au particle of radius 5–6 Å on 1 nm of carbon,
    0.2 Å sampling, static lattice, one noisy image per structure at 0.25 Å pixels."""
    d = {
        "name": "hrtem-tiny",
        "config_name": name,
        "kind": "images",
        "version": "0.0.1",
        "seed": seed,
        "structures": {
            "cell": {"x": 28.0, "y": 28.0},
            "substrate_thickness": 10.0,
            "n_particles": {"min": 1, "max": 1},
            "particles": {"materials": {"values": ["Au"]}, "radius": {"min": 5.0, "max": 6.0}},
            "min_separation": 4.0,
            "vacuum": 4.0,
        },
        "simulation": {"engine": "torch", "sampling": 0.2, "slice_thickness": 2.0, "phonons": 0, "device": "cpu"},
        "imaging": {"pixel_size": 0.25, "defocus": {"min": -50.0, "max": 50.0}, "dose": 1000.0,
                    "images_per_structure": 1},
        "splits": {"train": train, "validation": validation, "test": test},
        "shard_size": shard_size,
    }
    if model:
        d["model"] = {"encoder": "tu-mobilenetv3_small_050", "steps": 3, "batch_size": 2, "lr": 0.001, "image_size": 64,
                      "min_f1": 0.0}
    return d


def write_tiny_config(folder: Path, stem: str = "tiny", **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(tiny_spec_dict(**kw), sort_keys=False))
    return path


@pytest.fixture(scope="module", autouse=True)
def isolated_hf_datasets_cache(tmp_path_factory):
    """A private `datasets` cache for the module (in process and for subprocesses).

    `load_dataset(<local folder>)` keys its Arrow cache on the folder *name*, the configuration and the
    card's `dataset_info` (sizes), not on the file contents: two different builds in folders both named
    `dataset` with equal sizes would otherwise share one cache entry and the second load would return
    the first build's rows.
    """
    import os

    import datasets

    cache = tmp_path_factory.mktemp("hf_datasets_cache")
    old_attr, old_env = datasets.config.HF_DATASETS_CACHE, os.environ.get("HF_DATASETS_CACHE")
    datasets.config.HF_DATASETS_CACHE = cache
    os.environ["HF_DATASETS_CACHE"] = str(cache)
    yield cache
    datasets.config.HF_DATASETS_CACHE = old_attr
    if old_env is None:
        os.environ.pop("HF_DATASETS_CACHE", None)
    else:
        os.environ["HF_DATASETS_CACHE"] = old_env


# ---- `dagster dev` + headless Debian Chromium (the UI tests) ------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1600,1000"]


def chromium() -> str | None:
    import os
    import shutil

    for cand in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def require_chromium() -> str:
    path = chromium()
    if path is None:
        pytest.skip("Debian chromium is not installed (apt-get install chromium chromium-driver); "
                    "`make test` installs it when it can")
    return path


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    import json
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql",
                                 data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        out = json.loads(r.read())
    assert "errors" not in out, out
    return out["data"]


def browser(url: str, tmp: Path, *extra: str, budget_ms: int = 20000):
    """Headless Chromium on ``url`` (``--screenshot=PNG`` or ``--dump-dom`` in ``extra``)."""
    import subprocess
    import time

    profile = tmp / f"chromium-profile-{time.monotonic_ns()}"
    cmd = [require_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
           *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp)


@contextlib.contextmanager
def dagster_dev(tmp: Path, env: dict, timeout: float = 240.0):
    """Context manager: ``dagster dev -m dagster_project`` on a free 127.0.0.1 port with ``env`` on top of
    the environment and ``DAGSTER_HOME`` (created if missing) from ``env``; yields ``(port, log)`` once the
    code location has loaded, and kills the whole process group on exit."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    full = {**os.environ, "DAGSTER_DISABLE_TELEMETRY": "1", **env}
    log = tmp / f"dagster_dev-{port}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("dagster")), "dev", "-m", "dagster_project",
                                 "-h", "127.0.0.1", "-p", str(port)], cwd=REPO, env=full, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        q = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
        t0 = time.time()
        while True:
            assert proc.poll() is None, f"dagster dev exited early:\n{log.read_text()[-3000:]}"
            assert time.time() - t0 < timeout, f"code location did not load in {timeout} s:\n{log.read_text()[-3000:]}"
            try:
                entries = graphql(port, q)["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    break
            except OSError:
                pass
            time.sleep(1.0)
        graphql(port, "mutation { setNuxSeen }")  # the first-visit community pop-up would cover the page
        yield port, log
    finally:  # dagster dev, its webserver, daemon and code servers share one process group
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
        proc.wait()

