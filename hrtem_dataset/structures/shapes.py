"""Particle shapes with exact size control.

Size convention (all shapes): ``radius`` is the radius of the **equivalent-volume sphere**: a particle of
radius r holds N = n·4/3·π·r³ atoms (n = number density of the bulk crystal, e.g. 4/a³ for fcc), so radius
distributions mean the same for every shape.

* ``sphere``: every atom with |p| <= r (N up to surface discreteness, < 1 % at r >= 2 nm).
* polyhedra (``wulff``, ``decahedron``, ``icosahedron``): exactly N = round(n·4/3·π·r³) atoms. Each atom
  gets its *shape distance* λ = max_j (p·n_j / d_j) (the homothetic scale at which it enters the
  polyhedron); atoms are taken in order of increasing λ, so complete layers fill first and the last,
  partial layer grows as an island on the side facing a random direction (seeded). This makes the size
  continuous even for icosahedra, whose complete shells only come in magic numbers.

The circumradius (largest centre distance, used to keep particles apart) is reported separately.

* ``sphere``: |p| <= r.
* ``wulff``: Wulff construction (pymatgen :class:`~pymatgen.analysis.wulff.WulffShape`) from surface
  energies per facet family (symmetry-equivalent facets from the crystal's point group); the polyhedron of
  volume 4/3·π·r³ bounds the lattice that is generated. Facet keys: ``"111"``, ``"100"``, ``"1,1,0"``, hcp ``"10-10"``/``"0001"``.
  Wurtzite defaults: nonpolar prism facets {10-10}, {11-20} below the polar basal (0001) ones.
* ``decahedron`` / ``icosahedron``: multiply twinned particles of fcc metals. ASE builds a strained
  template (Ino/Marks decahedron: five twinned tetrahedral segments about the five-fold axis, which is
  along z; Mackay icosahedron: twenty segments) a bit larger than needed; the template's convex hull (per
  segment for the decahedron, so the Marks re-entrant notches are kept) defines λ for its own atoms.
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass

import numpy as np

from ..crystals import Crystal
from ..errors import InputError

DEFAULT_SURFACE_ENERGIES = {
    "fcc": {"111": 1.0, "100": 1.15, "110": 1.25},
    "bcc": {"110": 1.0, "100": 1.12, "211": 1.18},
    "hcp": {"0001": 1.0, "10-10": 1.1, "10-11": 1.15},
    # nonpolar prism facets lowest, polar basal facets highest (as DFT finds for ZnO); ratios assumed
    "wurtzite": {"10-10": 1.0, "11-20": 1.05, "0001": 1.3},
}
"""Relative surface energies (dimensionless; only ratios matter) used when a Wulff spec gives none."""


def sphere_volume(r: float) -> float:
    return 4.0 / 3.0 * np.pi * r**3


def parse_miller(key: str) -> tuple[int, ...]:
    """``"111"`` -> (1, 1, 1); ``"1-10"`` -> (1, -1, 0); ``"1,2,0"``/``"1 2 0"`` -> (1, 2, 0); 4-index allowed."""
    s = str(key).strip().strip("()[]{}")
    parts = re.split(r"[,\s]+", s) if re.search(r"[,\s]", s) else re.findall(r"-?\d", s)
    try:
        idx = tuple(int(p) for p in parts if p != "")
    except ValueError:
        idx = ()
    if len(idx) not in (3, 4) or not any(idx):
        raise InputError(f"surface_energies: bad Miller index {key!r} (use e.g. '111', '1-10', '10-10')")
    return idx


@dataclass(frozen=True)
class Polyhedron:
    """Convex polyhedron {p : p·n_j <= d_j for all j} (crystal frame, Å)."""

    normals: np.ndarray
    dists: np.ndarray
    vertices: np.ndarray

    def contains(self, p: np.ndarray, tol: float = 1e-6) -> np.ndarray:
        return np.all(p @ self.normals.T <= self.dists + tol, axis=1)

    def shape_distance(self, p: np.ndarray) -> np.ndarray:
        """λ = max_j p·n_j / d_j (λ <= 1 inside)."""
        return np.max(p @ (self.normals / self.dists[:, None]).T, axis=1)

    @property
    def circumradius(self) -> float:
        return float(np.linalg.norm(self.vertices, axis=1).max())


@functools.lru_cache(maxsize=64)
def _unit_wulff(cell_key: tuple, millers: tuple, energies: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    from pymatgen.analysis.wulff import WulffShape
    from pymatgen.core import Lattice

    cell = np.array(cell_key).reshape(3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            w = WulffShape(Lattice(cell), [list(m) for m in millers], list(energies))
        except Exception as exc:  # noqa: BLE001 - degenerate energies give an open/flat shape
            raise InputError(f"surface_energies: no closed Wulff shape ({exc})") from None
    normals = np.array([f.normal for f in w.facets], dtype=float)
    dists = np.array([f.e_surf for f in w.facets], dtype=float)
    return normals, dists, np.array(w.wulff_pt_list, dtype=float), float(w.volume)


def wulff_polyhedron(crystal: Crystal, radius: float, surface_energies: dict[str, float] | None) -> Polyhedron:
    """Wulff shape of ``crystal`` with volume 4/3·π·radius³ (crystal frame, centred on the origin)."""
    energies = surface_energies or DEFAULT_SURFACE_ENERGIES.get(crystal.kind)
    if not energies:
        raise InputError(f"particles.surface_energies: required for a Wulff shape of {crystal.name!r}")
    if any(v <= 0 for v in energies.values()):
        raise InputError("particles.surface_energies: surface energies must be > 0")
    millers = tuple(parse_miller(k) for k in energies)
    normals, dists, verts, vol = _unit_wulff(tuple(np.round(crystal.cell, 10).ravel()), millers,
                                             tuple(float(v) for v in energies.values()))
    s = (sphere_volume(radius) / vol) ** (1.0 / 3.0)
    return Polyhedron(normals, dists * s, verts * s)


# ------------------------------------------------------------------------------------------------
# Multiply twinned particles
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MTPTemplate:
    positions: np.ndarray           # (n, 3) centred, Å
    numbers: np.ndarray
    equations: tuple                # per segment: (k, 4) hull equations n·x + c <= 0
    segment: np.ndarray             # (n,) segment index of each atom (0 for icosahedra)
    twin_angle: float               # decahedron: azimuth of a twin plane (rad)
    volume: float                   # hull volume (sum over segments), Å³
    vertices: np.ndarray


def _segments(p: np.ndarray, theta0: float) -> np.ndarray:
    phi = np.mod(np.arctan2(p[:, 1], p[:, 0]) - theta0, 2 * np.pi)
    return np.minimum((phi / (2 * np.pi / 5)).astype(int), 4)


def _build_template(symbol: str, a: float, shape: str, n: int, marks: int) -> MTPTemplate:
    from ase.cluster import Decahedron, Icosahedron
    from scipy.spatial import ConvexHull

    if shape == "icosahedron":
        cl = Icosahedron(symbol, noshells=n, latticeconstant=a)
    else:
        cl = Decahedron(symbol, p=n, q=max(1, n // 2), r=min(marks, max(0, n // 2 - 1)), latticeconstant=a)
    p = cl.positions - cl.positions.mean(axis=0)
    nums = cl.numbers.copy()
    if shape == "icosahedron":
        hull = ConvexHull(p)
        return MTPTemplate(p, nums, (hull.equations,), np.zeros(len(p), int), 0.0, float(hull.volume),
                           p[hull.vertices])
    # five-fold axis along z: twin planes are the densest half-planes containing the axis
    r = np.hypot(p[:, 0], p[:, 1])
    phi = np.arctan2(p[:, 1], p[:, 0])[r > 1e-6]
    hist, edges = np.histogram(np.mod(phi, 2 * np.pi / 5), bins=720, range=(0, 2 * np.pi / 5))
    k = int(np.argmax(hist))
    sel = (np.mod(phi, 2 * np.pi / 5) >= edges[k]) & (np.mod(phi, 2 * np.pi / 5) < edges[k + 1])
    theta0 = float(np.mod(phi, 2 * np.pi / 5)[sel].mean())
    seg = _segments(p, theta0)
    eqs, vol, verts = [], 0.0, []
    for j in range(5):
        a0, a1 = theta0 + j * 2 * np.pi / 5, theta0 + (j + 1) * 2 * np.pi / 5
        n0 = np.array([-np.sin(a0), np.cos(a0), 0.0])    # distance to the two bounding twin planes
        n1 = np.array([-np.sin(a1), np.cos(a1), 0.0])
        on = (seg == j) | (np.abs(p @ n0) < 0.05) & (p @ np.array([np.cos(a0), np.sin(a0), 0]) > -0.05) | \
             (np.abs(p @ n1) < 0.05) & (p @ np.array([np.cos(a1), np.sin(a1), 0]) > -0.05) | (r < 1e-6)
        hull = ConvexHull(p[on])
        eqs.append(hull.equations)
        vol += float(hull.volume)
        verts.append(p[on][hull.vertices])
    return MTPTemplate(p, nums, tuple(eqs), seg, theta0, vol, np.concatenate(verts))


@functools.lru_cache(maxsize=32)
def mtp_template(symbol: str, a: float, shape: str, radius: float, marks: int = 1) -> MTPTemplate:
    """Smallest ASE template whose hull volume exceeds 1.3 × the target volume (cached)."""
    target = 1.3 * sphere_volume(radius)
    d_nn = a / np.sqrt(2.0)
    n = max(2, int(radius / d_nn * (0.9 if shape == "icosahedron" else 1.2)))
    for _ in range(200):
        t = _build_template(symbol, a, shape, n, marks)
        if t.volume >= target:
            return t
        n += 1
    raise InputError(f"particles.radius: {radius} Å too large for a {shape}")  # pragma: no cover


def mtp_shape_distance(t: MTPTemplate) -> np.ndarray:
    """λ of every template atom w.r.t. its segment's hull (λ <= 1 inside the template hull)."""
    p = t.positions
    seg = _segments(p, t.twin_angle) if len(t.equations) > 1 else np.zeros(len(p), int)
    lam = np.empty(len(p))
    for j, eq in enumerate(t.equations):
        m = seg == j
        # facets through the origin (a decahedron segment's two twin-plane walls, offset ~1e-15) do not
        # scale with λ: the segment assignment already keeps atoms between them; dividing by their ~0
        # offsets gave λ ~ 1e16 (or NaN) to whole segments, which then lost all their atoms
        outer = np.abs(eq[:, 3]) > 1e-6 * max(1.0, float(np.abs(eq[:, 3]).max()))
        eq = eq[outer]
        lam[m] = np.max(p[m] @ (eq[:, :3] / -eq[:, 3:4]).T, axis=1)
    return lam


def select_by_shape(p: np.ndarray, lam: np.ndarray, n_atoms: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``n_atoms`` atoms of smallest shape distance λ; ties in the last (partial) layer are
    broken towards a random direction so that it grows as one island."""
    if n_atoms > len(p):
        raise ValueError("template too small")  # pragma: no cover - templates are sized with a margin
    u = rng.normal(size=3)
    u /= np.linalg.norm(u)
    order = np.lexsort((-(p @ u), np.round(lam, 6)))
    return np.sort(order[:n_atoms])


def target_atoms(number_density: float, radius: float) -> int:
    """N = round(n · 4/3 π r³): atoms of a polyhedral particle of equivalent-volume radius ``radius``."""
    return int(round(number_density * sphere_volume(radius)))
