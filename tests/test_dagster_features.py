"""What the README promises of the Dagster project, through real materializations of a tiny configuration
(2 structures of 28 Å in one shard): `force: true`, staleness after a YAML edit, the HRTEM_ENGINE /
HRTEM_DEVICE overrides, the simulation concurrency pool, the auto-started Dask cluster, and every blocking
check failing inside Dagster (on workspace files corrupted between two runs, which the next run reuses and
checks) and stopping what is downstream of it."""

from __future__ import annotations

import json
import os

import dagster as dg
import numpy as np
import pytest
import yaml
from dagster_helpers import isolated_hf_datasets_cache, tiny_spec_dict  # noqa: F401 (autouse fixture)

from dagster_project.assets import PARTITIONED, SIMULATION_POOL, build_config_assets, load_config
from dagster_project.definitions import build_definitions, reconstructable_config_job
from dagster_project.resources import PublishTarget, SimulationEngine, Workspace
from hrtem_dataset import pipeline as pl

G = "feat"


def _config(folder, **kw):
    d = tiny_spec_dict(model=False, name=G, train=1, validation=0, test=1, shard_size=2, **kw)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{G}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def _resources(ws, out, **sim) -> dict:
    return {"workspace": Workspace(root=str(ws)), "simulation": SimulationEngine(**sim),
            "publish_target": PublishTarget(local_dir=str(out))}


def _key(name):
    return dg.AssetKey([G, name])


def _shard(assets, instance, ws, out, run_config=None, **kw):
    return dg.materialize(assets, selection=[_key(n) for n in PARTITIONED], partition_key="00000",
                          instance=instance, resources=_resources(ws, out), run_config=run_config, **kw)


def _meta(res, name):
    return res.asset_materializations_for_node(f"{G}__{name}")[0].metadata


def _failed_checks(res):
    return sorted((e.asset_key.path[-1], e.check_name) for e in res.get_asset_check_evaluations() if not e.passed)


@pytest.fixture
def built(tmp_path):
    """The configuration materialized once: plan + the shard (structures, exit waves, images)."""
    cfg = _config(tmp_path / "cfg")
    assets = build_config_assets(load_config(cfg))
    ws, out = tmp_path / "ws", tmp_path / "out"
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize(assets, selection=[_key("structure_specs")], instance=instance,
                          resources=_resources(ws, out)).success
    res = _shard(assets, instance, ws, out)
    assert res.success and not _failed_checks(res)
    return {"cfg": cfg, "assets": assets, "ws": ws, "out": out, "instance": instance,
            "spec": load_config(cfg).spec}


def test_force_true_recomputes_existing_files(built):
    b = built
    spec, ws = b["spec"], b["ws"]
    files = [pl.structure_path(spec, 0, ws), pl.waves_path(spec, 0, ws), pl.images_path(spec, 0, ws)]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    again = _shard(b["assets"], b["instance"], ws, b["out"])
    assert again.success
    for name in PARTITIONED:  # the files exist: reused, nothing recomputed
        md = _meta(again, name)
        assert md["computed"].value == 0 and md["reused"].value >= 1, name
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before
    force = {"ops": {f"{G}__{n}": {"config": {"force": True}} for n in PARTITIONED}}
    forced = _shard(b["assets"], b["instance"], ws, b["out"], run_config=force)
    assert forced.success
    md = {n: _meta(forced, n) for n in PARTITIONED}
    assert md["structures"]["computed"].value == 2 and md["exit_waves"]["computed"].value == 2
    assert md["imaged_samples"]["computed"].value == 1
    for p in files:  # rewritten, with the same bytes (seeds derive from the spec)
        assert p.stat().st_mtime_ns > before[p][0], p.name
        assert p.read_bytes() == before[p][1] or p.suffix == ".npz", p.name
    w_old = np.load(pl.waves_path(spec, 0, ws))  # npz: compare the arrays (zip timestamps may differ)
    assert np.array_equal(w_old["scene"], pl.load_waves(spec, 0, ws)["scene"])


def test_yaml_edit_marks_assets_stale(built):
    """Code versions are spec hashes: an imaging edit makes imaged_samples (and below) stale, not the
    structures or exit waves; a structure edit makes everything from structures on stale."""
    # the resolver behind the UI's "stale" badges (internal API: no public one exists)
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    b = built

    def status(cfg):
        defs = dg.Definitions(assets=build_config_assets(load_config(cfg)), resources=_resources(b["ws"], b["out"]))
        resolver = CachingStaleStatusResolver(b["instance"], defs.resolve_asset_graph(),
                                              LoadingContextForTest(b["instance"]))
        return {n: resolver.get_status(_key(n), "00000") for n in PARTITIONED}

    assert set(status(b["cfg"]).values()) == {StaleStatus.FRESH}
    data = yaml.safe_load(b["cfg"].read_text())
    data["imaging"]["dose"] = 2000.0
    b["cfg"].write_text(yaml.safe_dump(data, sort_keys=False))
    s = status(b["cfg"])
    assert s["structures"] == s["exit_waves"] == StaleStatus.FRESH and s["imaged_samples"] == StaleStatus.STALE
    data["structures"]["vacuum"] = 5.0
    b["cfg"].write_text(yaml.safe_dump(data, sort_keys=False))
    assert set(status(b["cfg"]).values()) == {StaleStatus.STALE}


