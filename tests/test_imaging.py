"""Imaging: χ/CTF against textbook values and abTEM, coherence, Fourier cropping, detector and dose,
zero-defocus calibration, per-image conditions. All tests are CPU-only; CUDA variants run when a GPU is
present."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hrtem_dataset.errors import InputError
from hrtem_dataset.imaging import (
    aberration_coefficients,
    apply_dose,
    apply_mtf,
    calibrate_zero_defocus,
    chi,
    conditions_to_tensors,
    contrast_curve,
    fourier_crop,
    image_batch,
    image_intensity,
    mtf_rfft,
    point_resolution,
    render_image,
    resample,
    resampled_sampling,
    resampled_shape,
    sample_imaging_conditions,
    scherzer_defocus,
    transfer_function,
)
from hrtem_dataset.imaging.aberrations import stack_coefficients
from hrtem_dataset.simulation.physics import wavelength
from hrtem_dataset.specs import ImagingDistributionSpec, SeriesSpec, Uniform, validate_spec

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def smooth_phase_object(shape=(96, 80), sampling=0.1, seed=0, amplitude=0.3, kmax=1.5, phonons=0):
    """exp(i φ) with a random band-limited phase (|k| < kmax 1/Å), optionally a stack of perturbed copies."""
    rng = np.random.default_rng(seed)
    kx = np.fft.fftfreq(shape[0], sampling)[:, None]
    ky = np.fft.fftfreq(shape[1], sampling)[None, :]
    band = np.sqrt(kx**2 + ky**2) < kmax
    n = max(phonons, 1)
    spec = (rng.normal(size=(n, *shape)) + 1j * rng.normal(size=(n, *shape))) * band
    phase = np.fft.ifft2(spec).real
    phase = amplitude * phase / phase.std()
    waves = np.exp(1j * phase).astype(np.complex64)
    return waves if phonons else waves[0]


# ---------------------------------------------------------------------------------------------- CTF


def test_scherzer_first_zero_matches_point_resolution():
    """200 kV, Cs = 1 mm at Scherzer defocus: first zero of sin χ at 1/k = (λ³Cs/6)^¼ (2.26 Å)."""
    energy, Cs = 200e3, 1e7
    lam = wavelength(energy)
    df = scherzer_defocus(Cs, energy)
    assert df == pytest.approx(math.sqrt(1.5 * Cs * lam))
    # dense 1-D line of spatial frequencies along x through the full transfer function
    n, s = 1 << 15, 0.05
    coeffs = stack_coefficients(aberration_coefficients(defocus=df, Cs=Cs))
    H = transfer_function((n, 1), (s, s), energy, coeffs)[0, :, 0]
    k = np.fft.fftfreq(n, s)[: n // 2]
    sin_chi = -H.imag.numpy()[: n // 2]  # H = exp(-iχ)
    # Scherzer band: sin χ < 0 from k = 0 on (I ≈ 1 + 2φ⊛sin χ: atoms dark), until the first zero
    assert np.all(sin_chi[1:50] < 0)
    i = int(np.argmax(sin_chi[1:] >= 0)) + 1
    k0 = k[i - 1] + (k[i] - k[i - 1]) * sin_chi[i - 1] / (sin_chi[i - 1] - sin_chi[i])
    analytic = (lam**3 * Cs / 6) ** 0.25
    assert point_resolution(Cs, energy) == pytest.approx(analytic)
    assert abs(1 / k0 - analytic) < 0.1
    assert abs(1 / k0 - analytic) < 1e-3  # in fact exact up to the interpolation


def test_chi_conventions_defocus_is_minus_c10():
    """χ = π λ k² C10 with C10 = −defocus; aliases and polar angles as abTEM."""
    lam = wavelength(300e3)
    alpha = torch.tensor([[0.01, 0.02]], dtype=torch.float64)
    phi = torch.tensor([[0.0, 0.7]], dtype=torch.float64)
    c = stack_coefficients(aberration_coefficients(defocus=100.0))
    # α = λk: χ = (2π/λ)·α²/2·C10 = π λ k² C10 = −π λ k² · defocus
    assert torch.allclose(chi(alpha, phi, c, lam)[0], -math.pi / lam * alpha**2 * 100.0)
    a = aberration_coefficients(
        defocus=10.0, Cs=5.0, aberrations={"astigmatism": 3.0, "C12": 1.0, "phi12": 0.2}
    )
    assert a["C10"] == -10.0 and a["C30"] == 5.0 and a["C12"] == 4.0 and a["phi12"] == 0.2
    c = stack_coefficients(aberration_coefficients(aberrations={"C23": 50.0, "phi23": 0.3}))
    expect = 2 * math.pi / lam * alpha**3 / 3 * 50.0 * torch.cos(3 * (phi - 0.3))
    assert torch.allclose(chi(alpha, phi, c, lam), expect[None])
    with pytest.raises(InputError, match="C99"):
        aberration_coefficients(aberrations={"C99": 1.0})


@pytest.mark.abtem
@pytest.mark.parametrize("phonons", [0, 3])
def test_image_intensity_matches_abtem(phonons):
    """Same exit waves through image_intensity and abTEM's apply_ctf(...).intensity(): rel. diff ≤ 1e-3."""
    import abtem
    waves = smooth_phase_object((96, 80), 0.1, seed=1, phonons=phonons)  # non-square: [x, y] order matters
    params = dict(
        defocus=85.0, Cs=-2.0e4, semiangle_cutoff=30.0, focal_spread=35.0, angular_spread=0.4,
        aberrations={"C12": 25.0, "phi12": 0.5, "C21": 400.0, "phi21": 1.2, "C23": 250.0, "phi23": -0.4},
    )  # fmt: skip
    ours = image_intensity(waves, sampling=0.1, energy=300e3, **params)
    ctf = abtem.CTF(
        semiangle_cutoff=30.0, focal_spread=35.0, angular_spread=0.4, energy=300e3,
        aberration_coefficients={"C10": -85.0, "C30": -2.0e4, **params["aberrations"]},
    )  # fmt: skip
    axes = [abtem.core.axes.FrozenPhononsAxis()] if phonons else None
    ref = abtem.Waves(waves, sampling=0.1, energy=300e3, ensemble_axes_metadata=axes)
    ref = ref.apply_ctf(ctf).intensity().compute().array
    if phonons:
        ref = ref.mean(0)  # frozen phonons: incoherent average of intensities
    assert ours.shape == ref.shape == waves.shape[-2:] and ours.dtype == np.float32
    assert np.abs(ours - ref).max() / np.abs(ref).max() <= 1e-3
    # and the aberrations matter: the image is far from the unaberrated one
    plain = image_intensity(waves, 0.1, 300e3)
    assert np.abs(plain - ref).max() > 0.05


