"""abTEM's aberration aliases: the table generated from the named aberrations equals abTEM's list."""

from __future__ import annotations

from hrtem_dataset.imaging.aberrations import POLAR_ALIASES, POLAR_SYMBOLS, canonical_name

ABTEM_ALIASES = {
    "Cs": "C30", "C5": "C50",
    "astigmatism": "C12", "astigmatism_angle": "phi12",
    "astigmatism3": "C32", "astigmatism3_angle": "phi32",
    "astigmatism5": "C52", "astigmatism5_angle": "phi52",
    "coma": "C21", "coma_angle": "phi21",
    "coma4": "C41", "coma4_angle": "phi41",
    "trefoil": "C23", "trefoil_angle": "phi23",
    "trefoil4": "C43", "trefoil4_angle": "phi43",
    "quadrafoil": "C34", "quadrafoil_angle": "phi34",
    "quadrafoil5": "C54", "quadrafoil5_angle": "phi54",
    "pentafoil": "C45", "pentafoil_angle": "phi45",
    "hexafoil": "C56", "hexafoil_angle": "phi56",
}  # fmt: skip


def test_alias_table_is_abtems():
    assert POLAR_ALIASES == ABTEM_ALIASES
    assert list(POLAR_ALIASES) == list(ABTEM_ALIASES)  # same order too
    assert all(canonical_name(alias) == symbol in POLAR_SYMBOLS for alias, symbol in ABTEM_ALIASES.items())
