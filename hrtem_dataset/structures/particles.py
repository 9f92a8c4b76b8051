"""One nanoparticle: crystal + shape + planar defects + orientation.

Orientation convention: the particle's rotation matrix ``R`` maps crystal-frame vectors to the lab frame,
p_lab = R @ p_crystal + centre; the beam travels along the lab z axis.

* ``orientation: random`` — a uniformly random rotation (Haar measure, ``scipy Rotation.random``).
* ``orientation: "[uvw]"`` — the direct-lattice direction [uvw] is put along +z, with a random in-plane
  rotation about the beam; ``tilt_mrad`` then tilts it away from z by exactly that angle about a random
  in-plane axis. For decahedra and icosahedra [uvw] refers to the ASE cluster frame (decahedron five-fold
  axis = [001]).
"""

from __future__ import annotations

import re

import numpy as np
from scipy.spatial.transform import Rotation

from ..crystals import FCC_VARIANTS, fill_lattice, get_crystal, stacked_lattice
from ..errors import InputError
from .defects import choose_defect_layers, fcc_sequence, hcp_sequence
from .shapes import mtp_shape_distance, mtp_template, select_by_shape, target_atoms, wulff_polyhedron


def parse_zone_axis(s: str) -> tuple[int, int, int]:
    body = s.strip().strip("[]")
    parts = [p for p in body.replace(",", " ").split()]
    if len(parts) == 1:
        parts = re.findall(r"-?\d", parts[0])
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def orientation_matrix(orientation: str, tilt_mrad: float, direction_fn, rng: np.random.Generator) -> np.ndarray:
    """Rotation matrix crystal -> lab for an orientation spec (see module docstring)."""
    if orientation == "random":
        return Rotation.random(rng=rng).as_matrix()
    v = direction_fn(parse_zone_axis(orientation))
    align, _ = Rotation.align_vectors([[0.0, 0.0, 1.0]], [v])
    spin = Rotation.from_rotvec([0.0, 0.0, rng.uniform(0, 2 * np.pi)])
    psi = rng.uniform(0, 2 * np.pi)
    tilt = Rotation.from_rotvec(tilt_mrad * 1e-3 * np.array([np.cos(psi), np.sin(psi), 0.0]))
    return (tilt * spin * align).as_matrix()


def _cut(p: np.ndarray, spec, crystal, rng) -> tuple[np.ndarray, dict]:
    """Indices of the atoms of ``p`` (crystal frame) that form the particle (see :mod:`.shapes`)."""
    if spec.shape == "sphere":
        keep = np.flatnonzero(np.einsum("ij,ij->i", p, p) <= spec.radius**2)
        return keep, {"circumradius_shape": float(spec.radius)}
    poly = wulff_polyhedron(crystal, spec.radius, spec.surface_energies)
    n = target_atoms(crystal.number_density, spec.radius)
    keep = select_by_shape(p, poly.shape_distance(p), n, rng)
    return keep, {"circumradius_shape": poly.circumradius}


def _bounding_radius(spec, crystal) -> float:
    if spec.shape == "sphere":
        return float(spec.radius)
    return 1.15 * wulff_polyhedron(crystal, spec.radius, spec.surface_energies).circumradius + crystal.a


