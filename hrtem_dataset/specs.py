"""Pydantic specs: one :class:`DatasetSpec` (YAML in ``configs/``) travels end to end.

Units: lengths in Å, beam energy in eV, angles in mrad, dose in e/Å², surface energies
in arbitrary consistent units. Unknown keys are rejected (``extra="forbid"``) and unphysical values raise
with a message that names the field; :func:`load_spec` turns both into :class:`~hrtem_dataset.errors.InputError`.

Sections (each owned by one stage):
- structures: :class:`SceneSpec` (one concrete scene) and :class:`StructureDistributionSpec`
- simulation: :class:`SimulationSpec`
- imaging: :class:`ImagingDistributionSpec` (ranges; each image records its concrete values)
- labels: :class:`LabelSpec`
- dataset: :class:`SplitSpec`, :class:`DatasetSpec`

Size: over 400 lines because it is deliberately the one place for every spec section and every bound
(the issue-10 rule: functions validate through these models too).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .crystals import get_crystal
from .errors import InputError, format_validation_error
from .seeding import spec_hash


class Strict(BaseModel):
    """Base: unknown keys are errors, assignments are validated, NaN and ±inf are never valid numbers, and a
    boolean is not a number (YAML ``true`` is not 1 Å)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, strict=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data):
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                v = data.get(name)
                if isinstance(v, bool) and field.annotation in (float, int, float | None, int | None):
                    raise ValueError(f"{name}: expected a number, got {str(v).lower()}")
                if not _allows_bool(field.annotation):  # e.g. weights: [true, 1], position: [true, 3]
                    items = v.values() if isinstance(v, dict) and _is_mapping_type(field.annotation) else (
                        v if isinstance(v, list | tuple) else [v])
                    if any(isinstance(x, bool) for x in items):
                        raise ValueError(f"{name}: expected a number, got a boolean")
        return data


def _allows_bool(annotation) -> bool:
    """Whether ``bool`` (or ``Any``) occurs anywhere in a field's type."""
    if annotation is bool or annotation is Any:
        return True
    return any(_allows_bool(a) for a in get_args(annotation))


def _is_mapping_type(annotation) -> bool:
    return get_origin(annotation) is dict or any(_is_mapping_type(a) for a in get_args(annotation))


# --------------------------------------------------------------------------------------------------
# Generic parameter distributions
# --------------------------------------------------------------------------------------------------


class Uniform(Strict):
    """Uniform draw in [min, max] (log-uniform when ``log: true``, both bounds must then be > 0)."""

    min: float
    max: float
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> Uniform:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        if self.log and self.min <= 0:
            raise ValueError("log-uniform needs min > 0")
        return self

    def sample(self, rng) -> float:
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.min), math.log(self.max))))
        return float(rng.uniform(self.min, self.max))

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.min, self.max)


class Choice(Strict):
    """Draw one of ``values`` (with optional ``weights``, normalised)."""

    values: list[Any] = Field(min_length=1)
    weights: list[float] | None = None

    @model_validator(mode="after")
    def _check(self) -> Choice:
        if self.weights is not None:
            if len(self.weights) != len(self.values):
                raise ValueError("weights must have the same length as values")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights must be >= 0 and not all zero")
        return self

    def sample(self, rng) -> Any:
        p = None
        if self.weights is not None:
            total = float(sum(self.weights))
            p = [w / total for w in self.weights]
        return self.values[int(rng.choice(len(self.values), p=p))]

    @property
    def bounds(self) -> tuple[float, float]:
        nums = [v for v in self.values if isinstance(v, int | float)]
        return (min(nums), max(nums)) if nums else (math.nan, math.nan)


Param = float | Uniform | Choice
"""A scalar parameter: a fixed number, ``{min, max[, log]}`` or ``{values: [...][, weights]}``."""


def sample_param(p: Param, rng) -> Any:
    """Concrete value of a :data:`Param` (fixed numbers are returned as they are)."""
    if isinstance(p, Uniform | Choice):
        return p.sample(rng)
    return p


def param_bounds(p: Param) -> tuple[float, float]:
    if isinstance(p, Uniform | Choice):
        return p.bounds
    return (float(p), float(p))


