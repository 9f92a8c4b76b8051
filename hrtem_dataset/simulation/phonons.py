"""Frozen phonons: independent Gaussian displacements of every atom (Einstein model).

Each atom of element X is displaced along x, y and z by independent normal draws with standard
deviation u_X (Å), the one-axis RMS displacement. It follows from the isotropic Debye–Waller factor
B_X by u_X = sqrt(B_X / (8π²)). The defaults below are approximate room-temperature B values of the
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

import numpy as np
from ase.data import chemical_symbols

from ..errors import InputError
from ..seeding import derive_seed

DEBYE_WALLER_B: dict[str, float] = {
    # Å², ~293 K, rounded
    "H": 1.0, "Li": 3.9, "Be": 0.4, "B": 0.3, "C": 0.25, "N": 0.6, "O": 0.6, "Na": 5.2, "Mg": 1.6,
    "Al": 0.8, "Si": 0.46, "P": 0.7, "S": 0.8, "K": 6.3, "Ca": 1.3, "Ti": 0.6, "V": 0.5, "Cr": 0.25,
    "Mn": 0.6, "Fe": 0.35, "Co": 0.3, "Ni": 0.37, "Cu": 0.55, "Zn": 1.0, "Ga": 0.9, "Ge": 0.56,
    "As": 0.6, "Se": 1.0, "Sr": 1.4, "Y": 0.8, "Zr": 0.6, "Nb": 0.45, "Mo": 0.2, "Ru": 0.3, "Rh": 0.27,
    "Pd": 0.43, "Ag": 0.64, "Cd": 1.6, "In": 1.5, "Sn": 1.1, "Sb": 1.0, "Te": 1.2, "Ba": 1.4,
    "La": 0.8, "Ce": 0.8, "Hf": 0.4, "Ta": 0.25, "W": 0.16, "Re": 0.2, "Os": 0.2, "Ir": 0.17,
    "Pt": 0.32, "Au": 0.6, "Hg": 2.5, "Tl": 2.0, "Pb": 1.7, "Bi": 1.4, "Th": 0.5, "U": 0.4,
}
FALLBACK_B = 0.5  # Å²


def default_rms_displacement(symbol: str) -> float:
    """Default one-axis RMS displacement u [Å] of element ``symbol``: sqrt(B / 8π²)."""
    if symbol not in chemical_symbols or symbol == "X":
        raise InputError(f"element {symbol!r}: unknown chemical symbol")
    return math.sqrt(DEBYE_WALLER_B.get(symbol, FALLBACK_B) / (8.0 * math.pi**2))


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
    for i in range(n_configs):
        gen = np.random.default_rng(derive_seed(int(seed), "phonons", i))
        out[i] = positions + gen.standard_normal(positions.shape) * sigma
    return out
