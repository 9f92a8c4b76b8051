"""Thermal vibration of the elements: one table of Debye–Waller factors for the whole project.

The one-axis RMS displacement u_X (Å) of element X follows from its isotropic Debye–Waller factor B_X by
u_X = sqrt(B_X / (8π²)). The values are approximate room-temperature B of the elemental crystals (rounded;
after Peng, Ren, Dudarev & Whelan, Acta Cryst. A52 (1996) 456 and Sears & Shelley, Acta Cryst. A47 (1991)
441); elements not listed get ``FALLBACK_B``. Used by the frozen phonons
(:mod:`hrtem_dataset.simulation.phonons`) and the Prismatic XYZ export (:mod:`.exporters`).
"""

from __future__ import annotations

import math

from ase.data import chemical_symbols

from ..errors import InputError

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