def _check_bounds(p: Param, lo: float, hi: float, what: str, unit: str) -> Param:
    """``p`` unchanged if every value it can take lies in (lo, hi]; else ValueError naming ``what``."""
    pmin, pmax = param_bounds(p)
    if not (pmin > lo and pmax <= hi):
        raise ValueError(f"{what} must lie in ({lo:g}, {hi:g}] {unit}, got [{pmin}, {pmax}]")
    return p


class IntRange(Strict):
    """Uniform integer draw in [min, max] (inclusive)."""

    min: int = Field(ge=0)
    max: int = Field(ge=0)

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self

    def sample(self, rng) -> int:
        return int(rng.integers(self.min, self.max + 1))


# --------------------------------------------------------------------------------------------------
# Structures
# --------------------------------------------------------------------------------------------------

Shape = Literal["sphere", "wulff", "decahedron", "icosahedron"]
_ZONE_RE = re.compile(r"^\[\s*-?\d+\s*,?\s*-?\d+\s*,?\s*-?\d+\s*\]$")


def _check_orientation(v: str) -> str:
    v = v.strip()
    if v == "random":
        return v
    if _ZONE_RE.match(v):
        parts = v.strip("[]").replace(",", " ").split()
        # "[110]" is three single-digit indices (as structures.particles.parse_zone_axis reads it)
        idx = [int(t) for t in (re.findall(r"-?\d", parts[0]) if len(parts) == 1 else parts)]
        if all(i == 0 for i in idx) or max(abs(i) for i in idx) > 100:
            raise ValueError(f"orientation {v!r}: zone-axis indices must be within ±100 and not all zero")
        return v
    raise ValueError(f"orientation must be 'random' or a zone axis like '[110]', got {v!r}")


class CellSpec(Strict):
    x: float = Field(gt=0, le=2000, description="cell size along x, Å")
    y: float = Field(gt=0, le=2000, description="cell size along y, Å")


class SubstrateSpec(Strict):
    kind: Literal["amorphous_carbon"] = "amorphous_carbon"
    thickness: float = Field(gt=0, le=1000, description="Å")
    density: float = Field(2.0, gt=0.1, le=4.0, description="g/cm³ (a-C is 1.8–2.3)")
    min_distance: float = Field(1.4, gt=0.5, le=3.0, description="minimum C–C distance, Å")


class ParticleSpec(Strict):
    material: str = Field(min_length=1, description="element symbol (default structure) or path to a CIF")
    shape: Shape = "sphere"
    radius: float = Field(gt=2.0, le=500.0, description="Å")
    twins: int = Field(0, ge=0, le=20)
    stacking_faults: int = Field(0, ge=0, le=20)
    orientation: str = "random"
    tilt_mrad: float = Field(0.0, ge=0, le=1000, description="random tilt away from the zone axis, mrad")
    position: Literal["center", "random"] | tuple[float, float] = "center"
    surface_energies: dict[str, float] | None = Field(
        None, description="Wulff only: facet family (e.g. '111') -> surface energy")
    twin_planes: list[int] | None = Field(
        None, description="twin layer indices along the stacking normal (0 = through the centre); random if None")
    stacking_fault_planes: list[int] | None = Field(
        None, description="stacking-fault layer indices (0 = through the centre); random if None")
    defect_min_spacing: float = Field(4.0, ge=0, le=100, description="minimum distance between defect planes, Å")
    marks_reentrance: int = Field(1, ge=0, le=6, description="decahedron: Marks re-entrance depth, layers (0 = Ino)")

    @field_validator("orientation")
    @classmethod
    def _orient(cls, v: str) -> str:
        return _check_orientation(v)

    @model_validator(mode="after")
    def _defect_planes(self) -> ParticleSpec:
        if self.twin_planes is not None and len(self.twin_planes) != self.twins:
            raise ValueError(f"twin_planes has {len(self.twin_planes)} entries but twins = {self.twins}")
        if self.stacking_fault_planes is not None and len(self.stacking_fault_planes) != self.stacking_faults:
            raise ValueError(f"stacking_fault_planes has {len(self.stacking_fault_planes)} entries "
                             f"but stacking_faults = {self.stacking_faults}")
        if self.shape in ("decahedron", "icosahedron") and (self.twins or self.stacking_faults):
            raise ValueError(f"{self.shape} particles are already multiply twinned: twins and "
                             "stacking_faults must be 0")
        return self


