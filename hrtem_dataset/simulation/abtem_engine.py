"""abTEM engine (optional extra ``abtem``, GPL-3.0): the reference oracle, same interface and conventions.

``abtem.Potential(..., projection="infinite", parametrization=..., slice_thickness=..., sampling=...)``
and ``abtem.PlaneWave(energy=...).multislice(potential)``. Frozen phonons: the same displaced
configurations as the torch engine (:mod:`.phonons`) are handed to abTEM as an ``AtomsEnsemble``, so
the two engines can be compared configuration by configuration.

Note: abTEM builds the infinite-projection potential from bilinearly interpolated delta functions
(corrected by sin(q)/q), which smooths the potential at high spatial frequency; at 0.1 Å sampling this
changes dense scenes' exit waves by a few per cent relative to exact structure factors (the torch
engine's default). ``structure_factors="bilinear"`` in the torch engine reproduces abTEM's scheme.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from ..errors import InputError
from ..limits import check_memory


def _abtem():
    try:
        import abtem
    except ImportError:  # pragma: no cover - depends on the environment
        raise InputError("engine 'abtem' needs the optional extra: pip install 'hrtem-dataset[abtem]'") from None
    return abtem


def abtem_version() -> str:
    return str(_abtem().__version__)


def memory_estimate(atoms: Atoms, n_configurations: int, sampling: float) -> tuple[int, str]:
    """(bytes, description): an upper estimate of abTEM's working memory: per configuration its exit wave,
    the result copy and one transmission function in flight (3 complex64 grids), plus ~8 grids for the
    potential slices, FFT buffers and propagator."""
    cell = np.abs(np.diag(np.asarray(atoms.cell.array, dtype=np.float64)))
    nx, ny = (int(np.ceil(c / float(sampling))) for c in cell[:2])
    n = max(int(n_configurations), 1)
    return nx * ny * 8 * (3 * n + 8), f"grid {nx} x {ny}, {n} wave{'s' if n != 1 else ''}"


def _n_configurations(atoms: Atoms, configurations) -> int:
    return max(1, np.asarray(configurations).size // max(3 * len(atoms), 1))


def exit_waves_abtem(atoms: Atoms, configurations: np.ndarray, sampling: float = 0.1, energy: float = 300e3,
                     slice_thickness: float = 2.0, parametrization: str = "lobato",
                     device: str = "cpu") -> np.ndarray:
    """Exit waves with abTEM for each (N, 3) configuration of ``atoms``: complex64 (P, nx, ny)."""
    check_memory("simulation (abtem engine)", *memory_estimate(atoms, _n_configurations(atoms, configurations), sampling))
    abtem = _abtem()
    dev = "gpu" if str(device).startswith("cuda") else "cpu"
    members = []
    for positions in np.asarray(configurations, dtype=np.float64).reshape(-1, len(atoms), 3):
        member = Atoms(numbers=atoms.numbers, positions=positions, cell=atoms.cell, pbc=True)
        members.append(member)
    source = members[0] if len(members) == 1 else abtem.AtomsEnsemble(members)
    potential = abtem.Potential(source, sampling=sampling, slice_thickness=slice_thickness,
                                projection="infinite", parametrization=parametrization, device=dev)
    waves = abtem.PlaneWave(energy=energy, device=dev).multislice(potential)
    array = waves.compute(progress_bar=False).array
    if dev == "gpu":  # pragma: no cover - needs a GPU
        array = array.get()
    array = np.asarray(array, dtype=np.complex64)
    return array.reshape(len(members), *array.shape[-2:])
