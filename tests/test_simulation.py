"""Exit-wave simulation: potentials, torch multislice vs abTEM and textbook numbers, phonons, Prismatic
conventions, the ``hrtem simulate`` CLI. Small grids (≤ 512²) so the file runs in ~1–2 min on 2 cores."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from pydantic import ValidationError
from sim_scenes import small_scene

from hrtem_dataset.errors import InputError
from hrtem_dataset.simulation import (
    default_rms_displacement,
    get_parametrization,
    interaction_parameter,
    simulate_exit_wave,
    simulate_exit_waves,
    simulate_scene,
)
from hrtem_dataset.simulation import prismatic_engine as pe
from hrtem_dataset.simulation import torch_engine as te
from hrtem_dataset.specs import SimulationSpec

try:
    import abtem
except ModuleNotFoundError as exc:  # the optional extra: tests marked `abtem` skip without it (conftest.py)
    if exc.name != "abtem":
        raise
    abtem = None


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def abtem_wave(atoms, sampling, parametrization="lobato", energy=300e3, slice_thickness=2.0):
    pot = abtem.Potential(atoms, sampling=sampling, slice_thickness=slice_thickness, projection="infinite",
                          parametrization=parametrization)
    return abtem.PlaneWave(energy=energy).multislice(pot).compute(progress_bar=False).array


# ------------------------------------------------------------------------------------------------
# potentials
# ------------------------------------------------------------------------------------------------


@pytest.mark.abtem
@pytest.mark.parametrize("name,cls", [("lobato", "LobatoParametrization"), ("kirkland", "KirklandParametrization")])
def test_parametrizations_match_published_functions(name, cls):
    mine = get_parametrization(name)
    ref = getattr(abtem.parametrizations, cls)()
    k2 = np.linspace(0.0, 12.0, 40) ** 2
    r = np.linspace(0.05, 4.0, 40)
    for symbol in ["H", "C", "Si", "Cu", "Au", "U"]:
        np.testing.assert_allclose(mine.scattering_factor(symbol, k2), ref.scattering_factor(symbol)(k2), rtol=1e-5)
        np.testing.assert_allclose(mine.projected_form_factor(symbol, k2),
                                   ref.projected_scattering_factor(symbol)(k2.astype(np.float32)), rtol=1e-4)
        np.testing.assert_allclose(mine.projected_potential(symbol, r), ref.projected_potential(symbol)(r), rtol=1e-5)
        np.testing.assert_allclose(mine.potential(symbol, r), ref.potential(symbol)(r), rtol=1e-5)
    assert all(s in mine.symbols for s in ["H", "C", "O", "Fe", "Au", "Pb", "U"])  # Z = 1..92 (and more)
    with pytest.raises(InputError, match="Xx"):
        mine.parameters("Xx")


@pytest.mark.parametrize("mode,band", [("exact", 0.5), ("nufft", 1 / 3)])
def test_structure_factors_are_exact(mode, band):
    """NUFFT gridding = the direct sum Σ exp(−2πi k·r) to ~1e-4: on the whole grid band ("exact",
    1.5× oversampled) or inside the antialias band |k| < (2/3)·k_Nyquist ("nufft", the default)."""
    rng = np.random.default_rng(0)
    grid = te.Grid.from_sampling((9.6, 8.0), 0.1)
    pos = np.c_[rng.uniform(0, 9.6, 60), rng.uniform(0, 8.0, 60), np.zeros(60)]
    tables = te._Tables(grid, 300e3, "lobato", te.resolve_device("cpu"), mode)
    spec = te._gridded_spectrum(pos, np.array([0, 60]), tables)[0].numpy().astype(np.complex128)
    got = spec * tables._deconv * grid.sampling[0] * grid.sampling[1]
    kx = np.fft.fftfreq(grid.gpts[0], grid.sampling[0])
    ky = np.fft.rfftfreq(grid.gpts[1], grid.sampling[1])
    exact = np.exp(-2j * np.pi * pos[:, 0, None] * kx)[:, :, None] * np.exp(-2j * np.pi * pos[:, 1, None] * ky)[:, None]
    exact = exact.sum(0)
    inside = np.hypot(kx[:, None] * 0.1, ky[None] * 0.1) < band * 0.999
    assert np.abs(got - exact)[inside].max() / math.sqrt(60) < 1e-4


@pytest.mark.parametrize("name", ["lobato", "kirkland"])
def test_projected_potential_matches_analytic(name):
    """Fourier-space construction = analytic v_z(r) (with periodic images) away from the core."""
    param = get_parametrization(name)
    cell, s = 8.0, 0.02
    for symbol, z in [("C", 6), ("Au", 79)]:
        v = te.projected_potential(np.array([[4.0, 4.0, 0.5]]), [z], [cell, cell, 1.0], s, name, "exact")[:, 200]
        x = np.arange(len(v)) * s
        va = sum(param.projected_potential(symbol, np.sqrt((x - 4 - i * cell) ** 2 + (j * cell) ** 2) + 1e-9)
                 for i in range(-3, 4) for j in range(-3, 4))
        m = (np.abs(x - 4) > 0.3) & (np.abs(x - 4) < 3.0)
        assert np.abs(v[m] - va[m]).max() < 5e-3 * va[m].max()


# ------------------------------------------------------------------------------------------------
# multislice physics
# ------------------------------------------------------------------------------------------------


def test_vacuum_has_unit_modulus():
    empty = Atoms(cell=[12.0, 10.0, 20.0], pbc=True)
    w = simulate_exit_wave(empty, sampling=0.1)
    assert w.shape == (120, 100) and w.dtype == np.complex64
    np.testing.assert_array_equal(np.abs(w), 1.0)
    # a structure with a vacuum gap: far from the atom the wave stays a plane wave
    one = Atoms("C", positions=[(6.0, 5.0, 1.0)], cell=[12.0, 10.0, 20.0], pbc=True)
    assert abs(np.abs(simulate_exit_wave(one)).mean() - 1.0) < 1e-3


def test_thin_carbon_slice_is_weak_phase_object():
    """One C atom in a 0.5 Å slice: exit phase = σ·v_z (analytic Lobato projection) to a few %."""
    cell = 12.0
    atoms = Atoms("C", positions=[(6.0, 6.0, 0.25)], cell=[cell, cell, 0.5], pbc=True)
    w = simulate_exit_wave(atoms, energy=300e3, sampling=0.05, slice_thickness=0.5)
    phase = np.angle(w[:, 120])
    x = np.arange(w.shape[0]) * 0.05
    r = np.abs(x - 6.0)
    expected = interaction_parameter(300e3) * get_parametrization("lobato").projected_potential("C", r + 1e-9)
    m = (r > 0.5) & (r < 3.0)
    phase = phase - phase[r > 5.5].mean() + expected[r > 5.5].mean()  # common offset (mean inner potential)
    assert np.abs(phase[m] - expected[m]).max() < 0.05 * expected[m].max()
    assert np.abs(np.abs(w[:, 120])[m] - 1.0).max() < 0.02  # weak object: hardly any amplitude contrast


@pytest.mark.abtem
def test_matches_abtem_with_same_discretisation():
    """Same atoms, grid, slicing, abTEM's bilinear structure factors and its band-limited transmission
    functions: agreement to float precision (the default scheme, transmission functions as they are, is
    another discretisation: ≈ 0.25 % away on this scene)."""
    atoms = small_scene()
    for parametrization in ["lobato", "kirkland"]:
        ref = abtem_wave(atoms, 0.1, parametrization)
        w = simulate_exit_wave(atoms, sampling=0.1, parametrization=parametrization, structure_factors="bilinear",
                               antialias_transmission=True)
        assert _rel(w, ref) < 1e-3
    as_is = simulate_exit_wave(atoms, sampling=0.1, structure_factors="bilinear")
    assert 1e-3 < _rel(as_is, abtem_wave(atoms, 0.1)) < 1e-2
    # frozen phonons: the abTEM engine receives the same displaced configurations (AtomsEnsemble)
    small = small_scene(cell=10.0, carbon=3.0, radius=3.0)
    ab = simulate_exit_wave(small, engine="abtem", phonons=2, seed=9)
    mine = simulate_exit_wave(small, phonons=2, seed=9, structure_factors="bilinear", antialias_transmission=True)
    assert ab.shape == mine.shape == (2, 100, 100)
    assert _rel(mine, ab) < 1e-3 and _rel(ab[0], ab[1]) > 1e-2


@pytest.mark.abtem
def test_exact_structure_factors_match_abtem_within_one_percent():
    """Exact structure factors vs abTEM (Lobato, infinite projection) ≤ 1 % relative L2 where abTEM's
    bilinear interpolation has converged (0.05 Å); at 0.1 Å the difference is abTEM's interpolation."""
    atoms = small_scene(cell=16.0, carbon=6.0, radius=4.0)
    ref = abtem_wave(atoms, 0.05)
    w = simulate_exit_wave(atoms, sampling=0.05, antialias_transmission=True)  # abTEM's transmission scheme
    assert _rel(w, ref) <= 0.01