@pytest.mark.abtem
def test_hrtem_engine_and_device_environment_override_the_spec(tmp_path, monkeypatch):
    """The spec says torch; HRTEM_ENGINE=abtem in the environment of the code location makes the
    exit_waves step run abTEM (recorded in the metadata and in the wave files)."""
    cfg = _config(tmp_path / "cfg")
    ws = tmp_path / "ws"
    monkeypatch.setenv("HRTEM_HOME", str(ws))
    monkeypatch.setenv("HRTEM_ENGINE", "abtem")
    monkeypatch.setenv("HRTEM_DEVICE", "cpu")
    monkeypatch.delenv("HRTEM_EXECUTOR", raising=False)
    defs = build_definitions([cfg])
    instance = dg.DagsterInstance.ephemeral()
    assert defs.resolve_job_def(f"{G}_plan").execute_in_process(instance=instance).success
    res = defs.resolve_job_def(f"{G}_shards").execute_in_process(instance=instance, partition_key="00000")
    assert res.success
    md = res.asset_materializations_for_node(f"{G}__exit_waves")[0].metadata
    assert md["engine"].value == "abtem" and md["device"].value == "cpu"
    spec = load_config(cfg).spec
    assert spec.simulation.engine == "torch" and pl.load_waves(spec, 0, ws)["engine"] == "abtem"


def test_multislice_steps_share_the_concurrency_pool(tmp_path, monkeypatch):
    """exit_waves is in the `hrtem_simulation` pool (not under dagster-dask); a run on an instance
    limiting the pool to one slot claims and frees that slot."""
    monkeypatch.delenv("HRTEM_EXECUTOR", raising=False)
    cfg = _config(tmp_path / "cfg")
    graph = build_definitions([cfg]).resolve_asset_graph()
    pools = {n: graph.get(_key(n)).pools for n in PARTITIONED}
    assert pools == {"structures": set(), "exit_waves": {SIMULATION_POOL}, "imaged_samples": set()}
    dask_graph = build_definitions([cfg], executor="dask").resolve_asset_graph()
    assert dask_graph.get(_key("exit_waves")).pools == set()

    home = tmp_path / "dagster_home"
    home.mkdir()
    run_config = {"resources": {"workspace": {"config": {"root": str(tmp_path / "ws")}}},
                  "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        instance.event_log_storage.set_concurrency_slots(SIMULATION_POOL, 1)
        for job, part in ((f"{G}_plan", None), (f"{G}_shards", "00000")):
            with dg.execute_job(reconstructable_config_job(cfg, job), instance=instance, run_config=run_config,
                                tags={"dagster/partition": part} if part else None) as res:
                assert res.success, job
                if part:
                    claimed = [e for e in res.all_events if e.event_type_value == "STEP_START"
                               and e.step_key == f"{G}__exit_waves"]
                    assert claimed
        info = instance.event_log_storage.get_concurrency_info(SIMULATION_POOL)
        assert info.slot_count == 1 and info.active_slot_count == 0 and info.pending_step_count == 0
        keys = instance.event_log_storage.get_concurrency_keys()
        assert SIMULATION_POOL in keys


def test_dask_executor_starts_its_own_local_cluster(tmp_path, monkeypatch):
    """HRTEM_EXECUTOR=dask without HRTEM_DASK_ADDRESS: dagster-dask starts a LocalCluster of
    HRTEM_DASK_WORKERS processes and the steps run there (not in this process)."""
    monkeypatch.setenv("HRTEM_EXECUTOR", "dask")
    monkeypatch.delenv("HRTEM_DASK_ADDRESS", raising=False)
    monkeypatch.setenv("HRTEM_DASK_WORKERS", "1")
    cfg = _config(tmp_path / "cfg")
    assert build_definitions([cfg]).resolve_job_def(f"{G}_plan").executor_def.name == "dask"
    home = tmp_path / "dagster_home"
    home.mkdir()
    ws = tmp_path / "ws"
    run_config = {"resources": {"workspace": {"config": {"root": str(ws)}}},
                  "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        with dg.execute_job(reconstructable_config_job(cfg, f"{G}_plan"), instance=instance,
                            run_config=run_config) as res:
            assert res.success
            pids = {e.pid for e in res.all_events if e.event_type_value == "STEP_START"}
    assert pids and os.getpid() not in pids
    spec = load_config(cfg).spec
    rows = [json.loads(x) for x in (pl.config_dir(spec, ws) / "structure_specs.jsonl").read_text().splitlines()]
    assert len(rows) == 2


# ---------------------------------------------------------------- blocking checks fail inside Dagster


def _rewrite_npz(path, **changes):
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    data.update(changes)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **data)


