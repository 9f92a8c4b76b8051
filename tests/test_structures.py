"""Structure builder: atom counts, densities, stacking sequences, projections, determinism, CLI errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from ase.data import chemical_symbols
from scipy.spatial import ConvexHull, Delaunay, cKDTree

from hrtem_dataset.cli import main
from hrtem_dataset.errors import InputError
from hrtem_dataset.specs import ParticleSpec, SceneSpec, StructureDistributionSpec, load_spec
from hrtem_dataset.structures import (
    amorphous_carbon,
    build_particle,
    build_scene,
    carbon_number_density,
    get_crystal,
    particle_atoms,
    read_extxyz,
    sample_scene_spec,
    write_extxyz,
    write_prismatic_xyz,
)
from hrtem_dataset.structures.scene import CONTACT_DISTANCE

A_AU = get_crystal("Au").a


def _particle(seed=0, **kw):
    return build_particle(ParticleSpec(**kw), np.random.default_rng(seed))


def _scene(**kw) -> SceneSpec:
    base = {"cell": {"x": 50.0, "y": 50.0}, "substrate": {"thickness": 12.0},
            "particles": [{"material": "Au", "radius": 9.0, "twins": 1}]}
    base.update(kw)
    return SceneSpec.model_validate(base)


# ---------------------------------------------------------------- counts and densities


@pytest.mark.parametrize("radius,twins,orientation", [(20.0, 0, "random"), (25.0, 1, "random"), (22.5, 2, "[110]")])
def test_au_sphere_atom_count_matches_volume(radius, twins, orientation):
    pos, nums, rec = _particle(radius=radius, material="Au", twins=twins, orientation=orientation)
    expected = 4 / 3 * math.pi * radius**3 * 4 / A_AU**3
    assert abs(len(pos) - expected) / expected < 0.05
    assert rec["n_atoms"] == len(pos) and set(nums.tolist()) == {79}
    assert np.linalg.norm(pos, axis=1).max() <= radius + 1e-9
    # no two atoms closer than the fcc nearest-neighbour distance a/√2 (twins keep the close packing)
    d, _ = cKDTree(pos).query(pos, k=2)
    assert d[:, 1].min() == pytest.approx(A_AU / math.sqrt(2), rel=1e-6)


@pytest.mark.parametrize("material,per_cell", [("Fe", 2), ("Cu", 4)])
def test_other_default_crystals_count(material, per_cell):
    c = get_crystal(material)
    pos, _, _ = _particle(material=material, radius=20.0)
    expected = 4 / 3 * math.pi * 20.0**3 * per_cell / c.a**3
    assert abs(len(pos) - expected) / expected < 0.05


def test_hcp_default_and_cif(tmp_path):
    from pymatgen.core import Lattice, Structure

    co = get_crystal("Co")
    assert co.kind == "hcp" and co.c / co.a == pytest.approx(1.622, abs=1e-3)
    # a CIF (rock salt MgO) read through pymatgen: count = 8 atoms per a³
    cif = tmp_path / "MgO.cif"
    Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.211), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(
        filename=str(cif))
    pos, nums, rec = _particle(material=str(cif), radius=18.0, orientation="[100]")
    expected = 4 / 3 * math.pi * 18.0**3 * 8 / 4.211**3
    assert abs(len(pos) - expected) / expected < 0.05
    assert set(nums.tolist()) == {8, 12} and rec["crystal"]["source"] == str(cif)


@pytest.mark.parametrize("density,dmin", [(2.0, 1.4), (1.8, 1.6)])
def test_amorphous_carbon_density_and_min_distance(density, dmin):
    lx, ly, t = 40.0, 36.0, 25.0
    pos = amorphous_carbon(lx, ly, t, density, dmin, np.random.default_rng(1))
    n_expected = carbon_number_density(density) * lx * ly * t
    assert abs(len(pos) - n_expected) / n_expected < 0.02
    assert carbon_number_density(1.0) == pytest.approx(0.050139, rel=1e-4)
    assert pos[:, 0].min() >= 0 and pos[:, 0].max() < lx and pos[:, 2].max() < t
    # minimum C–C distance with periodic images in x and y (z open: box padded)
    d, _ = cKDTree(pos, boxsize=[lx, ly, 3 * t]).query(pos, k=2)
    assert d[:, 1].min() >= dmin - 1e-9
    # the film is periodic, not two walls: atoms within 1 Å of the x = 0 edge find their nearest neighbour
    # across the boundary as often as their neighbours are on the far side, and the edge slabs are as dense
    # as the bulk (a generator treating x as open would leave the edges depleted or overlapping)
    d_open, _ = cKDTree(pos).query(pos, k=2)
    edge = pos[:, 0] < 1.0
    across = d[edge, 1] < d_open[edge, 1] - 1e-9
    assert 0.15 < across.mean(), across.mean()
    slab = [((pos[:, 0] >= x0) & (pos[:, 0] < x0 + 2.0)).sum() for x0 in (0.0, lx / 2, lx - 2.0)]
    assert slab[0] == pytest.approx(slab[1], rel=0.2) and slab[2] == pytest.approx(slab[1], rel=0.2), slab
    # homogeneous: each quarter of the film along z holds 25 % of the atoms within 10 %
    counts = np.histogram(pos[:, 2], bins=4, range=(0, t))[0]
    assert np.all(np.abs(counts / len(pos) - 0.25) < 0.025)


def test_scene_substrate_density_in_scene():
    atoms = build_scene(_scene(particles=[]), 0)
    sub = atoms.info["scene"]["substrate"]
    assert sub["density_actual"] == pytest.approx(2.0, rel=0.02)
    assert (atoms.arrays["particle_id"] == -1).all()


# ---------------------------------------------------------------- planar defects


def _layer_sequence(pos, rec):
    """ABC site (0/1/2) and height index of every {111} layer, from atoms back in the crystal frame."""
    R = np.array(rec["rotation"])
    p = pos @ R                                     # lab -> crystal frame (R orthogonal)
    n = np.array(rec["defect_normal"])
    d = rec["layer_spacing"]
    h = p @ n / d
    layer = np.round(h).astype(int)
    assert np.abs(h - layer).max() < 1e-6          # atoms sit exactly on equally spaced layers
    # in-plane fcc nearest-neighbour vectors a/2<110> perpendicular to n, 60° apart
    cand = np.array([[1, -1, 0], [1, 0, -1], [0, 1, -1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], float)
    cand = np.concatenate([cand, -cand]) * A_AU / 2
    perp = cand[np.abs(cand @ n) < 1e-9]
    a1 = perp[0]
    a2 = next(v for v in perp if abs(v @ a1 - (a1 @ a1) / 2) < 1e-9)
    g = np.array([[a1 @ a1, a1 @ a2], [a1 @ a2, a2 @ a2]])
    f = np.linalg.solve(g, np.stack([p @ a1, p @ a2]))
    site = np.round(3 * np.mod(f[0] + f[1], 1.0)).astype(int) % 3
    layers = np.unique(layer)
    seq = []
    for k in layers:
        s = np.unique(site[layer == k])
        assert len(s) == 1, f"layer {k} mixes stacking sites {s}"
        seq.append(int(s[0]))
    assert np.all(np.diff(layers) == 1)              # no missing layer heights
    return layers, np.array(seq)


def test_twin_mirrors_abc_stacking():
    pos, _, rec = _particle(seed=3, material="Au", radius=20.0, twins=1, twin_planes=[2])
    layers, seq = _layer_sequence(pos, rec)
    k = int(np.nonzero(layers == 2)[0][0])
    step = np.mod(np.diff(seq), 3)                   # 1 or 2 (= -1): ABC order or reversed
    assert np.all(step != 0)                         # no two equal neighbouring layers
    assert len(set(step[:k].tolist())) == 1 and len(set(step[k:].tolist())) == 1
    assert step[0] != step[-1]                       # stacking direction reverses at layer 2
    m = min(k, len(seq) - 1 - k)
    assert np.array_equal(seq[k - m:k][::-1], seq[k + 1:k + 1 + m])   # mirror image about the twin plane
    assert rec["twin_planes"] == [2]


def test_stacking_fault_removes_one_layer():
    pos, _, rec = _particle(seed=5, material="Au", radius=20.0, stacking_faults=1, stacking_fault_planes=[-1])
    layers, seq = _layer_sequence(pos, rec)
    step = np.mod(np.diff(seq), 3)
    k = int(np.nonzero(layers == -1)[0][0])
    normal = step[0]
    assert np.all(np.delete(step, k) == normal) and step[k] != normal   # exactly one reversed step
    # above the fault the sequence is the perfect one advanced by one layer: one layer is missing
    perfect = (seq[0] + normal * np.arange(len(seq) + 1)) % 3
    assert np.array_equal(seq[: k + 1], perfect[: k + 1])
    assert np.array_equal(seq[k + 1:], perfect[k + 2:])


def test_random_defects_respect_min_spacing():
    _, _, rec = _particle(seed=11, material="Au", radius=30.0, twins=2, stacking_faults=2, defect_min_spacing=7.0)
    planes = np.array(sorted(rec["twin_planes"] + rec["stacking_fault_planes"]))
    assert len(planes) == 4 and np.diff(planes).min() * rec["layer_spacing"] >= 7.0 - 1e-9


def test_hcp_basal_stacking_fault():
    pos, _, rec = _particle(material="Co", radius=14.0, stacking_faults=1, stacking_fault_planes=[1], orientation="[001]")
    co = get_crystal("Co")
    p = pos @ np.array(rec["rotation"])
    layer = np.round(p[:, 2] / (co.c / 2)).astype(int)
    # site from in-plane fractional coordinates: A (0,0), B/C at ±(1/3, 2/3)-type shifts
    frac = np.linalg.solve(co.cell[:2, :2].T, p[:, :2].T).T
    site = np.round(3 * np.mod(frac[:, 0] - frac[:, 1], 1.0)).astype(int) % 3
    seq = np.array([np.unique(site[layer == k])[0] for k in np.unique(layer)])
    assert all(len(np.unique(site[layer == k])) == 1 for k in np.unique(layer))
    ks = np.unique(layer)
    i1 = int(np.nonzero(ks == 1)[0][0])
    assert np.all(seq[: i1][2:] == seq[: i1][:-2])      # ABAB below
    assert seq[i1] not in (seq[i1 - 1], seq[i1 - 2])     # the faulted layer takes the third site (I1)
    assert np.all(seq[i1 + 2:] == seq[i1:-2])            # hcp again above
    assert set(seq.tolist()) == {0, 1, 2}


# ---------------------------------------------------------------- orientation and shapes


def _column_stats(xy, tol=0.02):
    d, _ = cKDTree(xy).query(xy, k=2)
    shared = d[:, 1] < tol
    keys = np.unique(np.round(xy / 0.1).astype(int), axis=0)
    return shared.mean(), len(keys)


def test_zone_axis_110_projects_onto_columns():
    pos, _, rec = _particle(seed=2, material="Au", radius=15.0, orientation="[110]")
    R = np.array(rec["rotation"])
    assert R @ (np.array([1, 1, 0]) / math.sqrt(2)) == pytest.approx([0, 0, 1], abs=1e-9)
    frac_shared, n_cols = _column_stats(pos[:, :2])
    assert frac_shared > 0.97 and n_cols < len(pos) / 5
    # column lattice of fcc down [110]: nearest distinct columns a·√(3/8) apart
    cols = np.unique(np.round(pos[:, :2], 3), axis=0)
    dc, _ = cKDTree(cols).query(cols, k=2)
    assert np.median(dc[:, 1]) == pytest.approx(A_AU * math.sqrt(3 / 8), rel=0.01)
    # a 60 mrad tilt smears the columns; a random orientation does too
    tilted, _, rec_t = _particle(seed=2, material="Au", radius=15.0, orientation="[110]", tilt_mrad=60.0)
    beam = np.array(rec_t["rotation"]) @ (np.array([1, 1, 0]) / math.sqrt(2))
    assert math.acos(beam[2]) == pytest.approx(0.060, rel=1e-6)
    assert _column_stats(tilted[:, :2])[0] < 0.3
    rand, _, _ = _particle(seed=2, material="Au", radius=15.0, orientation="random")
    assert _column_stats(rand[:, :2])[0] < 0.3


def test_random_orientations_are_uniform():
    from scipy.stats import kstest

    from hrtem_dataset.structures.particles import orientation_matrix

    beams = np.array([orientation_matrix("random", 0.0, None, np.random.default_rng(i))[2] for i in range(600)])
    # Haar-uniform rotations: each component of the crystal axis seen along the beam is uniform in [-1, 1]
    for k in range(3):
        assert kstest(beams[:, k], "uniform", args=(-1, 2)).pvalue > 0.01


def test_wulff_hcp_exact_count():
    mg = get_crystal("Mg")
    pos, _, rec = _particle(material="Mg", shape="wulff", radius=15.0, surface_energies={"0001": 1.0, "10-10": 1.3},
                            orientation="[001]")
    assert len(pos) == round(mg.number_density * 4 / 3 * math.pi * 15.0**3)
    p = pos @ np.array(rec["rotation"])
    # (0001) facets at distance ∝ 1.0, {10-10} at ∝ 1.3: the particle is flatter along c
    assert np.ptp(p[:, 2]) < np.ptp(p[:, 0])


def test_wulff_shape_size_and_facets():
    gam = {"111": 1.0, "100": 1.2}
    pos, _, rec = _particle(material="Au", shape="wulff", radius=20.0, surface_energies=gam, orientation="[001]")
    assert len(pos) == round(4 / 3 * math.pi * 20.0**3 * 4 / A_AU**3)
    p = pos @ np.array(rec["rotation"])
    h111 = (p @ (np.array([1, 1, 1]) / math.sqrt(3))).max()
    h100 = p[:, 0].max()
    assert h100 / h111 == pytest.approx(1.2, abs=0.12)   # Wulff: facet distance ∝ surface energy
    # hull volume of the cut ≈ 4/3πr³ minus the half-layer skin
    assert ConvexHull(pos).volume < 4 / 3 * math.pi * 20.0**3


@pytest.mark.parametrize("shape,marks", [("decahedron", 1), ("decahedron", 0), ("icosahedron", 1)])
def test_multiply_twinned_particles_exact_size(shape, marks):
    from hrtem_dataset.structures.sampling import shape_circumradius

    counts = []
    for r in (12.0, 12.5, 14.0):
        spec = ParticleSpec(material="Au", shape=shape, radius=r, orientation="[001]", marks_reentrance=marks)
        pos, _, rec = build_particle(spec, np.random.default_rng(0))
        counts.append(len(pos))
        assert len(pos) == round(4 / 3 * math.pi * r**3 * 4 / A_AU**3)   # exact equivalent-volume size
        assert rec["circumradius"] <= shape_circumradius(spec)
        d, _ = cKDTree(pos).query(pos, k=2)
        assert d[:, 1].min() > 0.9 * A_AU / math.sqrt(2)                 # strained, but no clashes
    assert counts[0] < counts[1] < counts[2]          # continuous size control, not only magic numbers
    if shape == "decahedron":  # five-fold axis along the beam: a column of atoms on the axis
        r_xy = np.hypot(pos[:, 0], pos[:, 1])
        assert (r_xy < 1e-6).sum() >= 5
    else:  # icosahedron: the centre atom has 12 nearest neighbours
        d = np.linalg.norm(pos - pos[np.argmin(np.linalg.norm(pos, axis=1))], axis=1)
        assert ((d > 0.1) & (d < 1.05 * A_AU / math.sqrt(2))).sum() == 12


@pytest.mark.parametrize("radius", [12.0, 20.0, 30.0])
def test_decahedron_fills_all_five_segments_compactly(radius):
    """Regression: the twin-plane walls of a decahedron segment (hull facets through the axis, offsets
    ~1e-15) once entered the shape distance as λ ~ 1e16, so whole segments lost all their atoms and the
    'decahedron' was a lopsided fragment. Each of the five twinned segments now holds a fifth of the atoms
    (the random island of the last partial layer aside) and the particle is centred and compact."""
    from hrtem_dataset.structures.shapes import _segments, mtp_template

    spec = ParticleSpec(material="Au", shape="decahedron", radius=radius, orientation="[001]")
    pos, _, rec = build_particle(spec, np.random.default_rng(1))
    t = mtp_template("Au", A_AU, "decahedron", radius)
    counts = np.bincount(_segments(pos - pos.mean(axis=0), t.twin_angle), minlength=5)
    assert counts.min() >= 0.6 * counts.mean(), counts
    rg = float(np.sqrt(((pos - pos.mean(axis=0)) ** 2).sum(axis=1).mean()))
    assert rg < 0.85 * radius  # a ball has rg = 0.775 r; the broken fragments had rg ≈ 0.9 r


# ---------------------------------------------------------------- scenes


def test_scene_geometry_contact_and_separation():
    spec = _scene(cell={"x": 80.0, "y": 60.0}, min_separation=10.0,
                  particles=[{"material": "Au", "radius": 10.0, "position": "random"},
                             {"material": "Ag", "radius": 8.0, "shape": "wulff", "position": "random"},
                             {"material": "Pt", "radius": 6.0, "shape": "icosahedron", "position": "random"}])
    atoms = build_scene(spec, 7)
    info = atoms.info["scene"]
    pid = atoms.arrays["particle_id"]
    L = atoms.cell.lengths()
    assert atoms.pbc.all() and np.allclose(atoms.cell[:], np.diag(L))
    assert sorted(set(pid.tolist())) == [-1, 0, 1, 2]
    z_top = info["substrate"]["z_top"]
    sub = atoms.positions[pid == -1]
    assert sub[:, 2].min() >= info["vacuum"] - 1e-9 and sub[:, 2].max() <= z_top
    assert L[2] == pytest.approx(atoms.positions[:, 2].max() + info["vacuum"])
    tree_sub = cKDTree(sub, boxsize=[L[0], L[1], 10 * L[2]])
    for k in range(3):
        pk = atoms.positions[pid == k]
        assert pk[:, 2].min() == pytest.approx(z_top)            # rests on the surface
        d, _ = tree_sub.query(pk, k=1)
        assert d.min() >= CONTACT_DISTANCE - 1e-9                 # substrate atoms under it removed
        assert info["particles"][k]["n_atoms"] == len(pk)
    for i in range(3):
        for j in range(i + 1, 3):
            pi, pj = atoms.positions[pid == i], atoms.positions[pid == j]
            d, _ = cKDTree(pi, boxsize=[L[0], L[1], 10 * L[2]]).query(pj, k=1)
            assert d.min() >= spec.min_separation
    assert info["substrate"]["n_removed"] > 0


def test_defects_in_bcc_and_cif_crystals_are_rejected_and_never_sampled(tmp_path):
    with pytest.raises(InputError, match=r"particles\[0\].*twins/stacking faults need an fcc.*'Fe' is bcc"):
        _particle(material="Fe", radius=8.0, twins=1)
    with pytest.raises(InputError, match="'W' is bcc"):
        _particle(material="W", radius=8.0, stacking_faults=1)
    with pytest.raises(InputError, match="particles\\[0\\]"):
        build_scene(_scene(particles=[{"material": "Mo", "radius": 8.0, "twins": 1}]), 0)
    pos, _, rec = _particle(material="Fe", radius=8.0)  # without defects a bcc particle builds
    assert rec["twins"] == rec["stacking_faults"] == 0 and len(pos) > 100
    # a distribution asking for defects gives bcc particles none (and fcc ones some)
    dist = StructureDistributionSpec.model_validate({
        "cell": {"x": 80, "y": 80}, "n_particles": {"min": 2, "max": 2}, "min_separation": 2.0,
        "particles": {"materials": {"values": ["Fe", "Au"]}, "radius": {"min": 8, "max": 9},
                      "twins": {"min": 1, "max": 1}, "stacking_faults": {"min": 1, "max": 1}}})
    seen = {"Fe": 0, "Au": 0}
    for seed in range(8):
        for q in sample_scene_spec(dist, seed).particles:
            seen[q.material] += 1
            assert (q.twins + q.stacking_faults == 0) == (q.material == "Fe"), q
    assert seen["Fe"] and seen["Au"]


def test_particles_that_do_not_fit_are_dropped_and_counted(tmp_path, capsys):
    """Five r = 9 Å particles cannot all sit 6 Å apart in a 40 Å cell: the extra ones are dropped, the
    manifest and the scene record how many, and the atoms hold exactly the placed ones."""
    dist = tmp_path / "crowded.yaml"
    dist.write_text("cell: {x: 40, y: 40}\nsubstrate_thickness: 6\nn_particles: {min: 5, max: 5}\n"
                    "min_separation: 6.0\nparticles: {radius: {min: 9, max: 9}, twins: {min: 0, max: 0}}\n")
    d = tmp_path / "scenes"
    code, _, _ = _run(["structures", "sample", str(dist), "--n", "2", "--seed", "3", "--out", str(d)], capsys)
    assert code == 0
    rows = [json.loads(x) for x in (d / "manifest.jsonl").read_text().splitlines()]
    for r in rows:
        assert r["n_particles_dropped"] >= 1 and r["n_particles"] + r["n_particles_dropped"] == 5, r
        a = read_extxyz(d / r["file"])
        assert a.info["scene"]["n_particles_dropped"] == r["n_particles_dropped"]
        assert sorted(set(a.arrays["particle_id"].tolist()) - {-1}) == list(range(r["n_particles"]))
    # a roomy cell drops nothing
    dist.write_text(dist.read_text().replace("x: 40, y: 40", "x: 200, y: 200"))
    code, _, _ = _run(["structures", "sample", str(dist), "--n", "1", "--seed", "3", "--out", str(tmp_path / "r")],
                      capsys)
    row = json.loads((tmp_path / "r" / "manifest.jsonl").read_text())
    assert code == 0 and row["n_particles_dropped"] == 0 and row["n_particles"] == 5


def test_cli_build_with_prismatic_export(tmp_path, capsys):
    scene = tmp_path / "scene.yaml"
    scene.write_text("cell: {x: 30, y: 30}\nsubstrate: {thickness: 6}\nvacuum: 2\n"
                     "particles: [{material: Pt, radius: 6, position: [2, 15]}]\n")
    out, xyz = tmp_path / "scene.extxyz", tmp_path / "scene.xyz"
    code, _, _ = _run(["structures", "build", str(scene), "--seed", "1",
                       "--out", str(out), "--prismatic", str(xyz)], capsys)
    assert code == 0
    atoms = read_extxyz(out)
    lines = xyz.read_text().splitlines()
    assert lines[-1] == "-1" and len(lines) == len(atoms) + 3
    assert np.allclose([float(x) for x in lines[1].split()], atoms.cell.lengths(), atol=1e-6)
    rows = np.array([[float(x) for x in ln.split()] for ln in lines[2:-1]])
    assert np.array_equal(rows[:, 0].astype(int), atoms.numbers)
    assert np.allclose(rows[:, 1:4], np.mod(atoms.positions, atoms.cell.lengths()), atol=2e-6)
    assert set(rows[rows[:, 0] == 78, 5]) != set(rows[rows[:, 0] == 6, 5])  # per-element Debye–Waller σ
    assert set(rows[:, 4]) == {1.0} and (rows[:, 5] > 0.03).all() and (rows[:, 5] < 0.2).all()
    # both files or neither: a bad --prismatic target leaves no extxyz either
    out2 = tmp_path / "b.extxyz"
    code, _, err = _run(["structures", "build", str(scene), "--out", str(out2), "--prismatic", str(tmp_path)],
                        capsys)
    assert code == 2 and "--prismatic" in err and not out2.exists()


def test_embedded_particle_has_no_substrate_inside():
    spec = _scene(embed=4.0, particles=[{"material": "Au", "radius": 10.0}])
    atoms = build_scene(spec, 1)
    pid = atoms.arrays["particle_id"]
    pk = atoms.positions[pid == 0]
    z_top = atoms.info["scene"]["substrate"]["z_top"]
    assert pk[:, 2].min() == pytest.approx(z_top - 4.0)
    assert (Delaunay(pk).find_simplex(atoms.positions[pid == -1]) < 0).all()
    assert len(particle_atoms(atoms)) == len(pk)


def test_same_seed_identical_different_seed_differs(tmp_path):
    spec = _scene()
    a, b, c = build_scene(spec, 3), build_scene(spec, 3), build_scene(spec, 4)
    assert np.array_equal(a.positions, b.positions) and np.array_equal(a.numbers, b.numbers)
    assert a.info["scene"] == b.info["scene"]
    assert len(a) != len(c) or not np.allclose(a.positions, c.positions)
    write_extxyz(a, tmp_path / "a.extxyz")
    write_extxyz(b, tmp_path / "b.extxyz")
    assert (tmp_path / "a.extxyz").read_bytes() == (tmp_path / "b.extxyz").read_bytes()
    dist = StructureDistributionSpec.model_validate({"cell": {"x": 80, "y": 80}})
    assert sample_scene_spec(dist, 9) == sample_scene_spec(dist, 9)
    assert sample_scene_spec(dist, 9) != sample_scene_spec(dist, 10)


def test_extxyz_roundtrip_and_prismatic(tmp_path):
    atoms = build_scene(_scene(), 2)
    write_extxyz(atoms, tmp_path / "s.extxyz")
    back = read_extxyz(tmp_path / "s.extxyz")
    assert np.allclose(back.positions, atoms.positions, atol=1e-7)
    assert np.array_equal(back.arrays["particle_id"], atoms.arrays["particle_id"])
    assert back.info["scene"] == json.loads(json.dumps(atoms.info["scene"]))
    assert np.allclose(back.cell[:], atoms.cell[:]) and back.pbc.all()
    write_prismatic_xyz(atoms, tmp_path / "s.xyz", thermal_sigma={"Au": 0.0886, "C": 0.1})
    lines = (tmp_path / "s.xyz").read_text().splitlines()
    assert lines[-1] == "-1" and len(lines) == len(atoms) + 3
    assert np.allclose([float(x) for x in lines[1].split()], atoms.cell.lengths())
    rows = np.array([[float(x) for x in ln.split()] for ln in lines[2:-1]])
    assert np.array_equal(rows[:, 0].astype(int), atoms.numbers)
    assert set(rows[rows[:, 0] == 79, 5]) == {0.0886} and set(rows[:, 4]) == {1.0}
    assert list(tmp_path.glob("*.tmp*")) == []


def test_fast_extxyz_writer_and_reader_match_ase_exactly(tmp_path):
    """The scene writer's one-pass atom lines are ASE's bytes, the scene reader's numpy parse is ASE's Atoms
    (numbers, positions, cell, pbc, particle_id and the scene bit for bit); other files and atoms go through
    ASE."""
    from ase.io import read, write

    from hrtem_dataset.structures import exporters

    for seed in (2, 5):
        atoms = build_scene(_scene(), seed)
        write_extxyz(atoms, tmp_path / "fast.extxyz")
        ref = atoms.copy()
        ref.info = {"scene": json.dumps(atoms.info["scene"], sort_keys=True, separators=(",", ":"))}
        write(tmp_path / "ase.extxyz", ref, format="extxyz")
        assert (tmp_path / "fast.extxyz").read_bytes() == (tmp_path / "ase.extxyz").read_bytes()
        fast = exporters._read_scene_fast(tmp_path / "fast.extxyz")
        slow = read(tmp_path / "ase.extxyz", format="extxyz")
        assert fast is not None
        for a, b in ((fast.numbers, slow.numbers), (fast.positions, slow.positions),
                     (fast.cell[:], slow.cell[:]), (fast.pbc, slow.pbc)):
            assert a.dtype == b.dtype and np.array_equal(a, b)
        assert np.array_equal(fast.arrays["particle_id"], slow.arrays["particle_id"])
        assert fast.info == slow.info
    # another per-atom array or a second frame: ASE writes and reads it
    extra = build_scene(_scene(), 2)
    extra.set_array("weights", np.zeros(len(extra)))
    write_extxyz(extra, tmp_path / "extra.extxyz")
    assert "weights" in (tmp_path / "extra.extxyz").read_text().splitlines()[1]
    assert exporters._read_scene_fast(tmp_path / "extra.extxyz") is None
    assert "weights" in read_extxyz(tmp_path / "extra.extxyz").arrays
    two = (tmp_path / "fast.extxyz").read_text() * 2
    (tmp_path / "two.extxyz").write_text(two)
    assert exporters._read_scene_fast(tmp_path / "two.extxyz") is None
    assert len(read_extxyz(tmp_path / "two.extxyz")) == len(build_scene(_scene(), 5))


def test_fixed_width_atom_parser_gives_the_doubles_of_float(tmp_path):
    """The reader's array parse of the writer's fixed-width atom lines gives exactly float()'s doubles and
    int()'s ids (negative values, -0.0, 8 significant decimals near the field's width); lines of any other
    form (a value wider than its field, a stray character) are left to the text path, which still reads
    them as ASE does."""
    from ase import Atoms
    from ase.io import read

    from hrtem_dataset.structures import exporters

    rng = np.random.default_rng(1)
    n = 3000
    pos = np.concatenate([rng.uniform(-9.9e5, 9.9e6, (n // 3, 3)), rng.uniform(-1, 1, (n // 3, 3)),
                          rng.normal(0, 50, (n - 2 * (n // 3), 3))])
    pos[:4] = [[-0.0, 0.0, -1e-9], [-4e-9, 5e-9, 9999999.99999999], [-999999.99999999, 1.5, 0.125], [1, 2, 3]]
    atoms = Atoms(numbers=rng.choice([1, 6, 79, 92], n), positions=pos, cell=[64.0, 64.0, 70.0], pbc=True)
    atoms.set_array("particle_id", rng.integers(-1, 10**7, n).astype(np.int32))
    atoms.info["scene"] = {"k": 1}
    write_extxyz(atoms, tmp_path / "w.extxyz")
    _, _, body = (tmp_path / "w.extxyz").read_text().split("\n", 2)
    parsed = exporters._parse_atom_lines(body, n)
    assert parsed is not None
    tokens = body.split()
    ref_pos = np.array([[float(t) for t in tokens[k::5]] for k in (1, 2, 3)]).T
    assert parsed[1].view(np.int64).tolist() == ref_pos.view(np.int64).tolist()  # bit for bit, signed zeros too
    assert parsed[2].tolist() == [int(t) for t in tokens[4::5]]
    assert parsed[0].tolist() == atoms.numbers.tolist()
    back, ase_back = read_extxyz(tmp_path / "w.extxyz"), read(tmp_path / "w.extxyz", format="extxyz")
    assert np.array_equal(back.positions.view(np.int64), ase_back.positions.view(np.int64))
    # too wide for the field (the writer's %16.8f grows the line), or a damaged character: the text path
    atoms.positions[5, 0] = 12345678.5
    write_extxyz(atoms, tmp_path / "wide.extxyz")
    _, _, wide = (tmp_path / "wide.extxyz").read_text().split("\n", 2)
    assert exporters._parse_atom_lines(wide, n) is None
    assert read_extxyz(tmp_path / "wide.extxyz").positions[5, 0] == 12345678.5
    for bad in (body.replace(" -", "--", 1), body[:200] + "x" + body[201:]):
        assert exporters._parse_atom_lines(bad, n) is None


def test_array_formatted_atom_lines_are_the_percent_format_text():
    """The writer's array formatting of the atom lines gives the characters of ``"%-2s %16.8f %16.8f %16.8f %8d"``
    for every value: random coordinates of every magnitude that fits the field (7 digits before the point, 6 after
    a "-"), exact ties at the 9th decimal (k/512 Å: rounded half to even), multiples of 5e-9, negative values that
    round to "-0.00000000", -0.0, values that round up to the field's edge, ids of up to 7 digits of either sign;
    wider values, non-finite ones and 8-digit ids are left to the %-format. The reader parses exactly these lines
    back to float()'s doubles."""
    from hrtem_dataset.structures import exporters

    rng = np.random.default_rng(3)
    n = 6000
    pos = np.concatenate([rng.uniform(-1000, 1000, (n, 3)), rng.uniform(-1, 1, (n, 3)),
                          rng.uniform(-999999.9, 999999.9, (n, 3)), rng.uniform(1e6, 1e7, (n, 3)),
                          np.arange(-3 * n, 0).reshape(n, 3) / 512.0,
                          np.arange(-n * 3 // 2, n * 3 // 2).reshape(n, 3) * 5e-9,
                          (np.arange(3 * n).reshape(n, 3) + 0.5) * 1e-8])
    pos[:4] = [[-0.0, 0.0, -1e-10], [-5e-9, 5e-9, 9999999.99999999], [-999999.99999999, 0.125, 1.5],
               [9999999.999999994, -999999.999999994, 999999.999999996]]
    numbers = rng.choice([1, 6, 8, 47, 79, 92, 118], len(pos))
    ids = rng.integers(-9999999, 10**7, len(pos))
    ids[:4] = [-1, 0, 9999999, -9999999]
    text = exporters._atom_lines(numbers, pos, ids)
    symbols = [chemical_symbols[z] for z in numbers.tolist()]
    expected = "".join("%-2s %16.8f %16.8f %16.8f %8d\n" % (s, *p, i)  # noqa: UP031 (the reference format)
                       for s, p, i in zip(symbols, pos.tolist(), ids.tolist(), strict=True))
    assert text == expected
    parsed = exporters._parse_atom_lines(text, len(pos))
    assert parsed is not None and parsed[0].tolist() == numbers.tolist() and parsed[2].tolist() == ids.tolist()
    doubles = np.array([[float(t) for t in line.split()[1:4]] for line in expected.splitlines()])
    assert parsed[1].view(np.int64).tolist() == doubles.view(np.int64).tolist()  # float()'s doubles, signed zeros too
    for bad_pos, bad_ids in (([[0, 0, 1e7]], ids[:1]), ([[0, 0, 9999999.999999996]], ids[:1]),
                             ([[-1e6, 0, 0]], ids[:1]), ([[-999999.999999996, 0, 0]], ids[:1]),
                             ([[np.nan, 0, 0]], ids[:1]), (pos[:1], [10**7])):
        assert exporters._atom_lines(numbers[:1], np.array(bad_pos, dtype=float), np.array(bad_ids)) is None


def test_paper_distribution_samples_in_range():
    dist = load_spec("configs/structures/paper.yaml", StructureDistributionSpec)
    for s in range(4):
        spec = sample_scene_spec(dist, s)
        assert 20.0 <= spec.substrate.thickness <= 80.0 and 1 <= len(spec.particles) <= 5
        for p in spec.particles:
            assert 10.0 <= p.radius <= 35.0 and p.twins + p.stacking_faults <= 2
            assert p.orientation == "random" and p.material == "Au"
        xy = np.array([p.position for p in spec.particles])
        for i in range(len(xy)):
            for j in range(i + 1, len(xy)):
                d = xy[i] - xy[j]
                d -= 128.0 * np.round(d / 128.0)
                assert np.hypot(*d) >= spec.particles[i].radius + spec.particles[j].radius + 10.0


def test_defect_count_distribution():
    dist = load_spec("configs/structures/paper.yaml", StructureDistributionSpec)
    totals, twins = [], []
    for s in range(150):
        for p in sample_scene_spec(dist, s).particles:
            totals.append(p.twins + p.stacking_faults)
            twins.append(p.twins)
    totals, twins = np.array(totals), np.array(twins)
    freq = np.bincount(totals, minlength=3) / len(totals)
    assert len(totals) > 300 and np.all(np.abs(freq - 1 / 3) < 0.06)     # uniform in {0, 1, 2}
    assert abs(twins.sum() / totals.sum() - 0.5) < 0.06                 # twin_fraction 0.5


# ---------------------------------------------------------------- CLI


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_build_and_sample(tmp_path, capsys):
    out = tmp_path / "scene.extxyz"
    code, stdout, _ = _run(["structures", "build", "configs/structures/example-scene.yaml", "--seed", "1",
                            "--out", str(out)], capsys)
    assert code == 0 and json.loads(stdout)["n_particles"] == 2
    atoms = read_extxyz(out)
    assert set(np.unique(atoms.arrays["particle_id"]).tolist()) == {-1, 0, 1}
    dist = tmp_path / "dist.yaml"
    dist.write_text("cell: {x: 60, y: 60}\nsubstrate_thickness: {min: 8, max: 12}\nn_particles: {min: 1, max: 2}\n"
                    "particles: {radius: {min: 6, max: 9}, twins: {min: 0, max: 1}}\n")
    d = tmp_path / "scenes"
    code, _, _ = _run(["structures", "sample", str(dist), "--n", "3", "--seed", "5", "--out", str(d)], capsys)
    assert code == 0
    rows = [json.loads(x) for x in (d / "manifest.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2] and len({r["seed"] for r in rows}) == 3
    for r in rows:
        a = read_extxyz(d / r["file"])
        assert len(a) == r["n_atoms"] and a.info["scene"]["seed"] == r["seed"]
        assert r["scene"]["particles"][0]["rotation"] and r["scene"]["substrate"]["thickness"] >= 8


@pytest.mark.parametrize("content,needle", [
    ("cell: {x: 50, y: 50}\nparticles: [{material: Au, radius: -3}]\n", "particles.0.radius"),
    ("cell: {x: 50, y: 50}\nbogus: 1\n", "bogus"),
    ("cell: {x: 50, y: 50}\nparticles: [{material: Au, radius: 8, orientation: '[1a0]'}]\n", "orientation"),
    ("cell: {x: 50, y: 50\n", "malformed YAML"),
    ("cell: {x: 30, y: 30}\nparticles: [{material: Au, radius: 20}]\n", "particles[0].radius"),
    ("cell: {x: 50, y: 50}\nparticles: [{material: Xx, radius: 8}]\n", "particles[0].material"),
    ("cell: {x: 50, y: 50}\nsubstrate: {thickness: 5}\nembed: 6\n", "embed"),
    ("cell: {x: 50, y: 50}\nparticles: [{material: Au, radius: 8}, {material: Au, radius: 8}]\n", "particles[1]"),
])
def test_cli_bad_spec_exit_2_one_line_no_output(tmp_path, capsys, content, needle):
    spec = tmp_path / "bad.yaml"
    spec.write_text(content)
    out = tmp_path / "scene.extxyz"
    code, _, err = _run(["structures", "build", str(spec), "--out", str(out)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:") and needle in err
    assert not out.exists() and list(tmp_path.iterdir()) == [spec]


def test_cli_unreadable_cif_and_bad_sample(tmp_path, capsys):
    cif = tmp_path / "broken.cif"
    cif.write_text("data_broken\n_cell_length_a abc\nloop_\n_atom_site_label\n")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"cell: {{x: 50, y: 50}}\nparticles: [{{material: '{cif}', radius: 8}}]\n")
    out = tmp_path / "scene.extxyz"
    code, _, err = _run(["structures", "build", str(spec), "--out", str(out)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "broken.cif" in err and not out.exists()
    with pytest.raises(InputError, match="missing.cif"):
        get_crystal(str(tmp_path / "missing.cif"))
    d = tmp_path / "scenes"
    dist = tmp_path / "d.yaml"
    dist.write_text("n_particles: {min: 3, max: 1}\n")
    code, _, err = _run(["structures", "sample", str(dist), "--n", "2", "--out", str(d)], capsys)
    assert code == 2 and "n_particles" in err and not d.exists()
    dist.write_text("cell: {x: 60, y: 60}\n")
    code, _, err = _run(["structures", "sample", str(dist), "--n", "0", "--out", str(d)], capsys)
    assert code == 2 and "--n" in err and not d.exists()


# ---------------------------------------------------------------- wurtzite (two-species hexagonal) and basal faults


def _bilayers(pos, nums, rec, crystal):
    """Per-atom bilayer index, A/B/C site and height within the bilayer (crystal frame, c along z)."""
    p = pos @ np.array(rec["rotation"])
    assert rec["defect_normal"] == [0.0, 0.0, 1.0]
    h = (p[:, 2] - rec["layer_origin"]) / rec["layer_spacing"]
    layer = np.floor(h + 1e-6).astype(int)                   # cation at +0, anion at +u·c/d ≈ 0.76
    frac = np.linalg.solve(crystal.cell[:2, :2].T, p[:, :2].T).T
    site = np.round(3 * np.mod(frac[:, 0] - frac[:, 1], 1.0)).astype(int) % 3
    return layer, site, h - layer


def test_wurtzite_builtin_defaults_and_stoichiometry():
    zno = get_crystal("ZnO")
    a, c, u = 3.2498, 5.2066, 0.3819
    assert zno.kind == "wurtzite" and zno.stacking == "hcp" and (zno.a, zno.c) == (a, c)
    assert zno.describe()["u"] == u and zno.describe()["cation"] == "Zn"
    assert zno.number_density == pytest.approx(4 / (math.sqrt(3) / 2 * a * a * c))
    assert get_crystal("GaN").c / get_crystal("GaN").a == pytest.approx(1.626, abs=2e-3)
    assert get_crystal("CdSe").a == pytest.approx(4.30, abs=0.01)
    d_nn = math.sqrt(a * a / 3 + ((0.5 - u) * c) ** 2)        # basal Zn–O bond (axial one is u·c = 1.988 Å)
    for shape in ("sphere", "wulff"):
        pos, nums, rec = _particle(material="ZnO", shape=shape, radius=16.0, orientation="[001]")
        n_zn, n_o = (nums == 30).sum(), (nums == 8).sum()
        assert n_zn + n_o == len(pos) and abs(n_zn / n_o - 1) < 0.05
        expected = zno.number_density * 4 / 3 * math.pi * 16.0**3
        assert abs(len(pos) - expected) / expected < 0.05
        d, _ = cKDTree(pos).query(pos, k=2)
        assert d[:, 1].min() == pytest.approx(d_nn, rel=1e-6)
    # every interior Zn is tetrahedrally bonded to 4 O at the bulk distances, and vice versa
    zn, o = pos[nums == 30], pos[nums == 8]
    inner = np.linalg.norm(zn, axis=1) < 10.0
    assert all(len(x) == 4 for x in cKDTree(o).query_ball_point(zn[inner], 1.05 * u * c))
    # twins are rejected for wurtzite (a basal rotation twin is an I1 fault), faults are accepted
    with pytest.raises(InputError, match="twins"):
        _particle(material="ZnO", radius=12.0, twins=1)


@pytest.mark.parametrize("material,plane", [("ZnO", 1), ("GaN", -2)])
def test_wurtzite_basal_stacking_fault_i1(material, plane):
    cr = get_crystal(material)
    u = cr.describe()["u"]
    pos, nums, rec = _particle(seed=4, material=material, radius=18.0, stacking_faults=1,
                               stacking_fault_planes=[plane], orientation="random")
    layer, site, frac_h = _bilayers(pos, nums, rec, cr)
    cation, anion = nums == cr.numbers[0], nums != cr.numbers[0]
    # cations on the layers, anions u·c above them on the SAME site (the Aa, Bb, ... bilayers keep polarity)
    assert np.abs(frac_h[cation]).max() < 1e-6
    assert np.allclose(frac_h[anion], u * cr.c / rec["layer_spacing"], atol=1e-6)
    ks = np.unique(layer)
    assert np.all(np.diff(ks) == 1)
    seq = []
    for k in ks:
        s = np.unique(site[layer == k])
        assert len(s) == 1, f"bilayer {k} mixes sites {s}"
        seq.append(int(s[0]))
    seq = np.array(seq)
    i = int(np.nonzero(ks == plane)[0][0])
    assert np.all(seq[2:i] == seq[: i - 2]) and seq[i - 1] != seq[i - 2]        # AaBbAaBb below
    assert seq[i] not in (seq[i - 1], seq[i - 2])                               # the fault bilayer: Cc
    assert np.all(seq[i + 2:] == seq[i:-2]) and seq[i + 1] == seq[i - 1]        # CcBbCcBb above (I1)
    # Jagodzinski notation: exactly one cubic bilayer (neighbours on different sites), at the fault
    cubic = np.nonzero(seq[:-2] != seq[2:])[0] + 1
    assert cubic.tolist() == [i - 1]
    # stoichiometry and no clashes across the fault
    assert abs(cation.sum() / anion.sum() - 1) < 0.05
    d_nn = math.sqrt(cr.a**2 / 3 + ((0.5 - u) * cr.c) ** 2)
    d, _ = cKDTree(pos).query(pos, k=2)
    assert d[:, 1].min() >= 0.9 * min(d_nn, u * cr.c)
    # atoms near the fault plane keep four bonds of bulk length (tetrahedra survive the fault)
    near = cation & (np.abs(layer - plane) <= 1) & (np.linalg.norm(pos, axis=1) < 12.0)
    nb = cKDTree(pos[anion]).query_ball_point(pos[near], 1.05 * max(d_nn, u * cr.c))
    assert near.sum() > 20 and all(len(x) == 4 for x in nb)


def test_wurtzite_from_cif_and_sampling(tmp_path):
    from pymatgen.core import Lattice, Structure

    a, c, u = 3.189, 5.1855, 0.377
    cif = tmp_path / "GaN.cif"
    Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(a, c), ["Ga", "N"],
                              [[1 / 3, 2 / 3, 0.0], [1 / 3, 2 / 3, u]]).to(filename=str(cif))
    cr = get_crystal(str(cif))
    assert cr.kind == "wurtzite" and cr.a == pytest.approx(a) and cr.c == pytest.approx(c)
    assert cr.describe()["cation"] == "Ga" and cr.describe()["u"] == pytest.approx(u, abs=1e-6)
    # same structure listed anion first with another origin: still cation-referenced, same u
    rev = tmp_path / "GaN_rev.cif"
    Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(a, c), ["N", "Ga"],
                              [[1 / 3, 2 / 3, 0.1], [1 / 3, 2 / 3, 0.1 + 1 - u]]).to(filename=str(rev))
    assert get_crystal(str(rev)).describe()["u"] == pytest.approx(u, abs=1e-6)
    # an elemental hcp CIF becomes an hcp crystal (basal faults allowed)
    mg = tmp_path / "Mg.cif"
    Structure.from_spacegroup("P6_3/mmc", Lattice.hexagonal(3.209, 5.211), ["Mg"], [[1 / 3, 2 / 3, 0.25]]).to(
        filename=str(mg))
    assert get_crystal(str(mg)).kind == "hcp" and get_crystal(str(mg)).layer_spacing == pytest.approx(5.211 / 2)
    pos, nums, rec = _particle(material=str(cif), radius=15.0, stacking_faults=1, stacking_fault_planes=[0])
    assert rec["stacking_fault_planes"] == [0] and abs((nums == 31).sum() / (nums == 7).sum() - 1) < 0.05
    # rock salt is not layered hexagonal: still "other", defects rejected
    mgo = tmp_path / "MgO.cif"
    Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.211), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(
        filename=str(mgo))
    assert get_crystal(str(mgo)).kind == "other"
    with pytest.raises(InputError, match="wurtzite"):
        _particle(material=str(mgo), radius=10.0, stacking_faults=1)
    # distributions over wurtzite materials: twins become basal stacking faults
    dist = StructureDistributionSpec.model_validate(
        {"cell": {"x": 100, "y": 100}, "n_particles": {"min": 2, "max": 2},
         "particles": {"materials": {"values": ["ZnO", "CdSe"]}, "radius": {"min": 12, "max": 14},
                       "twins": {"min": 1, "max": 1}, "stacking_faults": {"min": 0, "max": 1}}})
    for s in range(3):
        for p in sample_scene_spec(dist, s).particles:
            assert p.twins == 0 and 1 <= p.stacking_faults <= 2