@pytest.mark.abtem
def test_kirkland_fig_5_12():
    """Kirkland (2010) Fig. 5.12: C, Si, Cu, Au, U single atoms, 200 keV, Cs 1.3 mm, Scherzer 700 Å,
    10.37 mrad aperture: image intensity min 0.72, max 1.03."""
    atoms = Atoms("CSiCuAuU", positions=[(x, 25.0, 4.0) for x in np.linspace(5, 45, 5)], cell=[50, 50, 8], pbc=True)
    sampling = 50.0 / 512
    w = simulate_exit_wave(atoms, energy=200e3, sampling=sampling, slice_thickness=8.0, parametrization="kirkland")
    assert w.shape == (512, 512)
    ctf = dict(defocus=700.0, Cs=1.3e7, semiangle_cutoff=10.37)
    ref = abtem.Waves(w, sampling=sampling, energy=200e3).apply_ctf(**ctf).intensity().array
    assert round(float(ref.min()), 2) == 0.72 and round(float(ref.max()), 2) == 1.03
    from hrtem_dataset import imaging

    img = imaging.image_intensity(w, sampling=sampling, energy=200e3, **ctf)
    assert round(float(img.min()), 2) == 0.72 and round(float(img.max()), 2) == 1.03


def test_chunking_and_batching_do_not_change_waves():
    atoms = small_scene(cell=12.0, carbon=4.0, radius=3.0)
    other = small_scene(cell=12.0, carbon=4.0, radius=3.0, seed=7)
    w1, w2 = simulate_exit_waves([atoms, other], sampling=0.1)
    np.testing.assert_allclose(w1, simulate_exit_wave(atoms, sampling=0.1), atol=2e-6)
    tiny = simulate_exit_waves([atoms, other], sampling=0.1, max_memory=1)  # one slice, one wave at a time
    np.testing.assert_allclose(tiny[0], w1, atol=2e-6)
    np.testing.assert_allclose(tiny[1], w2, atol=2e-6)


