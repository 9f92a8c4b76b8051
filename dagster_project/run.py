"""Run a configuration's whole asset graph in process on a persistent local Dagster instance.

Used by ``hrtem materialize CONFIG.yaml --out DIR``. The instance is a regular SQLite instance in
``DIR/.dagster`` (the layout of a ``DAGSTER_HOME``), so the runs, materializations, check results and
preview metadata can be browsed afterwards with ``DAGSTER_HOME=DIR/.dagster dagster dev``.

Order of runs (what a backfill of the group does in the UI): ``structure_specs``; then one run per shard
partition (``structures`` → ``exit_waves`` → ``imaged_samples``); then ``dataset_splits`` and everything
downstream of it. Resuming: a shard whose ``imaged_samples`` partition is materialized in the instance and
whose imaged file is complete for the current spec is not run again; inside a run, every stage reuses the
per-structure files that already exist (all artifacts are written atomically).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
from filelock import FileLock, Timeout

from hrtem_dataset import progress
from hrtem_dataset.errors import InputError
from hrtem_dataset.settings import get_settings
from hrtem_dataset.workspace import images_shard_current, simulation_settings

from .assets import PARTITIONED, build_config_assets, load_config, shard_keys
from .resources import PublishTarget, SimulationEngine, Workspace

QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
"""The console shows one line per run; the full event logs stay in the instance (``dagster dev``)."""


def _unwrap(exc: BaseException) -> BaseException:
    """The user exception inside Dagster's step-execution wrappers (so InputError keeps exit code 2)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "user_exception", None) or exc.__cause__
        if inner is None:
            break
        exc = inner
    return exc


def _shard_done(instance: dg.DagsterInstance, key: dg.AssetKey, spec, shard: int, partition: str, root: Path) -> bool:
    return partition in instance.get_materialized_partitions(key) and images_shard_current(spec, shard, root)


def materialize_config(config: str | Path, out_dir: str | Path, *, workspace: str | Path | None = None,
                       engine: str | None = None, device: str | None = None,
                       echo: Callable[[str], None] = print) -> dict:
    """Materialize every asset of ``config`` in process; the dataset goes to ``out_dir/dataset`` and the
    model (when the spec has a ``model`` section) to ``out_dir/model``. Returns a summary dict.

    Bad input raises :class:`InputError` before anything is written; a failed step or blocking asset
    check raises (the user's InputError as is, anything else as RuntimeError naming the asset).
    """
    src = load_config(config)
    spec = src.spec
    out = Path(out_dir).resolve()
    root = get_settings().workspace(workspace, default=out / ".hrtem")
    simulation_settings(spec, engine, device)  # validate overrides before writing anything
    assets = build_config_assets(src)
    resources = {"workspace": Workspace(root=str(root)),
                 "simulation": SimulationEngine(engine=engine, device=device),
                 "publish_target": PublishTarget(local_dir=str(out))}
    out_new, home_new = not out.exists(), not (out / ".dagster").exists()
    out.mkdir(parents=True, exist_ok=True)
    remove_out = False
    try:
        with _single_writer(out):
            try:
                return _materialize(src, spec, out, root, assets, resources, echo)
            except InputError:  # a user error: leave nothing behind that was not there before
                if home_new:  # (a failed step, RuntimeError, keeps the instance: its logs are the diagnosis)
                    shutil.rmtree(out / ".dagster", ignore_errors=True)
                if out_new:
                    for child in out.iterdir():
                        if child.name != LOCK_NAME:
                            shutil.rmtree(child) if child.is_dir() else child.unlink()
                    remove_out = True
                raise
    finally:
        if remove_out:  # after the lock is released; rmdir fails (and keeps it) if anything new appeared
            with contextlib.suppress(OSError):
                (out / LOCK_NAME).unlink()
                out.rmdir()


LOCK_NAME = ".hrtem-materialize.lock"


@contextlib.contextmanager
def _single_writer(out: Path):
    """One ``hrtem materialize`` per output folder: a second writer exits with one line instead of
    interleaving its files with the first's (an OS file lock, released when the process ends)."""
    lock = FileLock(str(out / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise InputError(f"--out {out}: another `hrtem materialize` is writing to this folder "
                         "(wait for it to finish, or use another --out)") from None
    try:
        yield
    finally:
        lock.release()


def _materialize(src, spec, out: Path, root: Path, assets, resources, echo) -> dict:
    g = src.group
    t_start = time.perf_counter()
    summary: dict = {"config": str(src.path), "group": g, "config_name": spec.config_name, "dataset": str(out / "dataset"), "workspace": str(root),
                     "dagster_home": str(out / ".dagster"), "shards_run": [], "shards_skipped": []}
    home = out / ".dagster"
    home.mkdir(exist_ok=True)
    if not (home / "dagster.yaml").exists():  # a DAGSTER_HOME for `dagster dev` later; no telemetry
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as instance:

        def run(selection, partition: str | None = None, label: str = "") -> dg.ExecuteInProcessResult:
            t0 = time.perf_counter()
            try:
                with progress.stage(label, log=False):  # a spinner row on stderr while the stage runs (`hrtem materialize`)
                    res = dg.materialize(assets, selection=selection, partition_key=partition, instance=instance,
                                         resources=resources, run_config=QUIET_LOGS,
                                         tags={"hrtem/config": g, "hrtem/source": "hrtem materialize"})
            except Exception as exc:  # noqa: BLE001 - re-raised as the user error or one RuntimeError
                inner = _unwrap(exc)
                if isinstance(inner, InputError):
                    raise inner from None
                raise RuntimeError(f"{label or selection}: {type(inner).__name__}: {inner} (full logs: "
                                   f"DAGSTER_HOME={home} dg dev, in the project folder)") from exc
            echo(f"  {label}: done in {time.perf_counter() - t0:.1f} s (run {res.run_id[:8]})")
            return res

        echo(f"materializing {spec.name} {spec.version} / {spec.config_name}: {spec.n_structures} structures "
             f"in {spec.n_shards} shards (group {g})")
        run([dg.AssetKey([g, "structure_specs"])], label="structure_specs")
        images_key = dg.AssetKey([g, "imaged_samples"])
        shards = progress.bar(spec.n_shards, desc="shards", disable=not progress.enabled())
        for shard, part in enumerate(shard_keys(spec)):
            if _shard_done(instance, images_key, spec, shard, part, root):
                echo(f"  shard {part}: already materialized, skipped")
                summary["shards_skipped"].append(part)
                shards.update(1)
                continue
            run([dg.AssetKey([g, n]) for n in PARTITIONED], partition=part,
                label=f"shard {part} (structures, exit_waves, imaged_samples)")
            summary["shards_run"].append(part)
            shards.update(1)
        shards.close()
        downstream = dg.AssetSelection.assets(dg.AssetKey([g, "dataset_splits"])).downstream()
        res = run(downstream, label="dataset_splits and downstream")
        for ev in res.get_asset_check_evaluations():
            if not ev.passed:
                echo(f"  warning: check {ev.asset_key.to_user_string()}:{ev.check_name} failed")
    summary["seconds"] = time.perf_counter() - t_start
    if (out / "model" / "config.json").is_file():
        summary["model"] = str(out / "model")
    return summary
