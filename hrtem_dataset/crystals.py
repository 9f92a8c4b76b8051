"""The materials database: crystals of element defaults (fcc/bcc/hcp/...) or any CIF (pymatgen), and
vectorised lattice filling. It sits below the specs (which validate material names against it) and is used
by :mod:`hrtem_dataset.structures`.

Frames and units (Å everywhere):

* The *crystal frame* of a material is the Cartesian frame of its conventional cell :attr:`Crystal.cell`
  (rows = lattice vectors a, b, c). Zone axes ``[uvw]`` are direct-lattice directions ``u a + v b + w c``
  of that cell; for cubic crystals that is simply the Cartesian direction (u, v, w).
* fcc and hcp particles are built layer by layer along a close-packed direction (the *stacking frame*:
  layers in the x'y' plane, stacking along z'), which is how twins and stacking faults are inserted
  (see :mod:`hrtem_dataset.structures.defects`); the positions are then rotated into the crystal frame.
  For fcc the stacking axis is one of the four <111> (z' = [111], x' = [1-10]/√2, y' = [11-2]/√6, then
  a cubic symmetry rotation about [001] picks the variant); for hcp it is [0001] (= the crystal frame).
* Wurtzite-type crystals (``kind = "wurtzite"``: ZnO, GaN, ... built in, or any CIF detected as a 2H
  stacking of cation–anion columns) are hcp stackings of *bilayers*: each close-packed layer carries a
  column motif (cation at height 0, anion at +u·c on the same in-plane site, i.e. the axial bond), and the
  cation sublattice stacks ABAB along [0001] (notation AaBbAaBb). Layer spacing c/2, as for hcp; basal
  stacking faults change the bilayer sequence while every bilayer keeps its motif, so the tetrahedral
  bonds (one axial, three to the anions of the bilayer below) survive across the fault.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError

# Room-temperature lattice constants (Å) that override ASE's reference states where those are rounded.
_LATTICE_CONSTANTS = {
    "Au": ("fcc", 4.0782), "Ag": ("fcc", 4.0853), "Cu": ("fcc", 3.6149), "Pt": ("fcc", 3.9242),
    "Pd": ("fcc", 3.8907), "Ni": ("fcc", 3.5240), "Al": ("fcc", 4.0495), "Ir": ("fcc", 3.8390),
    "Rh": ("fcc", 3.8034), "Fe": ("bcc", 2.8665), "W": ("bcc", 3.1652), "Mo": ("bcc", 3.1470),
}

# Built-in wurtzite compounds: (cation, anion, a Å, c Å, u, reference), room temperature.
_WURTZITE = {
    "ZnO": ("Zn", "O", 3.2498, 5.2066, 0.3819, "Kisi & Elcombe, Acta Cryst. C45, 1867 (1989)"),
    "ZnS": ("Zn", "S", 3.8227, 6.2607, 0.3748, "Kisi & Elcombe, Acta Cryst. C45, 1867 (1989); wurtzite polytype"),
    "GaN": ("Ga", "N", 3.1890, 5.1855, 0.3770, "Leszczynski et al., APL 69, 73 (1996); u: Schulz & Thiemann (1977)"),
    "AlN": ("Al", "N", 3.1120, 4.9808, 0.3821, "Schulz & Thiemann, Solid State Commun. 23, 815 (1977)"),
    "CdS": ("Cd", "S", 4.1367, 6.7161, 0.3770, "Wyckoff, Crystal Structures (1963); wurtzite polytype"),
    "CdSe": ("Cd", "Se", 4.2999, 7.0109, 0.3760, "Wyckoff, Crystal Structures (1963); wurtzite polytype"),
}

_FCC_STACK = np.column_stack([
    np.array([1.0, -1.0, 0.0]) / np.sqrt(2.0),
    np.array([1.0, 1.0, -2.0]) / np.sqrt(6.0),
    np.array([1.0, 1.0, 1.0]) / np.sqrt(3.0),
])
"""Columns: the stacking-frame axes x', y', z' in cubic coordinates (p_cubic = _FCC_STACK @ p_stack)."""