def test_wave_streams_give_the_one_batch_pipelines_bytes(monkeypatch):
    """On a CPU with 2–3 threads a batch of waves runs as independent single-threaded streams, balanced by each
    wave's non-empty slices; the waves are the bytes of the one-batch pipeline (main thread propagating, workers
    building), and the caller's thread count is restored."""
    import torch

    atoms = [small_scene(cell=12.0, carbon=4.0, radius=3.0), small_scene(cell=12.0, carbon=3.0, radius=2.5, seed=7)]
    particles = atoms[0][atoms[0].arrays["particle_id"] >= 0]
    specimens = te.waves_from_arrays(particles.positions, particles.numbers) + te.waves_from_arrays(
        atoms[0].positions, atoms[0].numbers) * 2
    n_slices, dz = te.slicing(atoms[0].cell[2, 2], 2.0)
    streams = te._wave_streams(specimens, n_slices, dz, 2)
    assert sorted(sum(streams, [])) == [0, 1, 2] and len(streams) == 3  # one thread per wave (≤ workers + 1)
    assert te._wave_streams(specimens, n_slices, dz, 0) is None and te._wave_streams(specimens[:1], n_slices, dz, 2) is None
    threads = torch.get_num_threads()
    monkeypatch.setattr(te, "_pipeline_workers", lambda device: 2)
    streamed = simulate_exit_waves(atoms, phonons=3, seed=5)
    assert torch.get_num_threads() == threads
    monkeypatch.setattr(te, "_wave_streams", lambda *a: None)
    batched = simulate_exit_waves(atoms, phonons=3, seed=5)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(streamed, batched, strict=True))


def test_the_accelerator_kernels_run_on_the_cpu_and_give_the_cpu_kernels_waves(monkeypatch):
    """The transmission functions' accelerator branch (torch's cos/sin, one batched inverse real FFT per chunk, no
    worker pipeline, chunks as large as the memory budget allows), run on the CPU through the engine's one switch
    between the two: the same waves as the CPU's kernels to float32 rounding (relative L2 ≤ 1e-5, as a GPU must
    give), with whole chunks and with one slice per chunk. The branch a GPU takes is exercised here even where
    no GPU runs the tests."""
    atoms = [small_scene(cell=12.0, carbon=4.0, radius=3.0), small_scene(cell=12.0, carbon=3.0, radius=2.5, seed=7)]
    host = simulate_exit_waves(atoms, phonons=2, seed=5)
    chunks = []
    original = te._transmission

    def counted(u, atom_plane, plane_species, plane_target, *args, **kwargs):
        t_parts, targets = original(u, atom_plane, plane_species, plane_target, *args, **kwargs)
        chunks.append((len(t_parts), len(targets)))
        return t_parts, targets

    monkeypatch.setattr(te, "_transmission", counted)
    monkeypatch.setattr(te, "_host_kernels", lambda device: False)
    for max_memory in (None, 1):
        chunks.clear()
        accelerator = simulate_exit_waves(atoms, phonons=2, seed=5, max_memory=max_memory)
        for a, b in zip(accelerator, host, strict=True):
            assert np.linalg.norm(a - b) / np.linalg.norm(b) <= 1e-5
        # each chunk's targets through one batched transform (one group), several slices per chunk unless bounded
        assert chunks and all(groups == 1 for groups, _ in chunks)
        sizes = [n for _, n in chunks]
        assert max(sizes) > 1 if max_memory is None else set(sizes) == {1}  # bounded: one slice of one wave
    assert any(a.tobytes() != b.tobytes() for a, b in zip(accelerator, host, strict=True))  # other kernels ran


