"""The Dagster project: definitions, whole-graph materialization, blocking checks, kill-and-resume through
`hrtem materialize`, and the same assets on a real Dask LocalCluster (dagster-dask)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster_helpers import REPO, isolated_hf_datasets_cache, write_tiny_config  # noqa: F401 (autouse fixture)

from dagster_project.assets import ASSET_NAMES, CHECKS, PARTITIONED, build_config_assets, load_config
from dagster_project.definitions import build_definitions, reconstructable_config_job
from dagster_project.resources import PublishTarget, SimulationEngine, Workspace
from hrtem_dataset import pipeline as pl
from hrtem_dataset.errors import InputError

HRTEM = str(Path(sys.executable).with_name("hrtem"))


def _parquet_digests(folder: Path, config: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((folder / "data" / config).glob("*.parquet"))}


def _resources(ws: Path, out: Path) -> dict:
    return {"workspace": Workspace(root=str(ws)), "simulation": SimulationEngine(),
            "publish_target": PublishTarget(local_dir=str(out))}


def test_definitions_load_and_validate(tmp_path):
    cfg = write_tiny_config(tmp_path)
    defs = build_definitions([cfg, REPO / "configs"])
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {f"tiny/{n}" for n in ASSET_NAMES} <= keys
    assert {f"demo/{n}" for n in ASSET_NAMES} <= keys  # configs/demo.yaml has a model section
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert {(f"tiny/{a}", c) for a, cs in CHECKS.items() for c in cs} <= checks
    assets = {a.key.to_user_string(): a for a in build_config_assets(load_config(cfg))}
    for name in PARTITIONED:
        assert assets[f"tiny/{name}"].partitions_def.get_partition_keys() == ["00000", "00001"]
    assert assets["tiny/dataset_splits"].partitions_def is None
    blocking = {spec.name: spec.blocking for a in assets.values() for spec in a.check_specs}
    assert blocking["no_split_leakage"] and blocking["label_coverage"] and blocking["metric_above_floor"]
    assert not blocking["mean_intensity"]
    assert {j.name for j in defs.jobs} >= {"tiny_plan", "tiny_shards", "tiny_publish"}
    assert defs.resolve_job_def("tiny_shards").executor_def.name == "multi_or_in_process_executor"
    # `dagster definitions validate` on the code location (the repo's configs/*.yaml)
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dh")}
    (tmp_path / "dh").mkdir()
    r = subprocess.run([str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-m",
                        "dagster_project"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "All code locations passed validation" in r.stdout + r.stderr
    # the `dg` CLI sees the same project ([tool.dg] in pyproject.toml)
    r = subprocess.run([str(Path(sys.executable).with_name("dg")), "list", "defs", "--json"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    listed = json.loads(r.stdout[r.stdout.index("{"):])
    dg_keys = {a["asset_key"] for a in listed["assets"]}
    assert {f"demo/{n}" for n in ASSET_NAMES} <= dg_keys
    assert {"demo_plan", "demo_shards", "demo_publish"} <= {j["name"] for j in listed["jobs"]}


@pytest.fixture(scope="module")
def whole_graph(tmp_path_factory):
    """`dagster.materialize` of every asset of the tiny configuration (with a model), in the order a
    backfill uses: structure_specs, one run per shard partition, then everything downstream."""
    tmp = tmp_path_factory.mktemp("whole")
    cfg = write_tiny_config(tmp / "cfg")
    assets = build_config_assets(load_config(cfg))
    ws, out = tmp / "ws", tmp / "out"
    instance = dg.DagsterInstance.ephemeral()
    results = [dg.materialize(assets, selection="key:tiny/structure_specs", instance=instance,
                              resources=_resources(ws, out))]
    for part in ("00000", "00001"):
        results.append(dg.materialize(assets, selection=[dg.AssetKey(["tiny", n]) for n in PARTITIONED],
                                      partition_key=part, instance=instance, resources=_resources(ws, out)))
    results.append(dg.materialize(assets, selection=dg.AssetSelection.assets(dg.AssetKey(["tiny", "dataset_splits"]))
                                  .downstream(), instance=instance, resources=_resources(ws, out)))
    return {"tmp": tmp, "cfg": cfg, "ws": ws, "out": out, "results": results, "instance": instance}


def test_materialize_whole_graph(whole_graph):
    import datasets

    results, out, instance = whole_graph["results"], whole_graph["out"], whole_graph["instance"]
    assert all(r.success for r in results)
    for name in ASSET_NAMES:
        assert instance.get_latest_materialization_event(dg.AssetKey(["tiny", name])) is not None, name
    assert instance.get_materialized_partitions(dg.AssetKey(["tiny", "imaged_samples"])) == {"00000", "00001"}
    evaluations = [e for r in results for e in r.get_asset_check_evaluations()]
    assert len(evaluations) == 2 * (1 + 2 + 3) + 2 + 1 and all(e.passed for e in evaluations)
    # metadata: counts, throughput, engine, previews (inline PNG markdown) on the partitioned assets
    shard = results[1]
    mats = {m.asset_key.path[-1]: m.metadata for m in shard.asset_materializations_for_node("tiny__exit_waves")}
    md = mats["exit_waves"]
    assert md["engine"].value == "torch" and md["waves_per_s"].value > 0 and md["spec_hash"].value
    assert md["antialias_transmission"].value is False  # the torch engine's own transmission scheme, recorded
    assert md["preview"].value.count("data:image/png;base64,") == 2
    img_md = shard.asset_materializations_for_node("tiny__imaged_samples")[0].metadata
    assert "Mask overlay" in img_md["preview"].value and img_md["dagster/row_count"].value == 2
    # the published folders: a Hub dataset repo that load_dataset reads, and a Hub model repo
    ds = datasets.load_dataset(str(out / "dataset"), "tiny")
    assert {k: v.num_rows for k, v in ds.items()} == {"train": 2, "validation": 1, "test": 1}
    assert (out / "dataset" / "README.md").read_text().startswith("---")
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "config.json").is_file()
    assert (out / "model" / "evaluation.json").is_file()
    # the published model card reports the held-out test metrics in its model-index
    evaluation = json.loads((out / "model" / "evaluation.json").read_text())
    card = (out / "model" / "README.md").read_text()
    assert evaluation["split"] == "test" and "split: test" in card
    assert f"value: {round(evaluation['metrics']['f1'], 4)}" in card


def test_blocking_check_stops_publication(whole_graph, tmp_path):
    """A model F1 below the floor fails the blocking check: published_model is not materialized.
    Same dataset/model spec (min_f1 is only a check threshold), so every stage reuses the workspace."""
    cfg = write_tiny_config(tmp_path / "cfg")
    text = cfg.read_text().replace("min_f1: 0.0", "min_f1: 1.0")
    assert "min_f1: 1.0" in text
    cfg.write_text(text)
    assets = build_config_assets(load_config(cfg))
    instance = dg.DagsterInstance.ephemeral()
    out = tmp_path / "out"
    res = dg.materialize(assets, selection=dg.AssetSelection.assets(dg.AssetKey(["tiny", "dataset_splits"])).downstream(),
                         instance=instance, resources=_resources(whole_graph["ws"], out), raise_on_error=False)
    assert not res.success
    failed = [e for e in res.get_asset_check_evaluations() if not e.passed]
    assert [(e.check_name, e.asset_key.path[-1]) for e in failed] == [("metric_above_floor", "model_evaluation")]
    trained = res.asset_materializations_for_node("tiny__trained_model")[0].metadata
    assert trained["reused"].value is True  # not retrained
    assert instance.get_latest_materialization_event(dg.AssetKey(["tiny", "published_model"])) is None
    assert not (out / "model").exists()


def test_kill_and_resume_equals_uninterrupted(whole_graph, tmp_path):
    """`hrtem materialize` killed (SIGKILL) after the first shard, rerun: it skips the finished shard and
    the dataset is byte-identical to the one assembled from the uninterrupted run's shards."""
    cfg = write_tiny_config(tmp_path / "cfg", model=False)  # same data as whole_graph, no model
    spec, out = load_config(cfg).spec, tmp_path / "out"
    env = {**os.environ, "HRTEM_HOME": ""}
    first = pl.images_path(spec, 0, out / ".hrtem")
    proc = subprocess.Popen([HRTEM, "materialize", str(cfg), "--out", str(out)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.time()
    while not first.exists() and proc.poll() is None and time.time() - t0 < 240:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists() and not pl.images_path(spec, 1, out / ".hrtem").exists()
    assert not (out / "dataset").exists()
    done = [pl.waves_path(spec, i, out / ".hrtem") for i in (0, 1)]
    mtimes = {p: p.stat().st_mtime_ns for p in done}

    r = subprocess.run([HRTEM, "materialize", str(cfg), "--out", str(out)], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in done} == mtimes  # shard 0 was not recomputed
    assert str(out / "dataset") in r.stdout and " dev --target-path " in r.stdout  # the `dg dev` line
    reference = pl.assemble_dataset(spec, whole_graph["ws"], tmp_path / "reference")["path"]
    assert _parquet_digests(out / "dataset", "tiny") == _parquet_digests(Path(reference), "tiny")
    # the SQLite instance in DIR/.dagster holds the runs for `dagster dev`
    with dg.DagsterInstance.from_config(str(out / ".dagster")) as inst:
        assert inst.get_materialized_partitions(dg.AssetKey(["tiny", "imaged_samples"])) == {"00000", "00001"}

    # a third run finds every shard done
    r = subprocess.run([HRTEM, "materialize", str(cfg), "--out", str(out)], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0 and r.stderr.count("already materialized, skipped") == 2, r.stderr[-2000:]


def test_materialize_bad_config_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsplits: {train: -1}\n")
    r = subprocess.run([HRTEM, "materialize", str(bad), "--out", str(tmp_path / "o")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "splits.train" in r.stderr
    assert not (tmp_path / "o").exists()


def test_dask_executor_local_cluster(tmp_path, monkeypatch):
    """The same jobs on a real distributed.LocalCluster (2 worker processes on loopback) via dagster-dask."""
    from distributed import Client, LocalCluster, get_task_stream

    cfg = write_tiny_config(tmp_path / "cfg", model=False, name="dasktiny", stem="dasktiny")
    ws, out = tmp_path / "ws", tmp_path / "out"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        assert len(cluster.workers) == 2
        monkeypatch.setenv("HRTEM_DASK_ADDRESS", cluster.scheduler_address)
        run_config = {"resources": {"workspace": {"config": {"root": str(ws)}},
                                    "publish_target": {"config": {"local_dir": str(out)}}},
                      "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        home = tmp_path / "dagster_home"
        home.mkdir()
        with dg.DagsterInstance.local_temp(str(home)) as instance, get_task_stream(client) as stream:
            for job, part in (("dasktiny_plan", None), ("dasktiny_shards", "00000"), ("dasktiny_shards", "00001"),
                              ("dasktiny_publish", None)):
                recon = reconstructable_config_job(cfg, job, executor="dask")
                with dg.execute_job(recon, instance=instance, run_config=run_config,
                                    tags={"dagster/partition": part} if part else None) as res:
                    assert res.success, job
        keys = {t["key"] for t in stream.data}
        workers = {t["worker"] for t in stream.data}
    assert {"dasktiny_shards.dasktiny__structures", "dasktiny_shards.dasktiny__imaged_samples",
            "dasktiny_publish.dasktiny__dataset_splits"} <= keys
    assert workers  # the steps ran on the cluster's worker processes
    import datasets

    ds = datasets.load_dataset(str(out / "dataset"), "dasktiny")
    assert {k: v.num_rows for k, v in ds.items()} == {"train": 2, "validation": 1, "test": 1}


def test_multiprocess_executor_default(tmp_path):
    """The default executor runs each step of a shard partition in its own process (the job is rebuilt
    from the YAML path in every step process)."""
    cfg = write_tiny_config(tmp_path / "cfg", model=False, name="mp", stem="mp", train=1, validation=0, test=1,
                            shard_size=1)
    ws = tmp_path / "ws"
    run_config = {"resources": {"workspace": {"config": {"root": str(ws)}}},
                  "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        for job, part in (("mp_plan", None), ("mp_shards", "00001")):
            with dg.execute_job(reconstructable_config_job(cfg, job), instance=instance, run_config=run_config,
                                tags={"dagster/partition": part} if part else None) as res:
                assert res.success, job
                workers = [e for e in res.all_events if e.event_type_value == "STEP_WORKER_STARTED"]
                pids = {e.pid for e in res.all_events if e.event_type_value == "STEP_START"}
        assert len(workers) == 3 and len(pids) == 3  # structures, exit_waves, imaged_samples: 3 processes
        assert os.getpid() not in pids
    spec = load_config(cfg).spec
    assert pl.images_path(spec, 1, ws).exists() and not pl.images_path(spec, 0, ws).exists()


def test_a_broken_yaml_in_the_configs_folder_does_not_hide_the_others(tmp_path):
    folder = tmp_path / "configs"
    write_tiny_config(folder)
    (folder / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.warns(UserWarning, match="broken.yaml"):
        defs = build_definitions([folder])
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {f"tiny/{n}" for n in PARTITIONED} <= keys
    with pytest.raises(InputError, match="broken.yaml"):  # named explicitly: an error, not a warning
        build_definitions([folder / "broken.yaml"])


def test_dataset_splits_refuses_shards_that_failed_a_blocking_check(tmp_path):
    """A shard whose blocking check failed is still 'materialized'; a later run that skips it must not
    package it: dataset_splits re-checks every shard and fails before writing anything."""
    import yaml

    cfg = write_tiny_config(tmp_path / "cfg", stem="badlabels")
    data = yaml.safe_load(cfg.read_text())
    data["labels"] = {"threshold": 3.1, "blur": 1.0}
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    assets = build_config_assets(load_config(cfg))
    instance = dg.DagsterInstance.ephemeral()
    res_kw = {"instance": instance, "resources": _resources(tmp_path / "ws", tmp_path / "out"), "raise_on_error": False}
    g = "badlabels"
    assert dg.materialize(assets, selection=[dg.AssetKey([g, "structure_specs"])], **res_kw).success
    shard = [dg.AssetKey([g, n]) for n in PARTITIONED]
    for part in ("00000", "00001"):
        res = dg.materialize(assets, selection=shard, partition_key=part, **res_kw)
        failed = [e.check_name for e in res.get_asset_check_evaluations() if not e.passed]
        assert "label_coverage" in failed  # every mask is empty at a threshold of 3.1 rad
    res = dg.materialize(assets, selection=[dg.AssetKey([g, "dataset_splits"])], **res_kw)
    assert not res.success
    assert instance.get_latest_materialization_event(dg.AssetKey([g, "dataset_splits"])) is None
    assert not list((tmp_path / "ws").rglob("*.parquet"))
