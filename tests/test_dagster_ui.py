"""The Dagster UI in a real browser: `dagster dev` on 127.0.0.1, headless Debian Chromium, GraphQL launch.

Needs /usr/bin/chromium (Debian packages `chromium`, `chromium-driver`; `make test` installs them when it
can); skipped with the reason otherwise.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dagster_helpers import browser, graphql, isolated_hf_datasets_cache, require_chromium, write_tiny_config  # noqa: F401
from dagster_helpers import dagster_dev as dagster_dev_server

pytestmark = pytest.mark.browser

ASSETS = ("structure_specs", "structures", "exit_waves", "imaged_samples", "dataset_splits", "published_dataset")


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    require_chromium()
    tmp = tmp_path_factory.mktemp("dagster_ui")
    cfg = write_tiny_config(tmp / "configs", stem="uitiny", model=False, name="uitiny")
    env = {"DAGSTER_HOME": str(tmp / "dagster_home"), "HRTEM_HOME": str(tmp / "ws"), "HRTEM_CONFIGS": str(cfg),
           "HRTEM_PUBLISH_DIR": str(tmp / "published")}
    with dagster_dev_server(tmp, env) as (port, log):
        yield {"port": port, "tmp": tmp, "log": log, "config": cfg}


def test_asset_graph_in_browser(dagster_dev):
    port, tmp = dagster_dev["port"], dagster_dev["tmp"]
    url = f"http://127.0.0.1:{port}/locations/dagster_project/asset-groups/uitiny"
    shot = tmp / "asset_graph.png"
    r = browser(url, tmp, f"--screenshot={shot}")
    assert shot.exists() and shot.stat().st_size > 10_000, r.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1600, 1000)
        extrema = im.convert("L").getextrema()
        assert extrema[1] - extrema[0] > 50  # not a blank page
    dom = browser(url, tmp, "--dump-dom").stdout
    missing = [a for a in ASSETS if a not in dom]
    assert not missing, f"asset names missing from the rendered asset graph: {missing}"
    assert "uitiny" in dom  # the configuration's asset group


def test_launch_materialization_viagraphql(dagster_dev):
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
    mats = graphql(port, q, {"key": {"path": ["uitiny", "imaged_samples"]}})["assetOrError"]["assetMaterializations"]
    assert [m["partition"] for m in mats] == ["00000"]
    labels = {e["label"] for e in mats[0]["metadataEntries"]}
    assert {"preview", "images_per_s", "spec_hash", "dagster/row_count"} <= labels
    ws = Path(dagster_dev["tmp"]) / "ws" / "hrtem-tiny" / "0.0.1" / "uitiny" / "images"
    assert (ws / "shard-00000.npz").exists() and not (ws / "shard-00001.npz").exists()