def test_batched_waves_with_per_structure_seeds_equal_one_at_a_time():
    """simulate_exit_waves([a, b], phonons=P, seed=[sa, sb]) gives each structure exactly the frozen-phonon
    configurations of simulate_exit_wave(x, phonons=P, seed=sx) (different seeds: different waves)."""
    a = small_scene(cell=10.0, carbon=3.0, radius=3.0)
    b = small_scene(cell=10.0, carbon=3.0, radius=3.0, seed=5)
    wa, wb = simulate_exit_waves([a, b], sampling=0.2, phonons=2, seed=[11, 12])
    assert wa.shape == wb.shape == (2, 50, 50)
    np.testing.assert_allclose(wa, simulate_exit_wave(a, sampling=0.2, phonons=2, seed=11), atol=2e-6)
    np.testing.assert_allclose(wb, simulate_exit_wave(b, sampling=0.2, phonons=2, seed=12), atol=2e-6)
    # the same structure under two seeds in one batch: seed-specific configurations, not one shared draw
    w1, w2 = simulate_exit_waves([a, a], sampling=0.2, phonons=2, seed=[11, 12])
    np.testing.assert_allclose(w1, wa, atol=2e-6)
    assert _rel(w1, w2) > 1e-2
    with pytest.raises(InputError, match="seed: 1 seeds for 2 structures"):
        simulate_exit_waves([a, b], sampling=0.2, seed=[1])


def test_result_does_not_depend_on_previous_calls():
    """Regression: cached propagators must be keyed by Δz, which differs between cell heights."""
    a = small_scene(cell=12.0, carbon=4.0, radius=3.0)
    b = small_scene(cell=12.0, carbon=4.0, radius=3.0)
    b.cell[2, 2] += 1.3  # same grid, same number of slices, different Δz
    te._TABLE_CACHE.clear()
    fresh = simulate_exit_wave(b, sampling=0.1)
    te._TABLE_CACHE.clear()
    simulate_exit_wave(a, sampling=0.1)
    after_a = simulate_exit_wave(b, sampling=0.1)
    np.testing.assert_array_equal(after_a, fresh)


def test_cached_propagators_equal_fresnel_propagator_on_the_whole_grid():
    """The tables evaluate P(mΔz)·A^m on the aperture's support only; the values are fresnel_propagator's
    (times A^(m−1)) bit for bit, and exactly 0 outside the support."""
    import torch

    grid = te.Grid.from_sampling((24.0, 20.0), 0.1)  # 240 × 200
    tables = te._Tables(grid, 300e3, "lobato", torch.device("cpu"))
    aperture = te.antialias_aperture(grid)
    assert 0.3 < float((aperture > 0).mean()) < 0.4  # the disk |k| < 2/3 k_Nyquist: about a third of the grid
    for steps, dz in ((1, 1.93), (3, 1.93), (7, 2.0)):
        expected = (te.fresnel_propagator(grid, 300e3, steps * dz) * aperture ** (steps - 1)).astype(np.complex64)
        got = tables.propagator(steps, dz).numpy()
        np.testing.assert_array_equal(got, expected)
        assert np.all(got[aperture == 0] == 0)


# ------------------------------------------------------------------------------------------------
# frozen phonons
# ------------------------------------------------------------------------------------------------


def test_default_rms_displacements():
    assert default_rms_displacement("Au") == pytest.approx(math.sqrt(0.6 / (8 * math.pi**2)))
    assert 0.03 < default_rms_displacement("C") < 0.1
    assert default_rms_displacement("Og") > 0  # fallback for elements without a tabulated B
    with pytest.raises(InputError):
        default_rms_displacement("Qq")


def test_phonon_seeds_and_overrides():
    atoms = small_scene(cell=10.0, carbon=3.0, radius=3.0)
    a = simulate_exit_wave(atoms, phonons=2, seed=3)
    b = simulate_exit_wave(atoms, phonons=3, seed=3)
    assert a.shape == (2, 100, 100)
    np.testing.assert_array_equal(a, simulate_exit_wave(atoms, phonons=2, seed=3))  # same seed -> identical
    np.testing.assert_allclose(a, b[:2], atol=1e-5)  # configuration i does not depend on how many are drawn
    assert _rel(simulate_exit_wave(atoms, phonons=2, seed=4), a) > 1e-2  # different seed differs
    assert _rel(a[1], a[0]) > 1e-2
    static = simulate_exit_wave(atoms)
    frozen0 = simulate_exit_wave(atoms, phonons=1, rms=0.0)[0]
    np.testing.assert_allclose(frozen0, static, atol=1e-6)


