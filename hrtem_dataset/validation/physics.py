"""The numbers of the validation report: engine agreement, convergence with sampling, slice thickness and
frozen-phonon count, Kirkland's Fig. 5.12 and CTF zeros against Scherzer's formula.

Metrics (all relative L2 norms, dimensionless):

- exit waves on the same grid: ‖ψ − ψ_ref‖ / ‖ψ_ref‖ (the engine comparison, as in the physics tests);
- exit waves on different grids (convergence): both Fourier-cropped to the coarser grid (same field of
  view) and compared inside the coarser run's antialias band |k| < (2/3)·k_Nyquist, the band its wave
  carries at all (Parseval: the same as the real-space norm of the band-limited waves);
- images: I = |F⁻¹[Ψ·exp(−iχ)·A]|² at :data:`IMAGE_CONDITION` (an objective aperture of 20 mrad, inside
  the band of every sampling compared, so each image is exact on its grid), Fourier-cropped to the coarser
  grid; error = ‖I − I_ref‖ / ‖I_ref − ⟨I_ref⟩‖ (relative to the image contrast, not to the vacuum level).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from ase import Atoms

from ..imaging import image_intensity
from ..imaging.aberrations import (
    aberration_coefficients,
    point_resolution,
    scherzer_defocus,
    stack_coefficients,
)
from ..imaging.ctf import transfer_function
from ..simulation import simulate_exit_wave, wavelength
from ..simulation.core import transmission_antialiased
from ..simulation.prismatic_engine import available, fourier_resample
from ..specs import ENGINE_ANTIALIASES_TRANSMISSION

SAMPLINGS = (0.2, 0.1, 0.05, 0.025)  # Å, coarse -> fine; the finest is the reference
SLICES = (4.0, 2.0, 1.0, 0.5)  # Å, thick -> thin; the thinnest is the reference
PHONON_COUNTS = (1, 2, 4, 8, 16)  # the largest is the reference average
IMAGE_CONDITION = {"defocus": 50.0, "Cs": 0.0, "semiangle_cutoff": 20.0}  # Å, Å, mrad
EXIT_WAVE_TOLERANCE = 0.02
"""Default bound of the blocking check: a configuration's exit wave vs the converged run (relative L2)."""
ENGINE_FACTOR = 2.0
"""torch vs Prismatic must be within this factor of torch vs abTEM on the same atoms."""
KIRKLAND_FIG_5_12 = {"min": 0.72, "max": 1.03}
"""Kirkland (2010) Fig. 5.12 image extrema (2 decimals), as asserted by tests/test_simulation.py."""
CTF_ZERO_TOLERANCE = 1e-3
"""Relative tolerance |k_numeric − k_Scherzer| / k_Scherzer of the CTF zeros."""


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖ / ‖b‖."""
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def antialias_k(sampling: float) -> float:
    """The antialias band [1/Å] of a run at ``sampling``: (2/3)·1/(2·sampling)."""
    return (2.0 / 3.0) / (2.0 * float(sampling))


def _k2(gpts: tuple[int, int], cell: Sequence[float]) -> np.ndarray:
    kx = np.fft.fftfreq(gpts[0], cell[0] / gpts[0])
    ky = np.fft.fftfreq(gpts[1], cell[1] / gpts[1])
    return kx[:, None] ** 2 + ky[None] ** 2


def wave_error(wave: np.ndarray, ref: np.ndarray, cell: Sequence[float], k_max: float) -> float:
    """Relative L2 of ``wave`` against ``ref`` (any finer grid of the same cell) inside |k| < ``k_max``."""
    ref = fourier_resample(np.asarray(ref), wave.shape[-2:])
    band = _k2(wave.shape[-2:], cell) < k_max**2
    a, b = np.fft.fft2(wave), np.fft.fft2(ref)
    return float(np.linalg.norm((a - b)[..., band]) / np.linalg.norm(b[..., band]))


def image(waves: np.ndarray, sampling: float, energy: float, condition: Mapping[str, float] | None = None) -> np.ndarray:
    """Phonon-averaged image of ``waves`` at ``condition`` (default :data:`IMAGE_CONDITION`)."""

    return image_intensity(waves, sampling=sampling, energy=energy, **dict(condition or IMAGE_CONDITION))


def image_error(img: np.ndarray, ref: np.ndarray) -> float:
    """‖I − I_ref‖ / ‖I_ref − ⟨I_ref⟩‖ with ``ref`` Fourier-cropped to the grid of ``img``."""
    ref = np.real(fourier_resample(np.asarray(ref, dtype=np.complex64), img.shape[-2:]))
    return float(np.linalg.norm(img - ref) / np.linalg.norm(ref - ref.mean()))


_SHARED_WAVES: contextvars.ContextVar[dict | None] = contextvars.ContextVar("hrtem_validation_waves", default=None)


@contextlib.contextmanager
def shared_waves() -> Iterator[None]:
    """Within the block, the series share their exit waves: a run with the same atoms and settings as an earlier
    one (e.g. the 0.1 Å / 2 Å wave of the sampling, slice, settings and transmission-scheme series) is computed
    once. The waves are deterministic, so every number is the same as without it."""
    token = _SHARED_WAVES.set({})
    try:
        yield
    finally:
        _SHARED_WAVES.reset(token)


def _wave(atoms, *, energy, sampling, slice_thickness, parametrization, engine="torch", phonons=0, seed=0,
          antialias_transmission=None):
    cache = _SHARED_WAVES.get()
    key = (id(atoms), float(energy), float(sampling), float(slice_thickness), parametrization, engine, int(phonons),
           int(seed), transmission_antialiased(engine, antialias_transmission))
    if cache is not None and key in cache:
        return cache[key][1]
    w = simulate_exit_wave(atoms, energy=energy, sampling=sampling, slice_thickness=slice_thickness,
                           parametrization=parametrization, engine=engine, phonons=phonons, seed=seed,
                           device="cpu", antialias_transmission=antialias_transmission)
    if cache is not None:
        cache[key] = (atoms, w)  # the atoms kept alive: their id stays theirs while the cache lives
    return w


def available_engines() -> list[str]:
    """torch, plus abTEM and Prismatic when importable."""
    engines = ["torch"]
    try:
        import abtem  # noqa: F401

        engines.append("abtem")
    except ImportError:
        pass

    if available():
        engines.append("prismatic")
    return engines


# ------------------------------------------------------------------------------------------------


def engine_comparison(atoms: Atoms, energy: float = 300e3, sampling: float = 0.1, slice_thickness: float = 2.0,
                      engines: Sequence[str] | None = None) -> dict:
    """Exit waves of the installed engines on the same atoms (Kirkland, static lattice: Prismatic's only
    parametrization), and the relative L2 of every pair; ``ratio_prismatic_abtem`` = (torch vs
    Prismatic) / (torch vs abTEM) when both ran. The torch engine meets each other engine in that engine's
    transmission scheme (abTEM band-limits the transmission functions, Prismatic does not: see
    :data:`~hrtem_dataset.specs.ENGINE_ANTIALIASES_TRANSMISSION`), so a pair measures the implementations, not
    the schemes; abTEM vs Prismatic differ in both."""
    engines = list(engines or available_engines())
    waves, seconds = {}, {}
    kw = dict(energy=energy, sampling=sampling, slice_thickness=slice_thickness, parametrization="kirkland")
    for e in engines:
        t0 = time.perf_counter()
        waves[e] = _wave(atoms, engine=e, **kw)
        seconds[e] = time.perf_counter() - t0
    own = ENGINE_ANTIALIASES_TRANSMISSION["torch"]
    torch_in = {own: waves["torch"]} if "torch" in waves else {}  # the torch engine's waves per scheme

    def torch_wave(scheme: bool):
        if scheme not in torch_in:
            torch_in[scheme] = _wave(atoms, antialias_transmission=scheme, **kw)
        return torch_in[scheme]

    pairs = {}
    for i, a in enumerate(engines):
        for b in engines[i + 1:]:
            wa = torch_wave(ENGINE_ANTIALIASES_TRANSMISSION[b]) if a == "torch" else waves[a]
            pairs[f"{a}_vs_{b}"] = rel_l2(waves[b], wa)
    out = {"engines": engines, "n_atoms": len(atoms), "cell": [float(c) for c in atoms.cell.lengths()],
           "gpts": list(waves["torch"].shape), "rel_l2": pairs, "seconds": seconds}
    if "torch_vs_abtem" in pairs and "torch_vs_prismatic" in pairs:
        out["ratio_prismatic_abtem"] = pairs["torch_vs_prismatic"] / pairs["torch_vs_abtem"]
        out["within_factor"] = bool(out["ratio_prismatic_abtem"] <= ENGINE_FACTOR)
    return out


def sampling_convergence(atoms: Atoms, energy: float = 300e3, slice_thickness: float = 2.0,
                         parametrization: str = "lobato", samplings: Sequence[float] = SAMPLINGS,
                         antialias_transmission: bool | None = None) -> dict:
    """Exit-wave and image error of each sampling against the finest one (same slice thickness)."""
    samplings = sorted({float(s) for s in samplings}, reverse=True)
    cell = [float(c) for c in atoms.cell.lengths()]
    waves = {s: _wave(atoms, energy=energy, sampling=s, slice_thickness=slice_thickness,
                      parametrization=parametrization, antialias_transmission=antialias_transmission)
             for s in samplings}
    ref_s = samplings[-1]
    ref_img = image(waves[ref_s], cell[0] / waves[ref_s].shape[0], energy)
    rows = []
    for s in samplings:
        w = waves[s]
        img = image(w, cell[0] / w.shape[0], energy)
        rows.append({"sampling": s, "gpts": list(w.shape), "exit_wave": wave_error(w, waves[ref_s], cell, antialias_k(s)),
                     "image": image_error(img, ref_img)})
    return {"reference_sampling": ref_s, "slice_thickness": float(slice_thickness),
            "parametrization": parametrization, "rows": rows}


def slice_convergence(atoms: Atoms, energy: float = 300e3, sampling: float = 0.1, parametrization: str = "lobato",
                      slices: Sequence[float] = SLICES, antialias_transmission: bool | None = None) -> dict:
    """Exit-wave and image error of each slice thickness against the thinnest one (same sampling)."""
    slices = sorted({float(s) for s in slices}, reverse=True)
    cell = [float(c) for c in atoms.cell.lengths()]
    waves = {dz: _wave(atoms, energy=energy, sampling=sampling, slice_thickness=dz,
                       parametrization=parametrization, antialias_transmission=antialias_transmission)
             for dz in slices}
    ref = waves[slices[-1]]
    s = cell[0] / ref.shape[0]
    ref_img = image(ref, s, energy)
    rows = [{"slice_thickness": dz, "exit_wave": wave_error(w, ref, cell, antialias_k(sampling)),
             "image": image_error(image(w, s, energy), ref_img)} for dz, w in waves.items()]
    return {"reference_slice_thickness": slices[-1], "sampling": float(sampling),
            "parametrization": parametrization, "rows": rows}


def settings_error(atoms: Atoms, energy: float, sampling: float, slice_thickness: float,
                   parametrization: str = "lobato", converged_sampling: float = SAMPLINGS[-1],
                   converged_slice: float = SLICES[-1], antialias_transmission: bool | None = None) -> dict:
    """Exit-wave and image error of a run at (``sampling``, ``slice_thickness``) against the converged run
    at (``converged_sampling``, ``converged_slice``): what the blocking check bounds."""
    cell = [float(c) for c in atoms.cell.lengths()]
    t0 = time.perf_counter()
    w = _wave(atoms, energy=energy, sampling=sampling, slice_thickness=slice_thickness,
              parametrization=parametrization, antialias_transmission=antialias_transmission)
    ref = _wave(atoms, energy=energy, sampling=min(converged_sampling, sampling),
                slice_thickness=min(converged_slice, slice_thickness), parametrization=parametrization,
                antialias_transmission=antialias_transmission)
    img = image(w, cell[0] / w.shape[0], energy)
    ref_img = image(ref, cell[0] / ref.shape[0], energy)
    return {"sampling": float(sampling), "slice_thickness": float(slice_thickness),
            "converged_sampling": float(min(converged_sampling, sampling)),
            "converged_slice_thickness": float(min(converged_slice, slice_thickness)),
            "parametrization": parametrization, "n_atoms": len(atoms), "cell": cell,
            "exit_wave": wave_error(w, ref, cell, antialias_k(sampling)), "image": image_error(img, ref_img),
            "seconds": time.perf_counter() - t0}


def transmission_schemes(atoms: Atoms, energy: float = 300e3, slice_thickness: float = 2.0,
                         parametrization: str = "lobato", samplings: Sequence[float] = SAMPLINGS) -> dict:
    """The sampling series in both transmission schemes: exit-wave and image error of each sampling with the
    transmission functions used as they are (``as_is``, Prismatic's scheme) and band-limited to the antialias
    aperture (``antialiased``, abTEM's), each against the finest sampling's run in its own scheme;
    ``reference_difference``: the two finest runs' difference (how close the schemes' limits are)."""
    samplings = sorted({float(s) for s in samplings}, reverse=True)
    cell = [float(c) for c in atoms.cell.lengths()]
    out = {"reference_sampling": samplings[-1], "slice_thickness": float(slice_thickness),
           "parametrization": parametrization, "rows": []}
    refs = {}
    for name, scheme in (("as_is", False), ("antialiased", True)):
        waves = {s: _wave(atoms, energy=energy, sampling=s, slice_thickness=slice_thickness,
                          parametrization=parametrization, antialias_transmission=scheme) for s in samplings}
        ref = refs[name] = waves[samplings[-1]]
        ref_img = image(ref, cell[0] / ref.shape[0], energy)
        for s in samplings[:-1]:
            w = waves[s]
            out["rows"].append({"sampling": s, "scheme": name, "exit_wave": wave_error(w, ref, cell, antialias_k(s)),
                                "image": image_error(image(w, cell[0] / w.shape[0], energy), ref_img)})
    out["reference_difference"] = wave_error(refs["as_is"], refs["antialiased"], cell, antialias_k(samplings[-1]))
    return out


def phonon_convergence(atoms: Atoms, energy: float = 300e3, sampling: float = 0.1, slice_thickness: float = 2.0,
                       parametrization: str = "lobato", counts: Sequence[int] = PHONON_COUNTS, seed: int = 0,
                       antialias_transmission: bool | None = None) -> dict:
    """Image error of the average over the first N frozen-phonon configurations against the average over all
    max(counts) = M of them. Since the reference contains the N, the expected error of independent draws is
    sqrt(σ²·(1/N − 1/M)) / contrast with σ² the variance of one configuration's image (``expected``)."""
    counts = sorted({int(n) for n in counts})
    m = counts[-1]
    waves = _wave(atoms, energy=energy, sampling=sampling, slice_thickness=slice_thickness,
                  parametrization=parametrization, phonons=m, seed=seed,
                  antialias_transmission=antialias_transmission)
    s = float(atoms.cell.lengths()[0]) / waves.shape[-2]
    images = np.stack([image(w, s, energy) for w in waves])
    ref = images.mean(0)
    contrast = np.linalg.norm(ref - ref.mean())
    rows = []
    for n in counts:
        err = float(np.linalg.norm(images[:n].mean(0) - ref) / contrast)
        rows.append({"phonons": n, "image": err})
    # the variance of one configuration's image (summed over pixels, unbiased) -> the expected error of a
    # mean over N of the M: sqrt(var·(1/N − 1/M)) / contrast
    var = float(np.sum((images - ref) ** 2)) / (m - 1) if m > 1 else 0.0
    for r in rows:
        r["expected"] = math.sqrt(var * max(1 / r["phonons"] - 1 / m, 0.0)) / float(contrast)
    return {"reference_phonons": m, "sampling": float(sampling), "slice_thickness": float(slice_thickness),
            "parametrization": parametrization, "seed": int(seed), "rows": rows}


def kirkland_fig_5_12() -> dict:
    """Kirkland (2010) Fig. 5.12: C, Si, Cu, Au, U single atoms, 200 keV, Cs 1.3 mm, Scherzer defocus 700 Å,
    10.37 mrad aperture, 512² over 50 Å: image minimum 0.72, maximum 1.03 (tests/test_simulation.py)."""

    atoms = Atoms("CSiCuAuU", positions=[(x, 25.0, 4.0) for x in np.linspace(5, 45, 5)], cell=[50, 50, 8], pbc=True)
    sampling = 50.0 / 512
    w = simulate_exit_wave(atoms, energy=200e3, sampling=sampling, slice_thickness=8.0, parametrization="kirkland")
    img = image_intensity(w, sampling=sampling, energy=200e3, defocus=700.0, Cs=1.3e7, semiangle_cutoff=10.37)
    lo, hi = float(img.min()), float(img.max())
    got = {"min": round(lo, 2), "max": round(hi, 2)}
    return {"min": lo, "max": hi, "rounded": got, "expected": dict(KIRKLAND_FIG_5_12),
            "passed": got == KIRKLAND_FIG_5_12, "profile": img[:, 256].tolist()}


def scherzer_zeros(energy: float, Cs: float, defocus: float, k_max: float) -> list[float]:
    """Analytic zeros of sin χ(k), χ = π λ k² C10 + (π/2) Cs λ³ k⁴ with C10 = −defocus: the positive roots
    k² = [λ·defocus + sqrt(λ²·defocus² + 2nCsλ³)] / (Csλ³) of χ = nπ (both signs of the root), up to k_max."""
    lam = wavelength(energy)
    out = set()
    for n in range(-1000, 1000):
        disc = (lam * defocus) ** 2 + 2 * n * Cs * lam**3
        if disc < 0:
            continue
        for sign in (1.0, -1.0):
            k2 = (lam * defocus + sign * math.sqrt(disc)) / (Cs * lam**3)
            if k2 > 1e-12 and math.sqrt(k2) <= k_max:
                out.add(round(math.sqrt(k2), 12))
    return sorted(out)


def ctf_zeros(energy: float = 200e3, Cs: float = 1e7, k_max: float = 1.0, n_points: int = 1 << 16) -> dict:
    """Zeros of sin χ of the imaging module's transfer function at Scherzer defocus (dense 1-D line of
    frequencies, linear interpolation) against :func:`scherzer_zeros`; the first is the point resolution
    (λ³Cs/6)^¼ (2.26 Å at 200 kV, 1 mm)."""

    df = scherzer_defocus(Cs, energy)
    s = 1.0 / (2.0 * k_max * 1.25)
    coeffs = stack_coefficients(aberration_coefficients(defocus=df, Cs=Cs))
    H = transfer_function((n_points, 1), (s, s), energy, coeffs)[0, :, 0].numpy()
    k = np.fft.fftfreq(n_points, s)[: n_points // 2]
    sin_chi = -H.imag[: n_points // 2].astype(np.float64)
    start = int(np.searchsorted(k, 0.05))  # sin χ ≈ 0 near k = 0: float32 noise, no zero of the CTF there
    idx = np.flatnonzero(np.sign(sin_chi[start:-1]) != np.sign(sin_chi[start + 1:])) + start
    numeric = [float(k[i] + (k[i + 1] - k[i]) * sin_chi[i] / (sin_chi[i] - sin_chi[i + 1])) for i in idx
               if k[i + 1] <= k_max]
    analytic = scherzer_zeros(energy, Cs, df, k_max)
    n = min(len(numeric), len(analytic))
    rel = [abs(a - b) / b for a, b in zip(numeric[:n], analytic[:n], strict=True)]
    return {"energy": energy, "Cs": Cs, "defocus": df, "k_max": k_max, "point_resolution": point_resolution(Cs, energy),
            "first_zero_resolution": 1.0 / numeric[0] if numeric else None,
            "numeric": numeric, "analytic": analytic, "max_rel_error": max(rel) if rel else None,
            "tolerance": CTF_ZERO_TOLERANCE,
            "passed": bool(rel) and len(numeric) == len(analytic) and max(rel) <= CTF_ZERO_TOLERANCE}
