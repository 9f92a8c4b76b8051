"""Asset factory: one asset group per dataset configuration (``configs/*.yaml``), one asset per stage.

Why a factory (and not one asset set with the YAML path in run config, or config × shard partitions):
each YAML is a separately versioned dataset configuration with its own number of shards, its own
artifacts and its own materialization history. One group per YAML gives every configuration exactly its
shard partitions (a ``MultiPartitionsDefinition`` config × shard would be a ragged cross product), keeps
lineage and history per configuration (run config on a shared asset key would interleave the history of
different datasets under one key), and lets the UI mark a configuration stale when its YAML changes (the
code version of each asset is the fingerprint of its stage, :func:`hrtem_dataset.workspace.code_versions`,
the same hash that decides whether a workspace folder is stale). A configuration is picked at launch time
by selecting its group (or its jobs ``<group>_shards`` / ``<group>_publish``); adding a YAML and reloading
the code location adds a group. Per-run knobs stay in run config (:class:`StageConfig`) and resources
(workspace, engine/device, publishing target).

Graph of one group ``g`` (asset keys ``g/<name>``)::

    structure_specs → structures → exit_waves → imaged_samples → dataset_splits → published_dataset
                      (partitioned by shard ────────────────────)  dataset_splits → trained_model
                                                                   → model_evaluation → published_model

The assets are a loop over the stage objects (:data:`hrtem_dataset.stages.DATASET_STAGES`,
:data:`models.stage.MODEL_STAGES`): each asset runs ``stage.materialize`` and translates its
:class:`~hrtem_dataset.stages.StageResult` into Dagster metadata and check results. What a stage computes,
where it writes, its checks and their tolerances live in its stage module, not here.
"""


import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    StaticPartitionsDefinition,
    asset,
)
from pydantic import Field

from hrtem_dataset import previews
from hrtem_dataset.errors import InputError
from hrtem_dataset.progress import enabled as progress_enabled
from hrtem_dataset.specs import DatasetSpec, load_spec
from hrtem_dataset.stages import DATASET_STAGES, PublishOptions, RunContext, Stage, StageFailure, StageResult
from hrtem_dataset.workspace import code_versions as stage_code_versions
from models.stage import MODEL_STAGES

from .resources import PublishTarget, SimulationEngine, Workspace

STAGES: tuple[Stage, ...] = (*DATASET_STAGES, *MODEL_STAGES)
ASSET_NAMES = tuple(s.name for s in STAGES)
PARTITIONED = tuple(s.name for s in STAGES if s.partitioned)
CHECKS = {s.name: tuple(c.name for c in s.checks) for s in STAGES if s.checks}
"""Asset checks per asset (blocking or not: :attr:`hrtem_dataset.stages.CheckSpec.blocking`)."""

SIMULATION_POOL = "hrtem_simulation"
"""Concurrency pool of the multislice steps: ``dagster instance concurrency set hrtem_simulation 1``
serialises them on a single GPU while a backfill runs the other stages of many shards in parallel."""


class StageConfig(Config):
    """Run config of the stage assets."""

    force: bool = Field(False, description="recompute outputs that already exist in the workspace")


@dataclass(frozen=True)
class Source:
    """A YAML (dataset configuration or study) and its asset group: the file stem, made an identifier."""

    group: str
    path: Path

    @staticmethod
    def locate(path: str | Path) -> tuple[str, Path]:
        """(group, resolved path) of a YAML."""
        p = Path(path).resolve()
        return group_name_for(p), p


@dataclass(frozen=True)
class DatasetConfigSource(Source):
    """A dataset configuration YAML and the asset group built from it."""

    spec: DatasetSpec