def test_more_phonon_configurations_reduce_variance_of_mean_image():
    atoms = bulk("Au", "fcc", a=4.078, cubic=True).repeat((3, 3, 3))
    waves = simulate_exit_wave(atoms, sampling=0.1, phonons=16, seed=0)
    images = np.abs(pe.propagate(waves, (0.1223, 0.1223), 300e3, 50.0)) ** 2  # 50 Å underfocus contrast
    variances = []
    for n in (1, 4, 16):
        means = images[: 16 // n * n].reshape(16 // n, n, *images.shape[1:]).mean(1)
        variances.append(float(np.mean((means - images.mean(0)) ** 2)) if n < 16 else 0.0)
    assert variances[1] < 0.5 * variances[0]
    # and the ensemble mean of 16 converges: two disjoint halves agree better than two single configs
    halves = images[:8].mean(0), images[8:].mean(0)
    assert np.abs(halves[0] - halves[1]).mean() < 0.5 * np.abs(images[0] - images[1]).mean()


# ------------------------------------------------------------------------------------------------
# API, scene, Prismatic conventions, CLI
# ------------------------------------------------------------------------------------------------


def test_simulate_scene_returns_scene_and_particle_waves():
    atoms = small_scene(cell=12.0, carbon=4.0, radius=3.0)
    spec = SimulationSpec(phonons=2, device="auto")
    out = simulate_scene(atoms, spec, seed=5)
    assert out["scene"].shape == (2, 120, 120) and out["scene"].dtype == np.complex64
    assert out["particles"].shape == (120, 120)
    assert out["sampling"] == (0.1, 0.1) and out["gpts"] == (120, 120)
    assert out["engine"] == "torch" and out["engine_version"].startswith("hrtem_dataset")
    assert out["device"] == "cpu"
    np.testing.assert_allclose(out["scene"], simulate_exit_wave(atoms, phonons=2, seed=5), atol=2e-6)
    again = simulate_scene(atoms, spec, seed=5)
    assert again["scene"].tobytes() == out["scene"].tobytes()  # same spec + seed -> identical bytes
    particles = atoms[atoms.arrays["particle_id"] >= 0]
    np.testing.assert_allclose(out["particles"], simulate_exit_wave(particles), atol=2e-6)
    static = simulate_scene(atoms, SimulationSpec(phonons=0), seed=5)
    assert static["scene"].shape == (1, 120, 120)


def test_each_wave_of_a_batch_skips_the_slices_empty_for_it():
    """A particles-only wave batched with its scene crosses the substrate's slices (empty for it) in one step:
    one FFT pair per non-empty slice of its own, as when it runs alone, and the same wave."""
    atoms = small_scene(cell=12.0, carbon=4.0, radius=3.0)
    particles = atoms[atoms.arrays["particle_id"] >= 0]
    n_slices, dz = te.slicing(atoms.cell[2, 2], 2.0)

    def own_slices(a):
        return len(np.unique(np.clip(np.floor((a.positions[:, 2] + 1e-12) / dz), 0, n_slices - 1)))

    assert own_slices(particles) < own_slices(atoms)  # the carbon's slices are empty for the particles
    with te.profile_phases() as phases:
        out = simulate_scene(atoms, SimulationSpec(phonons=0), seed=5)
    assert phases["propagation"]["fft2"] == 2 * (own_slices(atoms) + own_slices(particles))
    with te.profile_phases() as alone_phases:
        alone = simulate_exit_wave(particles)
    assert alone_phases["propagation"]["fft2"] == 2 * own_slices(particles)
    np.testing.assert_allclose(out["particles"], alone, atol=2e-6)


def test_transmission_schemes_count_their_transforms_and_are_recorded():
    """The default runs each transmission function as it is: no FFT in the transmission phase; band-limited
    (abTEM's scheme) it costs one fft2/ifft2 pair per (slice, wave); the propagation is the same in both. The
    scheme is validated against the engine and recorded with the waves."""
    atoms = small_scene(cell=12.0, carbon=4.0, radius=3.0)
    spec = SimulationSpec(phonons=2, device="cpu")
    with te.profile_phases() as as_is:
        out = simulate_scene(atoms, spec, seed=5)
    with te.profile_phases() as limited:
        band = simulate_scene(atoms, spec.model_copy(update={"antialias_transmission": True}), seed=5)
    targets = as_is["potential"]["rfft2"]  # one irfft2 (the potential, counted as rfft2) per (slice, wave)
    assert targets == limited["potential"]["rfft2"] > 0 and as_is["transmission"]["fft2"] == 0
    assert limited["transmission"]["fft2"] == 2 * targets
    assert as_is["propagation"]["fft2"] == limited["propagation"]["fft2"]
    assert out["antialias_transmission"] is False and band["antialias_transmission"] is True
    assert 1e-5 < _rel(out["scene"], band["scene"]) < 0.05  # two discretisations of the same physics
    np.testing.assert_array_equal(out["scene"], simulate_exit_wave(atoms, phonons=2, seed=5))  # the default
    for engine, wrong in (("abtem", False), ("prismatic", True)):
        with pytest.raises(InputError, match="antialias_transmission"):
            simulate_exit_wave(atoms, engine=engine, antialias_transmission=wrong)
        with pytest.raises(ValidationError, match="antialias_transmission"):
            SimulationSpec(engine=engine, antialias_transmission=wrong)


def test_bad_inputs_raise_input_error():
    atoms = small_scene(cell=10.0, carbon=2.0, radius=3.0)
    with pytest.raises(InputError, match="engine"):
        simulate_exit_wave(atoms, engine="nope")
    with pytest.raises(InputError, match="parametrization"):
        simulate_exit_wave(atoms, parametrization="peng")
    with pytest.raises(InputError, match="sampling"):
        simulate_exit_wave(atoms, sampling=-1.0)
    skewed = atoms.copy()
    skewed.cell[0, 1] = 1.0
    with pytest.raises(InputError, match="orthorhombic"):
        simulate_exit_wave(skewed)
    with pytest.raises(InputError, match="device"):
        simulate_exit_wave(atoms, device="tpu")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="cuda"):
            simulate_exit_wave(atoms, device="cuda")


