"""Row schema (``datasets.Features``) of the two kinds of dataset configuration.

``images`` configuration, one row per simulated image:

- ``image``: ``Array2D(float32)``, the raw image indexed ``[x, y]`` as everywhere in the project: detector
  counts (vacuum mean ≈ dose · pixel_size²) when a dose is set, intensity with vacuum ≈ 1 when noise-free.
- ``mask``: ``Image`` (PNG, mode ``L``), class indices 0 = background, 1 = particle. The PNG rows are the
  ``x`` axis, so ``np.asarray(row["mask"])`` lines up index for index with ``row["image"]``.
- ``instances``: ``Array2D(int32)``, 0 = background, k = particle k (1-based, same order as ``particles``).
- ``preview``: ``Image`` (PNG, mode ``L``), 8-bit contrast-stretched copy of ``image`` for the Hub viewer.
- lineage columns (:data:`LINEAGE_DOCS`): ids, seed, pixel size, every concrete imaging parameter, the
  structure parameters, engine, package version, spec hash, dataset version, configuration name.

``exit_waves`` configuration, one row per structure: the complex exit waves per frozen-phonon
configuration as two ``Array3D(float32)`` columns ``waves_real``/``waves_imag`` of shape (P, nx, ny) at
the simulation ``sampling``, plus the labels (``mask``, ``instances``) at ``pixel_size`` and the same
lineage columns except the per-image imaging parameters, so a training loop can image on the fly.

Array shapes are fixed per configuration (the cell and sampling/pixel size are fixed by the spec) and
are taken from the data when the configuration is written.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["images", "exit_waves"]
SPLITS = ("train", "validation", "test")

# Column -> one-line description (units in brackets). Used for validation messages and the dataset card.
ARRAY_DOCS_IMAGES: dict[str, str] = {
    "image": "raw HRTEM image, float32 [x, y]: detector counts (vacuum mean ≈ dose · pixel_size²) with a dose, "
             "intensity (vacuum ≈ 1) when noise-free",
    "mask": "binary particle mask, PNG mode L, 0 = background, 1 = particle (rows = x)",
    "instances": "instance map, int32 [x, y], 0 = background, k = particle k",
    "preview": "8-bit contrast-stretched image (0.5–99.5 percentile) for viewers, PNG mode L (rows = x)",
}
ARRAY_DOCS_WAVES: dict[str, str] = {
    "waves_real": "real part of the exit waves, float32 (phonon configuration, x, y), vacuum |psi| = 1",
    "waves_imag": "imaginary part of the exit waves, float32 (phonon configuration, x, y)",
    "mask": "binary particle mask at pixel_size, PNG mode L, 0 = background, 1 = particle (rows = x)",
    "instances": "instance map at pixel_size, int32 [x, y], 0 = background, k = particle k",
    "preview": "8-bit contrast-stretched phase of the first exit wave, PNG mode L (rows = x)",
}
LINEAGE_DOCS: dict[str, str] = {
    "sample_id": "unique row id (rows are sorted by it)",
    "structure_id": "id of the atomic structure; a structure belongs to exactly one split",
    "seed": "the sample's seed, derived from the dataset seed and the sample index",
    "pixel_size": "pixel size of image/mask/instances [Å]",
    "defocus": "defocus relative to zero_defocus [Å], defocus = -C10, positive = underfocus",
    "zero_defocus": "calibrated minimum-contrast defocus of the particles in vacuum [Å]",
    "Cs": "spherical aberration C30 [Å]",
    "dose": "electron dose [e/Å²]; null = noise-free",
    "focal_spread": "focal spread, 1/e half-width [Å]",
    "angular_spread": "beam convergence semi-angle [mrad]",
    "aberrations": "JSON: extra Krivanek coefficients C_nm [Å] / phi_nm [rad]",
    "conditions": "JSON: the complete concrete imaging conditions used for this image",
    "n_particles": "number of particles in the structure",
    "materials": "materials of the particles (one entry per particle)",
    "substrate_thickness": "amorphous carbon substrate thickness [Å]; null = no substrate",
    "structure": "JSON: every concrete structure parameter (scene record of the structure stage)",
    "particles": "JSON: per-particle table (material, shape, radius, twins, defects, orientation, ...)",
    "energy": "beam energy [eV]",
    "sampling": "simulation sampling (x, y) [Å]",
    "phonons": "number of frozen-phonon configurations (0 = static lattice)",
    "engine": "multislice engine (torch, abtem, prismatic)",
    "engine_version": "version of the multislice engine",
    "package_version": "hrtem-dataset version that wrote the row",
    "spec_hash": "hash of the DatasetSpec that made the row",
    "dataset_version": "semantic version of the dataset",
    "config_name": "dataset configuration name",
}

IMAGING_COLUMNS = ("defocus", "Cs", "dose", "focal_spread", "angular_spread", "aberrations", "conditions")


def lineage_columns(kind: Kind) -> list[str]:
    """Names of the lineage columns of a configuration kind, in schema order."""
    if kind == "images":
        return list(LINEAGE_DOCS)
    return [c for c in LINEAGE_DOCS if c not in IMAGING_COLUMNS]


def column_docs(kind: Kind) -> dict[str, str]:
    """Column -> description, in schema order."""
    arrays = ARRAY_DOCS_IMAGES if kind == "images" else ARRAY_DOCS_WAVES
    return {**arrays, **{c: LINEAGE_DOCS[c] for c in lineage_columns(kind)}}


def _lineage_features(kind: Kind) -> dict:
    from datasets import List, Value

    types = {
        "sample_id": Value("string"),
        "structure_id": Value("string"),
        "seed": Value("int64"),
        "pixel_size": Value("float32"),
        "defocus": Value("float64"),
        "zero_defocus": Value("float64"),
        "Cs": Value("float64"),
        "dose": Value("float64"),
        "focal_spread": Value("float64"),
        "angular_spread": Value("float64"),
        "aberrations": Value("string"),
        "conditions": Value("string"),
        "n_particles": Value("int32"),
        "materials": List(Value("string")),
        "substrate_thickness": Value("float64"),
        "structure": Value("string"),
        "particles": Value("string"),
        "energy": Value("float64"),
        "sampling": List(Value("float64")),
        "phonons": Value("int32"),
        "engine": Value("string"),
        "engine_version": Value("string"),
        "package_version": Value("string"),
        "spec_hash": Value("string"),
        "dataset_version": Value("string"),
        "config_name": Value("string"),
    }
    return {c: types[c] for c in lineage_columns(kind)}


def image_features(shape: tuple[int, int]):
    """``datasets.Features`` of an ``images`` configuration with images of ``shape`` = (mx, my)."""
    from datasets import Array2D, Features, Image

    shape = (int(shape[0]), int(shape[1]))
    return Features({
        "image": Array2D(shape=shape, dtype="float32"),
        "mask": Image(),
        "instances": Array2D(shape=shape, dtype="int32"),
        "preview": Image(),
        **_lineage_features("images"),
    })


def exit_wave_features(waves_shape: tuple[int, int, int], label_shape: tuple[int, int]):
    """``datasets.Features`` of an ``exit_waves`` configuration: waves (P, nx, ny), labels (mx, my)."""
    from datasets import Array2D, Array3D, Features, Image

    waves_shape = tuple(int(s) for s in waves_shape)
    label_shape = (int(label_shape[0]), int(label_shape[1]))
    return Features({
        "waves_real": Array3D(shape=waves_shape, dtype="float32"),
        "waves_imag": Array3D(shape=waves_shape, dtype="float32"),
        "mask": Image(),
        "instances": Array2D(shape=label_shape, dtype="int32"),
        "preview": Image(),
        **_lineage_features("exit_waves"),
    })