def test_envelopes_damp_contrast_and_vacuum_stays_one():
    waves = smooth_phase_object((64, 64), 0.1, seed=2)
    base = dict(defocus=300.0, Cs=1e5)
    coherent = image_intensity(waves, 0.1, 300e3, **base)
    temporal = image_intensity(waves, 0.1, 300e3, focal_spread=60.0, **base)
    spatial = image_intensity(waves, 0.1, 300e3, angular_spread=1.0, **base)
    assert temporal.std() < 0.9 * coherent.std()
    assert spatial.std() < 0.9 * coherent.std()
    vac = image_intensity(
        np.ones((32, 48), np.complex64), 0.1, 300e3, focal_spread=60.0, semiangle_cutoff=20, **base
    )
    assert np.allclose(vac, 1.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- batches


@pytest.mark.parametrize("device", DEVICES)
def test_image_batch_applies_one_condition_per_image(device):
    waves = np.stack([smooth_phase_object((64, 64), 0.1, seed=s, phonons=2) for s in (3, 4, 5)])
    cond = {
        "defocus": torch.tensor([0.0, 60.0, -40.0]),
        "Cs": torch.tensor([0.0, 1e5, 2e4]),
        "C12": torch.tensor([0.0, 10.0, 0.0]),
        "phi12": torch.tensor([0.0, 0.3, 0.0]),
        "focal_spread": torch.tensor([0.0, 30.0, 10.0]),
        "semiangle_cutoff": torch.tensor([math.inf, 25.0, 30.0]),
    }
    out = image_batch(torch.from_numpy(waves).to(device), 0.1, 300e3, cond)
    assert out.shape == (3, 64, 64) and out.device.type == device
    for b in range(3):
        sa = float(cond["semiangle_cutoff"][b])
        single = image_intensity(
            waves[b], 0.1, 300e3, defocus=float(cond["defocus"][b]), Cs=float(cond["Cs"][b]),
            aberrations={"C12": float(cond["C12"][b]), "phi12": float(cond["phi12"][b])},
            focal_spread=float(cond["focal_spread"][b]), semiangle_cutoff=None if math.isinf(sa) else sa,
        )  # fmt: skip
        np.testing.assert_allclose(out[b].cpu().numpy(), single, atol=1e-5)


def test_render_image_is_seeded_cropped_and_counts_dose():
    waves = smooth_phase_object((100, 80), 0.1, seed=6, phonons=2)
    cond = {"pixel_size": 0.2, "defocus": 20.0, "Cs": 0.0, "aberrations": {}, "semiangle_cutoff": None,
            "focal_spread": 0.0, "angular_spread": 0.0, "dose": 2000.0, "mtf": {}, "read_noise": 0.0}  # fmt: skip
    a = render_image(waves, 0.1, 300e3, cond, zero_defocus=5.0, seed=7)
    b = render_image(waves, 0.1, 300e3, cond, zero_defocus=5.0, seed=7)
    c = render_image(waves, 0.1, 300e3, cond, zero_defocus=5.0, seed=8)
    assert a.shape == (50, 40) and a.dtype == np.float32
    assert a.tobytes() == b.tobytes() and not np.array_equal(a, c)
    assert np.allclose(a, np.round(a))  # integer electron counts without MTF / read noise
    clean = render_image(waves, 0.1, 300e3, {**cond, "dose": None}, zero_defocus=5.0, seed=7)
    expected = resample(image_intensity(waves, 0.1, 300e3, defocus=25.0), 0.1, 0.2)
    np.testing.assert_allclose(clean, expected, atol=1e-5)
    assert a.mean() == pytest.approx(clean.mean() * 2000 * 0.04, rel=0.01)


def test_recorded_pixel_size_records_on_the_detector_grid_and_delivers_on_the_labels_grid():
    """An image recorded on a 0.2 Å or 0.8 Å detector is delivered on the 0.4 Å grid of the labels: counts
    per recorded pixel (mean = dose · p_rec²), and the shot noise of the recording — downsampling 0.2 -> 0.4
    averages it (≥ 2× lower relative noise than at 0.2 Å), upsampling 0.8 -> 0.4 does not create signal."""
    vacuum = np.ones((2, 320, 320), np.complex64)
    base = {"pixel_size": 0.4, "defocus": 0.0, "Cs": 0.0, "aberrations": {}, "semiangle_cutoff": None,
            "focal_spread": 0.0, "angular_spread": 0.0, "dose": 5000.0, "mtf": {}, "read_noise": 0.0}  # fmt: skip
    rel = {}
    for rec in (0.2, 0.4, 0.8):
        img = render_image(vacuum, 0.1, 300e3, {**base, "recorded_pixel_size": rec}, 0.0, seed=3)
        assert img.shape == (80, 80)
        assert img.mean() == pytest.approx(5000 * rec**2, rel=0.01)
        rel[rec] = img.std() / img.mean()
    native = render_image(vacuum, 0.1, 300e3, {**base, "pixel_size": 0.2}, 0.0, seed=3)
    rel_native = native.std() / native.mean()
    assert rel_native == pytest.approx(1 / math.sqrt(5000 * 0.04), rel=0.05)  # Poisson at 0.2 Å
    assert rel[0.2] < rel_native / 2
    assert rel[0.8] < 1 / math.sqrt(5000 * 0.64) * 1.05  # no more noise than the 0.8 Å recording had
    # without recorded_pixel_size the conditions stream is unchanged (old datasets keep their bytes)
    spec = ImagingDistributionSpec(pixel_size=0.4, defocus=Uniform(min=-100, max=100), images_per_structure=3)
    spec_rec = spec.model_copy(update={"recorded_pixel_size": Uniform(min=0.2, max=0.8)})
    plain, with_rec = sample_imaging_conditions(spec, 5), sample_imaging_conditions(spec_rec, 5)
    assert [c["defocus"] for c in plain] == [c["defocus"] for c in with_rec]
    assert "recorded_pixel_size" not in plain[0] and all(0.2 <= c["recorded_pixel_size"] <= 0.8 for c in with_rec)
    with pytest.raises(Exception, match="recorded_pixel_size"):
        ImagingDistributionSpec(pixel_size=0.4, recorded_pixel_size=Uniform(min=0.0, max=0.8))


# ---------------------------------------------------------------------------------------------- resampling


def test_fourier_crop_preserves_mean_energy_and_does_not_alias():
    n, s = 128, 0.1
    x = np.arange(n)[:, None] * s
    y = np.arange(n)[None, :] * s
    L = n * s

    def f(x, y):
        return 1.0 + 0.3 * np.cos(2 * np.pi * (3 * x / L + 5 * y / L)) + 0.2 * np.sin(2 * np.pi * 20 * x / L)

    img = f(x, y)
    assert resampled_shape(img.shape, s, 0.2) == (64, 64)
    out = resample(img, s, 0.2)
    # band-limited below the new Nyquist (32 cycles): exact resampling, mean and energy kept
    xs, ys = np.arange(64)[:, None] * 0.2, np.arange(64)[None, :] * 0.2
    np.testing.assert_allclose(out, f(xs, ys), atol=1e-5)
    assert out.mean() == pytest.approx(img.mean(), rel=1e-6)
    assert (out**2).sum() * 0.04 == pytest.approx((img**2).sum() * 0.01, rel=1e-5)
    # a fringe above the new Nyquist (40 cycles > 32) is removed, not folded back to 24 cycles
    hi = 1.0 + 0.5 * np.cos(2 * np.pi * 40 * x / L) * np.ones_like(y)
    cropped = resample(hi, s, 0.2)
    assert np.abs(cropped - 1.0).max() < 1e-5
    strided = hi[::2, ::2]
    assert np.abs(strided - 1.0).max() > 0.4  # what naive subsampling would do
    # numpy in/out, torch in/out; odd output sizes; non-integer ratio keeps the field of view
    t = fourier_crop(torch.from_numpy(img.astype(np.float32)), (63, 45))
    assert isinstance(t, torch.Tensor) and t.shape == (63, 45)
    assert float(t.mean()) == pytest.approx(img.mean(), rel=1e-5)
    assert resampled_sampling((100, 90), 0.1, 0.3) == pytest.approx((10 / 33, 9 / 30))


# ---------------------------------------------------------------------------------------------- detector


def test_dose_mean_and_variance():
    intensity = np.ones((256, 256), np.float32)
    counts = apply_dose(intensity, dose=1000.0, pixel_size=0.2, seed=1)
    expected = 1000.0 * 0.2**2
    assert counts.mean() == pytest.approx(expected, rel=0.01)
    assert counts.var() == pytest.approx(counts.mean(), rel=0.05)  # Poisson
    # a structured image: mean counts = mean intensity × dose × pixel area
    img = (1 + 0.5 * np.cos(np.arange(256) / 5.0))[:, None] * np.ones((1, 256), np.float32)
    c2 = apply_dose(img, dose=500.0, pixel_size=(0.2, 0.25), seed=2)
    assert c2.mean() == pytest.approx(img.mean() * 500.0 * 0.05, rel=0.01)
    # seeded, read noise adds variance
    assert np.array_equal(apply_dose(intensity, 1000.0, 0.2, seed=1), counts)
    noisy = apply_dose(intensity, 1000.0, 0.2, seed=1, read_noise=3.0)
    assert noisy.var() == pytest.approx(counts.var() + 9.0, rel=0.06)
    with pytest.raises(InputError, match="dose"):
        apply_dose(intensity, dose=-1.0, pixel_size=0.2)


def test_mtf_shape_and_effect():
    params = {"floor": 0.1, "half_width": 0.5, "power": 2.0}
    m = mtf_rfft((64, 64), params).numpy()
    assert m[0, 0] == pytest.approx(1.0)
    row = m[:33, 0]  # along x, ω = 2i/64
    assert np.all(np.diff(row) < 0)
    assert row[16] == pytest.approx((1 + 0.1) / 2, rel=1e-6)  # half-way at ω = half_width
    rng = np.random.default_rng(0)
    img = rng.normal(size=(64, 64)).astype(np.float32) + 5
    out = apply_mtf(img, params)
    assert out.mean() == pytest.approx(img.mean(), rel=1e-5) and out.std() < 0.8 * img.std()
    with pytest.raises(InputError, match="mtf"):
        apply_mtf(img, {"bogus": 1.0})


# ---------------------------------------------------------------------------------------------- calibration


def test_zero_defocus_calibration_finds_known_minimum():
    """A phase object propagated d Å further has its contrast minimum exactly at defocus d."""
    lam = wavelength(300e3)
    obj = smooth_phase_object((96, 96), 0.1, seed=9, amplitude=0.5)
    d = 37.34
    k2 = np.fft.fftfreq(96, 0.1)[:, None] ** 2 + np.fft.fftfreq(96, 0.1)[None, :] ** 2
    exit_wave = np.fft.ifft2(np.fft.fft2(obj) * np.exp(-1j * np.pi * lam * d * k2)).astype(np.complex64)
    curve = contrast_curve(exit_wave, 0.1, 300e3, [0.0, 20.0, d, 60.0])
    assert np.argmin(curve) == 2 and curve[2] < 1e-8 < curve[1]
    zd = calibrate_zero_defocus(exit_wave, 0.1, 300e3, search_range=(-20.0, 120.0))
    assert abs(zd - d) <= 0.1
    for search in ("fast", "parabolic"):
        assert abs(calibrate_zero_defocus(exit_wave, 0.1, 300e3, search_range=(-20.0, 120.0), search=search)
                   - d) <= 0.1, search
    with pytest.raises(InputError, match="search_range"):
        calibrate_zero_defocus(exit_wave, 0.1, 300e3, search_range=(5.0, 5.0))


def _two_particles_in_vacuum():
    """Two Au fcc clusters (≈ 1 nm, one across the periodic x edge) alone in a 72 Å cell, and their
    exit wave at 0.1 Å (torch engine, static lattice)."""
    from ase import Atoms
    from ase.cluster import FaceCenteredCubic

    from hrtem_dataset.simulation import simulate_exit_wave

    parts = []
    for k, (x, y, z) in enumerate([(1.0, 16.0, 14.0), (38.0, 50.0, 16.0)]):
        c = FaceCenteredCubic("Au", [(1, 0, 0), (1, 1, 0), (1, 1, 1)], [2, 3, 2], latticeconstant=4.08)
        c.rotate(23.0 * (k + 1), "z", center="COP")
        c.positions += np.array([x, y, z]) - c.positions.mean(axis=0)
        parts.append((c.get_chemical_symbols(), c.positions, k))
    atoms = Atoms(sum((p[0] for p in parts), []), positions=np.concatenate([p[1] for p in parts]),
                  cell=[72.0, 72.0, 32.0], pbc=True)
    atoms.set_array("particle_id", np.concatenate([np.full(len(p[0]), p[2]) for p in parts]))
    atoms.wrap()
    return atoms, simulate_exit_wave(atoms, sampling=0.1, slice_thickness=2.0)


def test_fast_zero_defocus_search_matches_the_grid_search():
    """`search="fast"` (particle windows + vertex-walk refinement) finds the grid search's minimum on a
    simulated two-particle wave, one particle wrapped across the cell edge, for the paper's steps and
    coarser ones; the windows are disjoint, hold every particle atom, and cost fewer pixels than the field."""
    from hrtem_dataset.imaging.calibration import _window_contrast, particle_windows

    atoms, wave = _two_particles_in_vacuum()
    wins = particle_windows(atoms, wave.shape, 0.1)
    assert wins is not None and len(wins) == 2
    assert sum(r[1] * c[1] for r, c in wins) < 0.5 * wave.size
    pid = atoms.arrays["particle_id"]
    for k in (0, 1):  # each window contains its particle's atoms (periodic pixel coordinates)
        px = np.floor(np.mod(atoms.positions[pid == k, :2], 72.0) / 0.1).astype(int)
        assert any(all(((px[:, ax] - w[ax][0]) % 720 < w[ax][1]).all() for ax in (0, 1)) for w in wins), k
    # the windows' summed squared deviation has the full field's minimum on a fine grid
    grid = np.arange(0.0, 30.0, 0.5)
    full = contrast_curve(wave, 0.1, 300e3, grid)
    windowed = _window_contrast(wave, 0.1, 300e3, atoms, 10.0, "cpu")(grid)  # over `wins`
    assert np.argmin(windowed) == np.argmin(full)
    for steps in ([1.0, 0.1], [2.0, 0.5]):
        ref = calibrate_zero_defocus(wave, 0.1, 300e3, atoms=atoms, steps=steps)
        fast = calibrate_zero_defocus(wave, 0.1, 300e3, atoms=atoms, steps=steps, search="fast")
        assert abs(fast - ref) <= 0.5, (steps, ref, fast)
        # the parabolic search: within one last step (0.1 / 0.5 Å) of the grid search
        parabolic = calibrate_zero_defocus(wave, 0.1, 300e3, atoms=atoms, steps=steps, search="parabolic")
        assert abs(parabolic - ref) <= steps[-1] + 1e-9, (steps, ref, parabolic)
    # without atoms the fast search refines on the full field, with the same answer
    rng = (-5.0, 40.0)
    assert abs(calibrate_zero_defocus(wave, 0.1, 300e3, search_range=rng, search="fast")
               - calibrate_zero_defocus(wave, 0.1, 300e3, search_range=rng)) <= 0.5
    with pytest.raises(InputError, match="search"):
        calibrate_zero_defocus(wave, 0.1, 300e3, atoms=atoms, search="quick")


# ---------------------------------------------------------------------------------------------- conditions


def test_sample_imaging_conditions_series_and_determinism():
    spec = ImagingDistributionSpec(
        pixel_size=0.2, defocus=Uniform(min=-100, max=100), Cs=Uniform(min=0, max=2e4),
        aberrations={"C12": Uniform(min=0, max=20), "phi12": Uniform(min=0, max=3.14)},
        focal_spread=Uniform(min=10, max=40), dose=Uniform(min=100, max=1e4, log=True),
        images_per_structure=2, series=SeriesSpec(param="defocus", values=[-50.0, 0.0, 50.0]),
    )  # fmt: skip
    conds = sample_imaging_conditions(spec, seed=11)
    assert conds == sample_imaging_conditions(spec, seed=11)
    assert conds != sample_imaging_conditions(spec, seed=12)
    assert len(conds) == 6 and [c["defocus"] for c in conds[:3]] == [-50.0, 0.0, 50.0]
    first = conds[:3]
    assert len({c["Cs"] for c in first}) == 1 and len({c["dose"] for c in first}) == 1  # only defocus varies
    assert conds[0]["Cs"] != conds[3]["Cs"]
    for c in conds:
        assert 0 <= c["Cs"] <= 2e4 and 100 <= c["dose"] <= 1e4 and 10 <= c["focal_spread"] <= 40
        assert set(c["aberrations"]) == {"C12", "phi12"}
    assert len({c["noise_seed"] for c in conds}) == 6
    t = conditions_to_tensors(conds, zero_defocus=[5.0] * 6)
    assert torch.allclose(t["C10"], -torch.tensor([c["defocus"] + 5.0 for c in conds], dtype=torch.float64))
    assert set(t) >= {"C10", "C30", "C12", "phi12", "focal_spread", "dose", "semiangle_cutoff"}


def test_bad_inputs_raise_input_error_naming_the_field():
    waves = np.ones((16, 16), np.complex64)
    with pytest.raises(InputError, match="waves"):
        image_intensity(np.ones(16, np.complex64))
    with pytest.raises(InputError, match="semiangle_cutoff"):
        image_intensity(waves, semiangle_cutoff=-5.0)
    with pytest.raises(InputError, match="focal_spread"):
        image_intensity(waves, focal_spread=-1.0)
    with pytest.raises(InputError, match="sampling"):
        image_intensity(waves, sampling=0.0)
    with pytest.raises(InputError, match="pixel_size"):
        render_image(waves, 0.1, 300e3, {"defocus": 0.0}, zero_defocus=0.0, seed=0)
    with pytest.raises(InputError, match="conditions"):
        image_batch(torch.ones((1, 16, 16), dtype=torch.complex64), 0.1, 300e3, {"defocsu": 1.0})
    with pytest.raises(InputError, match="mtf"):  # rejected when the spec is read, before any simulation
        validate_spec({"mtf": {"width": 0.3}}, ImagingDistributionSpec)
    with pytest.raises(InputError, match="dose"):
        validate_spec({"dose": {"min": -10.0, "max": 100.0}}, ImagingDistributionSpec)