def _write_prismatic_file(path, waves_mid, sampling):
    import h5py

    with h5py.File(path, "w") as fh:
        for i, w in enumerate(waves_mid):
            g = fh.create_group(f"4DSTEM_simulation/data/realslices/HRTEM_fp{i:04d}")
            g["data"] = w[..., None].astype(np.complex64)
            g["dim1"] = np.arange(w.shape[0]) * sampling
            g["dim2"] = np.arange(w.shape[1]) * sampling


def test_prismatic_output_conversion(tmp_path):
    """A file in Prismatic's layout (mid-thickness-referenced waves) converts back to our exit waves."""
    atoms = small_scene(cell=12.0, carbon=4.0, radius=3.0)
    thickness = float(atoms.cell[2, 2])
    exit_waves = simulate_exit_wave(atoms, phonons=2, seed=0)
    mid = pe.propagate(exit_waves, (0.1, 0.1), 300e3, -thickness / 2)  # what Prismatic writes
    _write_prismatic_file(tmp_path / "out.h5", mid, 0.1)
    waves, sampling = pe.read_hrtem_output(tmp_path / "out.h5")
    assert waves.shape == (2, 120, 120) and sampling == pytest.approx((0.1, 0.1))
    np.testing.assert_allclose(pe.to_exit_surface(waves, sampling, 300e3, thickness), exit_waves, atol=1e-5)
    # defocus conventions: Prismatic C1 (= +C10 at mid-thickness) reproduces our defocus (= −C10 at exit)
    df = 120.0
    ours = pe.propagate(exit_waves[0], (0.1, 0.1), 300e3, -df)
    theirs = pe.propagate(mid[0], (0.1, 0.1), 300e3, pe.prismatic_c1(df, thickness))
    np.testing.assert_allclose(np.abs(theirs) ** 2, np.abs(ours) ** 2, atol=1e-4)
    # half-resolution output: Fourier resampling between grids keeps the band-limited wave
    up = pe.fourier_resample(exit_waves[0], (240, 240))
    np.testing.assert_allclose(pe.fourier_resample(up, (120, 120)), exit_waves[0], atol=1e-5)
    settings = pe.prismatic_settings("a.xyz", "b.h5", atoms.cell.lengths(), 0.1, 300e3, 2.0)
    assert settings["algorithm"] == "hrtem" and settings["E0"] == 300.0
    assert settings["realspacePixelSizeX"] == 0.05 and settings["saveComplexOutputWave"] is True
    assert settings["sliceThickness"] == pytest.approx(thickness / math.ceil(thickness / 2.0) * (1 + pe.SLICE_MARGIN))
    assert settings["potential3D"] is False  # each atom's projected potential in its slice (infinite projection)
    # geometry: z is written flipped (Prismatic's beam enters at the largest z); Prismatic slices the whole
    # cell from its entrance face into ceil(Lz/Δz') planes (PRISM01_calcPotential.cpp), so its plane of an
    # atom is our slice, and its multislice ends `overshoot` (≈ 1e-5·Lz) past our exit face
    n, dz = te.slicing(thickness, 2.0)
    dz_p = pe.prismatic_slice_thickness(thickness, 2.0)
    assert settings["sliceThickness"] == pytest.approx(dz_p) and np.ceil(np.float32(thickness) / np.float32(dz_p)) == n
    z = atoms.positions[:, 2]
    flipped = pe.flip_z(atoms).positions[:, 2]
    c_round = lambda x: np.floor(x + 0.5)  # noqa: E731 - C round() for x >= 0 (halves away from zero)
    prism_index = c_round((thickness - flipped) / dz_p + 0.5) - 1  # PRISM01_calcPotential.cpp
    index, planes = pe.prismatic_planes(z, dz_p, thickness)
    np.testing.assert_array_equal(index, prism_index)
    assert planes == n and np.mean(index == np.floor(z / dz)) > 0.999  # = the torch engine's slices
    # atoms on the faces stay in the first / last slice (the XYZ writer wraps coordinates into the cell)
    faces = pe.prismatic_planes(np.array([0.0, thickness, -0.01, thickness + 0.01]), dz_p, thickness)[0]
    np.testing.assert_array_equal(faces, [0, n - 1, 0, n - 1])
    overshoot = pe.output_overshoot(thickness, 2.0)
    assert 0 <= overshoot < 1e-3
    stopped = pe.propagate(exit_waves, (0.1, 0.1), 300e3, overshoot - thickness / 2)  # Prismatic's output
    np.testing.assert_allclose(pe.to_exit_surface(stopped, (0.1, 0.1), 300e3, thickness, overshoot), exit_waves,
                               atol=1e-5)
    with pytest.raises(InputError, match="HRTEM"):
        import h5py

        with h5py.File(tmp_path / "empty.h5", "w") as fh:
            fh.create_group("4DSTEM_simulation/data/realslices")
        pe.read_hrtem_output(tmp_path / "empty.h5")