def _rot_z(k: int) -> np.ndarray:
    c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][k % 4]
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=float)


FCC_VARIANTS = [_rot_z(k) @ _FCC_STACK for k in range(4)]
"""Stacking frame -> cubic frame for the four {111} variants (normals [111], [-111], [-1-11], [1-11])."""


@dataclass(frozen=True)
class Crystal:
    """A crystal structure in its conventional cell.

    ``kind`` is ``fcc``, ``hcp`` (one atom per close-packed layer; planar defects supported), ``wurtzite``
    (a cation–anion column motif per close-packed layer, 2H stacking; basal stacking faults supported),
    ``bcc`` or ``other`` (any other structure, including CIFs that are not hcp/wurtzite; no planar defects).
    ``motif_dz``/``motif_numbers``: heights (Å, along the stacking normal, relative to the layer) and atomic
    numbers of the atoms every close-packed layer carries; ``None`` means one atom at height 0.
    """

    name: str
    kind: str
    cell: np.ndarray                    # (3, 3) rows = lattice vectors, Å
    frac: np.ndarray                    # (m, 3) fractional basis coordinates
    numbers: np.ndarray                 # (m,) atomic numbers
    a: float                            # lattice constant a, Å
    c: float | None = None              # hcp c, Å
    source: str = "default"             # "default" or the CIF path
    extra: dict = field(default_factory=dict)
    motif_dz: np.ndarray | None = None
    motif_numbers: np.ndarray | None = None

    @property
    def number_density(self) -> float:
        """Atoms per Å³."""
        return len(self.numbers) / abs(float(np.linalg.det(self.cell)))

    @property
    def symbol(self) -> str | None:
        from ase.data import chemical_symbols

        z = np.unique(self.numbers)
        return chemical_symbols[int(z[0])] if len(z) == 1 else None

    @property
    def layer_spacing(self) -> float | None:
        """Spacing of close-packed layers (fcc {111}: a/√3; hcp (0001): c/2), Å."""
        if self.kind == "fcc":
            return self.a / np.sqrt(3.0)
        if self.kind in ("hcp", "wurtzite"):
            return float(self.c) / 2.0
        return None

    @property
    def stacking(self) -> str | None:
        """Close-packed stacking the defect builder uses: ``fcc`` (ABC), ``hcp`` (AB, also wurtzite) or None."""
        return {"fcc": "fcc", "hcp": "hcp", "wurtzite": "hcp"}.get(self.kind)

    @property
    def layer_motif(self) -> tuple[np.ndarray, np.ndarray]:
        """(heights Å, atomic numbers) of the atoms on one close-packed layer's site (see class docstring)."""
        if self.motif_dz is None:
            return np.zeros(1), self.numbers[:1].copy()
        return np.asarray(self.motif_dz, float), np.asarray(self.motif_numbers, np.int64)

    def direction(self, uvw) -> np.ndarray:
        """Unit Cartesian vector (crystal frame) of the direct-lattice direction [uvw]."""
        v = np.asarray(uvw, dtype=float) @ self.cell
        n = np.linalg.norm(v)
        if n == 0:
            raise InputError("orientation: zone axis [000] has no direction")
        return v / n

    def describe(self) -> dict:
        d = {"name": self.name, "kind": self.kind, "a": round(self.a, 6), "source": self.source}
        if self.c is not None:
            d["c"] = round(float(self.c), 6)
        d.update(self.extra)
        return d


def _is_cif(material: str) -> bool:
    return material.lower().endswith(".cif") or "/" in material or Path(material).is_file()


