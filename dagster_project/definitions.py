"""Dagster definitions: one asset group per dataset configuration YAML and one per study YAML
(``configs/studies/*.yaml`` or ``$HRTEM_STUDIES``; see :mod:`dagster_project.studies`).

Load with ``dagster dev -m dagster_project`` (or ``dagster definitions validate -m dagster_project``).
Which YAMLs: ``$HRTEM_CONFIGS`` (files or folders, ``os.pathsep``-separated), else ``./configs``, else the
``configs/`` folder of the source checkout. Environment knobs (all optional):

- ``HRTEM_HOME`` workspace root; ``HRTEM_ENGINE`` / ``HRTEM_DEVICE`` simulation engine and device;
- ``HRTEM_PUBLISH_DIR``, ``HRTEM_DATASET_REPO_ID``, ``HRTEM_MODEL_REPO_ID``, ``HF_TOKEN`` publishing;
- ``HRTEM_EXECUTOR``: ``multiprocess`` (default; ``execution: {config: {in_process: {}}}`` in run config
  switches a run to in-process), ``in_process`` or ``dask`` (dagster-dask: ``HRTEM_DASK_ADDRESS`` of an
  existing scheduler, else a ``LocalCluster`` of ``HRTEM_DASK_WORKERS`` processes). On Kubernetes, use
  dagster-k8s's ``k8s_job_executor`` (one pod per step) or the ``K8sRunLauncher`` instead: the assets
  need nothing else, partitions are independent units of work.

Jobs per group ``g``: ``g_plan`` (structure_specs), ``g_shards`` (structures → exit_waves → imaged_samples,
one run per shard partition; a backfill runs them in parallel) and ``g_publish`` (dataset_splits and
everything downstream). "Materialize all" on the group in the UI launches the same as one backfill.
The multislice steps share the concurrency pool ``hrtem_simulation``
(``dagster instance concurrency set hrtem_simulation 1`` keeps one simulation on a single GPU at a time);
with dagster-dask the pool is left out (dagster-dask cannot ship runs that carry pool records).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from hrtem_dataset.errors import InputError
from hrtem_dataset.settings import get_settings

from .assets import PARTITIONED, SIMULATION_POOL, DatasetConfigSource, build_config_assets, discover_configs
from .resources import default_resources
from .studies import build_study_assets, default_study_paths, discover_studies
from .validation import build_validation_assets, validation_job

EXECUTORS = ("multiprocess", "in_process", "dask")


def default_config_paths() -> list[Path]:
    env = get_settings().configs
    if env:
        return get_settings().paths(env)
    for cand in (Path.cwd() / "configs", Path(__file__).resolve().parent.parent / "configs"):
        if cand.is_dir():
            return [cand]
    return []


def executor_for(name: str | None = None) -> dg.ExecutorDefinition:
    """The executor named ``name`` (default ``$HRTEM_EXECUTOR`` or ``multiprocess``)."""
    name = name or get_settings().executor
    if name == "multiprocess":
        return dg.multi_or_in_process_executor
    if name == "in_process":
        return dg.in_process_executor
    if name == "dask":
        from dagster_dask import dask_executor

        address = get_settings().dask_address
        if address:
            return dask_executor.configured({"cluster": {"existing": {"address": address}}}, name="dask")
        workers = get_settings().dask_workers
        return dask_executor.configured({"cluster": {"local": {"n_workers": workers, "processes": True}}},
                                        name="dask")
    raise InputError(f"HRTEM_EXECUTOR: unknown executor {name!r} (expected one of {', '.join(EXECUTORS)})")


def group_jobs(src: DatasetConfigSource) -> list[dg.UnresolvedAssetJobDefinition]:
    g = src.group
    shards = dg.AssetSelection.assets(*[dg.AssetKey([g, n]) for n in PARTITIONED])
    plan = dg.AssetSelection.assets(dg.AssetKey([g, "structure_specs"]))
    publish = dg.AssetSelection.assets(dg.AssetKey([g, "dataset_splits"])).downstream()
    return [
        dg.define_asset_job(f"{g}_plan", selection=plan,
                            description=f"{src.spec.name}/{src.spec.config_name}: concrete structure specs"),
        dg.define_asset_job(f"{g}_shards", selection=shards,
                            description=f"{src.spec.name}/{src.spec.config_name}: one shard of structures, "
                                        f"exit waves and imaged samples per run (partition)"),
        dg.define_asset_job(f"{g}_publish", selection=publish,
                            description=f"{src.spec.name}/{src.spec.config_name}: dataset splits, model, "
                                        f"publishing"),
    ]


def build_definitions(config_paths: Sequence[str | Path] | None = None, executor: str | None = None,
                      resources: dict | None = None,
                      study_paths: Sequence[str | Path] | None = None) -> dg.Definitions:
    """Definitions for the dataset configurations at ``config_paths`` (files or folders of YAML) and the
    studies at ``study_paths`` (default ``$HRTEM_STUDIES``, else ``configs/studies``; only when
    ``config_paths`` is not given explicitly, so a chosen configuration loads alone)."""
    sources = discover_configs(list(config_paths) if config_paths is not None else default_config_paths())
    executor = executor or get_settings().executor
    pool = None if executor == "dask" else SIMULATION_POOL
    assets, jobs = [], []
    for src in sources:
        assets.extend(build_config_assets(src, simulation_pool=pool))
        assets.extend(build_validation_assets(src))
        jobs.extend([*group_jobs(src), validation_job(src)])
    if study_paths is None and (config_paths is None or get_settings().studies):
        study_paths = default_study_paths()
    groups = {src.group for src in sources}
    for study in discover_studies(list(study_paths or [])):
        if study.group in groups:
            raise InputError(f"{study.path}: study group {study.group!r} collides with a dataset configuration")
        assets.extend(build_study_assets(study))
    return dg.Definitions(assets=assets, jobs=jobs, resources={**default_resources(), **(resources or {})},
                          executor=executor_for(executor))


def config_job(config_path: str, job_name: str, executor: str | None = None) -> dg.JobDefinition:
    """One job of one configuration; the reconstructor used by :func:`reconstructable_config_job`."""
    return build_definitions([config_path], executor=executor).resolve_job_def(job_name)


def reconstructable_config_job(config_path: str | Path, job_name: str, executor: str | None = None):
    """A job that other processes (multiprocess steps, Dask workers) can rebuild from the YAML path."""
    return dg.build_reconstructable_job("dagster_project.definitions", "config_job",
                                        reconstructable_args=(str(Path(config_path).resolve()), job_name, executor))


@dg.definitions
def defs() -> dg.Definitions:
    """The code location: every ``configs/*.yaml`` (see the module docstring)."""
    return build_definitions()