def test_prismatic_hrtem_support_is_detected_by_feature(monkeypatch):
    """HRTEM support = pyprismatic.Metadata carries the HRTEM fields, whatever the version says (the HRTEM
    code base says 1.2.0 and has no __version__; PyPI's 1.1.16 has no HRTEM fields)."""
    import sys
    import types

    def fake(fields, version=None):
        mod = types.ModuleType("pyprismatic")
        mod.Metadata = type("Metadata", (), {"fields": list(fields)})
        if version is not None:
            mod.__version__ = version
        return mod

    monkeypatch.setitem(sys.modules, "pyprismatic", fake(["algorithm", "E0"], "2.5.0"))
    assert not pe.hrtem_support() and pe.prismatic_version() is None and not pe.available()
    monkeypatch.setitem(sys.modules, "pyprismatic", fake(["algorithm", *pe.HRTEM_FIELDS], "1.2.0"))
    assert pe.hrtem_support() and pe.prismatic_version() == "1.2.0+hrtem"
    monkeypatch.setitem(sys.modules, "pyprismatic", None)  # not importable
    assert not pe.hrtem_support() and not pe.available()
    with pytest.raises(InputError, match="prismatic"):
        simulate_exit_wave(Atoms("C", positions=[(1, 1, 1)], cell=[4, 4, 4], pbc=True), engine="prismatic")


def test_cli_simulate(tmp_path):
    from hrtem_dataset.cli import main
    from hrtem_dataset.structures import write_extxyz

    atoms = small_scene(cell=10.0, carbon=3.0, radius=3.0)
    write_extxyz(atoms, tmp_path / "scene.extxyz")
    out = tmp_path / "waves.npz"
    assert main(["simulate", str(tmp_path / "scene.extxyz"), "--out", str(out), "--phonons", "2",
                 "--seed", "1"]) == 0
    with np.load(out) as data:
        assert data["scene"].shape == (2, 100, 100) and data["particles"].shape == (100, 100)
        settings = json.loads(str(data["settings"]))
        np.testing.assert_allclose(data["scene"], simulate_exit_wave(atoms, phonons=2, seed=1), atol=2e-6)
    assert settings["engine"] == "torch" and settings["spec"]["phonons"] == 2 and settings["seed"] == 1
    assert settings["antialias_transmission"] is False and settings["spec"]["antialias_transmission"] is None
    band = tmp_path / "band.npz"
    assert main(["simulate", str(tmp_path / "scene.extxyz"), "--out", str(band), "--antialias-transmission"]) == 0
    with np.load(band) as data:
        assert json.loads(str(data["settings"]))["antialias_transmission"] is True
        np.testing.assert_allclose(data["scene"][0], simulate_exit_wave(atoms, antialias_transmission=True), atol=2e-6)
    bad = tmp_path / "bad.npz"
    assert main(["simulate", str(tmp_path / "scene.extxyz"), "--out", str(bad), "--engine", "abtem",
                 "--no-antialias-transmission"]) == 2
    assert main(["simulate", str(tmp_path / "missing.extxyz"), "--out", str(bad)]) == 2
    assert main(["simulate", str(tmp_path / "scene.extxyz"), "--out", str(bad), "--sampling", "-1"]) == 2
    assert main(["simulate", str(tmp_path / "scene.extxyz"), "--out", str(bad), "--engine", "x"]) == 2
    (tmp_path / "junk.extxyz").write_text("not an extxyz\n")
    assert main(["simulate", str(tmp_path / "junk.extxyz"), "--out", str(bad)]) == 2
    assert not bad.exists() and not list(tmp_path.glob(".bad.npz*"))


@pytest.mark.abtem
def test_cli_simulate_with_the_abtem_engine(tmp_path):
    """`hrtem simulate --engine abtem` runs real abTEM: its waves are abTEM's, equal to our engine with
    abTEM's discretisation, and the npz records the engine and its version."""
    from hrtem_dataset.cli import main
    from hrtem_dataset.structures import write_extxyz

    atoms = small_scene(cell=10.0, carbon=3.0, radius=3.0)
    write_extxyz(atoms, tmp_path / "scene.extxyz")
    out = tmp_path / "waves.npz"
    assert main(["simulate", str(tmp_path / "scene.extxyz"), "--out", str(out), "--engine", "abtem",
                 "--sampling", "0.1", "--phonons", "2", "--seed", "4"]) == 0
    with np.load(out) as data:
        scene, particles = data["scene"], data["particles"]
        settings = json.loads(str(data["settings"]))
    assert scene.shape == (2, 100, 100) and particles.shape == (100, 100)
    assert settings["engine"] == "abtem" and settings["spec"]["engine"] == "abtem"
    assert abtem.__version__ in json.dumps(settings)
    assert settings["antialias_transmission"] is True  # abTEM's own scheme, recorded
    mine = simulate_exit_wave(atoms, sampling=0.1, phonons=2, seed=4, structure_factors="bilinear",
                              antialias_transmission=True)
    assert _rel(scene, mine) < 1e-3
    static = abtem_wave(atoms, 0.1)  # the configurations are displaced (phonons), not the static lattice
    assert _rel(scene[0], static) > 1e-3


