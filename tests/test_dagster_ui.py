"""The Dagster UI in a real browser: `dagster dev` on 127.0.0.1, headless Debian Chromium, GraphQL launch.

Needs /usr/bin/chromium (Debian packages `chromium`, `chromium-driver`; `make test` installs them when it
can); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from dagster_helpers import REPO, isolated_hf_datasets_cache, write_tiny_config  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1600,1000"]
ASSETS = ("structure_specs", "structures", "exit_waves", "imaged_samples", "dataset_splits", "published_dataset")


def _chromium() -> str | None:
    for cand in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql",
                                 data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        out = json.loads(r.read())
    assert "errors" not in out, out
    return out["data"]


def _wait_for_location(port: int, proc: subprocess.Popen, log: Path, timeout: float = 150.0) -> None:
    q = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, f"dagster dev exited early:\n{log.read_text()[-3000:]}"
        try:
            entries = _graphql(port, q)["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                return
        except OSError:
            pass
        time.sleep(1.0)
    raise AssertionError(f"code location did not load in {timeout} s:\n{log.read_text()[-3000:]}")


def _browser(chromium: str, url: str, tmp: Path, *extra: str, budget_ms: int = 20000) -> subprocess.CompletedProcess:
    profile = tmp / f"chromium-profile-{time.monotonic_ns()}"
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp)


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    if _chromium() is None:
        pytest.skip("Debian chromium is not installed (apt-get install chromium chromium-driver); "
                    "`make test` installs it when it can")
    tmp = tmp_path_factory.mktemp("dagster_ui")
    cfg = write_tiny_config(tmp / "configs", stem="uitiny", model=False, name="uitiny")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp / "dagster_home"), "HRTEM_HOME": str(tmp / "ws"),
           "HRTEM_CONFIGS": str(cfg), "HRTEM_PUBLISH_DIR": str(tmp / "published"), "DAGSTER_DISABLE_TELEMETRY": "1"}
    (tmp / "dagster_home").mkdir()
    (tmp / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    log = tmp / "dagster_dev.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("dagster")), "dev", "-m", "dagster_project",
                                 "-h", "127.0.0.1", "-p", str(port)], cwd=REPO, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_location(port, proc, log)
        _graphql(port, "mutation { setNuxSeen }")  # the first-visit community pop-up would cover the graph
        yield {"port": port, "tmp": tmp, "log": log, "config": cfg}
    finally:  # dagster dev, its webserver, daemon and code servers share one process group
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
        except ProcessLookupError:
            pass
        proc.wait()


def test_asset_graph_in_browser(dagster_dev):
    port, tmp = dagster_dev["port"], dagster_dev["tmp"]
    chromium = _chromium()
    url = f"http://127.0.0.1:{port}/locations/dagster_project/asset-groups/uitiny"
    shot = tmp / "asset_graph.png"
    r = _browser(chromium, url, tmp, f"--screenshot={shot}")
    assert shot.exists() and shot.stat().st_size > 10_000, r.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1600, 1000)
        extrema = im.convert("L").getextrema()
        assert extrema[1] - extrema[0] > 50  # not a blank page
    dom = _browser(chromium, url, tmp, "--dump-dom").stdout
    missing = [a for a in ASSETS if a not in dom]
    assert not missing, f"asset names missing from the rendered asset graph: {missing}"
    assert "uitiny" in dom  # the configuration's asset group


def test_launch_materialization_via_graphql(dagster_dev):
    """Launch the `uitiny_plan` job, then shard 00000 of `uitiny_shards`, through the webserver's GraphQL
    API (as the UI's Materialize button does) and poll until both runs succeed."""
    from dagster_graphql import DagsterGraphQLClient

    port = dagster_dev["port"]
    client = DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=60)
    in_process = {"execution": {"config": {"in_process": {}}}}
    for job, tags in (("uitiny_plan", {}), ("uitiny_shards", {"dagster/partition": "00000"})):
        run_id = client.submit_job_execution(job, run_config=in_process, tags=tags)
        t0, status = time.time(), None
        while time.time() - t0 < 240:
            status = client.get_run_status(run_id).value
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            time.sleep(2)
        assert status == "SUCCESS", f"{job}: {status}\n{dagster_dev['log'].read_text()[-3000:]}"

    # the materializations and the blocking checks are recorded and visible through the API
    q = """query($key: AssetKeyInput!) { assetOrError(assetKey: $key) { ... on Asset {
             assetMaterializations(limit: 5) { partition metadataEntries { label } } } } }"""
    mats = _graphql(port, q, {"key": {"path": ["uitiny", "imaged_samples"]}})["assetOrError"]["assetMaterializations"]
    assert [m["partition"] for m in mats] == ["00000"]
    labels = {e["label"] for e in mats[0]["metadataEntries"]}
    assert {"preview", "images_per_s", "spec_hash", "dagster/row_count"} <= labels
    ws = Path(dagster_dev["tmp"]) / "ws" / "hrtem-tiny" / "0.0.1" / "uitiny" / "images"
    assert (ws / "shard-00000.npz").exists() and not (ws / "shard-00001.npz").exists()