class SceneSpec(Strict):
    """One concrete scene, accepted by ``hrtem structures build``."""

    cell: CellSpec
    substrate: SubstrateSpec | None = None
    particles: list[ParticleSpec] = Field(default_factory=list)
    vacuum: float = Field(10.0, ge=0, le=500, description="vacuum padding above and below, Å")
    min_separation: float = Field(10.0, ge=0, le=500, description="minimum surface-to-surface gap, Å")
    embed: float = Field(0.0, ge=0, le=50, description="depth the particles sink into the substrate, Å")


class ParticleDistributionSpec(Strict):
    materials: Choice = Field(default_factory=lambda: Choice(values=["Au"]))
    shapes: Choice = Field(default_factory=lambda: Choice(values=["sphere"]))
    radius: Param = Field(default_factory=lambda: Uniform(min=10.0, max=35.0))
    twins: IntRange = Field(default_factory=lambda: IntRange(min=0, max=0))
    stacking_faults: IntRange = Field(default_factory=lambda: IntRange(min=0, max=0))
    max_defects: int | None = Field(None, ge=0, description="cap on twins + stacking faults per particle")
    defects: IntRange | None = Field(
        None, description="total planar defects per particle, uniform; overrides twins/stacking_faults")
    twin_fraction: float = Field(0.5, ge=0, le=1, description="with `defects`: probability a defect is a twin")
    defect_min_spacing: float = Field(4.0, ge=0, le=100, description="minimum distance between defect planes, Å")
    orientation: Choice = Field(default_factory=lambda: Choice(values=["random"]))
    tilt_mrad: Param = 0.0

    @field_validator("radius")
    @classmethod
    def _radius(cls, v: Param) -> Param:
        return _check_bounds(v, 2.0, 500.0, "radius", "Å")

    @field_validator("materials")
    @classmethod
    def _materials(cls, v: Choice) -> Choice:  # unknown materials before any run starts, not inside one
        for m in v.values:
            if not isinstance(m, str) or not m.strip():
                raise ValueError(f"expected material names (element symbols or CIF paths), got {m!r}")
            if not m.strip().lower().endswith(".cif"):
                try:
                    get_crystal(m)
                except InputError as exc:
                    raise ValueError(str(exc).removeprefix("material: ")) from None
        return v

    @field_validator("shapes")
    @classmethod
    def _shapes(cls, v: Choice) -> Choice:
        for s in v.values:
            if s not in ("sphere", "wulff", "decahedron", "icosahedron"):
                raise ValueError(f"unknown shape {s!r}")
        return v

    @field_validator("orientation")
    @classmethod
    def _orients(cls, v: Choice) -> Choice:
        for s in v.values:
            _check_orientation(str(s))
        return v


class StructureDistributionSpec(Strict):
    """Ranges or choices for every scene field; ``sample`` draws concrete :class:`SceneSpec` s."""

    cell: CellSpec = Field(default_factory=lambda: CellSpec(x=128.0, y=128.0))
    substrate_thickness: Param | None = Field(default_factory=lambda: Uniform(min=20.0, max=80.0))
    substrate_density: Param = 2.0
    n_particles: IntRange = Field(default_factory=lambda: IntRange(min=1, max=5))
    particles: ParticleDistributionSpec = Field(default_factory=ParticleDistributionSpec)
    min_separation: float = Field(10.0, ge=0, description="Å")
    vacuum: float = Field(10.0, ge=0)

    @field_validator("substrate_thickness")
    @classmethod
    def _thickness(cls, v: Param | None) -> Param | None:
        return v if v is None else _check_bounds(v, 0.0, 1000.0, "substrate thickness", "Å")

    @field_validator("substrate_density")
    @classmethod
    def _density(cls, v: Param) -> Param:
        return _check_bounds(v, 0.1, 4.0, "substrate density", "g/cm³")