def build_particle(spec, rng: np.random.Generator, index: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Atoms of one particle centred on the origin, lab orientation (not yet translated).

    Returns (positions (n, 3) Å, atomic numbers (n,), record) where ``record`` is a JSON-able dict of every
    concrete parameter (material, shape, radius, defects, normal, rotation, n_atoms, ...).
    """
    where = f"particles[{index}]"
    try:
        crystal = get_crystal(spec.material)
    except InputError as exc:
        raise InputError(f"{where}.{exc}" if str(exc).startswith("material") else str(exc)) from None
    rec: dict = {"material": spec.material, "crystal": crystal.describe(), "shape": spec.shape,
                 "radius": float(spec.radius), "twins": int(spec.twins), "stacking_faults": int(spec.stacking_faults),
                 "twin_planes": [], "stacking_fault_planes": [], "defect_normal": None, "layer_spacing": None,
                 "layer_origin": None}
    n_def = spec.twins + spec.stacking_faults

    if spec.shape in ("decahedron", "icosahedron"):
        if crystal.kind != "fcc" or crystal.symbol is None:
            raise InputError(f"{where}.shape: {spec.shape} needs an fcc element, not {spec.material!r}")
        t = mtp_template(crystal.symbol, crystal.a, spec.shape, float(spec.radius), int(spec.marks_reentrance))
        keep = select_by_shape(t.positions, mtp_shape_distance(t), target_atoms(crystal.number_density,
                                                                                spec.radius), rng)
        pos, nums = t.positions[keep], t.numbers[keep]
        rec["circumradius_shape"] = float(np.linalg.norm(pos, axis=1).max())
        if spec.shape == "decahedron":
            rec["marks_reentrance"] = int(spec.marks_reentrance)
        direction = lambda uvw: np.asarray(uvw, float) / np.linalg.norm(uvw)  # noqa: E731
    elif n_def or crystal.stacking is not None:
        if n_def and crystal.stacking is None:
            raise InputError(f"{where}: twins/stacking faults need an fcc, hcp or wurtzite crystal, "
                             f"{spec.material!r} is {crystal.kind}")
        if spec.twins and crystal.stacking == "hcp":
            # a (0001) rotation twin of hcp/wurtzite is the same single cubic layer as an I1 fault
            raise InputError(f"{where}.twins: only basal stacking faults are supported for {crystal.kind} "
                             "(a basal rotation twin is an I1 stacking fault)")
        d = crystal.layer_spacing
        rb = _bounding_radius(spec, crystal)
        extent = float(spec.radius) if spec.shape == "sphere" else \
            wulff_polyhedron(crystal, spec.radius, spec.surface_energies).circumradius
        n_half = int(np.ceil(rb / d)) + 1
        layer0 = -n_half
        n_layers = 2 * n_half + 1
        twins = list(spec.twin_planes) if spec.twin_planes is not None else None
        faults = list(spec.stacking_fault_planes) if spec.stacking_fault_planes is not None else None
        try:
            if twins is None:
                twins = choose_defect_layers(rng, spec.twins, extent, d, spec.defect_min_spacing,
                                             exclude=faults or ())
            if faults is None:
                faults = choose_defect_layers(rng, spec.stacking_faults, extent, d, spec.defect_min_spacing,
                                              exclude=twins)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
        for name, planes in (("twin_planes", twins), ("stacking_fault_planes", faults)):
            if any(abs(int(k)) > n_half - 2 for k in planes):
                raise InputError(f"{where}.{name}: layer indices must lie within ±{n_half - 2} for this particle")
        if crystal.stacking == "fcc":
            seq = fcc_sequence(n_layers, layer0, twins, faults)
            variant = int(rng.integers(4)) if n_def else 0
            to_crystal = FCC_VARIANTS[variant]
        else:
            seq = hcp_sequence(n_layers, layer0, faults)
            to_crystal = np.eye(3)
        # cut about the centre of the layer motif (wurtzite: mid axial bond): a perfect sphere is then
        # exactly stoichiometric, as the hcp sublattices are mirror-symmetric about a basal layer
        centre = float(crystal.layer_motif[0].mean())
        pos, nums = stacked_lattice(crystal, rb, seq, layer0, centre=centre)
        pos = pos @ to_crystal.T
        keep, info = _cut(pos, spec, crystal, rng)
        pos, nums = pos[keep], nums[keep]
        rec.update(info)
        rec.update(twin_planes=sorted(int(k) for k in twins), stacking_fault_planes=sorted(int(k) for k in faults),
                   defect_normal=[round(float(x), 12) for x in to_crystal[:, 2]], layer_spacing=float(d),
                   layer_origin=-centre)
        direction = crystal.direction
    else:

        pos, nums = fill_lattice(crystal, _bounding_radius(spec, crystal))
        keep, info = _cut(pos, spec, crystal, rng)
        pos, nums = pos[keep], nums[keep]
        rec.update(info)
        direction = crystal.direction

    if len(pos) == 0:
        raise InputError(f"{where}.radius: {spec.radius} Å holds no atoms of {spec.material}")
    R = orientation_matrix(spec.orientation, float(spec.tilt_mrad), direction, rng)
    pos = pos @ R.T
    rec.update(orientation=spec.orientation, tilt_mrad=float(spec.tilt_mrad),
               rotation=[[round(float(x), 12) for x in row] for row in R],
               n_atoms=int(len(pos)), circumradius=float(np.linalg.norm(pos, axis=1).max()))
    return pos, np.asarray(nums, dtype=np.int64), rec