def test_atoms_on_the_top_face_stay_at_the_top():
    """Regression: z is not periodic — an atom at z = Lz (vacuum = 0) belongs to the last slice, not to
    the beam-entrance slice."""
    top = Atoms("Au", positions=[[5.0, 5.0, 10.0]], cell=[10, 10, 10], pbc=True)
    inside = Atoms("Au", positions=[[5.0, 5.0, 10.0 - 1e-6]], cell=[10, 10, 10], pbc=True)
    np.testing.assert_allclose(simulate_exit_wave(top, sampling=0.1), simulate_exit_wave(inside, sampling=0.1),
                               atol=1e-5)


@pytest.mark.parametrize("high", [1, 50, 1 << 16, 1 << 20, 1 << 40])
def test_radix_argsort_is_numpys_stable_argsort(high):
    """The plane sort (one or two 16-bit radix passes, a merge sort beyond 32 bits) is the same permutation."""
    keys = np.random.default_rng(high).integers(0, high, 200_003, dtype=np.int64)
    np.testing.assert_array_equal(te._stable_argsort(keys), np.argsort(keys, kind="stable"))
    assert te._stable_argsort(np.zeros(0, np.int64)).size == 0
    signed = np.array([3, -1, 3, 0, -1])
    np.testing.assert_array_equal(te._stable_argsort(signed), np.argsort(signed, kind="stable"))


def test_species_of_specimens_sharing_their_numbers():
    """Phonon configurations share one numbers array (looked up once); other structures bring their own."""
    shared = np.array([79, 6, 6, 79, 6])
    specimens = te.waves_from_arrays(np.zeros((3, 5, 3)), shared) + te.waves_from_arrays(np.zeros((2, 3)), [14, 6])
    unique_z, species = te._species(specimens)
    numbers = np.concatenate([np.asarray(s.numbers) for s in specimens])
    np.testing.assert_array_equal(unique_z, np.unique(numbers))
    np.testing.assert_array_equal(species, np.searchsorted(np.unique(numbers), numbers))


def test_atoms_outside_the_cell_wrap_periodically_in_x_and_y():
    """Coordinates moved by whole cell lengths (and atoms on the far faces) give the wave of the wrapped cell;
    only the coordinates outside [0, L) are wrapped, so the others keep their exact values."""
    atoms = small_scene(cell=10.0, carbon=3.0, radius=3.0)
    moved = atoms.copy()
    shift = np.zeros((len(atoms), 3))
    shift[::3, 0], shift[1::3, 1], shift[2::5, 0] = 10.0, -10.0, -20.0
    moved.positions = atoms.positions + shift
    ref = simulate_exit_wave(atoms, sampling=0.2)
    assert _rel(simulate_exit_wave(moved, sampling=0.2), ref) < 1e-5
    face = Atoms("Au", positions=[[10.0, 10.0, 2.0]], cell=[10, 10, 10], pbc=True)
    origin = Atoms("Au", positions=[[0.0, 0.0, 2.0]], cell=[10, 10, 10], pbc=True)
    np.testing.assert_array_equal(simulate_exit_wave(face, sampling=0.2), simulate_exit_wave(origin, sampling=0.2))


def test_phonon_configurations_do_not_depend_on_threads(monkeypatch):
    """Each configuration has its own generator: drawn in threads or one after the other, the same values."""
    from hrtem_dataset.simulation import phonons

    rng = np.random.default_rng(3)
    pos, numbers = rng.random((5000, 3)) * 20, np.where(rng.random(5000) < 0.5, 79, 6)
    monkeypatch.setattr(phonons, "PARALLEL_VALUES", 1)
    threaded = phonons.displaced_positions(pos, numbers, 6, seed=9)
    monkeypatch.setattr(phonons, "PARALLEL_VALUES", 1 << 62)
    serial = phonons.displaced_positions(pos, numbers, 6, seed=9)
    np.testing.assert_array_equal(threaded, serial)
    sigma = phonons.rms_for_numbers(numbers)[:, None]
    first = pos + np.random.default_rng(phonons.derive_seed(9, "phonons", 0)).standard_normal(pos.shape) * sigma
    np.testing.assert_array_equal(serial[0], first)  # the documented draw, value for value


def test_default_working_memory_and_host_copy_on_the_cpu():
    import torch

    assert te.default_max_memory("cpu") == te.DEFAULT_MAX_MEMORY
    t = torch.randn(2, 3, dtype=torch.complex64)
    np.testing.assert_array_equal(te.to_host(t), t.numpy())
