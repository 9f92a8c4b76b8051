"""The atoms the validation runs on: the two reference scenes of the engine comparison and a window of one
of a dataset configuration's own scenes.

- :func:`reference_scene`: a 40 × 40 Å cell, 20 Å of amorphous carbon (2 g/cm³) and an r = 10 Å Au sphere
  along [110] on top (``hrtem structures build`` with seed 0; ~2.4k atoms, 60 Å thick).
- :func:`au_cube`: a 5 × 5 × 5 Au fcc cube (a = 4.078 Å, 500 atoms) along [001], the cell filled with the
  crystal (20.39 Å each way): the strongest dynamical scattering of the datasets' materials.
- :func:`configuration_scene`: structure 0 of a dataset configuration (the same draw as its
  ``structures`` asset), cut to a window of at most ``window`` Å around its first particle so that the
  converged (0.025 Å) run stays affordable; the window is a new periodic cell (atoms outside are dropped).
  The reference report's convergence series run on the same 24 Å window of :func:`reference_scene`.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from ..specs import SceneSpec
from ..structures import build_scene, sample_scene

REFERENCE_SCENE = {
    "cell": {"x": 40, "y": 40},
    "substrate": {"thickness": 20},
    "particles": [{"material": "Au", "shape": "sphere", "radius": 10, "orientation": "[110]"}],
}
REFERENCE_SEED = 0
CONFIG_WINDOW = 24.0  # Å: the converged (0.025 Å, 0.5 Å slices) run of a window costs ~1 min on 2 cores


def reference_scene() -> Atoms:
    """40 × 40 Å a-C (20 Å) + r = 10 Å Au sphere along [110] (seed 0)."""

    return build_scene(SceneSpec.model_validate(REFERENCE_SCENE), seed=REFERENCE_SEED)


def au_cube(n: int = 5) -> Atoms:
    """n × n × n cubic Au fcc unit cells along [001] (the cell is the crystal: no vacuum)."""
    from ase.build import bulk

    atoms = bulk("Au", "fcc", a=4.078, cubic=True).repeat((n, n, n))
    atoms.set_array("particle_id", np.zeros(len(atoms), dtype=np.int32))
    return atoms


def crop_window(atoms: Atoms, window: float = CONFIG_WINDOW) -> Atoms:
    """``atoms`` cut to a lateral window of at most ``window`` Å centred on the centroid of particle 0 (the
    whole cell when it is smaller), shifted into a new orthorhombic periodic cell of that size."""
    lx, ly, lz = (float(v) for v in atoms.cell.lengths())
    wx, wy = min(lx, window), min(ly, window)
    if wx >= lx and wy >= ly:
        return atoms.copy()
    pid = atoms.arrays.get("particle_id")
    sel = (pid == 0) if pid is not None and np.any(pid == 0) else np.ones(len(atoms), bool)
    cx, cy = atoms.positions[sel, :2].mean(0)
    pos = atoms.positions.copy()
    pos[:, 0] = np.mod(pos[:, 0] - (cx - wx / 2), lx)
    pos[:, 1] = np.mod(pos[:, 1] - (cy - wy / 2), ly)
    keep = (pos[:, 0] < wx) & (pos[:, 1] < wy)
    out = Atoms(numbers=atoms.numbers[keep], positions=pos[keep], cell=[wx, wy, lz], pbc=True)
    if pid is not None:
        out.set_array("particle_id", np.asarray(pid)[keep].astype(np.int32))
    return out


def configuration_scene(spec, index: int = 0, window: float = CONFIG_WINDOW) -> Atoms:
    """Structure ``index`` of a :class:`~hrtem_dataset.specs.DatasetSpec` (built as the pipeline builds it),
    cut to a ``window`` Å window around its first particle (:func:`crop_window`)."""

    _, _, _, atoms = sample_scene(spec.structures, spec.seed, index)  # as pipeline.build_structures_shard
    return crop_window(atoms, window)
