"""Amorphous carbon substrate: random packing at a target density with a minimum C–C distance.

The film fills 0 <= x < Lx, 0 <= y < Ly (periodic) and 0 <= z < thickness (open surfaces). The number of
atoms is fixed by the density: N = round(ρ · N_A / M_C · V) with ρ in g/cm³, V in Å³
(1 g/cm³ of carbon = 0.6022/12.011 atoms/Å³ ≈ 0.0501 Å⁻³), so the density is exact up to one atom.

Algorithm (vectorised random sequential addition in batches, no per-atom Python loop): draw a batch of
uniform candidates, drop those closer than ``min_distance`` to an already accepted atom (cKDTree with
periodic ``boxsize`` in x and y; z is made non-periodic by padding the box), drop the later candidate of
every close pair inside the batch, accept the rest; the next batch size follows the measured acceptance
rate. 2.0 g/cm³ with 1.4 Å (packing fraction ≈ 0.14) converges in ~4 batches.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from ..errors import InputError

AVOGADRO = 6.02214076e23
CARBON_MASS = 12.011  # g/mol


def carbon_number_density(density: float) -> float:
    """Atoms per Å³ of carbon at ``density`` g/cm³."""
    return density * AVOGADRO / CARBON_MASS * 1e-24


def amorphous_carbon(lx: float, ly: float, thickness: float, density: float = 2.0, min_distance: float = 1.4,
                     rng: np.random.Generator | None = None, max_batches: int = 60) -> np.ndarray:
    """Positions (n, 3) Å of an amorphous carbon film (see module docstring)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    n_target = int(round(carbon_number_density(density) * lx * ly * thickness))
    packing = carbon_number_density(density) * np.pi / 6 * min_distance**3
    if packing > 0.3:  # random sequential addition jams at 0.38; stay well below
        raise InputError(f"substrate: density {density} g/cm³ with min_distance {min_distance} Å is too dense "
                         f"for a random packing (packing fraction {packing:.2f} > 0.30)")
    if min(lx, ly) < 3 * min_distance:
        raise InputError("cell: x and y must be at least 3 × substrate.min_distance")
    box = np.array([lx, ly, thickness + 2 * min_distance + 1.0])
    scale = np.array([lx, ly, thickness])
    acc = np.empty((0, 3))
    rate = 1.0
    for _ in range(max_batches):
        need = n_target - len(acc)
        if need <= 0:
            break
        m = int(need / rate * 1.15) + 64
        cand = rng.random((m, 3)) * scale
        if len(acc):
            dist, _ = cKDTree(acc, boxsize=box, balanced_tree=False).query(
                cand, k=1, distance_upper_bound=min_distance, workers=-1)
            cand = cand[~np.isfinite(dist)]
        if len(cand):
            pairs = cKDTree(cand, boxsize=box, balanced_tree=False).query_pairs(min_distance, output_type="ndarray")
            keep = np.ones(len(cand), bool)
            keep[pairs.max(axis=1) if len(pairs) else []] = False
            cand = cand[keep]
        rate = max(len(cand) / m, 0.01)
        acc = np.vstack([acc, cand[:need]])
    if len(acc) < n_target:
        raise InputError(f"substrate: could not reach density {density} g/cm³ with min_distance {min_distance} Å")
    return acc
