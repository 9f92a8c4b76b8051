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
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import atomic_dir, atomic_path, atomic_write_bytes, atomic_write_text
from ..specs import DatasetSpec, load_spec
from .features import SPLITS, column_docs, exit_wave_features, image_features

DEFAULT_MAX_SHARD_BYTES = 500 * 1024**2
"""Upper bound of one shard in uncompressed Arrow bytes (``push_to_hub``'s default ``max_shard_size``)."""
MAX_ROW_GROUP_BYTES = 100 * 1024**2
"""Upper bound of one row group (``datasets.config.MAX_ROW_GROUP_SIZE``)."""
MAX_ROW_GROUP_ROWS = 100
STAGING_BATCH_ROWS = 8
PREVIEW_SAMPLES = 4

_FILLED_BY_WRITER = ("package_version", "spec_hash", "dataset_version", "config_name")


def _world_readable(path: Path) -> None:
    """Atomic writes create owner-only temporaries (mkstemp/mkdtemp); published files are 0644/0755."""
    os.chmod(path, 0o755 if path.is_dir() else 0o644)


def version_dir(root: str | Path, spec: DatasetSpec) -> Path:
    """Local folder of one dataset version: ``<root>/<name>/<version>/`` (versions side by side)."""
    return Path(root) / spec.name / spec.version


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


# --------------------------------------------------------------------------------------------------
# Row validation and normalisation
# --------------------------------------------------------------------------------------------------


