"""Planar defects as stacking sequences of close-packed layers.

Layers are labelled by their in-plane site A, B, C = 0, 1, 2 (see :func:`crystals.stacked_lattice`).

fcc ({111} planes), perfect stacking ABCABC: s[i+1] = s[i] + 1 (mod 3).

* A **twin boundary** at layer k mirrors the sequence about layer k: for i >= k, s[i+1] = s[i] - 1
  (…ABCAB|C|BACBA…, layer k = C is the mirror plane). Every further twin flips the direction again.
* An **intrinsic stacking fault** at layer k removes one layer of the sequence: the single step
  k -> k+1 goes backwards (…ABCA|CABC…: one B is missing), then the sequence continues as before.

hcp (basal (0001) planes), perfect stacking ABAB: s[i+1] = s[i-1].

* A **basal intrinsic stacking fault** (I1) at layer k puts layer k on the third site
  (…ABAB|CBCB…): s[k] = 3 - s[k-1] - s[k-2], then the hcp rule continues.

wurtzite (cation–anion bilayers Aa, Bb, Cc on the hcp sites): the same sequences apply to the bilayers,
so an I1 fault reads …AaBbAaBb|CcBbCc… — one bilayer changes site, every bilayer keeps its polarity.

Defect positions are layer indices relative to the layer through the particle centre (layer 0).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def fcc_sequence(n_layers: int, layer0: int, twins=(), faults=()) -> np.ndarray:
    """A/B/C sites (0/1/2) of layers ``layer0 .. layer0 + n_layers - 1`` of an fcc crystal with defects.

    Layer 0 is on site A. ``twins`` and ``faults`` are layer indices (same numbering).
    """
    layers = np.arange(n_layers) + layer0
    steps = np.ones(n_layers - 1, dtype=np.int64)         # step from layer i to layer i + 1
    lo = layers[:-1]
    for k in twins:
        steps[lo >= k] *= -1
    for k in faults:
        steps[lo == k] *= -1
    s = np.concatenate([[0], np.cumsum(steps)])
    s -= s[layers == 0][0] if (layers == 0).any() else 0
    return np.mod(s, 3)


def hcp_sequence(n_layers: int, layer0: int, faults=()) -> np.ndarray:
    """A/B/C sites of hcp layers with basal I1 stacking faults at the given layer indices.

    The two lowest layers are A, B; going up, layer i repeats layer i - 2 unless it is faulted, in which
    case it takes the third site. Faults must therefore lie above the two lowest layers.
    """
    layers = np.arange(n_layers) + layer0
    fault_set = set(int(k) for k in faults)
    s = np.zeros(n_layers, dtype=np.int64)
    if n_layers > 1:
        s[1] = 1
    for i in range(2, n_layers):  # loop over layers (tens), not atoms
        s[i] = 3 - s[i - 1] - s[i - 2] if layers[i] in fault_set else s[i - 2]
    return s


def max_defect_planes(half_extent: float, spacing: float, min_spacing: float) -> int:
    """Most defect planes :func:`choose_defect_layers` can always place (greedy worst case)."""
    kmax = max(0, int(np.floor(0.6 * half_extent / spacing)))
    gap = max(1, int(np.ceil(min_spacing / spacing - 1e-9)))
    return (2 * kmax) // (2 * gap - 1) + 1


def choose_defect_layers(rng: np.random.Generator, n: int, half_extent: float, spacing: float,
                         min_spacing: float, exclude=()) -> list[int]:
    """``n`` random layer indices within the inner part of a particle, at least ``min_spacing`` apart.

    Planes are drawn from |layer| * spacing <= 0.6 * half_extent (so each defect crosses a sizeable part of
    the particle) and kept at least ``min_spacing`` Å from each other and from ``exclude``.
    """
    if n == 0:
        return []
    kmax = max(0, int(np.floor(0.6 * half_extent / spacing)))
    cand = np.arange(-kmax, kmax + 1)
    rng.shuffle(cand)
    gap = max(1, int(np.ceil(min_spacing / spacing - 1e-9)))
    chosen: list[int] = []
    taken = [int(k) for k in exclude]
    for k in cand:  # loop over candidate planes (tens), not atoms
        if all(abs(int(k) - t) >= gap for t in taken):
            chosen.append(int(k))
            taken.append(int(k))
            if len(chosen) == n:
                return sorted(chosen)
    raise InputError(f"cannot fit {n} defect planes {min_spacing:g} Å apart in a particle of half-extent "
                     f"{half_extent:.1f} Å (defect_min_spacing)")
