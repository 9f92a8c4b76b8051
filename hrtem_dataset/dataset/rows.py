"""Row schema of a dataset configuration: validation and normalisation of the rows the stages hand to
the writer (:func:`prepare_image_row`, :func:`prepare_exit_wave_row`: dtypes, shapes, masks, instance maps,
preview PNGs, canonical JSON columns via :func:`to_json`) and their Arrow encoding with the configuration's
``datasets.Features`` (:func:`encode_batch`). The columns are documented in :mod:`.features`; the writer
(:mod:`.writer`) stages, sorts and writes what this module returns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InputError
from ..jsonsafe import finite
from ..previews import contrast_stretch, encode_png
from ..specs import DatasetSpec

_FILLED_BY_WRITER = ("package_version", "spec_hash", "dataset_version", "config_name")


# --------------------------------------------------------------------------------------------------
# Row validation and normalisation
# --------------------------------------------------------------------------------------------------


def to_json(value: Any, where: str) -> str:
    """Canonical JSON text (sorted keys, NaN -> null) of ``value``; a string must already be valid JSON."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            raise InputError(f"{where}: not valid JSON") from None
        return value
    try:
        return json.dumps(finite(value), sort_keys=True, separators=(",", ":"),
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


