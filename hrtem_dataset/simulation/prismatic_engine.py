"""Prismatic engine: pyprismatic >= 2 (conda-forge; PyPI's 1.1.16 has no HRTEM), used when importable.

Pipeline per frozen-phonon configuration (the configurations are drawn by :mod:`.phonons`, exactly as
for the other engines, and handed to Prismatic with zero thermal sigma):

1. write the Prismatic XYZ input (``hrtem_dataset.structures.write_prismatic_xyz`` when available);
2. map the settings to ``pyprismatic.Metadata`` (:func:`prismatic_settings`): ``algorithm="hrtem"``,
   ``E0`` in keV, ``realspacePixelSize = sampling / 2`` (Prismatic returns its wave at *half* the
   resolution of its potential grid: it keeps the inner half of the spectrum), ``sliceThickness`` =
   our equalised slice thickness, ``potBound``, ``numFP=1``, ``saveComplexOutputWave=True``;
3. read ``4DSTEM_simulation/data/realslices/HRTEM_fp####/data`` ([x, y, tilt], complex) from the HDF5
   output (:func:`read_hrtem_output`);
4. convert conventions (:func:`to_exit_surface`): Prismatic's beam enters at the largest z, so z is
   written flipped (:func:`flip_z`); it stops after the last occupied slice, ``gap`` Å before our exit
   surface (:func:`exit_gap`), and back-propagates its exit wave by half the cell thickness (zero defocus
   at mid-cell); we propagate forward by thickness/2 + gap to get the wave at the exit surface. Its defocus C1 is +C10, ours
   is defocus = −C10 at the exit surface: :func:`prismatic_c1`. Finally the wave is Fourier-resampled
   onto our grid (``gpts = ceil(cell / sampling)``) when Prismatic's grid differs (:func:`fourier_resample`).

Prismatic always uses Kirkland's parametrisation (a real-space potential cut at ``potBound``).
"""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms

from ..errors import InputError
from ..limits import check_memory
from .physics import wavelength
from .torch_engine import Grid, slicing

HRTEM_GROUP = "4DSTEM_simulation/data/realslices"
_FP_RE = re.compile(r"^HRTEM_fp(\d{4})$")
POT_BOUND = 3.0  # Å