# --------------------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------------------


ENGINE_ANTIALIASES_TRANSMISSION = {"torch": False, "abtem": True, "prismatic": False}
"""Whether each engine band-limits the transmission functions when ``antialias_transmission`` is null (abTEM
always does, Prismatic never; the torch engine does either)."""


class SimulationSpec(Strict):
    engine: Literal["torch", "abtem", "prismatic"] = "torch"
    energy: float = Field(300e3, ge=10e3, le=3e6, description="beam energy, eV")
    sampling: float = Field(0.1, gt=0.005, le=1.0, description="real-space sampling, Å")
    slice_thickness: float = Field(2.0, gt=0.1, le=50.0, description="Å")
    parametrization: Literal["lobato", "kirkland"] = "lobato"
    phonons: int = Field(1, ge=0, le=256, description="frozen-phonon configurations (0 = static lattice)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    antialias_transmission: bool | None = Field(
        None, description="band-limit each slice's transmission function to the antialias aperture before it "
        "multiplies the wave (abTEM's scheme: one FFT pair more per slice and wave) or not (Prismatic's: closer "
        "to converged runs at 0.1–0.2 Å); null = the engine's own (torch: false, abTEM: true, Prismatic: false)")

    @model_validator(mode="after")
    def _engine_scheme(self) -> SimulationSpec:
        own = ENGINE_ANTIALIASES_TRANSMISSION[self.engine]
        if self.antialias_transmission not in (None, own) and self.engine != "torch":
            raise ValueError(f"antialias_transmission: {self.engine} {'always' if own else 'never'} band-limits "
                             f"the transmission functions (set it to null or {str(own).lower()})")
        return self


# --------------------------------------------------------------------------------------------------
# Imaging
# --------------------------------------------------------------------------------------------------


# Detector MTF parameters (bounds here, used by hrtem_dataset.imaging.detector)
MTF_DEFAULTS: dict[str, float] = {"floor": 0.0, "half_width": 0.5, "power": 2.0}


def validate_mtf(params: Mapping[str, float] | None) -> dict[str, float] | None:
    """Complete ``params`` with defaults; ``None``/empty -> ``None`` (perfect detector)."""
    if not params:
        return None
    unknown = set(params) - set(MTF_DEFAULTS)
    if unknown:
        raise InputError(f"mtf: unknown parameter(s) {sorted(unknown)} (expected {sorted(MTF_DEFAULTS)})")
    p = {**MTF_DEFAULTS, **{k: float(v) for k, v in params.items()}}
    if not 0.0 <= p["floor"] < 1.0:
        raise InputError(f"mtf.floor: must be in [0, 1), got {p['floor']}")
    if not (p["half_width"] > 0 and math.isfinite(p["half_width"])):
        raise InputError(f"mtf.half_width: must be > 0, got {p['half_width']}")
    if not (p["power"] > 0 and math.isfinite(p["power"])):
        raise InputError(f"mtf.power: must be > 0, got {p['power']}")
    return p


class SeriesSpec(Strict):
    """Image every structure at each of ``values`` of one imaging parameter (e.g. a defocus series)."""

    param: Literal["defocus", "dose", "Cs", "focal_spread", "angular_spread"]
    values: list[float] = Field(min_length=1)


