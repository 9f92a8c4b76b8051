"""Asset factory: one asset group per dataset configuration (``configs/*.yaml``).

Why a factory (and not one asset set with the YAML path in run config, or config × shard partitions):
each YAML is a separately versioned dataset configuration with its own number of shards, its own
artifacts and its own materialization history. One group per YAML gives every configuration exactly its
shard partitions (a ``MultiPartitionsDefinition`` config × shard would be a ragged cross product), keeps
lineage and history per configuration (run config on a shared asset key would interleave the history of
different datasets under one key), and lets the UI mark a configuration stale when its YAML changes (the
code version of each asset is the hash of the spec sections it depends on). A configuration is picked at
launch time by selecting its group (or its jobs ``<group>_shards`` / ``<group>_publish``); adding a YAML
and reloading the code location adds a group. Per-run knobs stay in run config (:class:`StageConfig`) and
resources (workspace, engine/device, publishing target).

Graph of one group ``g`` (asset keys ``g/<name>``)::

    structure_specs → structures → exit_waves → imaged_samples → dataset_splits → published_dataset
                      (partitioned by shard ────────────────────)  dataset_splits → trained_model
                                                                   → model_evaluation → published_model

The assets are thin: each calls one function of :mod:`hrtem_dataset.pipeline` and reports its stats as
metadata (counts, timings, throughput, spec hash, engine + version, inline preview PNGs).
"""


import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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

from hrtem_dataset import __version__
from hrtem_dataset import pipeline as pl
from hrtem_dataset.errors import InputError
from hrtem_dataset.seeding import spec_hash
from hrtem_dataset.specs import DatasetSpec, load_spec

from . import previews
from .resources import PublishTarget, SimulationEngine, Workspace

ASSET_NAMES = ("structure_specs", "structures", "exit_waves", "imaged_samples", "dataset_splits",
               "published_dataset", "trained_model", "model_evaluation", "published_model")
PARTITIONED = ("structures", "exit_waves", "imaged_samples")
CHECKS = {
    "structures": ("atoms_valid",),
    "exit_waves": ("no_nan_inf", "vacuum_intensity"),
    "imaged_samples": ("no_nan_inf", "mean_intensity", "label_coverage"),
    "dataset_splits": ("no_split_leakage", "row_counts_match_spec"),
    "model_evaluation": ("metric_above_floor",),
}
"""Asset checks per asset; all blocking except ``imaged_samples/mean_intensity`` (a warning)."""

SIMULATION_POOL = "hrtem_simulation"
"""Concurrency pool of the multislice steps: ``dagster instance concurrency set hrtem_simulation 1``
serialises them on a single GPU while a backfill runs the other stages of many shards in parallel."""

SCENE_INTENSITY_TOL = 0.05    # mean |ψ|² of scene waves: flux lost outside the antialias aperture only
VACUUM_INTENSITY_TOL = 0.01   # mean |ψ|² of particle-only waves over vacuum pixels
IMAGE_MEAN_TOL = 0.2          # mean image intensity (vacuum ≈ 1, dose noise, MTF(0) = 1)
COVERAGE_MAX = 0.9            # a mask covering > 90 % of the field means a broken threshold


class StageConfig(Config):
    """Run config of the stage assets."""

    force: bool = Field(False, description="recompute outputs that already exist in the workspace")


@dataclass(frozen=True)
class DatasetConfigSource:
    """A dataset configuration YAML and the asset group built from it."""

    group: str
    path: Path
    spec: DatasetSpec



def _published_result(stats: dict, dest: Path) -> MaterializeResult:
    """Metadata of a published_dataset / published_model materialization (local folder, Hub URL if any)."""
    url = {"url": MetadataValue.url(stats["url"])} if stats.get("url") else {}
    return MaterializeResult(metadata={**_stats_metadata(stats), "path": MetadataValue.path(str(dest)), **url})


def _coverage_ok(q: dict) -> bool:
    return q["empty_masks"] == 0 and q["coverage_max"] <= COVERAGE_MAX


