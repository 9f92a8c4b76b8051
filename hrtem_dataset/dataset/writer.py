"""Deterministic parquet shards of one dataset configuration, laid out as a Hugging Face dataset repo.

``write_dataset_config(rows_by_split, spec, out_dir)`` writes::

    out_dir/
      README.md                                   dataset card, regenerated (all configurations)
      data/<config>/<split>-NNNNN-of-NNNNN.parquet
      specs/<config>.yaml                         the DatasetSpec that made the configuration
      specs/<config>.json                         row counts, shapes, features (input of the card)
      assets/preview-<config>.png                 preview figure shown in the card

Determinism: the same rows give byte-identical parquet files, whatever order they arrive in. Rows are
validated, Arrow-encoded with the configuration's ``datasets.Features`` and staged on disk (Arrow IPC,
memory-mapped, so a split never has to fit in memory), sorted by ``sample_id``, split into shards of at
most ``max_shard_bytes`` (uncompressed Arrow bytes) and written with fixed row-group size, compression
and encodings (those ``datasets`` itself uses for Hub parquet, including content-defined chunking) and
the ``huggingface`` features schema metadata, so ``datasets.load_dataset(out_dir, config)`` decodes
``Array2D``/``Array3D``/``Image`` columns. Nothing time-dependent is written. The shards of a
configuration are built in a temporary directory that replaces ``data/<config>/`` in one rename, so a
failed or killed write leaves the previous state; other configurations in the folder are kept.

One folder holds one version of one dataset (one Hub tag); versions sit side by side locally as
``<root>/<name>/<version>/`` (:func:`version_dir`).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import InputError
from ..io import atomic_dir, atomic_path, atomic_write_bytes, atomic_write_text, make_public
from ..specs import DatasetSpec, load_spec
from .card import render_preview, write_dataset_card
from .features import SPLITS, column_docs, exit_wave_features, image_features
from .rows import (
    _check_columns,
    _RowContext,
    encode_batch,
    prepare_exit_wave_row,
    prepare_image_row,
)

DEFAULT_MAX_SHARD_BYTES = 500 * 1024**2
"""Upper bound of one shard in uncompressed Arrow bytes (``push_to_hub``'s default ``max_shard_size``)."""
MAX_ROW_GROUP_BYTES = 100 * 1024**2
"""Upper bound of one row group (``datasets.config.MAX_ROW_GROUP_SIZE``)."""
MAX_ROW_GROUP_ROWS = 100
STAGING_BATCH_ROWS = 8
PREVIEW_SAMPLES = 4

def version_dir(root: str | Path, spec: DatasetSpec) -> Path:
    """Local folder of one dataset version: ``<root>/<name>/<version>/`` (versions side by side)."""
    return Path(root) / spec.name / spec.version


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


@dataclass
class _SplitStage:
    path: Path
    writer: Any = None
    rows: int = 0
    pending: list = field(default_factory=list)
    structures: set = field(default_factory=set)


class _Stager:
    """Arrow-IPC staging of validated rows per split, with the cross-row checks (shapes, ids, leakage)."""

    def __init__(self, directory: Path, kind: str):
        self.directory, self.kind = directory, kind
        self.features = None
        self.shapes: dict[str, list[int]] = {}
        self.stages: dict[str, _SplitStage] = {}
        self.structure_split: dict[str, str] = {}
        self.sample_ids: set[str] = set()

    def _shapes_of(self, row: dict) -> dict[str, list[int]]:
        if self.kind == "images":
            return {"image": list(row["image"].shape)}
        return {"waves_real": list(row["waves_real"].shape), "instances": list(row["instances"].shape)}

    def add(self, ctx: _RowContext, row: dict) -> None:
        shapes = self._shapes_of(row)
        if self.features is None:
            self.shapes = shapes
            self.features = (image_features(row["image"].shape) if self.kind == "images" else
                             exit_wave_features(row["waves_real"].shape, row["instances"].shape))
        for col, shape in shapes.items():
            if shape != self.shapes[col]:
                raise ctx.err(col, f"shape {tuple(shape)} differs from the configuration's {tuple(self.shapes[col])}")
        sid, st = row["sample_id"], row["structure_id"]
        if sid in self.sample_ids:
            raise ctx.err("sample_id", "duplicate sample_id")
        self.sample_ids.add(sid)
        first = self.structure_split.setdefault(st, ctx.split)
        if first != ctx.split:
            raise ctx.err("structure_id", f"structure {st!r} is already in split {first!r}; "
                          "a structure must belong to one split only")
        stage = self.stages[ctx.split]
        stage.structures.add(st)
        stage.pending.append(row)
        stage.rows += 1
        if len(stage.pending) >= STAGING_BATCH_ROWS:
            self.flush(stage)

    def flush(self, stage: _SplitStage) -> None:
        import pyarrow as pa

        if stage.pending:
            if stage.writer is None:
                stage.writer = pa.ipc.new_file(str(stage.path), self.features.arrow_schema)
            stage.writer.write_batch(encode_batch(stage.pending, self.features))
            stage.pending = []

    def finish(self) -> None:
        for stage in self.stages.values():
            self.flush(stage)
        self.close()

    def close(self) -> None:
        for stage in self.stages.values():
            if stage.writer is not None:
                stage.writer.close()
                stage.writer = None


def _existing_specs(out_dir: Path) -> dict[str, DatasetSpec]:
    specs = {}
    for p in sorted((out_dir / "specs").glob("*.yaml")):
        specs[p.stem] = load_spec(p, DatasetSpec)
    return specs


def _check_folder_version(out_dir: Path, spec: DatasetSpec) -> None:
    for cfg, other in _existing_specs(out_dir).items():
        if (other.name, other.version) != (spec.name, spec.version):
            raise InputError(
                f"{out_dir}: holds {other.name} {other.version} (configuration {cfg!r}); write "
                f"{spec.name} {spec.version} into its own version folder, e.g. <root>/{spec.name}/{spec.version}/")


def _parquet_options(features) -> dict:
    from datasets import config as ds_config

    try:
        from datasets.arrow_writer import get_parquet_column_options

        opts = get_parquet_column_options(features, features.arrow_schema)
    except ImportError:  # pragma: no cover - older datasets
        opts = {"compression": "snappy"}
    cdc = getattr(ds_config, "DEFAULT_CDC_OPTIONS", None)
    if cdc:
        opts["use_content_defined_chunking"] = cdc
    return opts


def _write_shards(table, order, features, dest: Path, split: str, max_shard_bytes: int) -> list[str]:
    """Write ``table`` rows in ``order`` as ``split-NNNNN-of-NNNNN.parquet`` files in ``dest``."""
    import pyarrow.parquet as pq

    n = table.num_rows
    row_bytes = max(1, math.ceil(table.nbytes / n))
    n_shards = max(1, math.ceil(n * row_bytes / max_shard_bytes))
    rows_per_group = max(1, min(MAX_ROW_GROUP_ROWS, MAX_ROW_GROUP_BYTES // row_bytes))
    options = _parquet_options(features)
    cdc = options.get("use_content_defined_chunking")
    names = []
    for i, idx in enumerate(np.array_split(order, n_shards)):
        name = shard_name(split, i, n_shards)
        with open(dest / name, "wb") as fh:
            writer = pq.ParquetWriter(fh, schema=features.arrow_schema, write_page_index=True, **options)
            for start in range(0, len(idx), rows_per_group):
                part = table.take(idx[start:start + rows_per_group])
                writer.write_table(part, row_group_size=len(part))
            if cdc:
                writer.add_key_value_metadata({"content_defined_chunking": json.dumps(cdc)})
            writer.close()
        names.append(name)
    return names


def _arrays_from(table, column: str) -> np.ndarray:
    """Decode an ``ArrayXD`` column of a (small) table into one numpy array (rows, *shape)."""
    import pyarrow as pa

    col = table.column(column).combine_chunks()
    shape = col.type.shape
    values = col.storage
    while pa.types.is_list(values.type):
        values = values.flatten()
    return values.to_numpy(zero_copy_only=False).reshape((len(col), *shape))


def _preview_arrays(table, order, kind: str) -> list[dict]:
    from PIL import Image

    # one image per structure first (rows are sorted by sample_id), then fill up
    structures = table.column("structure_id").take(order).to_pylist()
    firsts = [i for i, st in enumerate(structures) if i == 0 or st != structures[i - 1]]
    picks = firsts[:PREVIEW_SAMPLES]
    if len(picks) < PREVIEW_SAMPLES:
        chosen = set(picks)
        picks += [i for i in range(min(len(order), 2 * PREVIEW_SAMPLES)) if i not in chosen]
        picks = sorted(picks[:PREVIEW_SAMPLES])
    head = table.take(order[picks])
    masks = [np.asarray(Image.open(BytesIO(m["bytes"]))) for m in head.column("mask").to_pylist()]
    inst = _arrays_from(head, "instances")
    if kind == "images":
        imgs = _arrays_from(head, "image")
    else:
        w = _arrays_from(head, "waves_real")[:, 0] + 1j * _arrays_from(head, "waves_imag")[:, 0]
        imgs = np.angle(w)
    ids = head.column("sample_id").to_pylist()
    return [{"image": imgs[i], "mask": masks[i], "instances": inst[i], "sample_id": ids[i]}
            for i in range(head.num_rows)]


def write_dataset_config(
    rows_by_split: Mapping[str, Iterable[Mapping]],
    spec: DatasetSpec,
    out_dir: str | Path,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    card: bool = True,
) -> Path:
    """Write one configuration (``spec.config_name``) of a dataset folder and regenerate its card.

    ``rows_by_split`` maps ``train``/``validation``/``test`` to iterables of row dicts (numpy arrays and
    plain values, see :mod:`hrtem_dataset.dataset.features`; ``preview`` is made from the image when
    absent; ``package_version``, ``spec_hash``, ``dataset_version`` and ``config_name`` are filled in
    from the spec). Bad rows (missing column, wrong shape or dtype, a structure in two splits, a
    duplicate ``sample_id``) raise :class:`InputError` naming the split, row and column, and leave the
    folder as it was. Returns ``out_dir``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc


    if not isinstance(spec, DatasetSpec):
        raise InputError(f"spec: expected a DatasetSpec, got {type(spec).__name__}")
    if max_shard_bytes < 1:
        raise InputError("max_shard_bytes: must be >= 1")
    unknown = [s for s in rows_by_split if s not in SPLITS]
    if unknown:
        raise InputError(f"rows_by_split: unknown split {unknown[0]!r} (expected one of {', '.join(SPLITS)})")
    out_dir = Path(out_dir)
    _check_folder_version(out_dir, spec)
    config = spec.config_name
    lineage = {"package_version": __version__, "spec_hash": spec.hash(), "dataset_version": spec.version,
               "config_name": config}
    prepare = prepare_image_row if spec.kind == "images" else prepare_exit_wave_row
    known = set(column_docs(spec.kind)) | ({"waves", "split"} if spec.kind == "exit_waves" else {"split"})

    out_dir.mkdir(parents=True, exist_ok=True)
    stats: dict[str, dict] = {}
    preview_rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix=f".staging-{config}-", dir=out_dir) as staging:
        stager = _Stager(Path(staging), spec.kind)
        try:
            for split in (s for s in SPLITS if s in rows_by_split):
                stager.stages[split] = _SplitStage(Path(staging) / f"{split}.arrow")
                for i, raw in enumerate(rows_by_split[split]):
                    if not isinstance(raw, Mapping):
                        raise InputError(f"split {split!r} row {i}: expected a dict, got {type(raw).__name__}")
                    ctx = _RowContext(split, i, raw)
                    _check_columns(ctx, known)
                    stager.add(ctx, prepare(ctx, spec, lineage))
            stager.finish()
        finally:
            stager.close()
        features, shapes, stages = stager.features, stager.shapes, stager.stages
        if features is None:
            raise InputError(f"rows_by_split: no rows for configuration {config!r}")

        with atomic_dir(out_dir / "data" / config) as tmp_data:
            make_public(tmp_data)
            for split, stage in stages.items():
                if stage.rows == 0:
                    continue
                with pa.memory_map(str(stage.path)) as source:
                    table = pa.ipc.open_file(source).read_all()
                    order = np.asarray(pc.sort_indices(table, [("sample_id", "ascending")]))
                    files = _write_shards(table, order, features, tmp_data, split, max_shard_bytes)
                    if not preview_rows:
                        preview_rows = _preview_arrays(table, order, spec.kind)
                stats[split] = {
                    "num_examples": stage.rows,
                    "num_structures": len(stage.structures),
                    "num_shards": len(files),
                    "num_bytes": sum((tmp_data / f).stat().st_size for f in files),
                }

    import yaml


    with atomic_path(out_dir / "assets" / f"preview-{config}.png") as tmp:
        render_preview(preview_rows, spec, tmp)
    atomic_write_text(out_dir / "specs" / f"{config}.yaml",
                      yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
    summary = {
        "name": spec.name, "version": spec.version, "config_name": config, "kind": spec.kind,
        "spec_hash": lineage["spec_hash"], "package_version": __version__, "shapes": shapes,
        "splits": stats, "features": features.to_dict(),
    }
    atomic_write_bytes(out_dir / "specs" / f"{config}.json",
                       (json.dumps(summary, indent=2) + "\n").encode())
    written = [out_dir / "assets" / f"preview-{config}.png", out_dir / "specs" / f"{config}.yaml",
               out_dir / "specs" / f"{config}.json"]
    if card:
        written.append(write_dataset_card(out_dir))
    for path in written:
        make_public(path)
    return out_dir