class ImagingDistributionSpec(Strict):
    """Imaging conditions; each image records its concrete values. Defocus is relative to the
    structure's calibrated zero defocus (minimum contrast of the particles in vacuum), defocus = -C10."""

    pixel_size: float = Field(0.2, gt=0.01, le=5.0, description="output pixel size, Å")
    recorded_pixel_size: Param | None = Field(
        None, description="detector pixel size, Å: the image is recorded (MTF, dose noise) at this size and "
        "resampled to pixel_size like `hrtem segment` resamples a micrograph; None = pixel_size")
    defocus: Param = 0.0
    Cs: Param = Field(0.0, description="spherical aberration C30, Å")
    aberrations: dict[str, Param] = Field(
        default_factory=dict, description="extra Krivanek coefficients: C12, phi12, C21, phi21, C23, ... (Å, rad)")
    semiangle_cutoff: float | None = Field(None, gt=0, description="objective aperture, mrad")
    focal_spread: Param = Field(0.0, description="Å (1/e half-width of the defocus distribution)")
    angular_spread: Param = Field(0.0, description="beam convergence semi-angle, mrad")
    dose: Param | None = Field(None, description="e/Å²; None = noise-free")
    mtf: dict[str, float] = Field(default_factory=dict, description="detector MTF parameters (see imaging)")
    read_noise: float = Field(0.0, ge=0, description="Gaussian read noise, counts")
    images_per_structure: int = Field(1, ge=1, le=1000)
    series: SeriesSpec | None = None
    calibrate_zero_defocus: bool = True
    calibration_steps: list[float] = Field(
        default_factory=lambda: [1.0, 0.1], min_length=1, max_length=4,
        description="zero-defocus search steps, Å, coarse to fine (paper: 1 then 0.1; each ≤ 2 Å keeps the "
        "few-Å features of crystalline particles' contrast curves)")
    calibration_search: Literal["grid", "fast", "parabolic"] = Field(
        "grid", exclude_if=lambda v: v == "grid",  # the default leaves spec hashes (and fingerprints) as they were
        description="zero-defocus search: 'grid' (the paper's: every step value on the full field), 'fast' "
        "(a band-limited scan confirmed on the full wave, particle windows, a downhill walk over the fine grid "
        "values from a parabola's vertex: the grid search's values with ≈ 8× fewer full-wave evaluations) or "
        "'parabolic' (the scan confirmed on the waves' band-limited 3/4 grid, then a parabola's vertex instead "
        "of the later steps: within one last step of the grid search's value, 2–3× faster than 'fast')")
    cropped_ifft: bool = Field(
        False, exclude_if=lambda v: v is False,  # the default leaves spec hashes (and fingerprints) as they were
        description="with an objective aperture (semiangle_cutoff), image on the smallest FFT grid that holds "
        "the output band without aliasing: the same images to float32 rounding (~1e-6), not the same bytes; on the "
        "CPU only (on a GPU the full grid is faster)")

    @model_validator(mode="after")
    def _physical(self) -> ImagingDistributionSpec:
        """Reject unphysical ranges up front (not after hours of simulation when a bad value is drawn)."""

        def numbers(p) -> list[float]:
            vals = p.values if isinstance(p, Choice) else ([p.min, p.max] if isinstance(p, Uniform) else [p])
            out = []
            for v in vals:
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise ValueError(f"expected finite numbers, got {v!r}")
                out.append(float(v))
            return out

        if self.recorded_pixel_size is not None:
            try:
                vals = numbers(self.recorded_pixel_size)
            except ValueError as exc:
                raise ValueError(f"recorded_pixel_size: {exc}") from None
            if min(vals) <= 0.01 or max(vals) > 5.0:
                raise ValueError(f"recorded_pixel_size: must be in (0.01, 5] Å, got {min(vals)}..{max(vals)}")
        for name in ("defocus", "Cs", "focal_spread", "angular_spread"):
            try:
                vals = numbers(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
            if name in ("focal_spread", "angular_spread") and min(vals) < 0:
                raise ValueError(f"{name}: must be >= 0, got {min(vals)}")
        for k, v in self.aberrations.items():
            try:
                numbers(v)
            except ValueError as exc:
                raise ValueError(f"aberrations.{k}: {exc}") from None
        if self.dose is not None:
            try:
                vals = numbers(self.dose)
            except ValueError as exc:
                raise ValueError(f"dose: {exc}") from None
            if min(vals) <= 0:
                raise ValueError(f"dose: must be > 0 e/Å², got {min(vals)}")
        if self.series is not None:
            if not all(math.isfinite(v) for v in self.series.values):
                raise ValueError("series.values: expected finite numbers")
            if self.series.param in ("dose",) and min(self.series.values) <= 0:
                raise ValueError("series.values: doses must be > 0 e/Å²")
            if self.series.param in ("focal_spread", "angular_spread") and min(self.series.values) < 0:
                raise ValueError(f"series.values: {self.series.param} must be >= 0")
        st = self.calibration_steps
        if not all(math.isfinite(v) and 0 < v <= 10 for v in st) or any(b >= a for a, b in zip(st, st[1:], strict=False)):
            raise ValueError(f"calibration_steps: need decreasing steps in (0, 10] Å, got {st}")
        if self.mtf:
            try:
                validate_mtf(self.mtf)
            except InputError as exc:
                raise ValueError(str(exc)) from None
        return self

    @field_validator("aberrations")
    @classmethod
    def _aberration_names(cls, v: dict) -> dict:
        ok = re.compile(r"^(C|phi)(10|12|21|23|30|32|34|41|43|45|50|52|54|56)$")
        for k in v:
            if not ok.match(k):
                raise ValueError(f"unknown aberration coefficient {k!r} (Krivanek C_nm / phi_nm)")
        return v


# --------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------


class LabelSpec(Strict):
    threshold: float = Field(math.pi / 16, gt=0, lt=math.pi, description="phase threshold, rad")
    blur: float = Field(1.0, ge=0, le=20, description="Gaussian blur sigma, Å")
    instances: bool = True
    phase: Literal["abs", "signed"] = Field(
        "abs", description="threshold |phase| (robust to wrapped thick columns) or the signed phase (paper)")
    plane: Literal["zero_defocus", "exit"] = Field(
        "zero_defocus", description="plane of the phase: the calibrated zero-defocus plane or the exit plane")


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


class SplitSpec(Strict):
    """Numbers of *structures* per split (a structure never appears in two splits)."""

    train: int = Field(8, ge=0)
    validation: int = Field(2, ge=0)
    test: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _not_empty(self) -> SplitSpec:
        if self.train + self.validation + self.test < 1:
            raise ValueError("at least one structure is needed (train + validation + test >= 1)")
        return self

    @property
    def total(self) -> int:
        return self.train + self.validation + self.test


DEFAULT_MIN_PARTICLE_AREA = 25.0
"""Å²: predicted particles smaller than this are dropped by default — an eighth of the smallest particle the
shipped configurations simulate (r = 8 Å: 201 Å²), a speck of 5.6 Å diameter. On au-generalist-cpu's simulated
test split it lifts particle detection F1 from 0.77 to 0.92 with the pixel F1 unchanged (0.942)."""
OPERATING_POINT = ("threshold", "min_particle_area")
"""The model fields that set the operating point: stored with a model and changed without retraining, so never
part of what a trained model depends on."""


class ModelTrainingSpec(Strict):
    """The one training spec: the ``model`` section of a dataset YAML, and the bounds of every training
    hyper-parameter (``models.train.TrainConfig`` adds the run-only knobs and validates through this model)."""

    encoder: str = "tu-resnet18"
    epochs: int = Field(5, ge=1, le=10**6)
    steps: int | None = Field(None, ge=1, le=10**9, description="total optimiser steps; overrides epochs")
    batch_size: int = Field(8, ge=1, le=4096)
    lr: float = Field(1e-3, gt=0)
    image_size: int | None = Field(None, ge=16, le=4096, description="random crop size for training (pixels)")
    min_f1: float = Field(0.0, ge=0, le=1, description="asset check floor on the evaluation F1 (test split, "
                          "else validation)")
    encoder_depth: int = Field(5, ge=1, le=5, description="U-Net depth (encoder stages used)")
    decoder_channels: list[int] | None = Field(
        None, description="decoder widths, one per stage (default 256, 128, 64, 32, 16 cut to the depth)")
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="operating point stored with the model: a "
                             "pixel is particle when P(particle) > threshold (0.5 = arg-max); not a training "
                             "hyper-parameter (changing it re-evaluates, it does not retrain)")
    min_particle_area: float = Field(
        DEFAULT_MIN_PARTICLE_AREA, ge=0.0, le=1e6,
        exclude_if=lambda v: v == DEFAULT_MIN_PARTICLE_AREA,  # the default leaves spec hashes as they were
        description="operating point, with threshold: predicted particles (8-connected) smaller than this "
        "many Å² are dropped from the mask (0 keeps all); not trained (changing it re-evaluates)")
    augment: Literal["dihedral", "realistic"] = Field(
        "dihedral", description="training augmentation: the 8 dihedral transforms, or those plus the "
        "degradations of real recording and processing (models.augment)")