def _image_problems(q: dict) -> list[str]:
    """Why a shard's images fail the blocking ``imaged_samples`` checks (empty when they pass)."""
    problems = []
    if q["nonfinite"]:
        problems.append(f"{q['nonfinite']} images with NaN/inf")
    if not _coverage_ok(q):
        problems.append(f"label coverage max {q['coverage_max']:.4f}, {q['empty_masks']} empty masks")
    return problems

def group_name_for(path: str | Path) -> str:
    """Asset group / key prefix of a YAML: its file stem with non-identifier characters as ``_``."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", Path(path).stem)
    return stem if stem[:1].isalpha() else f"c_{stem}"


def load_config(path: str | Path) -> DatasetConfigSource:
    """Load and validate one dataset configuration (:class:`InputError` naming the file/field)."""
    p = Path(path).resolve()
    return DatasetConfigSource(group=group_name_for(p), path=p, spec=load_spec(p, DatasetSpec))


def shard_keys(spec: DatasetSpec) -> list[str]:
    """Partition keys of a configuration: ``"00000"`` … (shard index, zero padded)."""
    width = max(5, len(str(spec.n_shards - 1)))
    return [f"{i:0{width}d}" for i in range(spec.n_shards)]


def code_versions(spec: DatasetSpec) -> dict[str, str]:
    """Code version of each asset: hash of the package version and the spec sections it depends on."""
    fp = pl.fingerprints(spec)
    images = spec_hash({"waves": fp["waves"], "kind": spec.kind, "shard_size": spec.shard_size,
                        "splits": spec.splits.model_dump(mode="json"), "imaging": spec.imaging.model_dump(mode="json"),
                        "labels": spec.labels.model_dump(mode="json")})
    model = spec_hash(spec.model.model_dump(mode="json", exclude={"min_f1"})) if spec.model else "none"
    data = spec_hash({"images": images, "splits": spec.splits.model_dump(mode="json"), "name": spec.name,
                      "version": spec.version, "config": spec.config_name})
    v = {"structure_specs": fp["structures"], "structures": fp["structures"], "exit_waves": fp["waves"],
         "imaged_samples": images, "dataset_splits": data, "published_dataset": data,
         "trained_model": spec_hash([data, model]), "model_evaluation": spec_hash([data, model]),
         "published_model": spec_hash([data, model])}
    return {k: f"{__version__}+{h}" for k, h in v.items()}


def _num(x) -> MetadataValue:
    """Float metadata; NaN/inf (no data) become null-safe text."""
    x = float(x)
    return MetadataValue.float(float(f"{x:.6g}")) if math.isfinite(x) else MetadataValue.text(str(x))


def _stats_metadata(stats: dict, *, skip=("shard", "path")) -> dict:
    out = {}
    for k, v in stats.items():
        if k in skip or v is None:
            continue
        if isinstance(v, bool):
            out[k] = MetadataValue.bool(v)
        elif isinstance(v, int):
            out[k] = MetadataValue.int(v)
        elif isinstance(v, float):
            out[k] = _num(v)
        elif isinstance(v, dict):
            out[k] = MetadataValue.json(v)
        else:
            out[k] = MetadataValue.text(str(v))
    return out


def _md_previews(pngs: dict[str, bytes], folder: Path, stem: str) -> dict:
    """Inline markdown previews + paths of the PNG files written next to the artifacts."""
    paths = previews.save_pngs(pngs, folder, stem)
    meta = {"preview": MetadataValue.md(previews.markdown_images(pngs))}
    for title, p in paths.items():
        meta[f"preview_{title.lower().replace(' ', '_')}_png"] = MetadataValue.path(str(p))
    return meta


def build_config_assets(src: DatasetConfigSource, simulation_pool: str | None = SIMULATION_POOL) -> list[AssetsDefinition]:
    """The assets of one dataset configuration (group ``src.group``, keys ``<group>/<name>``).

    ``simulation_pool``: concurrency pool of ``exit_waves`` (None for dagster-dask, whose task submission
    cannot serialise runs that carry op-concurrency records)."""
    spec, g = src.spec, src.group
    partitions = StaticPartitionsDefinition(shard_keys(spec))
    versions = code_versions(spec)
    common_meta = {"config_path": MetadataValue.path(str(src.path)), "dataset": spec.name,
                   "dataset_version": spec.version, "config_name": spec.config_name}

    def key(name: str) -> AssetKey:
        return AssetKey([g, name])

    def checks(name: str) -> list[AssetCheckSpec]:
        docs = {
            "atoms_valid": "every structure has atoms, finite positions with z inside the cell, and its particles",
            "no_nan_inf": "no NaN or inf in the arrays",
            "vacuum_intensity": f"particle-only waves: mean |ψ|² over vacuum = 1 ± {VACUUM_INTENSITY_TOL}; "
                                f"scene waves: mean |ψ|² = 1 ± {SCENE_INTENSITY_TOL} (flux conservation)",
            "mean_intensity": f"mean image intensity (vacuum-normalised) within 1 ± {IMAGE_MEAN_TOL}",
            "label_coverage": f"every image with particles has a non-empty mask; coverage ≤ {COVERAGE_MAX}",
            "no_split_leakage": "no structure appears in two splits",
            "row_counts_match_spec": "rows per split = structures per split × images per structure",
            "metric_above_floor": "test F1 ≥ model.min_f1 of the spec",
        }
        return [AssetCheckSpec(c, asset=key(name), description=docs[c], blocking=(c != "mean_intensity"))
                for c in CHECKS.get(name, ())]

    def result(name: str, check: str, passed: bool, description: str, severity=AssetCheckSeverity.ERROR,
               **meta) -> AssetCheckResult:
        md = {"description": MetadataValue.text(description)}
        md.update({k: (_num(v) if isinstance(v, float) else v) for k, v in meta.items()})
        return AssetCheckResult(asset_key=key(name), check_name=check, passed=bool(passed),
                                severity=severity, metadata=md)

    def shard_of(context: AssetExecutionContext) -> int:
        return int(context.partition_key)

    # ---------------------------------------------------------------------------------------------

    @asset(key=key("structure_specs"), group_name=g, code_version=versions["structure_specs"],
           kinds={"python"}, metadata=common_meta,
           description=f"Concrete scene spec, seeds and split of every structure of {spec.name}/"
                       f"{spec.config_name} (structure_specs.jsonl).")
    def structure_specs(context: AssetExecutionContext, workspace: Workspace) -> MaterializeResult:
        stats = pl.plan_structures(spec, workspace.path())
        return MaterializeResult(metadata={
            **_stats_metadata(stats), "path": MetadataValue.path(stats["path"]),
            "spec_hash": spec.hash(), "dagster/row_count": MetadataValue.int(stats["structures"])})

    @asset(key=key("structures"), deps=[key("structure_specs")], partitions_def=partitions, group_name=g,
           code_version=versions["structures"], kinds={"ase"}, check_specs=checks("structures"),
           metadata=common_meta, description="Atomic structures of one shard (extxyz, particle_id per atom).")
    def structures(context: AssetExecutionContext, config: StageConfig, workspace: Workspace) -> MaterializeResult:
        root, shard = workspace.path(), shard_of(context)
        stats = pl.build_structures_shard(spec, shard, root, force=config.force)
        bad, n_atoms = [], 0
        first = None
        for i in spec.shard_indices(shard):
            atoms = pl.read_structure(spec, i, root)
            if first is None:
                first = atoms
            n_atoms += len(atoms)
            pos, lz = atoms.positions, float(atoms.cell[2, 2])
            pid = np.asarray(atoms.arrays.get("particle_id", np.full(len(atoms), -1)))
            wants_particles = bool((atoms.info.get("scene") or {}).get("particles"))
            # x, y are periodic (the multislice wraps them); z must lie inside the slab that is sliced
            ok_pos = bool(np.all(np.isfinite(pos)) and np.all(pos[:, 2] >= -1e-6) and np.all(pos[:, 2] <= lz + 1e-6))
            if len(atoms) == 0 or not ok_pos or (wants_particles and not np.any(pid >= 0)):
                bad.append(pl.structure_id(spec, i))
        meta = {**_stats_metadata(stats), "atoms_in_shard": MetadataValue.int(n_atoms), "spec_hash": spec.hash()}
        if first is not None:
            pid = first.arrays.get("particle_id")
            png = previews.structure_projection_png(first.positions, first.numbers, pid,
                                                    (float(first.cell[0, 0]), float(first.cell[1, 1])))
            meta = {**_md_previews({"Structure projection": png}, pl.config_dir(spec, root) / "previews",
                                   f"structures-{context.partition_key}"), **meta}
        return MaterializeResult(metadata=meta, check_results=[
            result("structures", "atoms_valid", not bad,
                   "all structures valid" if not bad else f"invalid structures: {', '.join(bad)}")])

    @asset(key=key("exit_waves"), deps=[key("structures")], partitions_def=partitions, group_name=g,
           code_version=versions["exit_waves"], kinds={"pytorch"}, check_specs=checks("exit_waves"),
           pool=simulation_pool,
           metadata=common_meta,
           description="Multislice exit waves of one shard: full scene (frozen phonons) and particles alone.")
    def exit_waves(context: AssetExecutionContext, config: StageConfig, workspace: Workspace,
                   simulation: SimulationEngine) -> MaterializeResult:
        root, shard = workspace.path(), shard_of(context)
        stats = pl.simulate_shard(spec, shard, root, engine=simulation.engine, device=simulation.device,
                                  force=config.force)
        q = pl.waves_summary(spec, shard, root)
        first = pl.load_waves(spec, spec.shard_indices(shard)[0], root)
        meta = {**_stats_metadata(stats), "spec_hash": spec.hash(), "engine": first["engine"],
                "engine_version": first["engine_version"], "sampling_A": MetadataValue.json(list(first["sampling"])),
                "gpts": MetadataValue.json([int(x) for x in first["particles"].shape]),
                "scene_intensity_min": _num(q["scene_intensity_min"]),
                "vacuum_intensity_min": _num(q["vacuum_intensity_min"])}
        pngs = {"Scene exit wave phase": previews.image_png(np.angle(first["scene"][0])),
                "Particle exit wave phase": previews.image_png(np.angle(first["particles"]))}
        meta = {**_md_previews(pngs, pl.config_dir(spec, root) / "previews", f"waves-{context.partition_key}"), **meta}
        vac_ok = (q["nonfinite"] == 0 and q["missing"] == 0
                  and abs(q["vacuum_intensity_min"] - 1) <= VACUUM_INTENSITY_TOL
                  and abs(q["vacuum_intensity_max"] - 1) <= VACUUM_INTENSITY_TOL
                  and abs(q["scene_intensity_min"] - 1) <= SCENE_INTENSITY_TOL
                  and abs(q["scene_intensity_max"] - 1) <= SCENE_INTENSITY_TOL)
        return MaterializeResult(metadata=meta, check_results=[
            result("exit_waves", "no_nan_inf", q["nonfinite"] == 0 and q["missing"] == 0,
                   f"{q['nonfinite']} structures with NaN/inf, {q['missing']} missing",
                   nonfinite=q["nonfinite"]),
            result("exit_waves", "vacuum_intensity", vac_ok,
                   "vacuum |ψ|² in [{:.4f}, {:.4f}], scene mean |ψ|² in [{:.4f}, {:.4f}]".format(
                       q["vacuum_intensity_min"], q["vacuum_intensity_max"], q["scene_intensity_min"],
                       q["scene_intensity_max"]),
                   vacuum_intensity_min=q["vacuum_intensity_min"], vacuum_intensity_max=q["vacuum_intensity_max"],
                   scene_intensity_min=q["scene_intensity_min"], scene_intensity_max=q["scene_intensity_max"]),
        ])

    @asset(key=key("imaged_samples"), deps=[key("exit_waves")], partitions_def=partitions, group_name=g,
           code_version=versions["imaged_samples"], kinds={"numpy"}, check_specs=checks("imaged_samples"),
           metadata=common_meta,
           description="Noisy HRTEM images + pixel-exact labels of one shard (one .npz of rows).")
    def imaged_samples(context: AssetExecutionContext, config: StageConfig, workspace: Workspace) -> MaterializeResult:
        root, shard = workspace.path(), shard_of(context)
        stats = pl.image_shard(spec, shard, root, force=config.force)
        q = pl.images_summary(spec, shard, root)
        first = next(pl.read_image_shard(spec, shard, root))
        meta = {**_stats_metadata(stats), **{f"q_{k}": (_num(v) if isinstance(v, float) else MetadataValue.int(v))
                                              for k, v in q.items()},
                "spec_hash": spec.hash(), "dagster/row_count": MetadataValue.int(q["rows"]),
                "path": MetadataValue.path(str(pl.images_path(spec, shard, root)))}
        if "image" in first:
            pngs = {"Image": previews.image_png(first["image"]),
                    "Mask overlay": previews.mask_overlay_png(first["image"], first["mask"])}
        else:  # exit_waves configurations: labels only (images are rendered on the fly at training time)
            pngs = {"Mask": previews.image_png(first["mask"].astype(np.float32))}
        meta = {**_md_previews(pngs, pl.config_dir(spec, root) / "previews", f"images-{context.partition_key}"), **meta}
        mean_ok = (spec.kind != "images") or (
            q["nonfinite"] == 0 and abs(q["image_mean_min"] - 1) <= IMAGE_MEAN_TOL
            and abs(q["image_mean_max"] - 1) <= IMAGE_MEAN_TOL)
        cov_ok = _coverage_ok(q)
        return MaterializeResult(metadata=meta, check_results=[
            result("imaged_samples", "no_nan_inf", q["nonfinite"] == 0, f"{q['nonfinite']} images with NaN/inf"),
            result("imaged_samples", "mean_intensity", mean_ok,
                   "image means in [{:.3f}, {:.3f}]".format(q["image_mean_min"], q["image_mean_max"]),
                   severity=AssetCheckSeverity.WARN, image_mean_min=q["image_mean_min"],
                   image_mean_max=q["image_mean_max"]),
            result("imaged_samples", "label_coverage", cov_ok,
                   "coverage in [{:.4f}, {:.4f}], {} empty masks".format(q["coverage_min"], q["coverage_max"],
                                                                         q["empty_masks"]),
                   coverage_min=q["coverage_min"], coverage_max=q["coverage_max"],
                   coverage_mean=q["coverage_mean"]),
        ])

    @asset(key=key("dataset_splits"), deps=[key("imaged_samples")], group_name=g,
           code_version=versions["dataset_splits"], kinds={"huggingface", "parquet"},
           check_specs=checks("dataset_splits"), metadata=common_meta,
           description="The configuration's train/validation/test parquet shards + dataset card (Hub layout).")
    def dataset_splits(context: AssetExecutionContext, workspace: Workspace) -> MaterializeResult:
        from hrtem_dataset.dataset import check_no_leakage

        root = workspace.path()
        # backstop for the blocking shard checks: a shard whose check failed in an earlier run is still
        # "materialized", and a later run may skip it; never package it
        bad = [f"shard {s:05d}: {problem}" for s in range(spec.n_shards)
               for problem in _image_problems(pl.images_summary(spec, s, root))]
        if bad:
            raise Failure(description="imaged samples fail the blocking checks: " + "; ".join(bad))
        stats = pl.assemble_dataset(spec, root)
        folder = Path(stats["path"])
        leak = check_no_leakage(folder, spec.config_name)
        expected = pl.expected_rows(spec)
        meta = {"rows": MetadataValue.json(stats["rows"]), "structures": MetadataValue.json(stats["structures"]),
                "dagster/row_count": MetadataValue.int(stats["total_rows"]), "seconds": _num(stats["seconds"]),
                "rows_per_s": _num(stats["rows_per_s"]), "path": MetadataValue.path(str(folder)),
                "spec_hash": spec.hash()}
        preview_png = folder / "assets" / f"preview-{spec.config_name}.png"
        if preview_png.exists():
            meta = {"preview": MetadataValue.md(previews.markdown_images({"Dataset preview": preview_png.read_bytes()})),
                    **meta}
        return MaterializeResult(metadata=meta, check_results=[
            result("dataset_splits", "no_split_leakage", leak.passed, leak.description),
            result("dataset_splits", "row_counts_match_spec", stats["rows"] == expected,
                   f"rows {stats['rows']} vs expected {expected}", rows=MetadataValue.json(stats["rows"]),
                   expected=MetadataValue.json(expected)),
        ])

    @asset(key=key("published_dataset"), deps=[key("dataset_splits")], group_name=g,
           code_version=versions["published_dataset"], kinds={"huggingface"}, metadata=common_meta,
           description="The dataset folder at the publishing target (local Hub layout; uploaded with a repo id).")
    def published_dataset(context: AssetExecutionContext, workspace: Workspace,
                          publish_target: PublishTarget) -> MaterializeResult:
        root = workspace.path()
        dest = publish_target.folder(root, g) / "dataset"
        stats = pl.publish_dataset(spec, root, dest, repo_id=publish_target.dataset_repo_id,
                                   token=publish_target.resolved_token(), private=publish_target.private)
        return _published_result(stats, dest)

    assets = [structure_specs, structures, exit_waves, imaged_samples, dataset_splits, published_dataset]
    if spec.model is None or spec.kind != "images":  # models train and evaluate on rendered images
        return assets

    @asset(key=key("trained_model"), deps=[key("dataset_splits")], group_name=g,
           code_version=versions["trained_model"], kinds={"pytorch"}, metadata=common_meta,
           description="U-Net segmentation model trained on the train split (Hub model repo layout).")
    def trained_model(context: AssetExecutionContext, workspace: Workspace,
                      simulation: SimulationEngine) -> MaterializeResult:
        root = workspace.path()
        from hrtem_dataset.progress import enabled as progress_on  # `hrtem materialize` without --quiet

        stats = pl.train_model(spec, root, device=simulation.device, progress=progress_on())
        return MaterializeResult(metadata={**_stats_metadata(stats), "path": MetadataValue.path(stats["path"]),
                                           "spec_hash": spec.hash()})

    @asset(key=key("model_evaluation"), deps=[key("trained_model")], group_name=g,
           code_version=versions["model_evaluation"], kinds={"pytorch"}, check_specs=checks("model_evaluation"),
           metadata=common_meta, description="IoU / F1 / precision / recall of the model on the test split.")
    def model_evaluation(context: AssetExecutionContext, workspace: Workspace,
                         simulation: SimulationEngine) -> MaterializeResult:
        root = workspace.path()
        stats = pl.evaluate(spec, root, device=simulation.device)
        metrics = stats["metrics"]
        floor = spec.model.min_f1
        f1 = float(metrics.get("f1", float("nan")))
        return MaterializeResult(
            metadata={**_stats_metadata({k: v for k, v in metrics.items() if isinstance(v, int | float)}),
                      "split": stats.get("split", "test"), "metrics": MetadataValue.json(metrics),
                      "path": MetadataValue.path(stats["path"])},
            check_results=[result("model_evaluation", "metric_above_floor", math.isfinite(f1) and f1 >= floor,
                                  f"F1 {f1:.4f} vs floor {floor:.4f}", f1=f1, floor=float(floor))])

    @asset(key=key("published_model"), deps=[key("model_evaluation")], group_name=g,
           code_version=versions["published_model"], kinds={"huggingface"}, metadata=common_meta,
           description="The model folder at the publishing target (local Hub layout; pushed with a repo id).")
    def published_model(context: AssetExecutionContext, workspace: Workspace,
                        publish_target: PublishTarget) -> MaterializeResult:
        root = workspace.path()
        dest = publish_target.folder(root, g) / "model"
        stats = pl.publish_model(spec, root, dest, repo_id=publish_target.model_repo_id,
                                 token=publish_target.resolved_token(), private=publish_target.private)
        return _published_result(stats, dest)

    return [*assets, trained_model, model_evaluation, published_model]


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