def group_name_for(path: str | Path) -> str:
    """Asset group / key prefix of a YAML: its file stem with non-identifier characters as ``_``."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", Path(path).stem)
    return stem if stem[:1].isalpha() else f"c_{stem}"


def load_config(path: str | Path) -> DatasetConfigSource:
    """Load and validate one dataset configuration (:class:`InputError` naming the file/field)."""
    group, p = Source.locate(path)
    return DatasetConfigSource(group, p, load_spec(p, DatasetSpec))


def shard_keys(spec: DatasetSpec) -> list[str]:
    """Partition keys of a configuration: ``"00000"`` … (shard index, zero padded)."""
    width = max(5, len(str(spec.n_shards - 1)))
    return [f"{i:0{width}d}" for i in range(spec.n_shards)]


def code_versions(spec: DatasetSpec) -> dict[str, str]:
    """Code version of each asset: the package version + the fingerprint of its stage."""
    return stage_code_versions(spec, {s.name: s.fingerprint for s in STAGES})


# --------------------------------------------------------------------------------------------------
# StageResult -> Dagster metadata and check results
# --------------------------------------------------------------------------------------------------


def metadata_value(v) -> MetadataValue:
    """A plain value as Dagster metadata; NaN/inf floats (no data) become text."""
    if isinstance(v, bool):
        return MetadataValue.bool(v)
    if isinstance(v, int):
        return MetadataValue.int(v)
    if isinstance(v, float):
        return MetadataValue.float(float(f"{v:.6g}")) if math.isfinite(v) else MetadataValue.text(str(v))
    if isinstance(v, dict | list | tuple):
        return MetadataValue.json(v)
    return MetadataValue.text(str(v))


def stats_metadata(stats: dict) -> dict:
    """Metadata of a stats dict (``shard`` and None values left out)."""
    return {k: metadata_value(v) for k, v in stats.items() if k != "shard" and v is not None}


def _metadata(res: StageResult) -> dict:
    meta = {}
    if res.previews:
        pngs = {title: Path(p).read_bytes() for title, p in res.previews.items()}
        meta["preview"] = MetadataValue.md(previews.markdown_images(pngs))
        for title, p in res.previews.items():
            meta[f"preview_{title.lower().replace(' ', '_')}_png"] = MetadataValue.path(str(p))
    meta.update(stats_metadata({**res.stats, **res.metadata}))
    if res.path:
        meta["path"] = MetadataValue.path(res.path)
    if res.row_count is not None:
        meta["dagster/row_count"] = MetadataValue.int(res.row_count)
    if res.url:
        meta["url"] = MetadataValue.url(res.url)
    return meta


def _result(key: AssetKey, res: StageResult) -> MaterializeResult:
    checks = [AssetCheckResult(asset_key=key, check_name=c.name, passed=c.passed,
                               severity=AssetCheckSeverity.WARN if c.warn else AssetCheckSeverity.ERROR,
                               metadata={"description": MetadataValue.text(c.description),
                                         **{k: metadata_value(v) for k, v in c.values.items()}})
              for c in res.checks]
    return MaterializeResult(metadata=_metadata(res), check_results=checks)


# --------------------------------------------------------------------------------------------------
# The factory
# --------------------------------------------------------------------------------------------------


def _stage_asset(stage: Stage, src: DatasetConfigSource, partitions, versions: dict, common_meta: dict,
                 simulation_pool: str | None) -> AssetsDefinition:
    spec, g = src.spec, src.group
    key = AssetKey([g, stage.name])

    @asset(key=key, deps=[AssetKey([g, d]) for d in stage.deps], group_name=g,
           partitions_def=partitions if stage.partitioned else None, code_version=versions[stage.name],
           kinds=set(stage.kinds), metadata=common_meta, description=stage.description(spec),
           pool=simulation_pool if stage.simulation else None,
           check_specs=[AssetCheckSpec(c.name, asset=key, description=c.description, blocking=c.blocking)
                        for c in stage.checks])
    def stage_asset(context: AssetExecutionContext, config: StageConfig, workspace: Workspace,
                    simulation: SimulationEngine, publish_target: PublishTarget) -> MaterializeResult:
        root = workspace.path()
        ctx = RunContext(
            root=root, shard=int(context.partition_key) if stage.partitioned else None, force=config.force,
            engine=simulation.engine, device=simulation.device, progress=progress_enabled(),
            publish=PublishOptions(dest=publish_target.folder(root, g), dataset_repo_id=publish_target.dataset_repo_id,
                                   model_repo_id=publish_target.model_repo_id, token=publish_target.resolved_token(),
                                   private=publish_target.private))
        try:
            res = stage.materialize(spec, ctx)
        except StageFailure as exc:
            raise Failure(description=str(exc)) from None
        return _result(key, res)

    return stage_asset


def build_config_assets(src: DatasetConfigSource, simulation_pool: str | None = SIMULATION_POOL) -> list[AssetsDefinition]:
    """The assets of one dataset configuration (group ``src.group``, keys ``<group>/<name>``): one per stage
    that applies to its spec.

    ``simulation_pool``: concurrency pool of the stages that simulate (None for dagster-dask, whose task
    submission cannot serialise runs that carry op-concurrency records)."""
    spec = src.spec
    partitions = StaticPartitionsDefinition(shard_keys(spec))
    versions = code_versions(spec)
    common_meta = {"config_path": MetadataValue.path(str(src.path)), "dataset": spec.name,
                   "dataset_version": spec.version, "config_name": spec.config_name}
    return [_stage_asset(stage, src, partitions, versions, common_meta, simulation_pool)
            for stage in STAGES if stage.applies(spec)]


def discover_sources(paths: list[str | Path], load, kind: str, patterns: tuple[str, ...] = ("*.yaml", "*.yml")) -> list:
    """Sources (dataset configurations, studies) loaded by ``load`` from YAML files and folders (sorted;
    duplicate groups rejected). A broken YAML in a scanned folder is skipped with a warning; a broken file
    named explicitly raises. ``kind`` names the sources in messages."""
    files: list[tuple[Path, bool]] = []  # (file, named explicitly)
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files.extend((f, False) for pattern in patterns for f in sorted(p.glob(pattern)))
        elif p.exists():
            files.append((p, True))
        else:
            raise InputError(f"{p}: no such {kind} file or folder")
    out: dict = {}
    for f, explicit in files:
        try:
            src = load(f)
        except InputError as exc:
            if explicit:
                raise
            # one broken YAML in a scanned folder must not take down every other source
            warnings.warn(f"skipping {kind} {f}: {exc}", stacklevel=2)
            continue
        if src.group in out:
            raise InputError(f"{f}: group name {src.group!r} already used by {out[src.group].path}")
        out[src.group] = src
    return list(out.values())


def discover_configs(paths: list[str | Path]) -> list[DatasetConfigSource]:
    """Dataset configurations from YAML files and folders of ``*.yaml``/``*.yml``."""
    return discover_sources(paths, load_config, "configuration")


def describe(src: DatasetConfigSource) -> str:
    return json.dumps({"group": src.group, "path": str(src.path), "name": src.spec.name,
                       "version": src.spec.version, "config": src.spec.config_name, "shards": src.spec.n_shards})
