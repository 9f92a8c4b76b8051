"""Draw concrete scene specs from a :class:`~hrtem_dataset.specs.StructureDistributionSpec`.

Per-scene seeds are ``derive_seed(root, "structure", index)``; everything drawn for a scene comes from
``rng(scene_seed, "scene-spec")``, so scene ``i`` can be re-drawn alone. Particles are drawn one by one
(material, shape, radius, defects, orientation, tilt). Defects: either ``defects`` (total, uniform, each a
twin with probability ``twin_fraction``) or independent ``twins`` and ``stacking_faults`` counts, capped by
``max_defects``; multiply twinned shapes and non-fcc/hcp/wurtzite crystals get none, hcp and wurtzite get
basal faults only) and
placed at concrete xy centres with random sequential placement using each shape's circumradius (an upper
bound of the built particle's); a particle that finds no room after 4000 candidate centres is dropped and
the number of dropped particles is recorded by :func:`sample_scene`.
"""

from __future__ import annotations

import numpy as np

from ..crystals import get_crystal
from ..seeding import derive_seed
from ..seeding import rng as make_rng
from ..specs import ParticleSpec, SceneSpec, StructureDistributionSpec, SubstrateSpec, sample_param
from .defects import max_defect_planes
from .scene import build_scene, place_particles
from .shapes import mtp_shape_distance, mtp_template, target_atoms, wulff_polyhedron


def scene_seed(root: int, index: int) -> int:
    return derive_seed(root, "structure", int(index))


def shape_circumradius(p: ParticleSpec) -> float:
    """Upper bound of the built particle's circumradius (Å), whatever the build seed."""
    if p.shape == "sphere":
        return float(p.radius)
    crystal = get_crystal(p.material)
    if p.shape == "wulff":  # the last partial layer may stick out by up to about one lattice constant
        return 1.1 * wulff_polyhedron(crystal, p.radius, p.surface_energies).circumradius + crystal.a
    t = mtp_template(crystal.symbol, crystal.a, p.shape, float(p.radius), int(p.marks_reentrance))
    lam = np.sort(mtp_shape_distance(t))[target_atoms(crystal.number_density, p.radius) - 1]
    return float(lam * np.linalg.norm(t.vertices, axis=1).max()) + 0.01


def _draw(dist: StructureDistributionSpec, seed: int) -> tuple[SceneSpec, int]:
    r = make_rng(seed, "scene-spec")
    pd = dist.particles
    n = dist.n_particles.sample(r)
    drafts = []
    for _ in range(n):
        material = str(pd.materials.sample(r))
        shape = str(pd.shapes.sample(r))
        radius = float(sample_param(pd.radius, r))
        if pd.defects is not None:
            n_def = pd.defects.sample(r)
            twins = int((r.random(n_def) < pd.twin_fraction).sum())
            faults = n_def - twins
        else:
            twins = pd.twins.sample(r)
            faults = pd.stacking_faults.sample(r)
        orientation = str(pd.orientation.sample(r))
        tilt = float(sample_param(pd.tilt_mrad, r))
        stacking = get_crystal(material).stacking
        if shape in ("decahedron", "icosahedron") or stacking is None:
            twins = faults = 0
        if stacking == "hcp":  # hcp and wurtzite: basal stacking faults only
            faults, twins = faults + twins, 0
        if twins + faults:  # never more planes than fit the particle at the minimum spacing
            cap = max_defect_planes(radius, get_crystal(material).layer_spacing, pd.defect_min_spacing)
            while twins + faults > cap:
                if twins >= faults:
                    twins -= 1
                else:
                    faults -= 1
        if pd.max_defects is not None and twins + faults > pd.max_defects:
            keep = pd.max_defects
            twins_kept = int(r.integers(max(0, keep - faults), min(twins, keep) + 1))
            twins, faults = twins_kept, keep - twins_kept
        drafts.append(dict(material=material, shape=shape, radius=radius, twins=twins, stacking_faults=faults,
                           orientation=orientation, tilt_mrad=tilt, defect_min_spacing=pd.defect_min_spacing))
    radii = [shape_circumradius(ParticleSpec(**d)) for d in drafts]
    centres = place_particles(radii, ["random"] * len(drafts), np.array([dist.cell.x, dist.cell.y]),
                              dist.min_separation, r, strict=False)
    particles = [ParticleSpec(**d, position=c) for d, c in zip(drafts, centres, strict=True) if c is not None]
    substrate = None
    if dist.substrate_thickness is not None:
        substrate = SubstrateSpec(thickness=float(sample_param(dist.substrate_thickness, r)),
                                  density=float(sample_param(dist.substrate_density, r)))
    spec = SceneSpec(cell=dist.cell, substrate=substrate, particles=particles, vacuum=dist.vacuum,
                     min_separation=dist.min_separation)
    return spec, len(drafts) - len(particles)


def sample_scene_spec(dist: StructureDistributionSpec, seed: int) -> SceneSpec:
    """A concrete :class:`SceneSpec` drawn from ``dist`` with ``seed`` (the scene's own seed)."""
    return _draw(dist, int(seed))[0]


def sample_scene(dist: StructureDistributionSpec, root_seed: int, index: int):
    """Scene ``index`` of a sampled set: returns (scene_seed, SceneSpec, n_dropped, atoms)."""

    s = scene_seed(root_seed, index)
    spec, dropped = _draw(dist, s)
    atoms = build_scene(spec, s)
    atoms.info["scene"]["n_particles_dropped"] = dropped
    atoms.info["scene"]["index"] = int(index)
    return s, spec, dropped, atoms
