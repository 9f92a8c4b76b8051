"""Guards of the imaging fast paths (correctness, not speed):

- ``image_batch(cropped_ifft=True)``: inverse FFT, |ψ|² and phonon average on a cropped grid when an objective
  aperture bounds the spectrum — the same images as the full-grid path to float32 rounding;
- ``spectrum=`` (one forward FFT per structure in the images stage) — bit-identical images;
- the full-grid path's |ψ|² and the calibration's propagate-and-image helper — bit-identical to the formulas
  they replaced (``view_as_real(ψ).square().sum(-1)``, stacked spectra), so dataset bytes do not move.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from hrtem_dataset.imaging import calibration, image_batch, render_image, transfer_function
from hrtem_dataset.imaging._common import phonon_stack
from hrtem_dataset.imaging.image import (
    _coefficients,
    _cropped_plans,
    _fast_len,
    _full_intensity,
    wave_spectrum,
)
from hrtem_dataset.simulation.physics import wavelength
from hrtem_dataset.spectra import fft2

MTF = {"floor": 0.05, "half_width": 0.6, "power": 2.0}


def _waves(batch=3, phonons=2, n=(240, 216), seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    phase = 0.4 * torch.randn((batch, phonons, *n), generator=g, dtype=torch.float32)
    amp = 1.0 + 0.05 * torch.randn((batch, phonons, *n), generator=g)
    return torch.polar(amp, phase)


def _conditions(cutoffs, seed=1):
    g = torch.Generator()
    g.manual_seed(seed)
    b = len(cutoffs)

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(b, generator=g, dtype=torch.float64)

    return {"defocus": u(-200, 200), "Cs": u(-2e4, 2e4), "C12": u(0, 30), "phi12": u(0, math.pi),
            "focal_spread": u(10, 50), "angular_spread": u(0.1, 0.5),
            "semiangle_cutoff": torch.tensor(cutoffs, dtype=torch.float64)}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("pixel_size", [0.2, 0.25, 0.15, None])
@pytest.mark.parametrize("soft", [True, False])
def test_cropped_ifft_gives_the_full_grid_image(pixel_size, soft):
    """Same noise-free images (MTF on) as the full-grid path to ~1e-6, for even/odd output grids, the
    simulation grid itself (zero-padded output), an image without aperture in the batch, soft and hard
    aperture edges; the cropped path is really taken for the apertured images."""
    waves = _waves(phonons=8)  # 8 configurations: the cropped grid pays even for the full-grid output
    cond = _conditions([8.0, math.inf, 12.0])
    nx, ny = waves.shape[-2:]
    shape = (nx, ny) if pixel_size is None else (round(nx * 0.1 / pixel_size), round(ny * 0.1 / pixel_size))
    plans = _cropped_plans(cond["semiangle_cutoff"], 300e3, (nx, ny), (0.1, 0.1), shape, waves.shape[1])
    assert plans is not None and None in plans and 1 in plans[None]
    assert all(p is not None for p, rows in plans.items() if 0 in rows or 2 in rows)
    for mtf in (MTF, None):
        ref = image_batch(waves, 0.1, 300e3, cond, pixel_size, mtf=mtf, soft_aperture=soft)
        fast = image_batch(waves, 0.1, 300e3, cond, pixel_size, mtf=mtf, soft_aperture=soft, cropped_ifft=True)
        assert fast.shape == ref.shape == (3, *shape) and fast.dtype == ref.dtype
        assert _rel(fast, ref) < 1e-5, (pixel_size, soft, _rel(fast, ref))
        assert abs(float(fast.mean()) - float(ref.mean())) < 1e-5


def test_cropped_ifft_with_dose_and_a_shared_spectrum():
    """With a dose the two paths draw the same noise stream from the same seed (counts agree on average);
    a shared (1, P, nx, ny) spectrum gives the cropped path's own images bit for bit."""
    waves = _waves(batch=2)
    cond = {**_conditions([15.0, 25.0]), "dose": torch.tensor([2000.0, 500.0], dtype=torch.float64)}
    g1, g2 = torch.Generator(), torch.Generator()
    g1.manual_seed(7)
    g2.manual_seed(7)
    ref = image_batch(waves, 0.1, 300e3, cond, 0.2, g1, mtf=MTF)
    fast = image_batch(waves, 0.1, 300e3, cond, 0.2, g2, mtf=MTF, cropped_ifft=True)
    assert float((fast.mean(dim=(-2, -1)) / ref.mean(dim=(-2, -1)) - 1).abs().max()) < 1e-3
    one = waves[:1]
    spec = torch.fft.fft2(one)
    cond1 = {k: v[:1] for k, v in cond.items() if k != "dose"}
    a = image_batch(one, 0.1, 300e3, cond1, 0.2, mtf=MTF, cropped_ifft=True)
    b = image_batch(one, 0.1, 300e3, cond1, 0.2, mtf=MTF, cropped_ifft=True, spectrum=spec)
    assert torch.equal(a, b)