def contrast_stretch(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """8-bit copy of ``image``: the ``low``–``high`` percentile range mapped linearly onto 0–255."""
    a = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(a, [low, high])
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.round(np.clip((a - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes (mode ``L``) of a 2-D uint8 array; rows = first axis. Deterministic (no metadata)."""
    from PIL import Image

    buf = BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite_or_null(obj: Any) -> Any:
    """Recursively replace NaN/inf floats by None (strict JSON has no NaN; viewers reject it)."""
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return _finite_or_null(obj.tolist())
    if isinstance(obj, Mapping):
        return {str(k): _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_null(v) for v in obj]
    return obj


def to_json(value: Any, where: str) -> str:
    """Canonical JSON text (sorted keys, NaN -> null) of ``value``; a string must already be valid JSON."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            raise InputError(f"{where}: not valid JSON") from None
        return value
    try:
        return json.dumps(_finite_or_null(value), sort_keys=True, separators=(",", ":"), default=_json_default,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: cannot serialise to JSON ({exc})") from None


class _RowContext:
    def __init__(self, split: str, index: int, row: Mapping):
        self.split, self.index, self.row = split, index, row
        sid = row.get("sample_id") if isinstance(row, Mapping) else None
        self.where = f"split {split!r} row {index}" + (f" (sample_id {sid!r})" if sid is not None else "")

    def err(self, column: str, msg: str) -> InputError:
        return InputError(f"{self.where}: column {column!r}: {msg}")

    def get(self, column: str, default: Any = ..., *, conditions: bool = False) -> Any:
        if column in self.row:
            return self.row[column]
        if conditions and isinstance(self.row.get("conditions"), Mapping) and column in self.row["conditions"]:
            return self.row["conditions"][column]
        if default is ...:
            raise InputError(f"{self.where}: missing column {column!r}")
        return default

    def array(self, column: str, ndim: int, kinds: str, dtype, value: Any = ...) -> np.ndarray:
        value = self.get(column) if value is ... else value
        try:
            a = np.asarray(value)
        except Exception as exc:  # noqa: BLE001 - anything that is not array-like
            raise self.err(column, f"not an array ({exc})") from None
        if a.ndim != ndim:
            raise self.err(column, f"expected a {ndim}-D array, got shape {a.shape}")
        if a.dtype.kind not in kinds:
            raise self.err(column, f"unsupported dtype {a.dtype}")
        if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
            raise self.err(column, "contains NaN or inf")
        return np.ascontiguousarray(a, dtype=dtype)

    def number(self, column: str, kind: type, default: Any = ..., *, nullable: bool = False,
               conditions: bool = False) -> Any:
        value = self.get(column, default, conditions=conditions)
        if value is None:
            if nullable:
                return None
            raise self.err(column, "must not be null")
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        try:
            out = kind(value)
        except (TypeError, ValueError):
            raise self.err(column, f"expected a number, got {value!r}") from None
        if kind is float and not math.isfinite(out):
            raise self.err(column, "must be finite")
        return out

    def text(self, column: str, default: Any = ...) -> str:
        value = self.get(column, default)
        if not isinstance(value, str) or not value:
            raise self.err(column, f"expected a non-empty string, got {value!r}")
        return value


def _check_columns(ctx: _RowContext, known: set[str]) -> None:
    """Unknown keys are errors (a typo must not silently drop lineage); ``split`` must match."""
    unknown = sorted(str(k) for k in ctx.row if k not in known)
    if unknown:
        raise InputError(f"{ctx.where}: unknown column {unknown[0]!r} (put extra lineage into 'conditions' or "
                         "'structure')")
    if "split" in ctx.row and ctx.row["split"] != ctx.split:
        raise ctx.err("split", f"row says {ctx.row['split']!r} but was given in split {ctx.split!r}")


def _mask(ctx: _RowContext, shape: tuple[int, ...]) -> np.ndarray:
    m = ctx.array("mask", 2, "biuf", np.float64)
    if m.shape != shape:
        raise ctx.err("mask", f"shape {m.shape} differs from {shape}")
    if not np.all((m == 0) | (m == 1)):
        raise ctx.err("mask", "class indices must be 0 (background) or 1 (particle)")
    return m.astype(np.uint8)


def _instances(ctx: _RowContext, shape: tuple[int, ...]) -> np.ndarray:
    inst = ctx.array("instances", 2, "biu", np.int64)
    if inst.shape != shape:
        raise ctx.err("instances", f"shape {inst.shape} differs from {shape}")
    if inst.size and (inst.min() < 0 or inst.max() > np.iinfo(np.int32).max):
        raise ctx.err("instances", "ids must be >= 0 and fit in int32")
    return inst.astype(np.int32)


def _preview(ctx: _RowContext, source: np.ndarray, shape: tuple[int, ...]) -> bytes:
    if ctx.row.get("preview") is None:
        return encode_png(contrast_stretch(source))
    p = ctx.array("preview", 2, "u", np.uint8)
    if p.shape != shape:
        raise ctx.err("preview", f"shape {p.shape} differs from {shape}")
    return encode_png(p)


def _structure_columns(ctx: _RowContext) -> dict:
    structure = ctx.get("structure")
    if not isinstance(structure, str | Mapping):
        raise ctx.err("structure", "expected a dict or a JSON string")
    sdict = json.loads(structure) if isinstance(structure, str) else structure
    particles = ctx.get("particles", sdict.get("particles") if isinstance(sdict, Mapping) else ...)
    plist = json.loads(particles) if isinstance(particles, str) else particles
    if not isinstance(plist, list):
        raise ctx.err("particles", "expected a list of per-particle dicts (or its JSON)")
    default_materials = ...
    for candidates in (plist, sdict.get("particles") if isinstance(sdict, Mapping) else None):
        if isinstance(candidates, list) and all(isinstance(p, Mapping) and "material" in p for p in candidates):
            default_materials = [str(p["material"]) for p in candidates]
            break
    materials = ctx.get("materials", default_materials)
    if isinstance(materials, str) or not all(isinstance(m, str) for m in materials):
        raise ctx.err("materials", "expected a list of strings")
    sub = sdict.get("substrate") if isinstance(sdict, Mapping) else None
    substrate = ctx.get("substrate_thickness", sub.get("thickness") if isinstance(sub, Mapping) else None)
    return {
        "n_particles": ctx.number("n_particles", int, len(plist)),
        "materials": [str(m) for m in materials],
        "substrate_thickness": None if substrate is None else ctx.number("substrate_thickness", float, substrate),
        "structure": to_json(structure, f"{ctx.where}: column 'structure'"),
        "particles": to_json(particles, f"{ctx.where}: column 'particles'"),
    }


def _common_lineage(ctx: _RowContext, spec: DatasetSpec, lineage: dict) -> dict:
    sampling = ctx.get("sampling", spec.simulation.sampling)
    s = np.atleast_1d(np.asarray(sampling, dtype=np.float64))
    if s.shape not in ((1,), (2,)) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ctx.err("sampling", f"expected a positive number or (sx, sy), got {sampling!r}")
    out = {
        "sample_id": ctx.text("sample_id"),
        "structure_id": ctx.text("structure_id"),
        "seed": ctx.number("seed", int),
        "pixel_size": ctx.number("pixel_size", float, conditions=True),
        "zero_defocus": ctx.number("zero_defocus", float, conditions=True),
        **_structure_columns(ctx),
        "energy": ctx.number("energy", float, spec.simulation.energy),
        "sampling": [float(s[0]), float(s[-1])],
        "phonons": ctx.number("phonons", int, spec.simulation.phonons),
        "engine": ctx.text("engine", spec.simulation.engine),
        "engine_version": ctx.text("engine_version"),
    }
    if not -(2**63) <= out["seed"] < 2**63:
        raise ctx.err("seed", "must fit in int64")
    if out["pixel_size"] <= 0:
        raise ctx.err("pixel_size", "must be > 0")
    for col in _FILLED_BY_WRITER:
        if col in ctx.row and str(ctx.row[col]) != lineage[col]:
            raise ctx.err(col, f"{ctx.row[col]!r} does not match the spec ({lineage[col]!r})")
    out.update(lineage)
    return out


def prepare_image_row(ctx: _RowContext, spec: DatasetSpec, lineage: dict) -> dict:
    """Validate one ``images`` row; numpy arrays and plain values in schema order."""
    image = ctx.array("image", 2, "fiu", np.float32)
    shape = image.shape
    mask = _mask(ctx, shape)
    row = {
        "image": image,
        "mask": encode_png(mask),
        "instances": _instances(ctx, shape),
        "preview": _preview(ctx, image, shape),
    }
    lin = _common_lineage(ctx, spec, lineage)
    conditions = ctx.row.get("conditions")
    imaging = {
        "defocus": ctx.number("defocus", float, conditions=True),
        "Cs": ctx.number("Cs", float, conditions=True),
        "dose": ctx.number("dose", float, nullable=True, conditions=True),
        "focal_spread": ctx.number("focal_spread", float, conditions=True),
        "angular_spread": ctx.number("angular_spread", float, conditions=True),
        "aberrations": to_json(ctx.get("aberrations", {}, conditions=True), f"{ctx.where}: column 'aberrations'"),
    }
    if conditions is None:
        conditions = {k: (json.loads(v) if k == "aberrations" else v) for k, v in imaging.items()}
        conditions["pixel_size"] = lin["pixel_size"]
    imaging["conditions"] = to_json(conditions, f"{ctx.where}: column 'conditions'")
    row.update(lin)
    row.update(imaging)
    return row


def prepare_exit_wave_row(ctx: _RowContext, spec: DatasetSpec, lineage: dict) -> dict:
    """Validate one ``exit_waves`` row (``waves`` complex (P, nx, ny) or ``waves_real``/``waves_imag``)."""
    if "waves" in ctx.row:
        w = np.asarray(ctx.row["waves"])
        if w.ndim == 2:
            w = w[None]
        w = ctx.array("waves", 3, "fc", np.complex64, value=w)
        real, imag = np.ascontiguousarray(w.real), np.ascontiguousarray(w.imag)
    else:
        real = ctx.array("waves_real", 3, "f", np.float32)
        imag = ctx.array("waves_imag", 3, "f", np.float32)
        if real.shape != imag.shape:
            raise ctx.err("waves_imag", f"shape {imag.shape} differs from waves_real {real.shape}")
    mask = _mask(ctx, np.asarray(ctx.get("mask")).shape)
    phase = np.angle(real[0] + 1j * imag[0])
    row = {
        "waves_real": real.astype(np.float32, copy=False),
        "waves_imag": imag.astype(np.float32, copy=False),
        "mask": encode_png(mask),
        "instances": _instances(ctx, mask.shape),
        "preview": _preview(ctx, phase, phase.shape),
    }
    row.update(_common_lineage(ctx, spec, lineage))
    return row


# --------------------------------------------------------------------------------------------------
# Arrow encoding
# --------------------------------------------------------------------------------------------------


def _array_storage(arrays: list[np.ndarray], storage_type):
    """Nested list storage of ``datasets`` ArrayXD from equally shaped numpy arrays, without Python loops."""
    import pyarrow as pa

    stacked = np.stack(arrays)
    values = pa.array(stacked.reshape(-1))
    for axis in range(stacked.ndim - 1, 0, -1):
        n_lists = int(np.prod(stacked.shape[:axis]))
        offsets = pa.array(np.arange(n_lists + 1, dtype=np.int64) * stacked.shape[axis], type=pa.int32())
        values = pa.ListArray.from_arrays(offsets, values)
    return values.cast(storage_type) if values.type != storage_type else values


def encode_batch(rows: list[dict], features):
    """A ``pyarrow.RecordBatch`` with ``features.arrow_schema`` from prepared rows."""
    import pyarrow as pa
    from datasets import Image

    schema = features.arrow_schema
    columns = []
    for fld in schema:
        values = [r[fld.name] for r in rows]
        feat = features[fld.name]
        if isinstance(fld.type, pa.ExtensionType):
            storage = _array_storage(values, fld.type.storage_type)
            columns.append(pa.ExtensionArray.from_storage(fld.type, storage))
        elif isinstance(feat, Image):
            columns.append(pa.array([{"bytes": v, "path": None} for v in values], type=fld.type))
        else:
            columns.append(pa.array(values, type=fld.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


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

    from .. import __version__

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
            _world_readable(tmp_data)
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

    from .card import render_preview, write_dataset_card

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
        _world_readable(path)
    return out_dir


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


@dataclass
class LeakageReport:
    """Outcome of :func:`check_no_leakage`: ``passed`` is False when a structure is in two splits."""

    passed: bool
    structures: dict[str, int]
    shared: dict[str, list[str]]

    @property
    def description(self) -> str:
        if self.passed:
            counts = ", ".join(f"{s}: {n}" for s, n in self.structures.items())
            return f"no structure in two splits ({counts} structures)"
        pairs = "; ".join(f"{k}: {', '.join(v[:5])}" for k, v in self.shared.items())
        return f"structures shared between splits: {pairs}"


def split_files(folder: str | Path, config: str) -> dict[str, list[Path]]:
    """Parquet shards of each split of ``config`` in a dataset folder."""
    data = Path(folder) / "data" / config
    if not data.is_dir():
        raise InputError(f"{data}: no such configuration directory")
    out = {}
    for split in SPLITS:
        files = sorted(data.glob(f"{split}-*-of-*.parquet"))
        if files:
            out[split] = files
    return out


def check_no_leakage(folder: str | Path, config: str) -> LeakageReport:
    """Read ``structure_id`` of every split of ``config`` and report structures found in two splits."""
    import pyarrow.parquet as pq

    ids: dict[str, set[str]] = {}
    for split, files in split_files(folder, config).items():
        ids[split] = set()
        for f in files:
            try:
                table = pq.read_table(f, columns=["structure_id"])
            except (OSError, ValueError, KeyError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise InputError(f"{f}: not a readable parquet file with a structure_id column "
                                 f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
            ids[split].update(table.column("structure_id").to_pylist())
    shared = {}
    names = list(ids)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = sorted(ids[a] & ids[b])
            if common:
                shared[f"{a}/{b}"] = common
    return LeakageReport(passed=not shared, structures={s: len(v) for s, v in ids.items()}, shared=shared)
