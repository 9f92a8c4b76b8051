"""Concrete per-image imaging conditions drawn from an :class:`~hrtem_dataset.specs.ImagingDistributionSpec`.

For each structure, ``images_per_structure`` base conditions are drawn (every :data:`Param` sampled
independently); with a ``series`` each base condition is repeated once per series value with that one
parameter set to the value, so a defocus series differs only in defocus. Draws come from
``seeding.rng(seed, "imaging", i)`` — the same spec and seed give the same conditions.

Each condition dict (JSON-able) has: ``image_index``, ``series_index`` (or None), ``pixel_size`` [Å],
``defocus`` [Å, relative to the structure's calibrated zero defocus, = −C10, > 0 underfocus],
``Cs`` [Å], ``aberrations`` (Krivanek C_nm [Å] / phi_nm [rad]), ``semiangle_cutoff`` [mrad or None],
``focal_spread`` [Å], ``angular_spread`` [mrad], ``dose`` [e/Å² or None], ``mtf`` (dict),
``read_noise`` [counts], ``recorded_pixel_size`` [Å, only when the spec sets it] and ``noise_seed`` (int, for :func:`.image.render_image`).
"""

from __future__ import annotations

import math

from ..errors import InputError
from ..seeding import derive_seed, rng
from ..specs import ImagingDistributionSpec, sample_param
from .detector import validate_mtf


def _num(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"imaging.{name}: expected a number, got {value!r}") from None
    if not math.isfinite(v):
        raise InputError(f"imaging.{name}: must be finite, got {value!r}")
    return v


def _draw(spec: ImagingDistributionSpec, seed: int, index: int) -> dict:
    g = rng(seed, "imaging", index)
    cond: dict = {
        "image_index": index,
        "series_index": None,
        "pixel_size": float(spec.pixel_size),
        "defocus": _num(sample_param(spec.defocus, g), "defocus"),
        "Cs": _num(sample_param(spec.Cs, g), "Cs"),
        "aberrations": {
            k: _num(sample_param(v, g), f"aberrations.{k}") for k, v in sorted(spec.aberrations.items())
        },
        "semiangle_cutoff": None if spec.semiangle_cutoff is None else float(spec.semiangle_cutoff),
        "focal_spread": _num(sample_param(spec.focal_spread, g), "focal_spread"),
        "angular_spread": _num(sample_param(spec.angular_spread, g), "angular_spread"),
        "dose": None if spec.dose is None else _num(sample_param(spec.dose, g), "dose"),
        "mtf": dict(spec.mtf),
        "read_noise": float(spec.read_noise),
    }
    if spec.recorded_pixel_size is not None:  # drawn last: configurations without it keep their streams
        cond["recorded_pixel_size"] = _num(sample_param(spec.recorded_pixel_size, g), "recorded_pixel_size")
    for key in ("focal_spread", "angular_spread"):
        if cond[key] < 0:
            raise InputError(f"imaging.{key}: must be >= 0, got {cond[key]}")
    if cond["dose"] is not None and cond["dose"] <= 0:
        raise InputError(f"imaging.dose: must be > 0 e/Å², got {cond['dose']}")
    return cond


def sample_imaging_conditions(spec: ImagingDistributionSpec, seed: int) -> list[dict]:
    """``images_per_structure`` (× series length) concrete condition dicts for one structure."""
    validate_mtf(spec.mtf)
    out = []
    for i in range(spec.images_per_structure):
        base = _draw(spec, seed, i)
        if spec.series is None:
            base["noise_seed"] = derive_seed(seed, "noise", i)
            out.append(base)
            continue
        for j, value in enumerate(spec.series.values):
            c = {**base, "aberrations": dict(base["aberrations"]), "series_index": j}
            v = _num(value, f"series.values[{j}]")
            if spec.series.param == "dose" and v <= 0:
                raise InputError(f"imaging.series.values[{j}]: dose must be > 0, got {v}")
            if spec.series.param in ("focal_spread", "angular_spread") and v < 0:
                raise InputError(f"imaging.series.values[{j}]: must be >= 0, got {v}")
            c[spec.series.param] = v
            c["noise_seed"] = derive_seed(seed, "noise", i, j)
            out.append(c)
    return out