def test_cropped_grid_holds_the_aperture_support_and_the_output_band():
    """The CTF is exactly zero outside the plan's |q| ≤ K (soft edge included), ``band=`` returns exactly
    those entries of the full grid's CTF, and the cropped grid is alias-free for the output band."""
    n, s, energy = (240, 216), (0.1, 0.1), 300e3
    cond = _conditions([12.0, 18.0, 31.0])
    coeffs = _coefficients(cond, 3, "cpu")
    kw = dict(semiangle_cutoff=cond["semiangle_cutoff"], focal_spread=cond["focal_spread"],
              angular_spread=cond["angular_spread"])
    H = transfer_function(n, s, energy, coeffs, **kw)
    for b, c in enumerate(cond["semiangle_cutoff"].tolist()):
        plans = _cropped_plans(torch.tensor([c], dtype=torch.float64), energy, n, s, (120, 108), 2)
        ((kx, ky), grid), = plans.keys()
        qx = np.abs(np.fft.fftfreq(n[0]) * n[0])[:, None]
        qy = np.abs(np.fft.fftfreq(n[1]) * n[1])[None, :]
        outside = torch.from_numpy((qx > kx) | (qy > ky))
        assert bool((H[b][outside] == 0).all()) and bool((H[b][~outside] != 0).any())
        assert 2 * kx + 60 + 1 <= grid[0] <= n[0] and 2 * ky + 54 + 1 <= grid[1] <= n[1]
        Hb = transfer_function(n, s, energy, {k: v[b : b + 1] for k, v in coeffs.items()},
                               **{k: v[b : b + 1] for k, v in kw.items()}, band=(kx, ky))
        rows = np.r_[0 : kx + 1, n[0] - kx : n[0]]
        cols = np.r_[0 : ky + 1, n[1] - ky : n[1]]
        full = H[b][rows][:, cols]
        assert Hb.shape == (1, 2 * kx + 1, 2 * ky + 1)
        assert float((Hb[0] - full).abs().max()) < 1e-6
    # the support bound follows the soft edge: α_c + ½ Δα, Δα = λ / extent
    lam = wavelength(energy)
    assert kx >= (31e-3 / lam) * n[0] * s[0]
    assert _fast_len(1) == 1 and _fast_len(97) == 100 and _fast_len(331) == 360 and _fast_len(640) == 640
    # no aperture, or an aperture too wide to pay: no plan
    assert _cropped_plans(torch.tensor([math.inf]), energy, n, s, (120, 108), 2) is None
    assert _cropped_plans(torch.tensor([80.0], dtype=torch.float64), energy, n, s, (120, 108), 2) is None


def test_render_image_with_a_shared_spectrum_is_bit_identical():
    """The images stage transforms a structure's scene waves once and passes the spectrum to every
    render_image call: the same bytes as transforming per image."""
    waves = _waves(batch=1, phonons=2, n=(128, 128))[0].numpy()
    spec = wave_spectrum(waves)
    for k, cond in enumerate([
        {"pixel_size": 0.2, "defocus": 50.0, "Cs": 1e4, "aberrations": {"C12": 20.0, "phi12": 0.3},
         "focal_spread": 20.0, "angular_spread": 0.2, "dose": 800.0, "mtf": MTF, "read_noise": 1.0,
         "semiangle_cutoff": None},
        {"pixel_size": 0.25, "defocus": -30.0, "Cs": 0.0, "semiangle_cutoff": 20.0, "dose": None},
        {"pixel_size": 0.2, "recorded_pixel_size": 0.3, "defocus": 10.0, "dose": 300.0, "mtf": MTF},
    ]):
        a = render_image(waves, 0.1, 300e3, cond, 12.5, seed=100 + k)
        b = render_image(waves, 0.1, 300e3, cond, 12.5, seed=100 + k, spectrum=spec)
        assert a.tobytes() == b.tobytes(), k
        if cond.get("semiangle_cutoff") and not cond.get("dose"):  # the cropped path, through render_image
            c = render_image(waves, 0.1, 300e3, cond, 12.5, seed=100 + k, spectrum=spec, cropped_ifft=True)
            assert c.shape == a.shape and float(np.abs(c - a).max() / np.abs(a).max()) < 1e-5
            plans = _cropped_plans(torch.tensor([20.0], dtype=torch.float64), 300e3, (128, 128), (0.1, 0.1),
                                   a.shape, 2)
            assert plans is not None and None not in plans


def test_full_grid_intensity_is_bit_identical_to_the_previous_formula():
    """|ψ|² as re² + im² (and the spectrum= variant) equals view_as_real(ψ).square().sum(-1) bit for bit."""
    waves = _waves(batch=2, phonons=3, n=(96, 80))
    cond = _conditions([20.0, math.inf])
    H = transfer_function((96, 80), (0.1, 0.1), 300e3, _coefficients(cond, 2, "cpu"),
                          semiangle_cutoff=cond["semiangle_cutoff"])
    spec = torch.fft.fft2(waves)
    spec.mul_(H[:, None])
    psi = torch.fft.ifft2(spec, out=spec)
    previous = torch.view_as_real(psi).square_().sum(dim=-1).mean(dim=1)
    assert torch.equal(_full_intensity(waves, None, H), previous)
    assert torch.equal(_full_intensity(waves, torch.fft.fft2(waves), H), previous)