def _element_crystal(symbol: str) -> Crystal:
    from ase.data import atomic_numbers, reference_states

    if symbol not in atomic_numbers:
        raise InputError(f"material: {symbol!r} is neither an element symbol nor a CIF file")
    z = atomic_numbers[symbol]
    ref = reference_states[z] or {}
    kind, a = _LATTICE_CONSTANTS.get(symbol, (ref.get("symmetry"), ref.get("a")))
    if kind == "fcc":
        cell = np.eye(3) * a
        frac = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]], dtype=float)
        return Crystal(symbol, "fcc", cell, frac, np.full(4, z), float(a))
    if kind == "hcp":
        c = float(ref["c/a"]) * a
        cell = np.array([[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, c]], dtype=float)
        frac = np.array([[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]])
        return Crystal(symbol, "hcp", cell, frac, np.full(2, z), float(a), c=c)
    if kind in ("bcc", "sc", "diamond"):
        from ase.build import bulk

        at = bulk(symbol, kind, a=a, cubic=True)
        return Crystal(symbol, "bcc" if kind == "bcc" else "other", np.array(at.cell[:]),
                       at.get_scaled_positions(), at.numbers.copy(), float(a))
    raise InputError(f"material: no default crystal structure for {symbol!r}; give a CIF file instead")


def _hex_cell(a: float, c: float) -> np.ndarray:
    return np.array([[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, c]], dtype=float)


def _wurtzite(name: str, z_motif, dz_motif, a: float, c: float, source: str = "default", extra=None) -> Crystal:
    """2H stacking of a column motif: sites (1/3, 2/3, dz/c) and (2/3, 1/3, dz/c + 1/2) (P6_3mc for wurtzite)."""
    dz = np.asarray(dz_motif, float)
    z = np.asarray(z_motif, np.int64)
    frac = np.concatenate([np.column_stack([np.full(len(dz), 1 / 3), np.full(len(dz), 2 / 3), dz / c]),
                           np.column_stack([np.full(len(dz), 2 / 3), np.full(len(dz), 1 / 3), dz / c + 0.5])])
    kind = "hcp" if len(dz) == 1 else "wurtzite"
    return Crystal(name, kind, _hex_cell(a, c), frac % 1.0, np.concatenate([z, z]), float(a), c=float(c),
                   source=source, extra=dict(extra or {}), motif_dz=None if kind == "hcp" else dz,
                   motif_numbers=None if kind == "hcp" else z)


def _compound_crystal(name: str) -> Crystal:
    from ase.data import atomic_numbers

    cat, an, a, c, u, ref = _WURTZITE[name]
    return _wurtzite(name, [atomic_numbers[cat], atomic_numbers[an]], [0.0, u * c], a, c,
                     extra={"u": u, "cation": cat, "anion": an, "reference": ref})