def test_atoms_valid_fails_and_blocks_the_exit_waves(built):
    b = built
    spec, ws = b["spec"], b["ws"]
    from hrtem_dataset.structures import read_extxyz, write_extxyz

    p = pl.structure_path(spec, 1, ws)
    atoms = read_extxyz(p)
    atoms.positions[:5, 2] = atoms.cell[2, 2] + 7.0  # atoms above the sliced slab
    write_extxyz(atoms, p)
    wave_file = pl.waves_path(spec, 1, ws)
    wave_file.unlink()  # would be recomputed if the run went on
    res = _shard(b["assets"], b["instance"], ws, b["out"], raise_on_error=False)
    assert not res.success
    assert _failed_checks(res) == [("structures", "atoms_valid")]
    ev = next(e for e in res.get_asset_check_evaluations() if e.check_name == "atoms_valid")
    assert pl.structure_id(spec, 1) in ev.metadata["description"].value
    assert not res.asset_materializations_for_node(f"{G}__exit_waves") and not wave_file.exists()


@pytest.mark.parametrize("corruption,failing", [
    ("nan", [("exit_waves", "no_nan_inf"), ("exit_waves", "vacuum_intensity")]),
    ("vacuum", [("exit_waves", "vacuum_intensity")]),
])
def test_exit_wave_checks_fail_and_block_the_images(built, corruption, failing):
    b = built
    spec, ws = b["spec"], b["ws"]
    p = pl.waves_path(spec, 0, ws)
    with np.load(p) as z:
        particles = z["particles"].copy()
        scene = z["scene"].copy()
    if corruption == "nan":
        scene[0, 3, 3] = np.nan
        _rewrite_npz(p, scene=scene)
    else:  # the particle-only wave loses 10 % of its intensity in vacuum
        _rewrite_npz(p, particles=(particles * np.float32(0.95)).astype(np.complex64))
    pl.images_path(spec, 0, ws).unlink()
    res = _shard(b["assets"], b["instance"], ws, b["out"], raise_on_error=False)
    assert not res.success
    assert _failed_checks(res) == sorted(failing)
    assert not res.asset_materializations_for_node(f"{G}__imaged_samples")
    assert not pl.images_path(spec, 0, ws).exists()


def _publish(b):
    sel = dg.AssetSelection.assets(_key("dataset_splits")).downstream()
    return dg.materialize(b["assets"], selection=sel, instance=b["instance"],
                          resources=_resources(b["ws"], b["out"]), raise_on_error=False)


def _image_rows(spec, ws):
    path = pl.images_path(spec, 0, ws)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    return path, json.loads(str(arrays.pop("rows"))), arrays


def test_row_counts_check_fails_and_blocks_publication(built):
    b = built
    spec, ws = b["spec"], b["ws"]
    path, rows, arrays = _image_rows(spec, ws)
    assert [r["split"] for r in rows] == ["train", "test"]
    keep = {k: v for k, v in arrays.items() if k.endswith("_0")}  # drop the test image
    with open(path, "wb") as fh:
        np.savez_compressed(fh, rows=np.str_(json.dumps(rows[:1], sort_keys=True)), **keep)
    res = _publish(b)
    assert not res.success
    assert _failed_checks(res) == [("dataset_splits", "row_counts_match_spec")]
    assert not res.asset_materializations_for_node(f"{G}__published_dataset")
    assert not (b["out"] / "dataset").exists()


def test_split_leakage_is_refused_inside_dagster(built):
    """The train structure's image is also labelled test: the structure would be in two splits. The
    dataset writer refuses it inside dataset_splits (before the no_split_leakage check, which reads the
    written folder, could see it), so the run fails and nothing is written or published."""
    b = built
    spec, ws = b["spec"], b["ws"]
    path, rows, arrays = _image_rows(spec, ws)
    leak = {**rows[0], "split": "test", "sample_id": rows[0]["sample_id"][:-3] + "001"}
    extra = {f"{k[:-2]}_2": v for k, v in arrays.items() if k.endswith("_0")}
    with open(path, "wb") as fh:
        np.savez_compressed(fh, rows=np.str_(json.dumps(rows + [leak], sort_keys=True)), **arrays, **extra)
    res = _publish(b)
    assert not res.success
    failures = [e.step_failure_data.error for e in res.get_step_failure_events()]
    text = " ".join(str(err.message) + str(err.cause.message if err.cause else "") for err in failures)
    assert f"structure '{pl.structure_id(spec, 0)}' is already in split 'train'" in text, text
    assert b["instance"].get_latest_materialization_event(_key("dataset_splits")) is None
    assert not (b["out"] / "dataset").exists() and not list(ws.rglob("*.parquet"))
