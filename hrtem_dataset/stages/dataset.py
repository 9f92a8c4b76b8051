"""Stages 4 and 5: the dataset folder of a configuration and its publication.

Format — a Hugging Face dataset repo layout, written by :func:`hrtem_dataset.dataset.write_dataset_config`
(deterministic parquet: the same spec gives byte-identical files) into
``<config_dir>/dataset-<content id>/``: ``data/<config>/<split>-NNNNN-of-NNNNN.parquet``,
``specs/<config>.{yaml,json}``, ``assets/preview-<config>.png`` and the dataset card ``README.md``.
Publishing copies the configuration into a dataset folder that may hold other configurations of the same
dataset version (regenerating the card over all of them) and, with a repo id, uploads it to the Hub tagged
``v<version>``.

Checks of ``dataset_splits`` (both blocking): ``no_split_leakage`` (no structure in two splits) and
``row_counts_match_spec`` (rows per split = structures per split × images per structure). Before packaging,
every imaged shard must pass the blocking checks of :mod:`hrtem_dataset.stages.images` (a shard whose check
failed in an earlier run is still "materialized" and a later run may skip it: it is never packaged).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from ..dataset import check_no_leakage, publish, write_dataset_card, write_dataset_config
from ..dataset.card import read_configs
from ..errors import InputError
from ..io import atomic_dir, atomic_path, make_public_files
from ..specs import DatasetSpec
from ..workspace import SPLITS, config_dir, dataset_dir, images_path, published_dir, validation_dir
from .base import CheckSpec, RunContext, Stage, StageFailure, StageResult, outcome, rate
from .exit_waves import load_waves
from .images import expected_rows_per_structure, image_problems, read_image_shard

NO_SPLIT_LEAKAGE = CheckSpec("no_split_leakage", "no structure appears in two splits")
ROW_COUNTS = CheckSpec("row_counts_match_spec", "rows per split = structures per split × images per structure")


def dataset_rows(spec: DatasetSpec, root=None) -> dict[str, Iterator[dict]]:
    """Rows of every split (streamed shard by shard), in the row schema of :mod:`hrtem_dataset.dataset`."""
    by_split = {s: [] for s in SPLITS}
    for shard in range(spec.n_shards):
        for i in spec.shard_indices(shard):
            by_split[spec.split_of(i)].append(shard)

    def rows_of(split: str) -> Iterator[dict]:
        for shard in sorted(set(by_split[split])):
            for row in read_image_shard(spec, shard, root):
                if row.pop("split") != split:
                    continue
                row.pop("index", None)
                if spec.kind == "exit_waves":
                    row["waves"] = load_waves(spec, int(row["structure_id"].rsplit("-", 1)[1]), root)["scene"]
                yield row

    return {s: rows_of(s) for s in SPLITS if by_split[s]}


def assemble_dataset(spec: DatasetSpec, root=None, out_dir: str | Path | None = None) -> dict:
    """Write the dataset folder (a Hub dataset repo layout, ``load_dataset(out_dir, config)``) from the
    imaged shards: ``data/<config>/<split>-NNNNN-of-NNNNN.parquet`` + dataset card. Every shard must exist.
    ``out_dir`` defaults to :func:`~hrtem_dataset.workspace.dataset_dir`. Returns row counts per split and
    timings."""
    missing = [s for s in range(spec.n_shards) if not images_path(spec, s, root).exists()]
    if missing:
        raise InputError(f"{config_dir(spec, root) / 'images'}: shards {missing} are not imaged yet")
    out = Path(out_dir) if out_dir is not None else dataset_dir(spec, root)
    t0 = time.perf_counter()
    write_dataset_config(dataset_rows(spec, root), spec, out)
    info = json.loads((out / "specs" / f"{spec.config_name}.json").read_text())
    splits = {s: int(v["num_examples"]) for s, v in info.get("splits", {}).items()}
    dt = time.perf_counter() - t0
    return {"path": str(out), "rows": splits, "total_rows": sum(splits.values()),
            "structures": {s: int(v.get("num_structures", 0)) for s, v in info.get("splits", {}).items()},
            "seconds": dt, "rows_per_s": rate(sum(splits.values()), dt)}


def expected_rows(spec: DatasetSpec) -> dict[str, int]:
    """Rows each split must have according to the spec."""
    per = expected_rows_per_structure(spec)
    counts = {"train": spec.splits.train, "validation": spec.splits.validation, "test": spec.splits.test}
    return {s: n * per for s, n in counts.items() if n > 0}


def publish_dataset(spec: DatasetSpec, root=None, dest: str | Path | None = None, *, repo_id: str | None = None,
                    token: str | None = None, private: bool = False) -> dict:
    """Put the built configuration into the dataset folder ``dest`` (a Hub dataset repo layout that may
    hold other configurations of the same dataset version: they are kept, the card lists all), then, with
    ``repo_id``, upload the folder to the Hub and tag it ``v<version>``."""
    src = dataset_dir(spec, root)
    if not (src / "data" / spec.config_name).is_dir():
        raise InputError(f"{src}: configuration {spec.config_name!r} not built (run dataset_splits first)")
    dest = Path(dest) if dest is not None else published_dir(spec, root) / "dataset"
    t0 = time.perf_counter()
    if dest.is_dir():
        for other, _ in read_configs(dest):
            if (other.name, other.version) != (spec.name, spec.version):
                raise InputError(f"{dest}: holds {other.name} {other.version}, not {spec.name} {spec.version}; "
                                 f"one folder is one dataset version")
    dest.mkdir(parents=True, exist_ok=True)
    with atomic_dir(dest / "data" / spec.config_name) as tmp:
        shutil.copytree(src / "data" / spec.config_name, tmp, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".*", "*.tmp"))
    for rel in (f"specs/{spec.config_name}.yaml", f"specs/{spec.config_name}.json",
                f"assets/preview-{spec.config_name}.png"):
        if (src / rel).exists():
            with atomic_path(dest / rel) as tmp:
                shutil.copyfile(src / rel, tmp)
    report = validation_dir(spec, root)
    if (report / "validation.json").is_file():  # the configuration's validation report, linked from the card
        with atomic_dir(dest / "validation" / spec.config_name) as tmp:
            shutil.copytree(report, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*", "*.tmp"))
    write_dataset_card(dest)
    make_public_files(dest)
    out = {"path": str(dest), "files": sum(1 for p in dest.rglob("*") if p.is_file() and not p.name.startswith(".")),
           "seconds": time.perf_counter() - t0, "repo_id": repo_id}
    if repo_id:
        res = publish(dest, repo_id, token=token, private=private)
        out.update({"url": res.url, "tag": res.tag, "uploaded_files": len(res.files)})
    return out


class DatasetSplitsStage(Stage):
    """The configuration's train/validation/test parquet shards + dataset card (Hub layout)."""

    name, fingerprint, deps = "dataset_splits", "dataset", ("imaged_samples",)
    kinds = frozenset({"huggingface", "parquet"})
    checks = (NO_SPLIT_LEAKAGE, ROW_COUNTS)

    def materialize(self, spec: DatasetSpec, ctx: RunContext) -> StageResult:
        bad = [f"shard {s:05d}: {problem}" for s in range(spec.n_shards) for problem in image_problems(spec, s, ctx.root)]
        if bad:
            raise StageFailure("imaged samples fail the blocking checks: " + "; ".join(bad))
        stats = assemble_dataset(spec, ctx.root)
        folder = Path(stats["path"])
        leak = check_no_leakage(folder, spec.config_name)
        expected = expected_rows(spec)
        preview = folder / "assets" / f"preview-{spec.config_name}.png"
        return StageResult(
            {k: stats[k] for k in ("rows", "structures", "seconds", "rows_per_s")}, {"spec_hash": spec.hash()},
            path=str(folder), row_count=stats["total_rows"],
            previews={"Dataset preview": preview} if preview.exists() else {},
            checks=[outcome(NO_SPLIT_LEAKAGE, leak.passed, leak.description),
                    outcome(ROW_COUNTS, stats["rows"] == expected, f"rows {stats['rows']} vs expected {expected}",
                            rows=stats["rows"], expected=expected)])


def published_result(stats: dict) -> StageResult:
    """The result of a publishing stage: local folder, Hub URL when uploaded."""
    return StageResult({k: v for k, v in stats.items() if k not in ("path", "url")}, path=stats["path"],
                       url=stats.get("url"))


class PublishedDatasetStage(Stage):
    """The dataset folder at the publishing target (local Hub layout; uploaded with a repo id)."""

    name, fingerprint, deps = "published_dataset", "dataset", ("dataset_splits",)
    kinds = frozenset({"huggingface"})

    def materialize(self, spec: DatasetSpec, ctx: RunContext) -> StageResult:
        p = ctx.publish
        dest = p.dest / "dataset" if p.dest is not None else None
        return published_result(publish_dataset(spec, ctx.root, dest, repo_id=p.dataset_repo_id, token=p.token,
                                                private=p.private))