def _layered_hexagonal(name: str, cell: np.ndarray, frac: np.ndarray, numbers: np.ndarray, source: str):
    """The CIF structure as a 2H stacking of column motifs (hcp element or wurtzite-type), or None.

    Accepted: a hexagonal cell (a = b, γ = 120°, c ⟂ ab) whose atoms sit on two of the three close-packed
    columns, the second column holding the first one's atoms shifted by c/2 (the 6_3 screw), and the
    column motif (one atom, or two atoms of different species) spanning less than c/2 along c so that it
    can ride on one close-packed layer.
    """
    la, lb, lc = np.linalg.norm(cell, axis=1)
    cos_g = cell[0] @ cell[1] / (la * lb)
    if not (abs(la - lb) < 1e-3 * la and abs(cos_g + 0.5) < 1e-3
            and abs(cell[2] @ cell[0]) < 1e-6 * la * lc and abs(cell[2] @ cell[1]) < 1e-6 * lb * lc):
        return None
    rel = np.mod(frac - frac[0], 1.0)
    site = np.round(3 * rel[:, :2]).astype(int) % 3
    if np.abs(3 * rel[:, :2] - np.round(3 * rel[:, :2])).max() > 3e-3 or np.any(site[:, 0] != (2 * site[:, 1]) % 3):
        return None
    s = site[:, 1]                                   # 0, 1, 2 = column through atom 0, and the two others
    others = np.unique(s[s != 0])
    if len(others) != 1 or (s == 0).sum() != (s != 0).sum():
        return None
    z0, n0 = rel[s == 0, 2], numbers[s == 0]
    z1, n1 = np.mod(rel[s != 0, 2] - 0.5, 1.0), numbers[s != 0]
    o0, o1 = np.lexsort((z0, n0)), np.lexsort((z1, n1))
    dzw = np.abs(np.mod(z0[o0] - z1[o1] + 0.5, 1.0) - 0.5)
    if not np.array_equal(n0[o0], n1[o1]) or dzw.max() > 3e-3:
        return None
    # compact motif: cut the column at its largest gap along c
    order = np.argsort(z0)
    zs, ns = z0[order], n0[order]
    gaps = np.diff(np.concatenate([zs, [zs[0] + 1.0]]))
    k = int(np.argmax(gaps))
    zs = np.concatenate([zs[k + 1:], zs[: k + 1] + 1.0])
    ns = np.concatenate([ns[k + 1:], ns[: k + 1]])
    zs -= zs[0]
    if zs[-1] >= 0.5 - 1e-6 or len(zs) > 2 or (len(zs) == 2 and ns[0] == ns[1]):
        return None
    extra = {}
    if len(zs) == 2:
        from ase.data import chemical_symbols
        from pymatgen.core import Element

        en = [Element(chemical_symbols[int(z)]).X for z in ns]
        cat = int(np.argmin(en))
        # reference the motif to the cation; u = anion height above it in units of c (negative: -c polarity)
        zs = zs - zs[cat]
        u = float(zs[1 - cat])
        extra = {"u": round(u, 6), "cation": chemical_symbols[int(ns[cat])],
                 "anion": chemical_symbols[int(ns[1 - cat])]}
        ns = np.array([ns[cat], ns[1 - cat]])
        zs = np.array([0.0, u])
    return _wurtzite(name, ns, zs * lc, float(la), float(lc), source=source, extra=extra)


def _cif_crystal(path: str) -> Crystal:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: CIF file not found")
    try:
        import warnings

        from pymatgen.core import Structure
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = Structure.from_file(str(p))
            try:
                s = SpacegroupAnalyzer(s).get_conventional_standard_structure()
            except Exception:  # noqa: BLE001 - symmetry analysis is optional
                pass
    except Exception as exc:  # noqa: BLE001 - any parser failure is bad input
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: unreadable CIF: {msg}") from None
    if len(s) == 0:
        raise InputError(f"{path}: CIF has no atoms")
    if not s.is_ordered:
        raise InputError(f"{path}: CIF has partial occupancies, which are not supported")
    lat = s.lattice
    cell, frac, nums = np.array(lat.matrix), np.array(s.frac_coords) % 1.0, np.array(s.atomic_numbers)
    layered = _layered_hexagonal(p.stem, cell, frac, nums, str(p))
    if layered is not None:
        return layered
    return Crystal(p.stem, "other", cell, frac, nums, float(lat.a), source=str(p))


@functools.lru_cache(maxsize=64)
def get_crystal(material: str) -> Crystal:
    """Crystal for an element symbol (standard structure and lattice constant) or a CIF path.

    Raises :class:`InputError` naming the material or file when it cannot be used.
    """
    material = material.strip()
    if material in _WURTZITE:
        return _compound_crystal(material)
    if _is_cif(material):
        return _cif_crystal(material)
    if not re.fullmatch(r"[A-Z][a-z]?", material):
        raise InputError(f"material: {material!r} is neither an element symbol, a built-in compound "
                         f"({', '.join(_WURTZITE)}) nor a CIF file")
    return _element_crystal(material)


