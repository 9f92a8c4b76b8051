"""Prismatic engine: PyPrismatic with the HRTEM algorithm, used when importable (conda-forge's pyprismatic
2.x, or the CPU wheel that ``make prismatic`` builds from ``../shared/prismatic``; PyPI's 1.1.16 has no
HRTEM). Support is detected by feature (:func:`hrtem_support`), not by version number: the HRTEM code base
reports setup.py's 1.2.0 and has no ``__version__``.

Pipeline per frozen-phonon configuration (the configurations are drawn by :mod:`.phonons`, exactly as
for the other engines, and handed to Prismatic with zero thermal sigma):

1. write the Prismatic XYZ input with z flipped (:func:`flip_z`: Prismatic's beam enters at the largest z)
   and clamped into the cell (its writer wraps coordinates, which would move an atom on a face to the
   other side);
2. map the settings to ``pyprismatic.Metadata`` (:func:`prismatic_settings`): ``algorithm="hrtem"``,
   ``E0`` in keV, ``realspacePixelSize = sampling / 2`` (Prismatic returns its wave at *half* the
   resolution of its potential grid: it keeps the inner half of the spectrum), ``sliceThickness`` =
   our equalised slice thickness Δz·(1 + 1e-5) (Prismatic slices the cell into ceil(Lz/Δz) planes in
   float32; the margin keeps that at our number of slices), ``potential3D=False`` (the projected
   potential of each atom in its slice: our infinite projection; Prismatic's default integrates a 3-D
   potential over the slices instead), ``potBound``, no aberrations, ``numFP=1``,
   ``saveComplexOutputWave=True``;
3. read ``4DSTEM_simulation/data/realslices/HRTEM_fp####/data`` ([x, y, tilt], complex) from the HDF5
   output (:func:`read_hrtem_output`);
4. convert conventions (:func:`to_exit_surface`): Prismatic slices the *whole cell* from its entrance face
   (``PRISM01_calcPotential.cpp``: ``numPlanes = ceil(Lz/Δz)``, plane of an atom
   ``round((Lz − z')/Δz + 0.5) − 1``; with z' = Lz − z that is ⌊z/Δz⌋, our slice), transmits and propagates
   by Δz per plane, then back-propagates by Lz/2 (``propBack``, zero defocus at mid-cell;
   ``PRISM02_calcSMatrix.cpp``). Its wave is therefore ours propagated by (n·Δz' − Lz) − Lz/2, and we
   propagate it forward by Lz/2 − (n·Δz' − Lz). (An earlier version of this module assumed Prismatic sliced
   from the lowest atom and stopped after the last occupied plane, and propagated over that "gap" as well:
   1–2 slices too far; with the 3-D potential, no band limit and wrapped face atoms it was 16 % off the
   torch engine on the validation scenes, now 3–4 %.) Its defocus C1 is +C10, ours is defocus = −C10 at
   the exit surface: :func:`prismatic_c1`. Finally the wave is Fourier-resampled onto our grid
   (``gpts = ceil(cell / sampling)``) and band-limited to our antialias aperture (2/3 of our Nyquist
   frequency; Prismatic propagates a square band of 1/2 of its finer grid's Nyquist frequency).

Prismatic always uses Kirkland's parametrisation (a real-space projected potential cut at ``potBound``
and placed at the nearest pixel of its potential grid, i.e. atoms move by up to sampling/4 per axis).
The measured differences from the torch engine are in the README ("Prismatic").
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from ..device import usable_cpus
from ..errors import InputError
from ..limits import check_memory
from ..spectra import fourier_crop_complex
from ..structures.exporters import write_prismatic_xyz
from .physics import wavelength
from .torch_engine import Grid, antialias_aperture, slicing

HRTEM_GROUP = "4DSTEM_simulation/data/realslices"
_FP_RE = re.compile(r"^HRTEM_fp(\d{4})$")
POT_BOUND = 3.0  # Å
SLICE_MARGIN = 1e-5  # relative: Prismatic's ceil(Lz/Δz) in float32 must give our number of slices
HRTEM_FIELDS = ("saveComplexOutputWave", "potential3D", "minRtilt", "xTiltStep")
"""``pyprismatic.Metadata`` fields that came with the HRTEM algorithm (absent from PyPI's 1.1.16)."""


def hrtem_support() -> bool:
    """True when an importable pyprismatic has the HRTEM algorithm (its Metadata carries the HRTEM fields)."""
    try:
        import pyprismatic
    except ImportError:
        return False
    meta = getattr(pyprismatic, "Metadata", None)
    fields = set(getattr(meta, "fields", None) or ())
    return meta is not None and all(f in fields for f in HRTEM_FIELDS)


def prismatic_version() -> str | None:
    """pyprismatic's version (``__version__``, else the installed distribution's) when it supports HRTEM,
    else None."""
    if not hrtem_support():
        return None
    import pyprismatic

    version = getattr(pyprismatic, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as dist_version

            version = dist_version("pyprismatic")
        except Exception:  # noqa: BLE001 - any metadata problem: still usable
            version = "unknown"
    return f"{version}+hrtem"


def available() -> bool:
    return prismatic_version() is not None


def prismatic_settings(xyz: str | Path, output: str | Path, cell: np.ndarray, sampling: float, energy: float,
                       slice_thickness: float, seed: int = 0) -> dict:
    """``pyprismatic.Metadata`` attributes for one HRTEM run (see module docstring)."""
    _, dz = slicing(float(cell[2]), slice_thickness)
    return {
        "filenameAtoms": str(xyz),
        "filenameOutput": str(output),
        "algorithm": "hrtem",
        "E0": float(energy) / 1e3,  # keV
        "realspacePixelSizeX": float(sampling) / 2.0,
        "realspacePixelSizeY": float(sampling) / 2.0,
        "sliceThickness": float(dz) * (1.0 + SLICE_MARGIN),
        "potential3D": False,
        "potBound": POT_BOUND,
        "probeDefocus": 0.0,
        "C3": 0.0,
        "C5": 0.0,
        "numThreads": usable_cpus(),
        "numFP": 1,
        "includeThermalEffects": False,
        "saveComplexOutputWave": True,
        "tileX": 1,
        "tileY": 1,
        "tileZ": 1,
        "randomSeed": int(seed) % 100000,
    }


def read_hrtem_output(path: str | Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """HRTEM complex waves (F, nx, ny) of the first tilt of every ``HRTEM_fp####`` group, and the
    sampling (Δx, Δy) from the group's ``dim1``/``dim2`` coordinates when present."""
    import h5py

    path = Path(path)
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: cannot read Prismatic output: {exc}") from None
    with fh:
        if HRTEM_GROUP not in fh:
            raise InputError(f"{path}: no {HRTEM_GROUP} group (not a Prismatic HRTEM output)")
        group = fh[HRTEM_GROUP]
        names = sorted(n for n in group if _FP_RE.match(n))
        if not names:
            raise InputError(f"{path}: no HRTEM_fp#### groups (run with saveComplexOutputWave=True)")
        waves, sampling = [], None
        for name in names:
            data = group[name]["data"][()]
            if data.dtype.names:  # compound (r, i)
                data = data[data.dtype.names[0]] + 1j * data[data.dtype.names[1]]
            data = np.asarray(data)
            waves.append(data[..., 0] if data.ndim == 3 else data)
            if sampling is None and "dim1" in group[name] and "dim2" in group[name]:
                d1, d2 = group[name]["dim1"][()], group[name]["dim2"][()]
                if len(d1) > 1 and len(d2) > 1:
                    sampling = (float(d1[1] - d1[0]), float(d2[1] - d2[0]))
    return np.stack(waves).astype(np.complex64), sampling


def propagate(waves: np.ndarray, sampling: tuple[float, float], energy: float, distance: float) -> np.ndarray:
    """Free-space Fresnel propagation by ``distance`` Å: F⁻¹[exp(−iπλ·distance·|k|²) F ψ]."""
    nx, ny = waves.shape[-2:]
    kx = np.fft.fftfreq(nx, sampling[0])
    ky = np.fft.fftfreq(ny, sampling[1])
    kernel = np.exp(-1j * np.pi * wavelength(energy) * distance * (kx[:, None] ** 2 + ky[None] ** 2))
    return np.fft.ifft2(np.fft.fft2(waves) * kernel).astype(np.complex64)


def flip_z(atoms: Atoms) -> Atoms:
    """Copy of ``atoms`` with z' = Lz − z, clamped into [ε, Lz − ε] (ε = 1e-5 Å). Prismatic's beam enters at
    the *largest* z (plane ``round((Lz − z')/Δz + 0.5) − 1``, PRISM01_calcPotential.cpp); ours (torch,
    abTEM) enters at z = 0. Writing z' makes Prismatic traverse the specimen in our order; the clamp keeps
    atoms on (or, displaced by phonons, just past) a face in the slice the torch engine puts them in, since
    the XYZ writer wraps coordinates into the cell."""
    lz = float(atoms.cell[2, 2])
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions.copy(), cell=atoms.cell, pbc=True)
    eps = min(1e-5, lz / 4)
    out.positions[:, 2] = np.clip(lz - out.positions[:, 2], eps, lz - eps)
    return out


def prismatic_slice_thickness(cell_z: float, slice_thickness: float) -> float:
    """The ``sliceThickness`` handed to Prismatic: our equalised Δz·(1 + :data:`SLICE_MARGIN`)."""
    return slicing(float(cell_z), slice_thickness)[1] * (1.0 + SLICE_MARGIN)


def prismatic_planes(z: np.ndarray, dz: float, cell_z: float) -> tuple[np.ndarray, int]:
    """Prismatic's plane of each atom and its number of planes, for our (unflipped) z [Å] written by
    :func:`flip_z`, with Prismatic's slice thickness ``dz``: plane = round((Lz − z')/Δz + 0.5) − 1 (C
    rounding, halves away from zero) = ⌊z/Δz⌋ for z in (0, Lz); planes = ceil(Lz/Δz). Prismatic slices the
    whole cell from its entrance face, as we do."""
    z = np.asarray(z, dtype=np.float64)
    lz = float(cell_z)
    flipped = np.clip(lz - z, min(1e-5, lz / 4), lz - min(1e-5, lz / 4))
    x = (lz - flipped) / dz + 0.5
    index = (np.floor(x + 0.5) - 1).astype(np.int64)  # C round() for x >= 0
    return index, int(np.ceil(lz / dz))


def output_overshoot(cell_z: float, slice_thickness: float) -> float:
    """How far [Å] past our exit surface Prismatic's multislice ends before its back-propagation:
    planes·Δz' − Lz (≈ 1e-5·Lz with the slice margin)."""
    dz = prismatic_slice_thickness(cell_z, slice_thickness)
    return int(np.ceil(float(cell_z) / dz)) * dz - float(cell_z)


def to_exit_surface(waves: np.ndarray, sampling: tuple[float, float], energy: float, thickness: float,
                    overshoot: float = 0.0) -> np.ndarray:
    """Prismatic's wave -> the wave at our exit surface. Prismatic's multislice ends ``overshoot`` Å past our
    exit surface (:func:`output_overshoot`) and then back-propagates by half the cell thickness (``propBack``,
    Lz/2: zero defocus at mid-cell), so we propagate forward by thickness/2 − overshoot."""
    return propagate(waves, sampling, energy, thickness / 2.0 - overshoot)


def prismatic_c1(defocus: float, thickness: float, overshoot: float = 0.0) -> float:
    """Prismatic C1 (= +C10, zero at its back-propagated plane) giving our ``defocus`` (= −C10, zero at the
    exit surface).

    Prismatic's wave is ours propagated by −(thickness/2 − overshoot), i.e. already carries
    C10 = −(thickness/2 − overshoot), so C1 = −defocus + thickness/2 − overshoot.
    """
    return -float(defocus) + float(thickness) / 2.0 - float(overshoot)


def band_limit(waves: np.ndarray, grid: Grid) -> np.ndarray:
    """``waves`` on ``grid`` times the torch engine's antialias aperture (2/3 of the Nyquist frequency)."""

    return np.fft.ifft2(np.fft.fft2(waves) * antialias_aperture(grid)).astype(np.complex64)


def fourier_resample(waves: np.ndarray, gpts: tuple[int, int]) -> np.ndarray:
    """Crop or zero-pad the centred spectrum to ``gpts`` (same field of view), keeping the mean value
    (:func:`hrtem_dataset.spectra.fourier_crop_complex` in double precision)."""
    if tuple(waves.shape[-2:]) == tuple(gpts):
        return waves.astype(np.complex64)
    out = fourier_crop_complex(torch.from_numpy(np.asarray(waves, dtype=np.complex128)), gpts)
    return out.numpy().astype(np.complex64)


def _write_xyz(atoms: Atoms, path: Path) -> None:
    """Prismatic's XYZ input; static atoms (thermal_sigma 0: the frozen phonons are drawn by us)."""
    write_prismatic_xyz(atoms, path, thermal_sigma={s: 0.0 for s in set(atoms.get_chemical_symbols())})


@contextlib.contextmanager
def _home(path: str):
    """$HOME and the working directory set to ``path`` while Prismatic runs: its core writes
    $HOME/prismatic_gui_params.txt and ./scratch_param.txt on every run (with HOME unset it would build a
    string from a null pointer). The working directory is per process: Prismatic runs are not thread-safe."""
    old, cwd = os.environ.get("HOME"), os.getcwd()
    os.environ["HOME"] = str(path)
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(cwd)
        if old is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old


@contextlib.contextmanager
def _quiet_stdout():
    """Prismatic's C++ core prints its progress to file descriptor 1: send it to /dev/null so that the JSON
    lines of ``hrtem simulate`` on stdout stay clean."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no usable fd 1
        with contextlib.redirect_stdout(io.StringIO()):
            yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        with contextlib.redirect_stdout(io.StringIO()):  # pyprismatic's own print of the run time
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def memory_estimate(cell: np.ndarray, n_configurations: int, sampling: float,
                    slice_thickness: float) -> tuple[int, str]:
    """(bytes, description): an upper estimate of the working memory of one Prismatic run and our
    post-processing. Prismatic's potential grid has twice our resolution (4x the points) and it keeps the
    projected potential (float32) and transmission function (complex64) of every slice; on our side the
    output waves, complex128 propagation/resampling buffers (~8 complex64 grids)."""
    grid = Grid.from_sampling(cell, sampling)
    nx, ny = grid.gpts
    n_slices, _ = slicing(float(cell[2]), slice_thickness)
    n = max(int(n_configurations), 1)
    fine = 4 * nx * ny
    return fine * n_slices * (4 + 8) + fine * 8 * 4 + nx * ny * 8 * (n + 8), \
        f"grid {nx} x {ny}, {n_slices} slices, {n} wave{'s' if n != 1 else ''}"


def exit_waves_prismatic(atoms: Atoms, configurations: np.ndarray, sampling: float = 0.1, energy: float = 300e3,
                         slice_thickness: float = 2.0, parametrization: str = "kirkland", phonons: int = 0,
                         seed: int = 0, rms=None) -> np.ndarray:
    """Exit waves with Prismatic for each configuration: complex64 (P, nx, ny) on our grid."""
    check_memory("simulation (prismatic engine)",
                 *memory_estimate(np.asarray(atoms.cell.lengths(), dtype=np.float64), np.asarray(configurations).size // max(3 * len(atoms), 1),
                                  sampling, slice_thickness))
    if not available():
        raise InputError("engine 'prismatic' needs pyprismatic with the HRTEM algorithm (conda install -c "
                         "conda-forge pyprismatic, or `make prismatic` with ../shared/prismatic)")
    import pyprismatic

    if parametrization != "kirkland":
        warnings.warn("Prismatic always uses the Kirkland parametrization", stacklevel=2)
    cell = np.asarray(atoms.cell.lengths(), dtype=np.float64)
    grid = Grid.from_sampling(cell, sampling)
    overshoot = output_overshoot(float(cell[2]), slice_thickness)
    out = []
    with tempfile.TemporaryDirectory(prefix="hrtem-prismatic-") as tmp:
        for i, positions in enumerate(np.asarray(configurations).reshape(-1, len(atoms), 3)):
            member = Atoms(numbers=atoms.numbers, positions=positions, cell=atoms.cell, pbc=True)
            xyz, h5 = Path(tmp) / f"config{i}.xyz", Path(tmp) / f"config{i}.h5"
            _write_xyz(flip_z(member), xyz)
            meta = pyprismatic.Metadata(filenameAtoms=str(xyz), filenameOutput=str(h5))
            for key, value in prismatic_settings(xyz, h5, cell, sampling, energy, slice_thickness, seed + i).items():
                setattr(meta, key, value)
            with _quiet_stdout(), _home(tmp):  # its core writes its parameter files to $HOME and to the cwd
                meta.go()
            waves, got = read_hrtem_output(h5)
            got = got or (cell[0] / waves.shape[-2], cell[1] / waves.shape[-1])
            wave = to_exit_surface(waves[:1], got, energy, float(cell[2]), overshoot)
            out.append(band_limit(fourier_resample(wave, grid.gpts), grid)[0])
    return np.stack(out)
