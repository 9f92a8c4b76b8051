"""Public simulation API: exit waves of ASE structures with interchangeable engines.

All engines share the conventions of :mod:`.torch_engine` (grid ``ceil(L / sampling)``, slices of
``L_z / ceil(L_z / slice_thickness)``, infinite projection, plane-wave illumination along +z, vacuum
|ψ| = 1, arrays indexed [x, y], complex64) and the same frozen-phonon configurations
(:mod:`.phonons`, seeded by ``derive_seed(seed, "phonons", i)``), so engines agree wave by wave.

The abTEM and Prismatic engine modules import their optional libraries (abtem, pyprismatic) inside the
functions that need them, so importing this module never needs the optional extras.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ase import Atoms
from pydantic import ValidationError

from .. import __version__
from ..device import resolve_device
from ..errors import InputError, format_validation_error
from ..specs import ENGINE_ANTIALIASES_TRANSMISSION, SimulationSpec
from .abtem_engine import abtem_version, exit_waves_abtem
from .phonons import displaced_positions
from .prismatic_engine import exit_waves_prismatic, prismatic_version
from .torch_engine import multislice, to_host, waves_from_arrays

ENGINES = ("torch", "abtem", "prismatic")


def _check_atoms(atoms: Any, what: str = "atoms") -> np.ndarray:
    if not isinstance(atoms, Atoms):
        raise InputError(f"{what}: expected an ase.Atoms object, got {type(atoms).__name__}")
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    lengths = np.diag(cell)
    if np.any(np.abs(cell - np.diag(lengths)) > 1e-8 * max(1.0, float(np.abs(cell).max()))):
        raise InputError(f"{what}: cell must be orthorhombic (axis-aligned), got {cell.tolist()}")
    if np.any(lengths <= 0) or not np.all(np.isfinite(lengths)):
        raise InputError(f"{what}: cell lengths must be > 0 Å, got {lengths.tolist()}")
    if len(atoms) and not np.all(np.isfinite(atoms.positions)):
        raise InputError(f"{what}: positions must be finite")
    return lengths


def _check_settings(energy: float, sampling: float, slice_thickness: float, parametrization: str,
                    engine: str, phonons: int, antialias_transmission: bool | None = None) -> None:
    """The bounds of :class:`~hrtem_dataset.specs.SimulationSpec` (one place for them), for callers of the
    function API that pass plain numbers; :class:`InputError` naming the field."""
    if isinstance(phonons, float | np.floating) and float(phonons).is_integer():
        phonons = int(phonons)
    elif isinstance(phonons, np.integer):
        phonons = int(phonons)
    try:
        SimulationSpec(energy=float(energy), sampling=float(sampling), slice_thickness=float(slice_thickness),
                       parametrization=parametrization, engine=engine, phonons=phonons,
                       antialias_transmission=antialias_transmission)
    except ValidationError as exc:
        raise InputError(format_validation_error(exc)) from None


def _configurations(atoms: Atoms, phonons: int, seed: int, rms) -> np.ndarray:
    """(P, N, 3) positions: the static lattice when ``phonons == 0``, else frozen-phonon draws."""
    if phonons == 0:
        return np.asarray(atoms.positions, dtype=np.float64)[None]
    return displaced_positions(atoms.positions, atoms.numbers, int(phonons), int(seed), rms)


def transmission_antialiased(engine: str, antialias_transmission: bool | None = None) -> bool:
    """The transmission scheme ``engine`` runs with ``antialias_transmission`` (``None``: the engine's own, see
    :data:`~hrtem_dataset.specs.ENGINE_ANTIALIASES_TRANSMISSION`; validated with the other settings)."""
    if antialias_transmission is None:
        return ENGINE_ANTIALIASES_TRANSMISSION[engine]
    return bool(antialias_transmission)


def engine_version(engine: str) -> str:
    """A version string for the engine (recorded with every wave as lineage)."""
    if engine == "torch":
        return f"hrtem_dataset-{__version__}+torch-{torch.__version__}"
    if engine == "abtem":
        return f"abtem-{abtem_version()}"
    if engine == "prismatic":
        return f"pyprismatic-{prismatic_version()}"
    raise InputError(f"engine: unknown {engine!r}")


def simulate_exit_waves(structures: Atoms | Sequence[Atoms], energy: float = 300e3, sampling: float = 0.1,
                        slice_thickness: float = 2.0, parametrization: str = "lobato", engine: str = "torch",
                        phonons: int = 0, seed: int | Sequence[int] = 0, device: str = "cpu",
                        rms: Mapping[str, float] | float | None = None, max_memory: int | None = None,
                        structure_factors: str = "nufft",
                        antialias_transmission: bool | None = None) -> list[np.ndarray]:
    """Batched exit waves: one complex64 array per structure, (nx, ny) or (phonons, nx, ny).

    All phonon configurations of all structures that share a cell run through the torch engine as one
    batch (memory-bounded by ``max_memory`` bytes). ``seed`` is one int for all structures or one per
    structure; configuration i of a structure uses ``derive_seed(seed, "phonons", i)``. ``rms``
    overrides the per-element RMS displacements (Å, see :func:`.phonons.default_rms_displacement`).
    ``structure_factors`` (torch engine only): "nufft" (default), "exact" (1.5× oversampled gridding) or
    "bilinear" (abTEM's discretisation), see :class:`.torch_engine._Tables`. ``antialias_transmission``:
    band-limit each slice's transmission function before it multiplies the wave (abTEM's scheme) or not
    (Prismatic's); ``None`` = the engine's own (torch: not, see :mod:`.torch_engine` for why).
    """
    single = isinstance(structures, Atoms)
    items = [structures] if single else list(structures)
    _check_settings(energy, sampling, slice_thickness, parametrization, engine, phonons, antialias_transmission)
    antialias = transmission_antialiased(engine, antialias_transmission)
    seeds = [int(seed)] * len(items) if isinstance(seed, int | np.integer) else [int(s) for s in seed]
    if len(seeds) != len(items):
        raise InputError(f"seed: {len(seeds)} seeds for {len(items)} structures")
    cells = [_check_atoms(a, f"structures[{i}]") for i, a in enumerate(items)]
    configs = [_configurations(a, int(phonons), s, rms) for a, s in zip(items, seeds, strict=True)]

    results: list[np.ndarray | None] = [None] * len(items)
    if engine == "torch":

        groups: dict[tuple, list[int]] = {}
        for i, cell in enumerate(cells):
            groups.setdefault(tuple(np.round(cell, 10)), []).append(i)
        for cell, members in groups.items():
            specimens = []
            for i in members:
                specimens += waves_from_arrays(configs[i], items[i].numbers)
            waves = to_host(multislice(specimens, cell, sampling, energy, slice_thickness, parametrization, device,
                                       max_memory or None, structure_factors, antialias))
            start = 0
            for i in members:
                results[i] = waves[start:start + len(configs[i])]
                start += len(configs[i])
    elif engine == "abtem":
        for i, a in enumerate(items):
            results[i] = exit_waves_abtem(a, configs[i], sampling, energy, slice_thickness, parametrization,
                                          device)
    else:
        for i, a in enumerate(items):
            results[i] = exit_waves_prismatic(a, configs[i], sampling, energy, slice_thickness,
                                              parametrization, phonons=int(phonons), seed=seeds[i], rms=rms)
    out = []
    for r in results:
        r = np.ascontiguousarray(r, dtype=np.complex64)
        out.append(r if phonons > 0 else r[0])
    return out


def simulate_exit_wave(atoms: Atoms, energy: float = 300e3, sampling: float = 0.1, slice_thickness: float = 2.0,
                       parametrization: str = "lobato", engine: str = "torch", phonons: int = 0, seed: int = 0,
                       device: str = "cpu", **kwargs) -> np.ndarray:
    """Exit wave of ``atoms``: complex64 (nx, ny), or (phonons, nx, ny) when phonons > 0.

    Plane-wave illumination along +z, energy in eV, sampling and slice thickness in Å; the wave is at the
    exit surface (bottom of the cell), normalised so that vacuum has |ψ| = 1; ``gpts = ceil(cell /
    sampling)`` per axis, indexed [x, y] as in abTEM. ``device``: "cpu", "cuda" or "auto".
    """
    return simulate_exit_waves(atoms, energy, sampling, slice_thickness, parametrization, engine, phonons,
                               seed, device, **kwargs)[0]


def particle_only(atoms: Atoms) -> Atoms:
    """The atoms with ``particle_id >= 0`` in the same cell (static lattice, for labels)."""
    if "particle_id" not in atoms.arrays:
        raise InputError("atoms: missing per-atom array 'particle_id' (write scenes with the structures module)")
    keep = np.asarray(atoms.arrays["particle_id"]) >= 0
    return atoms[keep]


def simulate_scene(atoms: Atoms, spec, seed: int, rms: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Full-scene waves (with phonons) and particle-only waves (static) for one scene.

    ``spec`` is a :class:`~hrtem_dataset.specs.SimulationSpec`; ``device="auto"`` uses CUDA when available.
    Returns ``scene`` complex64 (P, nx, ny) with P = max(phonons, 1), ``particles`` complex64 (nx, ny),
    ``sampling`` (Δx, Δy) Å, ``energy`` eV, ``engine``, ``engine_version``, ``gpts``, and the settings.
    With the torch engine both passes run as one batch. ``antialias_transmission``: the scheme the engine ran
    (see :func:`transmission_antialiased`).
    """

    cell = _check_atoms(atoms)
    device = str(resolve_device(spec.device)) if spec.engine == "torch" else (
        "cuda" if spec.device == "auto" and _cuda_available() else ("cpu" if spec.device == "auto" else spec.device))
    particles = particle_only(atoms)
    antialias = transmission_antialiased(spec.engine, spec.antialias_transmission)
    kwargs = dict(antialias_transmission=antialias, energy=spec.energy, sampling=spec.sampling, slice_thickness=spec.slice_thickness,
                  parametrization=spec.parametrization, engine=spec.engine, device=device, rms=rms)
    if spec.engine == "torch":
        _check_settings(spec.energy, spec.sampling, spec.slice_thickness, spec.parametrization, "torch",
                        spec.phonons)
        configs = _configurations(atoms, spec.phonons, seed, rms)
        specimens = waves_from_arrays(configs, atoms.numbers)
        specimens += waves_from_arrays(particles.positions, particles.numbers)
        waves = to_host(multislice(specimens, cell, spec.sampling, spec.energy, spec.slice_thickness,
                                   spec.parametrization, device, antialias_transmission=antialias))
        scene, part = waves[:-1], waves[-1]
    else:
        scene = simulate_exit_wave(atoms, phonons=spec.phonons, seed=seed, **kwargs)
        scene = scene if spec.phonons > 0 else scene[None]
        part = simulate_exit_wave(particles, phonons=0, seed=seed, **kwargs)
    return {
        "scene": np.ascontiguousarray(scene, dtype=np.complex64),
        "particles": np.ascontiguousarray(part, dtype=np.complex64),
        "sampling": (float(cell[0] / scene.shape[-2]), float(cell[1] / scene.shape[-1])),
        "energy": float(spec.energy),
        "engine": spec.engine,
        "engine_version": engine_version(spec.engine),
        "gpts": tuple(int(g) for g in scene.shape[-2:]),
        "slice_thickness": float(spec.slice_thickness),
        "parametrization": spec.parametrization,
        "antialias_transmission": antialias,
        "phonons": int(spec.phonons),
        "seed": int(seed),
        "device": device,
        "cell": tuple(float(c) for c in cell),
    }


def _cuda_available() -> bool:
    return bool(torch.cuda.is_available())