def fill_lattice(crystal: Crystal, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """All atoms of the (perfect) crystal within ``radius`` of the origin, crystal frame.

    The origin is the first basis atom. Vectorised over the integer cell indices.
    Returns (positions (n, 3) Å, atomic numbers (n,)).
    """
    cell = crystal.cell
    frac = crystal.frac - crystal.frac[0]
    recip = np.linalg.inv(cell).T  # rows b_i with a_i . b_j = delta_ij
    nmax = np.ceil(radius * np.linalg.norm(recip, axis=1)).astype(int) + 1
    grids = np.meshgrid(*[np.arange(-n, n + 1) for n in nmax], indexing="ij")
    ijk = np.stack([g.ravel() for g in grids], axis=1).astype(float)
    pts = (ijk[:, None, :] + frac[None, :, :]).reshape(-1, 3) @ cell
    nums = np.tile(crystal.numbers, len(ijk))
    keep = np.einsum("ij,ij->i", pts, pts) <= radius * radius
    return pts[keep], nums[keep]


def stacked_lattice(crystal: Crystal, radius: float, shifts: np.ndarray, layer0: int,
                    centre: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Close-packed layers within ``radius`` of the origin, stacking frame.

    ``shifts[i]`` in {0, 1, 2} is the A/B/C position of layer ``i + layer0``; layer k lies at height
    k·d - ``centre`` (d = crystal.layer_spacing), so ``centre`` is the height of the returned frame's origin
    above layer 0 (the sphere is cut about it). Every layer carries the crystal's column motif
    (:attr:`Crystal.layer_motif`: one atom, or cation + anion u·c above it for wurtzite).
    In-plane lattice vectors a1 = a_h (1, 0, 0), a2 = a_h (1/2, √3/2, 0) with a_h the nearest-neighbour
    distance in the layer; the B and C sites are shifted by 1/3 and 2/3 of ``t``.
    For fcc, ``t`` = 2 (a1 + a2) / 3 makes the sequence 0, 1, 2, 0, ... the perfect fcc lattice in the frame
    of :data:`_FCC_STACK`; for hcp/wurtzite ``t`` = (a1 + a2) / 3 with the sequence 0, 1, 0, 1, ...
    Returns (positions (n, 3) Å, atomic numbers (n,)).
    """
    if crystal.kind == "fcc":
        ah = crystal.a / np.sqrt(2.0)
        t = 2.0 / 3.0
    else:
        ah = crystal.a
        t = 1.0 / 3.0
    d = crystal.layer_spacing
    mdz, mz = crystal.layer_motif
    a1 = np.array([ah, 0.0, 0.0])
    a2 = np.array([ah / 2, ah * np.sqrt(3) / 2, 0.0])
    tv = t * (a1 + a2)
    m = int(np.ceil(radius / (ah * np.sqrt(3) / 2))) + 2
    ii, jj = np.meshgrid(np.arange(-m, m + 1), np.arange(-m, m + 1), indexing="ij")
    plane = ii.ravel()[:, None] * a1 + jj.ravel()[:, None] * a2           # (q, 3)
    layers = np.arange(len(shifts)) + layer0
    z = layers * d - centre
    ok = np.abs(z) <= radius + np.abs(mdz).max()
    offs = shifts[ok, None] * tv[None, :] + z[ok, None] * np.array([0.0, 0.0, 1.0])  # (L, 3)
    # wrap the in-plane shift back near the origin so the fixed in-plane grid always covers the disc
    offs[:, :2] -= np.round(offs[:, :2] @ np.linalg.inv(np.array([a1[:2], a2[:2]]))) @ np.array([a1[:2], a2[:2]])
    offs = (offs[:, None, :] + mdz[None, :, None] * np.array([0.0, 0.0, 1.0])).reshape(-1, 3)  # (L·m, 3)
    nums = np.broadcast_to(np.tile(mz, int(ok.sum()))[:, None], (len(offs), len(plane))).ravel()
    pts = (offs[:, None, :] + plane[None, :, :]).reshape(-1, 3)
    keep = np.einsum("ij,ij->i", pts, pts) <= radius * radius
    return pts[keep], nums[keep]