def test_streamed_full_grid_intensity_is_bit_identical_to_the_batched_form(monkeypatch):
    """On the CPU, planes of ≥ 512² go through the full-grid path plane by plane (each image's |ψ|² summed phonon by
    phonon, then divided by P): bit for bit the batched form's stacked spectra and mean over the phonons, with the
    waves' own transforms, a per-image spectrum and one shared by the batch."""
    from hrtem_dataset import spectra

    torch.manual_seed(3)
    n = (512, 520)
    x = torch.randn(2, 3, *n)
    waves = torch.polar(torch.ones_like(x), 0.3 * x)
    H = torch.polar(torch.rand(2, *n), torch.randn(2, *n))
    shared = waves[:1].expand(2, 3, *n)
    cases = [(waves, None), (waves, torch.fft.fft2(waves)), (shared, torch.fft.fft2(waves[:1])), (shared, None)]
    streamed = [_full_intensity(w, sp, H) for w, sp in cases]
    monkeypatch.setattr(spectra, "PLANE_LOOP_BYTES", 10**12)  # every stack batched: the reference form
    for (w, sp), got in zip(cases, streamed, strict=True):
        assert torch.equal(got, _full_intensity(w, sp, H))


def test_intensity_in_place_is_bit_identical_to_the_reference_formula():
    """_common.intensity_ (square the buffer in place, add the halves) gives view_as_real(ψ).square().sum(-1)'s
    bytes, also for odd grids and extreme magnitudes."""
    from hrtem_dataset.imaging._common import intensity_

    g = torch.Generator().manual_seed(3)
    for shape in ((2, 3, 17, 9), (64, 64), (1, 1, 5)):
        psi = torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
        psi.view(-1)[:3] = torch.tensor([1e-30 + 0j, 3e18 - 2e18j, 0j])
        reference = torch.view_as_real(psi).square().sum(-1)
        got = intensity_(psi.clone())
        assert got.shape == psi.shape and got.dtype == torch.float32
        assert torch.equal(got, reference)


@pytest.mark.parametrize("phonons", [1, 2])
def test_calibration_intensities_are_bit_identical_to_the_stacked_formula(phonons):
    """The calibration's buffer-reusing propagate-and-image helper gives the same bytes as stacking the
    propagated spectra (the formula the grid search's recorded zero-defocus values came from)."""
    waves = _waves(batch=1, phonons=phonons, n=(96, 80))[0]
    lam = wavelength(300e3)
    from hrtem_dataset.imaging.aberrations import polar_grid

    alpha, _ = polar_grid((96, 80), (0.1, 0.1), lam, "cpu")
    phase = math.pi * lam * (alpha / lam) ** 2
    spec = torch.fft.fft2(waves)
    for defoci in (np.arange(-3.0, 5.0, 1.0), np.array([0.0, 1.5, 7.25])):
        steps = np.diff(defoci)
        uniform = bool(np.allclose(steps, steps[0]))
        step = calibration._propagator(phase, float(steps[0])) if uniform else None
        if uniform:
            specs = [spec * calibration._propagator(phase, float(defoci[0]))]
            for _ in range(1, len(defoci)):
                specs.append(specs[-1] * step)
        else:
            specs = [spec * calibration._propagator(phase, float(z)) for z in defoci]
        psi = torch.fft.ifft2(torch.stack(specs))
        previous = torch.view_as_real(psi).square().sum(dim=-1).mean(dim=1)
        buf = torch.empty((len(defoci) + 2, *spec.shape), dtype=spec.dtype)
        assert torch.equal(calibration._intensities(spec, phase, defoci, step), previous)
        assert torch.equal(calibration._intensities(spec, phase, defoci, step, buf), previous)
        for chunk in (1, 3, 5):  # a few planes at a time, the recursion carried across chunks: the same bits
            out = torch.empty((len(defoci) + 1, *spec.shape[1:]))
            assert torch.equal(calibration._intensities(spec, phase, defoci, step, chunk=chunk), previous)
            assert torch.equal(calibration._intensities(spec, phase, defoci, step, buf, chunk, out), previous)
        curve = calibration.contrast_curve(waves.numpy(), 0.1, 300e3, defoci, batch_size=3)
        ref = np.concatenate([previous[i : i + 3].var(dim=(-2, -1), unbiased=False).double().numpy()
                              for i in range(0, len(defoci), 3)]) if not uniform else None
        if ref is not None:
            np.testing.assert_array_equal(curve, ref)