_SEMVER = re.compile(r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")


def _semver(v: str) -> str:
    if not _SEMVER.match(v):
        raise ValueError(f"version must be semantic (MAJOR.MINOR.PATCH), got {v!r}")
    return v


SemVer = Annotated[str, AfterValidator(_semver)]
"""A semantic version string (MAJOR.MINOR.PATCH[-pre][+build]) — datasets and studies."""


class DatasetSpec(Strict):
    """The whole dataset configuration (one YAML file in ``configs/``)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="dataset repo name, e.g. hrtem-au-carbon")
    config_name: str = Field("default", pattern=r"^[a-z0-9][a-z0-9._-]*$", description="HF configuration name")
    kind: Literal["images", "exit_waves"] = "images"
    version: SemVer = "0.1.0"
    description: str = ""
    license: str = Field("cc-by-4.0", pattern=r"^[a-z0-9][a-z0-9.+-]*$",
                         description="license id of the published data (Hub dataset card)")
    seed: int = Field(0, ge=0, lt=2**63, description="root seed (every sample's seed derives from it)")
    structures: StructureDistributionSpec = Field(default_factory=StructureDistributionSpec)
    simulation: SimulationSpec = Field(default_factory=SimulationSpec)
    imaging: ImagingDistributionSpec = Field(default_factory=ImagingDistributionSpec)
    labels: LabelSpec = Field(default_factory=LabelSpec)
    splits: SplitSpec = Field(default_factory=SplitSpec)
    shard_size: int = Field(4, ge=1, description="structures per shard (= Dagster partition)")
    model: ModelTrainingSpec | None = None

    @model_validator(mode="after")
    def _pixel_size_vs_sampling(self) -> DatasetSpec:
        if self.imaging.pixel_size < self.simulation.sampling:
            raise ValueError(f"imaging.pixel_size ({self.imaging.pixel_size} Å) is finer than "
                             f"simulation.sampling ({self.simulation.sampling} Å): images are Fourier-cropped "
                             "from the exit waves, never interpolated up")
        rec = self.imaging.recorded_pixel_size
        if rec is not None:
            lo = param_bounds(rec)[0]
            if lo < self.simulation.sampling:
                raise ValueError(f"imaging.recorded_pixel_size ({lo} Å) is finer than simulation.sampling "
                                 f"({self.simulation.sampling} Å)")
        return self

    @property
    def n_structures(self) -> int:
        return self.splits.total

    @property
    def n_shards(self) -> int:
        return max(1, math.ceil(self.n_structures / self.shard_size))

    def shard_indices(self, shard: int) -> range:
        """Global structure indices in shard ``shard``."""
        if not 0 <= shard < self.n_shards:
            raise InputError(f"shard {shard} out of range 0..{self.n_shards - 1}")
        return range(shard * self.shard_size, min(self.n_structures, (shard + 1) * self.shard_size))

    def split_of(self, index: int) -> str:
        """Split of global structure ``index`` (deterministic, by structure)."""
        if index < self.splits.train:
            return "train"
        if index < self.splits.train + self.splits.validation:
            return "validation"
        return "test"

    def hash(self) -> str:
        return spec_hash(self)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file; missing or malformed files raise :class:`InputError` naming the file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise InputError(f"{p}: malformed YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read file: {exc}") from None


def validate_spec(data: Any, cls: type[M], source: str | None = None) -> M:
    """Validate plain data into ``cls``; errors become one-line :class:`InputError` s naming the field."""
    if not isinstance(data, dict):
        raise InputError(f"{source or cls.__name__}: expected a mapping at the top level")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise InputError(format_validation_error(exc, source)) from None


def load_spec(path: str | Path, cls: type[M]) -> M:
    """Load and validate a YAML spec file into ``cls``."""
    return validate_spec(read_yaml(path), cls, str(path))

