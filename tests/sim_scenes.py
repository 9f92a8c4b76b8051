"""Small specimens for the simulation tests (shared by the engine and the device tests)."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk


def small_scene(cell: float = 20.0, carbon: float = 8.0, radius: float = 5.0, seed: int = 1) -> Atoms:
    """Random a-C slab (2 g/cm³) with an fcc Au cluster above it and vacuum gaps (empty slices)."""
    rng = np.random.default_rng(seed)
    n_c = int(0.1003 * cell * cell * carbon)
    c = rng.uniform([0, 0, 2.0], [cell, cell, 2.0 + carbon], (n_c, 3))
    au = bulk("Au", "fcc", a=4.078, cubic=True).repeat((4, 4, 4))
    p = au.positions - au.positions.mean(0)
    p = p[np.linalg.norm(p, axis=1) < radius] + [cell / 2, cell / 2, 2.0 + carbon + radius + 4.0]
    atoms = Atoms(["C"] * n_c + ["Au"] * len(p), positions=np.vstack([c, p]),
                  cell=[cell, cell, 2.0 + carbon + 2 * radius + 8.0], pbc=True)
    atoms.set_array("particle_id", np.r_[-np.ones(n_c, int), np.zeros(len(p), int)].astype(np.int32))
    return atoms