def test_octant_expansion_copies_the_bits():
    """The CPU's row-by-row gather of 8-byte words gives what one complex ``index_select`` gives (the accelerators'
    gather), NaN payloads and signed zeros included."""
    from hrtem_dataset.imaging import ctf

    rows, _, inverse = ctf._octant(96, "cpu")
    g = torch.Generator().manual_seed(5)
    for batch in (1, 3):
        H = torch.complex(torch.randn(batch, rows.numel(), generator=g), torch.randn(batch, rows.numel(), generator=g))
        H[0, :3] = torch.tensor([complex(float("nan"), -0.0), complex(-0.0, float("inf")), 0j])
        got = ctf._octant_expand(H, inverse.reshape(-1), (96, 96))
        want = H.index_select(1, inverse.reshape(-1)).reshape(batch, 96, 96)
        assert got.dtype == torch.complex64 and got.shape == want.shape
        assert torch.equal(torch.view_as_real(got).view(torch.int32), torch.view_as_real(want).view(torch.int32))


@pytest.mark.parametrize("n, sampling", [(640, 0.1), (255, 0.25), (96, 0.1)])
def test_octant_transfer_function_is_bit_identical_to_the_full_grid(monkeypatch, n, sampling):
    """Round aberrations without an aperture on a square grid: H computed on one octant of the grid and copied
    out has the full-grid computation's bytes (defocus, Cs, C5, focal and angular spread, batches, odd n)."""
    from hrtem_dataset.imaging import ctf
    from hrtem_dataset.imaging.aberrations import stack_coefficients

    rows, cols, inverse = ctf._octant(n, "cpu")
    assert rows.numel() % ctf.OCTANT_PAD == 0 and int(inverse.max()) < rows.numel()
    assert int(inverse.max()) + 1 < n * n / 7  # classes: ≈ 1/8 of the pixels
    k = torch.fft.fftfreq(n, d=sampling, dtype=torch.float64)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    assert torch.equal(k2[rows, cols][inverse], k2)  # every pixel has its representative's |k|², bit for bit
    full = ctf._octant_applies
    for trial in range(6):
        g = torch.Generator().manual_seed(trial)
        batch = 1 + trial % 3

        def r(lo, hi, batch=batch, g=g):
            return lo + (hi - lo) * torch.rand(batch, generator=g, dtype=torch.float64)

        coeffs = stack_coefficients([{}] * batch)
        coeffs["C10"], coeffs["C30"] = r(-300, 300), r(-2e4, 2e4) * (trial % 2)
        if trial == 5:
            coeffs["C50"] = r(-1e6, 1e6)
        kw = {"focal_spread": r(0, 50) * (trial % 3 != 0), "angular_spread": r(0, 0.5) * (trial % 4 != 1)}
        octant = ctf.transfer_function((n, n), (sampling, sampling), 300e3, coeffs, **kw)
        monkeypatch.setattr(ctf, "_octant_applies", lambda *a: False)
        reference = ctf.transfer_function((n, n), (sampling, sampling), 300e3, coeffs, **kw)
        monkeypatch.setattr(ctf, "_octant_applies", full)
        assert torch.equal(octant, reference), trial
    # not applied: a rectangular grid, unequal sampling, an aperture, astigmatism
    round_terms = ((1, 0, "c"), (3, 0, "c"))
    assert ctf._octant_applies((n, n), (sampling, sampling), False, round_terms)
    assert not ctf._octant_applies((n, n + 1), (sampling, sampling), False, round_terms)
    assert not ctf._octant_applies((n, n), (sampling, 1.01 * sampling), False, round_terms)
    assert not ctf._octant_applies((n, n), (sampling, sampling), True, round_terms)
    assert not ctf._octant_applies((n, n), (sampling, sampling), False, round_terms + ((1, 2, "c"),))


def test_cropped_ifft_spec_option_is_opt_in_and_keeps_default_hashes():
    """``imaging.cropped_ifft`` defaults to False and is left out of spec dumps (and hashes) at its default."""
    from hrtem_dataset.specs import ImagingDistributionSpec

    default = ImagingDistributionSpec()
    assert default.cropped_ifft is False and "cropped_ifft" not in default.model_dump()
    on = ImagingDistributionSpec(cropped_ifft=True, semiangle_cutoff=25.0)
    assert on.model_dump()["cropped_ifft"] is True


# ------------------------------------------------------------------------ fast zero-defocus search pieces


