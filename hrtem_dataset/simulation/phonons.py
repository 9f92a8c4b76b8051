"""Frozen phonons: independent Gaussian displacements of every atom (Einstein model).

Each atom of element X is displaced along x, y and z by independent normal draws with standard
deviation u_X (Å), the one-axis RMS displacement. It follows from the isotropic Debye–Waller factor
B_X by u_X = sqrt(B_X / (8π²)). The defaults (:mod:`hrtem_dataset.structures.thermal`, shared with the Prismatic XYZ export) are approximate room-temperature B values of the
elemental crystals (rounded; after Peng, Ren, Dudarev & Whelan, Acta Cryst. A52 (1996) 456 and
Sears & Shelley, Acta Cryst. A47 (1991) 441); elements not listed get ``FALLBACK_B``. Override them
per element with the ``rms`` mapping.

Seeding: configuration ``i`` of a structure simulated with seed ``s`` uses the numpy Generator
``default_rng(derive_seed(s, "phonons", i))``, so a configuration does not depend on how many others
are drawn, and the same seed gives identical displacements on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ase.data import chemical_symbols

from ..device import usable_cpus
from ..errors import InputError
from ..seeding import derive_seed
from ..structures.thermal import DEBYE_WALLER_B, FALLBACK_B, default_rms_displacement

PARALLEL_VALUES = 1 << 18  # draw the configurations in threads from this many coordinates in all

__all__ = ["DEBYE_WALLER_B", "FALLBACK_B", "default_rms_displacement", "displaced_positions", "rms_for_numbers"]


def rms_for_numbers(numbers: np.ndarray, rms: Mapping[str, float] | float | None = None) -> np.ndarray:
    """Per-atom one-axis RMS [Å]: ``rms`` overrides (a mapping symbol -> Å, or one number for all)."""
    numbers = np.asarray(numbers)
    out = np.empty(len(numbers), dtype=np.float64)
    for z in np.unique(numbers):
        symbol = chemical_symbols[int(z)]
        if isinstance(rms, int | float):
            value = float(rms)
        elif rms is not None and symbol in rms:
            value = float(rms[symbol])
        else:
            value = default_rms_displacement(symbol)
        if not (value >= 0.0 and math.isfinite(value)):
            raise InputError(f"rms displacement of {symbol}: must be a finite number >= 0, got {value}")
        out[numbers == z] = value
    return out


def displaced_positions(positions: np.ndarray, numbers: np.ndarray, n_configs: int, seed: int,
                        rms: Mapping[str, float] | float | None = None) -> np.ndarray:
    """``n_configs`` frozen-phonon configurations: (n_configs, N, 3) float64 positions in Å."""
    positions = np.asarray(positions, dtype=np.float64)
    sigma = rms_for_numbers(numbers, rms)[:, None]
    out = np.empty((n_configs,) + positions.shape, dtype=np.float64)

    def draw(i: int) -> None:
        gen = np.random.default_rng(derive_seed(int(seed), "phonons", i))
        gen.standard_normal(positions.shape, out=out[i])
        out[i] *= sigma
        out[i] += positions

    # configurations in threads (numpy's generators and array arithmetic release the GIL): each has its own
    # generator, so the values do not depend on the number of threads
    workers = min(n_configs, usable_cpus()) if positions.size * n_configs >= PARALLEL_VALUES else 1
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hrtem-phonons") as pool:
            list(pool.map(draw, range(n_configs)))
    else:
        for i in range(n_configs):
            draw(i)
    return out