def prismatic_version() -> str | None:
    """pyprismatic's version when an HRTEM-capable one (>= 2) is importable, else None."""
    try:
        import pyprismatic
    except ImportError:
        return None
    version = str(getattr(pyprismatic, "__version__", "0"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    return version if major >= 2 else None


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
        "sliceThickness": float(dz),
        "potBound": POT_BOUND,
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
    """Copy of ``atoms`` with z' = Lz − z. Prismatic's beam enters at the *largest* z (its slice index is
    ``round((max z − z)/Δz + 0.5) − 1``, PRISM01_calcPotential.cpp); ours (torch, abTEM) enters at z = 0.
    Writing z' makes Prismatic traverse the specimen in our order."""
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions.copy(), cell=atoms.cell, pbc=True)
    out.positions[:, 2] = float(atoms.cell[2, 2]) - out.positions[:, 2]
    return out


def prismatic_planes(z: np.ndarray, dz: float) -> tuple[np.ndarray, int]:
    """Prismatic's slice index of each atom and its number of planes, for our (unflipped) z [Å] written
    flipped by :func:`flip_z`: index = round((z − min z)/Δz + 0.5) − 1 (C rounding) = floor((z − min z)/Δz),
    planes = max index + 1. Prismatic
    starts its slab at the lowest atom and stops after the last occupied plane, not at the cell faces."""
    z = np.asarray(z, dtype=np.float64)
    if z.size == 0:
        return np.zeros(0, np.int64), 0
    # C's round() rounds halves away from zero, so for x >= 0 round(x + 0.5) - 1 == floor(x)
    index = np.floor((z - z.min()) / dz).astype(np.int64)
    return index, int(index.max()) + 1


def exit_gap(z: np.ndarray, dz: float, cell_z: float) -> float:
    """Vacuum [Å] between the plane where Prismatic stops (min z + planes·Δz) and our exit surface z = Lz."""
    z = np.asarray(z, dtype=np.float64)
    if z.size == 0:
        return 0.0
    _, planes = prismatic_planes(z, dz)
    return float(cell_z) - (float(z.min()) + planes * dz)


def to_exit_surface(waves: np.ndarray, sampling: tuple[float, float], energy: float, thickness: float,
                    gap: float = 0.0) -> np.ndarray:
    """Prismatic's wave -> the wave at our exit surface. Prismatic back-propagates its exit wave by half
    the cell thickness (``propBack``, Lz/2: zero defocus at mid-cell) and stops ``gap`` Å before our exit
    surface (:func:`exit_gap`), so we propagate forward by thickness/2 + gap."""
    return propagate(waves, sampling, energy, thickness / 2.0 + gap)


def prismatic_c1(defocus: float, thickness: float, gap: float = 0.0) -> float:
    """Prismatic C1 (= +C10, zero at its back-propagated plane) giving our ``defocus`` (= −C10, zero at the
    exit surface).

    Prismatic's wave is ours propagated by −(thickness/2 + gap), i.e. already carries C10 = −(thickness/2 +
    gap), so C1 = −defocus + thickness/2 + gap.
    """
    return -float(defocus) + float(thickness) / 2.0 + float(gap)


def fourier_resample(waves: np.ndarray, gpts: tuple[int, int]) -> np.ndarray:
    """Crop or zero-pad the centred spectrum to ``gpts`` (same field of view), keeping the mean value."""
    nx, ny = waves.shape[-2:]
    mx, my = gpts
    if (nx, ny) == (mx, my):
        return waves.astype(np.complex64)
    spec = np.fft.fft2(waves)
    out = np.zeros(waves.shape[:-2] + (mx, my), dtype=np.complex128)
    fx_old, fx_new = np.round(np.fft.fftfreq(nx) * nx).astype(int), np.round(np.fft.fftfreq(mx) * mx).astype(int)
    fy_old, fy_new = np.round(np.fft.fftfreq(ny) * ny).astype(int), np.round(np.fft.fftfreq(my) * my).astype(int)
    cx, ix_old, ix_new = np.intersect1d(fx_old, fx_new, return_indices=True)
    cy, iy_old, iy_new = np.intersect1d(fy_old, fy_new, return_indices=True)
    out[..., ix_new[:, None], iy_new[None, :]] = spec[..., ix_old[:, None], iy_old[None, :]]
    out = np.fft.ifft2(out) * (mx * my) / (nx * ny)
    return out.astype(np.complex64)


def _write_xyz(atoms: Atoms, path: Path) -> None:
    try:
        from ..structures import write_prismatic_xyz
    except ImportError:  # pragma: no cover - structures module absent
        write_prismatic_xyz = None
    if write_prismatic_xyz is not None:
        write_prismatic_xyz(atoms, path, thermal_sigma={s: 0.0 for s in set(atoms.get_chemical_symbols())})
        return
    lx, ly, lz = atoms.cell.lengths()  # pragma: no cover
    pos = np.mod(atoms.positions, [lx, ly, lz])  # pragma: no cover
    with open(path, "w") as fh:  # pragma: no cover
        fh.write("hrtem-dataset\n")
        fh.write(f"    {lx:.6f} {ly:.6f} {lz:.6f}\n")
        for z, (x, y, zz) in zip(atoms.numbers, pos, strict=True):
            fh.write(f"{z:d} {x:.6f} {y:.6f} {zz:.6f} 1.0 0.0\n")
        fh.write("-1\n")


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
        raise InputError("engine 'prismatic' needs pyprismatic >= 2 (conda install -c conda-forge pyprismatic)")
    import pyprismatic

    if parametrization != "kirkland":
        warnings.warn("Prismatic always uses the Kirkland parametrization", stacklevel=2)
    cell = np.asarray(atoms.cell.lengths(), dtype=np.float64)
    grid = Grid.from_sampling(cell, sampling)
    out = []
    with tempfile.TemporaryDirectory(prefix="hrtem-prismatic-") as tmp:
        for i, positions in enumerate(np.asarray(configurations).reshape(-1, len(atoms), 3)):
            member = Atoms(numbers=atoms.numbers, positions=positions, cell=atoms.cell, pbc=True)
            xyz, h5 = Path(tmp) / f"config{i}.xyz", Path(tmp) / f"config{i}.h5"
            _write_xyz(flip_z(member), xyz)
            gap = exit_gap(positions[:, 2], slicing(float(cell[2]), slice_thickness)[1], float(cell[2]))
            meta = pyprismatic.Metadata(filenameAtoms=str(xyz), filenameOutput=str(h5))
            for key, value in prismatic_settings(xyz, h5, cell, sampling, energy, slice_thickness, seed + i).items():
                setattr(meta, key, value)
            meta.go()
            waves, got = read_hrtem_output(h5)
            got = got or (cell[0] / waves.shape[-2], cell[1] / waves.shape[-1])
            wave = to_exit_surface(waves[:1], got, energy, float(cell[2]), gap)
            out.append(fourier_resample(wave, grid.gpts)[0])
    return np.stack(out)