def test_vertex_walk_over_grid_values_finds_the_grid_minimum_evaluating_each_value_once():
    """The fine stage (parabola vertex, then downhill over grid values) returns the brute-force minimum of
    unimodal curves, symmetric or not (minima on the bracket's edges included) and, through the memo,
    evaluates no value twice; with the bracket's ends and middle known, few new values."""
    rng = np.random.default_rng(5)
    extra = []
    for _ in range(300):
        lo, step, n = -1.0 + rng.uniform(-30, 30), 0.1, 2 * int(rng.integers(1, 20))
        grid = lo + step * np.arange(n + 1)
        centre = rng.choice([grid[0], grid[-1], rng.uniform(grid[0], grid[-1])])
        left, right = rng.uniform(0.05, 3.0, 2)  # different slopes on the two sides: not a parabola
        power = rng.uniform(1.0, 3.0)
        calls: list[float] = []

        def f(d, centre=centre, left=left, right=right, power=power, calls=calls):
            calls.extend(np.round(d, 6).tolist())
            return np.abs(d - centre) ** power / np.where(d < centre, left, right)

        memo = calibration._Memo(f)
        memo(grid[[0, n // 2, n]])  # what the previous stage leaves in the memo
        known = memo.evaluations
        best = calibration._vertex_walk(memo, lo, lo + step * n, step)
        assert len(calls) == len(set(calls)) == memo.evaluations
        assert best == pytest.approx(grid[np.argmin(f(grid))], abs=1e-9)
        if n == 20:
            extra.append(memo.evaluations - known)
    assert np.mean(extra) <= 4  # vs 18 more for the grid


def test_confirm_walks_from_the_proxy_minimum_to_the_full_curves_minimum():
    """The first stage's confirmation window moves on while its best value sits on an inner edge: a proxy
    minimum several windows away from the full curve's still reaches it, and a minimum on the range's edge
    is kept."""
    grid = np.arange(0.0, 60.0, 1.0)
    for true in (0, 7, 23, 41, 59):
        for start in (0, 5, 30, 59):
            f = calibration._Memo(lambda d, t=true: (d - t) ** 2)
            assert calibration._confirm(f, grid, start, 3) == true
            assert f.evaluations <= abs(true - start) + 7


@functools.lru_cache(maxsize=1)
def _cluster_in_vacuum():
    """A 2 nm Au fcc cluster alone in a 64 × 64 × 32 Å cell and its exit wave at 0.1 Å (640², torch engine)."""
    from ase import Atoms
    from ase.cluster import FaceCenteredCubic

    from hrtem_dataset.simulation import simulate_exit_wave

    c = FaceCenteredCubic("Au", [(1, 0, 0), (1, 1, 0), (1, 1, 1)], [3, 4, 3], latticeconstant=4.08)
    c.rotate(31.0, "z", center="COP")
    c.positions += np.array([32.0, 32.0, 16.0]) - c.positions.mean(axis=0)
    atoms = Atoms(c.get_chemical_symbols(), positions=c.positions, cell=[64.0, 64.0, 32.0], pbc=True)
    atoms.set_array("particle_id", np.zeros(len(atoms), dtype=int))
    wave = simulate_exit_wave(atoms, sampling=0.1, slice_thickness=2.0)
    return atoms, wave, calibration.calibrate_zero_defocus(wave, 0.1, 300e3, atoms=atoms)  # the grid search


def test_band_limited_scan_locates_the_basin_on_a_smaller_grid():
    """The band-limited proxy runs on the smallest FFT grid holding the band (256² for a 64 Å cell at 0.1 Å
    and 2 Å⁻¹), its curve's minimum is within a few Å of the full wave's, and the full search confirms the
    grid search's value exactly."""
    atoms, wave, ref = _cluster_in_vacuum()
    assert calibration.particle_windows(atoms, wave.shape, 0.1, margin=30.0) is None  # full-field evaluations
    result = calibration._band_contrast(torch.fft.fft2(torch.as_tensor(wave)[None]), 0.1, 300e3, 2.0)
    assert result is not None  # a smaller grid than the wave's
    proxy, _ = result
    grid = np.arange(*calibration.defocus_search_range(atoms), 1.0)
    full = calibration.contrast_curve(wave, 0.1, 300e3, grid)
    assert abs(grid[np.argmin(proxy(grid))] - grid[np.argmin(full)]) <= 4.0
    assert calibration.calibrate_zero_defocus(wave, 0.1, 300e3, atoms=atoms, search="fast", margin=30.0) == ref
    assert calibration.calibrate_zero_defocus(wave, 0.1, 300e3, atoms=atoms, search="fast") == ref  # windowed
    with pytest.raises(calibration.InputError, match="band"):
        calibration.calibrate_zero_defocus(wave, 0.1, 300e3, atoms=atoms, search="fast", band=0.0)


def test_parabolic_search_evaluates_on_the_band_limited_grid_within_a_step_of_the_grid_search():
    """``search="parabolic"``: a multislice exit wave (antialiased to 2/3 of its band) is evaluated on the 3/4
    grid (480² for 640²), whose contrast curve has the full grid's minimum on the 1 Å grid; a wave with power
    beyond that grid keeps its own; the result is within one 0.1 Å step of the grid search's."""
    atoms, wave, ref = _cluster_in_vacuum()
    spectrum = torch.fft.fft2(torch.as_tensor(wave)[None])
    m = calibration._evaluation_grid(spectrum)
    assert m == (480, 480)
    g = torch.Generator().manual_seed(3)
    noisy = torch.polar(torch.ones(1, 640, 640), 0.3 * torch.randn(1, 640, 640, generator=g))
    assert calibration._evaluation_grid(torch.fft.fft2(noisy)) == (640, 640)  # broadband: nothing cut
    grid = np.arange(*calibration.defocus_search_range(atoms), 1.0)
    cropped = calibration._cropped_contrast(spectrum, 0.1, 300e3, m, centred=True)(grid)
    full = calibration.contrast_curve(wave, 0.1, 300e3, grid) * wave.size  # variance -> Σ (I − Ī)²
    assert np.argmin(cropped) == np.argmin(full)
    assert calibration._cropped_contrast(spectrum, 0.1, 300e3, (640, 640), centred=True)(grid) == pytest.approx(
        full, rel=1e-3)
    parabolic = calibration.calibrate_zero_defocus(wave, 0.1, 300e3, atoms=atoms, search="parabolic")
    assert abs(parabolic - ref) <= 0.1 + 1e-9 and round(parabolic * 10) == pytest.approx(parabolic * 10)
    with pytest.raises(calibration.InputError, match="search"):
        calibration.calibrate_zero_defocus(wave, 0.1, 300e3, atoms=atoms, search="golden")


def test_a_shared_particle_spectrum_gives_the_same_zero_defocus_and_labels():
    """The images stage transforms the particle wave once for the calibration and the labels: the same zero
    defocus (fast and parabolic searches) and the same mask bytes as each transforming it; a spectrum of
    another shape is refused naming the field."""
    from hrtem_dataset.labels import make_labels, phase_field

    atoms, wave, _ = _cluster_in_vacuum()
    spectrum = fft2(phonon_stack(wave, None, "w"))
    for search in ("fast", "parabolic"):
        assert calibration.calibrate_zero_defocus(wave, 0.1, 300e3, atoms=atoms, search=search,
                                                  spectrum=spectrum) == \
            calibration.calibrate_zero_defocus(wave, 0.1, 300e3, atoms=atoms, search=search)
    zd = calibration.calibrate_zero_defocus(wave, 0.1, 300e3, atoms=atoms, search="parabolic", spectrum=spectrum)
    for px in (0.2, 0.25):
        a = make_labels(wave, atoms, 0.1, px, zero_defocus=zd)
        b = make_labels(wave, atoms, 0.1, px, zero_defocus=zd, spectrum=spectrum)
        assert np.array_equal(a["mask"], b["mask"]) and np.array_equal(a["instances"], b["instances"])
        assert np.array_equal(phase_field(wave, 0.1, defocus=zd, pixel_size=px),
                              phase_field(wave, 0.1, defocus=zd, pixel_size=px, spectrum=spectrum[0]))
    # several configurations: the labels transform their coherent mean and leave the spectrum aside
    two = np.stack([wave, wave])
    assert np.array_equal(phase_field(two, 0.1, defocus=zd), phase_field(two, 0.1, defocus=zd, spectrum=spectrum))
    with pytest.raises(calibration.InputError, match="spectrum"):
        calibration.calibrate_zero_defocus(wave, 0.1, 300e3, atoms=atoms, search="fast", spectrum=spectrum[..., :64])
    with pytest.raises(calibration.InputError, match="spectrum"):  # the parabolic search checks it by the waves' shape
        calibration.calibrate_zero_defocus(wave[:, :320], 0.1, 300e3, atoms=atoms, search="parabolic",
                                           spectrum=spectrum)
    with pytest.raises(calibration.InputError, match="particle_waves"):
        calibration.calibrate_zero_defocus(wave[0], 0.1, 300e3, atoms=atoms, search="parabolic", spectrum=spectrum)
    with pytest.raises(calibration.InputError, match="spectrum"):
        phase_field(wave, 0.1, defocus=zd, spectrum=spectrum[..., :64])


def test_parabola_vertex_is_exact_for_a_quadratic_and_stays_within_half_a_step():
    grid = np.arange(0.0, 10.0, 1.0)
    f = calibration._Memo(lambda d: (d - 3.37) ** 2)
    assert calibration._parabola_vertex(f, grid, 3.0) == pytest.approx(3.37)
    assert f.evaluations == 3
    assert calibration._parabola_vertex(f, grid, 0.0) == 0.0  # an end of the grid: no neighbour on one side
    assert calibration._vertex_offset(1.0, 0.0, 1.0) == 0.0
    assert calibration._vertex_offset(5.0, 0.0, 0.0) == 0.5  # flat on one side: half a step, no further
    assert calibration._vertex_offset(1.0, 1.0, 1.0) == 0.0  # flat curve


def test_save_npz_round_trips_every_array_deterministically(tmp_path):
    """The images shard writer: np.load reads back the same arrays (dtype, shape, values, the rows string),
    the bytes do not depend on the time of writing, and level 1 is smaller than storing."""
    from hrtem_dataset.io import save_npz

    rng = np.random.default_rng(0)
    arrays = {"rows": np.str_('[{"a": 1}]'), "image_0": rng.poisson(5, (64, 48)).astype(np.float32),
              "mask_0": (rng.random((64, 48)) > 0.5).astype(np.uint8), "instances_0": np.zeros((64, 48), np.int32)}
    paths = [tmp_path / "a.npz", tmp_path / "b.npz"]
    for p in paths:
        with open(p, "wb") as fh:
            save_npz(fh, **arrays)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    back = np.load(paths[0])
    assert sorted(back.files) == sorted(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
    assert paths[0].stat().st_size < sum(v.nbytes for v in arrays.values()) / 2


def test_streamed_cropped_intensity_equals_the_batched_form():
    """The CPU's plane-by-plane cropped path (fresh forward FFT per plane, band corners × H into the coarse
    grid) gives the batched form's intensities (the accelerators' path) to float32 rounding, with per-image
    waves, a per-image spectrum and one spectrum shared by the batch."""
    from hrtem_dataset.imaging.image import _cropped_intensity, _cropped_intensity_batched

    waves = _waves(batch=3, phonons=2, n=(240, 216))
    k, grid = (37, 33), (128, 120)
    g = torch.Generator()
    g.manual_seed(4)
    H = torch.polar(torch.rand((3, 2 * k[0] + 1, 2 * k[1] + 1), generator=g),
                    6.0 * torch.rand((3, 2 * k[0] + 1, 2 * k[1] + 1), generator=g)) / (240 * 216)
    spectrum = torch.fft.fft2(waves)
    for w, sp in ((waves, None), (waves, spectrum), (waves[:1].expand(3, -1, -1, -1), spectrum[:1])):
        ref = _cropped_intensity_batched(w, sp, H, k, grid)
        out = _cropped_intensity(w, sp, H, k, grid)
        assert out.shape == ref.shape == (3, *grid) and out.dtype == torch.float32
        assert float((out - ref).abs().max() / ref.abs().max()) < 2e-6


def test_finite_check_by_sum_rejects_every_nan_and_inf_and_accepts_huge_finite_values():
    from hrtem_dataset.errors import InputError
    from hrtem_dataset.imaging._common import check_finite, phonon_stack

    waves = torch.ones((2, 64, 48), dtype=torch.complex64)
    check_finite(waves, "w")
    for bad in (math.nan, math.inf, -math.inf, complex(0, math.nan), complex(1, -math.inf)):
        w = waves.clone()
        w[1, 63, 47] = bad
        with pytest.raises(InputError, match="^particle_waves: contains NaN or Inf$"):
            phonon_stack(w, None, "particle_waves")
    # finite values whose sum overflows float32: not NaN/Inf, so accepted (checked element by element)
    check_finite(torch.full((4, 4), 3e38, dtype=torch.float32), "big")
    check_finite(torch.full((2, 2), complex(3e38, -3e38), dtype=torch.complex64), "big")
    # +inf and -inf together sum to NaN: still rejected; integer tensors are always finite
    with pytest.raises(InputError, match="x: contains NaN or Inf"):
        check_finite(torch.tensor([math.inf, -math.inf]), "x")
    check_finite(torch.arange(5), "ints")


def test_band_limited_contrast_curve_holds_no_defocus_frequency_above_its_bound():
    """Σ I²(z) of a wave cut to |k_x|, |k_y| ≤ band has no frequency in z above 2λ·band² (the bound behind
    ``scan_stride``; band: what the cropped grid holds): on a random phase object, the windowed spectrum of a
    finely sampled curve carries < 1e-6 of its power beyond that frequency, and over 1 % within the top third below it (the bound is
    nearly reached, so it is not loose). At 300 kV and 2 Å⁻¹ the scan takes every second 1 Å value."""
    lam = wavelength(300e3)
    band, dz = 2.0, 0.25
    g = torch.Generator()
    g.manual_seed(4)
    wave = torch.polar(torch.ones(96, 96), 0.5 * torch.randn((96, 96), generator=g))
    proxy, held = calibration._band_contrast(torch.fft.fft2(wave)[None], 0.1, 300e3, band)
    assert held == pytest.approx(20 / 9.6)  # the 40² crop holds |k| up to 20 indices of a 9.6 Å field
    z = np.arange(-400.0, 400.0, dz)
    curve = proxy(z) - proxy(z).mean()
    power = np.abs(np.fft.rfft(curve * np.hanning(z.size))) ** 2
    freq = np.fft.rfftfreq(z.size, dz)
    f_max = 2.0 * lam * held**2
    beyond = freq > 1.02 * f_max  # the Hann window's main lobe spreads ±2 bins (0.003 cycles/Å)
    assert power[beyond].sum() < 1e-6 * power.sum()
    assert power[(freq > 0.66 * f_max) & ~beyond].sum() > 1e-2 * power.sum()
    assert calibration.scan_stride(300e3, band, 1.0) == 2
    assert calibration.scan_stride(300e3, band, 2.0) == 1
    assert calibration.scan_stride(300e3, 1.0, 1.0) == 8


def test_separable_defocus_propagator_equals_the_float64_polar_to_complex64_rounding():
    """The fast searches' propagator is the outer product of two 1-D exponentials (π λ k² = π λ (k_x² + k_y²));
    it equals exp(iπλz|k|²) evaluated in float64 on the whole grid to complex64 rounding, over the defocus
    range a calibration scans (phases up to ≈ 100 rad at the grid's corner)."""
    from hrtem_dataset.imaging.aberrations import polar_grid

    lam = wavelength(300e3)
    for shape, sampling in (((192, 160), (1 / 3, 0.4)), ((480, 480), (0.1 / 0.75, 0.1 / 0.75)), ((7, 9), (0.5, 0.3))):
        alpha, _ = polar_grid(shape, sampling, lam, "cpu")
        exact_phase = math.pi * lam * (alpha / lam) ** 2  # float64, the grid search's table
        separable = calibration._defocus_phase(shape, sampling, 300e3, torch.device("cpu"))
        for dz in (-80.0, -1.0, 0.1, 37.5, 120.0):
            got = calibration._propagator(separable, dz)
            want = calibration._propagator(exact_phase, dz)
            assert got.dtype == torch.complex64 and got.shape == shape
            assert float((got - want).abs().max()) < 1e-6
    assert calibration._defocus_phase((480, 480), (0.1, 0.1), 300e3, torch.device("cpu")) is \
        calibration._defocus_phase((480, 480), (0.1, 0.1), 300e3, torch.device("cpu"))  # cached per grid
    # the uniform spacing's propagator is kept per grid: the same tensor each time, the same bits as built anew
    separable = calibration._defocus_phase((96, 80), (0.1, 0.1), 300e3, torch.device("cpu"))
    step = calibration._uniform_step(separable, np.array([3.0, 4.0, 5.0]))
    assert step is calibration._uniform_step(separable, np.array([-7.5, -6.5]))
    assert torch.equal(step, separable.propagator(1.0))
    assert calibration._uniform_step(separable, np.array([0.0, 1.0, 3.0])) is None


@pytest.mark.parametrize("n", [(8, 8), (7, 9), (5, 6), (64, 48)])
def test_crop_complex_spectrum_keeps_the_lowest_frequencies_and_pads_with_zeros(n):
    """Cropping or zero-padding an fft2 spectrum by quadrant copies: every output frequency index holds the input's
    value at the same signed frequency (0…⌈m/2⌉−1 and −⌊m/2⌋…−1 per axis) or zero where the input has none; the
    same bytes with ``out=`` (a reused buffer that held other values)."""
    from hrtem_dataset.spectra import crop_complex_spectrum

    x = torch.randn(2, *n, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    for m in ((1, 1), (2, 3), (4, 4), (5, 5), (7, 7), (9, 12), (3, 10), (n[0], n[1])):
        got = crop_complex_spectrum(x, m)
        want = torch.zeros(2, *m, dtype=torch.complex64)
        for i in range(m[0]):
            for j in range(m[1]):
                fi = i if i < (m[0] + 1) // 2 else i - m[0]  # signed frequency index of output pixel (i, j)
                fj = j if j < (m[1] + 1) // 2 else j - m[1]
                if -(n[0] // 2) <= fi < (n[0] + 1) // 2 and -(n[1] // 2) <= fj < (n[1] + 1) // 2:
                    want[:, i, j] = x[:, fi % n[0], fj % n[1]]
        assert got.is_contiguous() and torch.equal(got, want), m
        out = torch.full((2, *m), 7.0 + 7.0j, dtype=torch.complex64)
        assert crop_complex_spectrum(x, m, out=out) is out and torch.equal(out, want)


def test_calibration_scratch_is_reused_per_thread_and_use_without_changing_values():
    """The evaluations reuse one buffer per (use, grid) and thread across structures; values and the calibrated
    defocus are the same as with fresh buffers."""
    atoms, wave, _ = _cluster_in_vacuum()
    spectrum = torch.fft.fft2(torch.as_tensor(wave)[None])
    grid = np.arange(*calibration.defocus_search_range(atoms), 1.0)[:7]
    calibration._SCRATCH.__dict__.clear()
    first = calibration._cropped_contrast(spectrum, 0.1, 300e3, (480, 480), centred=True)(grid)
    buffers = dict(calibration._SCRATCH.buffers)
    assert {k[0] for k in buffers} == {"batch", "crop", "intensity"}
    again = calibration._cropped_contrast(spectrum, 0.1, 300e3, (480, 480), centred=True)(grid)
    assert all(calibration._SCRATCH.buffers[k] is v for k, v in buffers.items())  # no new allocation
    np.testing.assert_array_equal(first, again)
    z = calibration.calibrate_zero_defocus(wave, 0.1, 300e3, atoms=atoms, search="parabolic")
    calibration._SCRATCH.__dict__.clear()
    assert calibration.calibrate_zero_defocus(wave, 0.1, 300e3, atoms=atoms, search="parabolic") == z
