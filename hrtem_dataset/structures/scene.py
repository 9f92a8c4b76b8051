"""Scenes: particles resting on an amorphous carbon film in an orthorhombic, xy-periodic cell.

Geometry (Å, beam along z): the film occupies ``vacuum <= z <= vacuum + thickness``; each particle is
translated so that its lowest atom lies ``embed`` below the film's top surface (``embed = 0``: it rests on
it); substrate atoms inside a particle's convex hull or closer than :data:`CONTACT_DISTANCE` to one of its
atoms are removed. The cell height is ``vacuum + thickness + tallest particle + vacuum``. Particles never
overlap: centre distances (periodic minimum image in x, y) are at least the sum of their circumradii plus
``min_separation`` (a conservative surface-to-surface gap), and a particle plus ``min_separation`` must
fit inside the periodic cell. Seeds: substrate ``rng(seed, "substrate")``, particle k
``rng(seed, "particle", k)``, placement ``rng(seed, "placement")`` (:mod:`hrtem_dataset.seeding`).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from scipy.spatial import Delaunay, cKDTree

from ..errors import InputError
from ..seeding import rng as make_rng
from ..specs import SceneSpec
from .particles import build_particle
from .substrate import amorphous_carbon, carbon_number_density

CONTACT_DISTANCE = 2.0
"""Substrate atoms closer than this to a particle atom are removed (≈ metal–carbon bond length), Å."""


def _min_image(d: np.ndarray, L: np.ndarray) -> np.ndarray:
    return d - L * np.round(d / L)


def place_particles(radii, positions, L, min_sep: float, rng: np.random.Generator, tries: int = 4000,
                    strict: bool = True) -> list:
    """xy centres for particles of circumradius ``radii``; ``positions[i]`` is 'center', 'random' or (x, y).

    Returns a list of (x, y) (or ``None`` for particles that found no room when ``strict`` is False).
    """
    L = np.asarray(L, float)
    placed: list = []
    out: list = []
    for i, (r, where) in enumerate(zip(radii, positions, strict=True)):
        if 2 * r + min_sep > L.min():
            if strict:
                raise InputError(f"particles[{i}].radius: a particle of circumradius {r:.1f} Å plus min_separation "
                                 f"{min_sep} Å does not fit the {L[0]:g} × {L[1]:g} Å cell")
            out.append(None)
            continue
        if where == "random":
            cand = rng.random((tries, 2)) * L
        elif where == "center":
            cand = (L / 2)[None, :]
        else:
            cand = np.mod(np.asarray(where, float), L)[None, :]
        ok = np.ones(len(cand), bool)
        for (q, rq) in placed:
            dd = _min_image(cand - q, L)
            ok &= np.hypot(dd[:, 0], dd[:, 1]) >= r + rq + min_sep - 1e-9
        idx = np.flatnonzero(ok)
        if len(idx) == 0:
            if strict:
                raise InputError(f"particles[{i}].position: no room for the particle at least {min_sep} Å "
                                 "(min_separation) from the others")
            out.append(None)
            continue
        c = cand[idx[0]]
        placed.append((c, r))
        out.append((float(c[0]), float(c[1])))
    return out


def build_scene(spec, seed: int) -> Atoms:
    """Build a concrete scene from a :class:`~hrtem_dataset.specs.SceneSpec` (see module docstring).

    Returns ASE ``Atoms`` with an orthorhombic cell, ``pbc=True``, per-atom int array ``particle_id``
    (-1 substrate, 0..n-1 particles) and ``info["scene"]`` (JSON-able dict of every concrete parameter).
    """

    if not isinstance(spec, SceneSpec):
        spec = SceneSpec.model_validate(spec)
    seed = int(seed)
    L = np.array([spec.cell.x, spec.cell.y])
    vac = float(spec.vacuum)

    if spec.substrate is not None and spec.embed >= spec.substrate.thickness:
        raise InputError(f"embed: {spec.embed} Å must be smaller than substrate.thickness ({spec.substrate.thickness} Å)")
    parts = [build_particle(p, make_rng(seed, "particle", k), k) for k, p in enumerate(spec.particles)]
    radii = [rec["circumradius"] for _, _, rec in parts]
    centres_xy = place_particles(radii, [p.position for p in spec.particles], L, spec.min_separation,
                                 make_rng(seed, "placement"))

    sub = spec.substrate
    if sub is not None:
        c_pos = amorphous_carbon(L[0], L[1], sub.thickness, sub.density, sub.min_distance, make_rng(seed, "substrate"))
        c_pos[:, 2] += vac
        z_top = vac + sub.thickness
    else:
        c_pos = np.empty((0, 3))
        z_top = vac
    z_surface = z_top - (spec.embed if sub is not None else 0.0)

    pos_list, num_list, pid_list, records = [], [], [], []
    keep_c = np.ones(len(c_pos), bool)
    tree = cKDTree(c_pos[:, :2], boxsize=L) if len(c_pos) else None
    z_max = z_top
    for k, ((p, nums, rec), xy) in enumerate(zip(parts, centres_xy, strict=True)):
        centre = np.array([xy[0], xy[1], z_surface - p[:, 2].min()])
        q = p + centre
        z_max = max(z_max, float(q[:, 2].max()))
        if tree is not None:
            # substrate atoms near this particle: within its lateral circumradius + contact distance
            near = np.array(tree.query_ball_point(centre[:2] % L, rec["circumradius"] + CONTACT_DISTANCE), dtype=int)
            if len(near):
                cn = c_pos[near].copy()
                cn[:, :2] = centre[:2] + _min_image(cn[:, :2] - centre[:2], L)  # unwrap next to the particle
                d, _ = cKDTree(q).query(cn, k=1, distance_upper_bound=CONTACT_DISTANCE)
                inside = np.isfinite(d)
                if spec.embed > 0 and len(q) >= 4:
                    inside |= Delaunay(q).find_simplex(cn) >= 0
                keep_c[near[inside]] = False
        q[:, :2] = np.mod(q[:, :2], L)
        pos_list.append(q)
        num_list.append(nums)
        pid_list.append(np.full(len(q), k, dtype=np.int64))
        rec["center"] = [round(float(x), 10) for x in centre]
        records.append(rec)

    c_kept = c_pos[keep_c]
    positions = np.concatenate([c_kept, *pos_list]) if pos_list else c_kept
    numbers = np.concatenate([np.full(len(c_kept), 6, dtype=np.int64), *num_list])
    pid = np.concatenate([np.full(len(c_kept), -1, dtype=np.int64), *pid_list])
    cell_z = z_max + vac
    atoms = Atoms(numbers=numbers, positions=positions, cell=[L[0], L[1], cell_z], pbc=True)
    atoms.set_array("particle_id", pid.astype(np.int32))

    substrate_info = None
    if sub is not None:
        n_c = int(len(c_pos))
        substrate_info = {"kind": sub.kind, "thickness": float(sub.thickness), "density": float(sub.density),
                          "min_distance": float(sub.min_distance), "n_atoms": n_c,
                          "n_removed": int(n_c - len(c_kept)), "z_bottom": vac, "z_top": z_top,
                          "density_actual": float(n_c / (L[0] * L[1] * sub.thickness) / carbon_number_density(1.0))}
    atoms.info["scene"] = {
        "seed": seed, "cell": [float(L[0]), float(L[1]), float(cell_z)], "vacuum": vac,
        "min_separation": float(spec.min_separation), "embed": float(spec.embed), "contact_distance": CONTACT_DISTANCE,
        "substrate": substrate_info, "particles": records, "n_particles": len(records), "n_atoms": int(len(atoms)),
        "spec": spec.model_dump(mode="json"),
    }
    return atoms


def particle_atoms(atoms: Atoms) -> Atoms:
    """Only the particle atoms (``particle_id >= 0``), same cell and info."""
    pid = atoms.arrays["particle_id"]
    sub = atoms[pid >= 0]
    sub.info = dict(atoms.info)
    return sub
