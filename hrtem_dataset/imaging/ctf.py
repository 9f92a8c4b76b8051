"""Coherent transfer function with objective aperture and quasi-coherent envelopes (as abTEM's ``CTF``).

H(k) = exp(−iχ(k)) · A(k) · E_t(k) · E_s(k), applied to the exit wave in reciprocal space; the image is
|F⁻¹[Ψ(k) H(k)]|². This is the quasi-coherent approximation (envelopes multiply the wave, not the
transmission cross-coefficient), the same as ``abtem.Waves.apply_ctf`` + ``.intensity()``.

- Aperture A: ``semiangle_cutoff`` in mrad; by default abTEM's *soft* edge, a linear ramp one angular
  pixel wide, A = clip((α_c − α)/Δα(φ) + ½, 0, 1) with Δα(φ) = √((cos φ·Δα_x)² + (sin φ·Δα_y)²) and
  Δα = λ/extent; A(0) = 1. ``None`` or ``inf`` = no aperture.
- Temporal envelope (focal spread Δ, the 1/e half-width of the defocus distribution, Å, Kirkland's
  convention as abTEM; Δ = √2·σ_f): E_t = exp(−(½ π Δ α²/λ)²) = exp(−(π λ Δ k²)²/4).
- Spatial envelope (beam convergence ``angular_spread`` θ in mrad, abTEM's convention):
  E_s = exp(−(θ/2)² |∇_α χ|²) with |∇_α χ|² = (∂χ/∂α)² + (α⁻¹ ∂χ/∂φ)².

Every function is batched over a leading axis (one value per image) and uses the device of its inputs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import torch

from ..simulation.physics import wavelength as electron_wavelength
from .aberrations import _contract, basis, chi_gradient, polar_grid, used_terms, weights


def _batch(value, batch: int, device, default: float) -> torch.Tensor:
    if value is None:
        value = default
    t = torch.as_tensor(value, dtype=torch.float64, device=device).reshape(-1)
    return t.expand(batch) if t.shape[0] == 1 else t


def aperture(
    alpha: torch.Tensor,
    phi: torch.Tensor,
    semiangle_cutoff: torch.Tensor,
    angular_sampling: tuple[float, float],
    soft: bool = True,
) -> torch.Tensor:
    """Objective aperture (B, nx, ny) float64; ``semiangle_cutoff`` (B,) in mrad (inf = open),
    ``angular_sampling`` in rad per pixel."""
    cutoff = semiangle_cutoff[:, None, None] * 1e-3
    if not soft:
        return (alpha[None] <= cutoff).to(torch.float64)
    denom = torch.sqrt(
        (torch.cos(phi) * angular_sampling[0]) ** 2 + (torch.sin(phi) * angular_sampling[1]) ** 2
    )
    denom[0, 0] = 1.0
    out = torch.clamp((cutoff - alpha[None]) / denom[None] + 0.5, 0.0, 1.0)
    out[:, 0, 0] = 1.0
    return torch.where(torch.isinf(cutoff), torch.ones_like(out), out)


def temporal_envelope(alpha: torch.Tensor, focal_spread: torch.Tensor, wavelength: float) -> torch.Tensor:
    """exp(−(½πΔα²/λ)²), (B, nx, ny) float64; ``focal_spread`` Δ (B,) in Å (1/e half-width)."""
    d = focal_spread[:, None, None]
    return torch.exp(-((0.5 * math.pi / wavelength * d * alpha[None] ** 2) ** 2))


def spatial_envelope(
    alpha: torch.Tensor,
    phi: torch.Tensor,
    coeffs: Mapping[str, torch.Tensor],
    angular_spread: torch.Tensor,
    wavelength: float,
) -> torch.Tensor:
    """exp(−(θ/2)²|∇χ|²), (B, nx, ny) float64; ``angular_spread`` θ (B,) in mrad."""
    theta = angular_spread[:, None, None] * 1e-3
    d_alpha, d_phi = chi_gradient(alpha, phi, coeffs, wavelength)
    return torch.exp(-torch.sign(theta) * (theta / 2) ** 2 * (d_alpha**2 + d_phi**2))


@functools.lru_cache(maxsize=4)
def _grid(gpts: tuple[int, int], sampling: tuple[float, float], lam: float, device: str):
    """Cached per-grid arrays: α, φ (float64), α⁴ and the soft-aperture edge width (float32)."""
    alpha, phi = polar_grid(gpts, sampling, lam, device)
    ang = (lam / (gpts[0] * sampling[0]), lam / (gpts[1] * sampling[1]))
    denom = torch.sqrt((torch.cos(phi) * ang[0]) ** 2 + (torch.sin(phi) * ang[1]) ** 2)
    denom[0, 0] = 1.0
    return alpha, phi, (alpha**4).to(torch.float32), alpha.to(torch.float32), denom.to(torch.float32)


@functools.lru_cache(maxsize=4)
def _basis(gpts: tuple[int, int], sampling: tuple[float, float], lam: float, device: str, terms: tuple):
    alpha, phi, *_ = _grid(gpts, sampling, lam, device)
    return basis(alpha, phi, terms)


def _band_index(n: int, k: int, device: str) -> torch.Tensor:
    """FFT indices of the frequencies 0..k, −k..−1 on an axis of n points."""
    return torch.cat([torch.arange(0, k + 1, device=device), torch.arange(n - k, n, device=device)])


@functools.lru_cache(maxsize=16)
def _band_grid(gpts: tuple[int, int], sampling: tuple[float, float], lam: float, device: str,
               band: tuple[int, int]):
    """:func:`_grid` restricted to the frequency indices |q_x| ≤ band[0], |q_y| ≤ band[1] (same values)."""
    rows, cols = _band_index(gpts[0], band[0], device), _band_index(gpts[1], band[1], device)
    return tuple(a.index_select(0, rows).index_select(1, cols) for a in _grid(gpts, sampling, lam, device))


@functools.lru_cache(maxsize=16)
def _band_basis(gpts: tuple[int, int], sampling: tuple[float, float], lam: float, device: str, terms: tuple,
                band: tuple[int, int]):
    rows, cols = _band_index(gpts[0], band[0], device), _band_index(gpts[1], band[1], device)
    return tuple(a.index_select(1, rows).index_select(2, cols) for a in _basis(gpts, sampling, lam, device, terms))


OCTANT_PAD = 1024  # the octant table's length is a multiple of this (see _octant)


@functools.lru_cache(maxsize=4)
def _octant(n: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pixels of an n × n FFT grid with distinct (min(|i|, |j|), max(|i|, |j|)) (i, j: signed frequency
    indices) — one octant, 1/8 of the grid — as representative (rows, cols), and for every pixel the position
    of its representative (n, n). On a square grid of equal sampling every round-aberration CTF without an
    aperture takes the same value on all pixels of a class (their float64 |k|² are bit-identical: negated and
    swapped frequencies). The table is padded with its first entry to a multiple of ``OCTANT_PAD``, so that
    elementwise kernels take the same vectorised code for every entry as on the full grid (no scalar tail)."""
    idx = torch.arange(n, device=device)
    mag = torch.minimum(idx, n - idx)
    h = n // 2 + 1
    key = torch.minimum(mag[:, None], mag[None, :]) * h + torch.maximum(mag[:, None], mag[None, :])
    uniq, inverse = torch.unique(key, return_inverse=True)
    pad = (-uniq.numel()) % OCTANT_PAD
    uniq = torch.cat([uniq, uniq[:1].expand(pad)])
    return uniq // h, uniq % h, inverse


@functools.lru_cache(maxsize=4)
def _octant_grid(n: int, sampling: float, lam: float, device: str):
    """:func:`_grid` of the n × n grid at the :func:`_octant` representatives, each (1, U): the same values."""
    rows, cols, _ = _octant(n, device)
    return tuple(a[rows, cols][None] for a in _grid((n, n), (sampling, sampling), lam, device))


@functools.lru_cache(maxsize=4)
def _octant_basis(n: int, sampling: float, lam: float, device: str, terms: tuple):
    rows, cols, _ = _octant(n, device)
    return tuple(a[:, rows, cols][:, None] for a in _basis((n, n), (sampling, sampling), lam, device, terms))


def _octant_applies(gpts: tuple[int, int], sampling: tuple[float, float], apertured: bool, terms: tuple) -> bool:
    """Whether H has the octant symmetry of :func:`_octant`: a square grid of equal sampling, round aberrations
    only and no aperture (the soft edge's width varies with the azimuth at the last bit)."""
    return gpts[0] == gpts[1] and sampling[0] == sampling[1] and not apertured and all(m == 0 for _, m, _ in terms)


def transfer_function(
    gpts: tuple[int, int],
    sampling: tuple[float, float],
    energy: float,
    coeffs: Mapping[str, torch.Tensor],
    semiangle_cutoff=None,
    focal_spread=None,
    angular_spread=None,
    soft_aperture: bool = True,
    device: torch.device | str = "cpu",
    band: tuple[int, int] | None = None,
) -> torch.Tensor:
    """H(k), complex64 (B, nx, ny) on the unshifted FFT grid of ``gpts`` × ``sampling`` [Å].

    ``band`` = (K_x, K_y): only the frequency indices 0..K, −K..−1 of each axis, (B, 2K_x+1, 2K_y+1) in that
    order — the same values as those entries of the full grid's H (the grid arrays are sliced, not
    recomputed), for the cropped inverse FFT of :func:`.image.image_batch`.

    ``coeffs``: polar coefficients as float64 (B,) tensors (see :func:`.aberrations.stack_coefficients`);
    ``semiangle_cutoff`` [mrad], ``focal_spread`` [Å], ``angular_spread`` [mrad]: scalars or (B,).
    Grid arrays are cached per (grid, energy, device); χ is accumulated in float64 and reduced modulo
    2π before the float32 exponential, the envelopes are float32. Round aberrations only (C10, C30, C50),
    no aperture, a square grid of equal sampling: H is computed on one octant of the grid (:func:`_octant`,
    ≈ 1/8 of the pixels) and copied to the others — the same values (tests compare the bytes).
    """
    lam = electron_wavelength(energy)
    gpts = (int(gpts[0]), int(gpts[1]))
    sampling = (float(sampling[0]), float(sampling[1]))
    dev = str(torch.device(device))
    batch = coeffs["C10"].shape[0]
    terms = used_terms(coeffs)
    cut = _batch(semiangle_cutoff, batch, dev, math.inf)
    cut = torch.where(torch.isnan(cut), torch.full_like(cut, math.inf), cut)
    apertured = bool(torch.isfinite(cut).any())
    octant = band is None and _octant_applies(gpts, sampling, apertured, terms)
    if octant:
        alpha, phi, alpha4, alpha32, denom = _octant_grid(gpts[0], sampling[0], lam, dev)
        F, G = _octant_basis(gpts[0], sampling[0], lam, dev, terms)
    elif band is None:
        alpha, phi, alpha4, alpha32, denom = _grid(gpts, sampling, lam, dev)
        F, G = _basis(gpts, sampling, lam, dev, terms)
    else:
        band = (int(band[0]), int(band[1]))
        alpha, phi, alpha4, alpha32, denom = _band_grid(gpts, sampling, lam, dev, band)
        F, G = _band_basis(gpts, sampling, lam, dev, terms, band)
    w, w_phi = weights(coeffs, terms)
    scale = 2 * math.pi / lam
    phase = torch.remainder(_contract(w, F) * scale, 2 * math.pi).to(torch.float32)

    # the product of the envelopes, float32 (B, nx, ny); None while it is 1 (each factor enters as before, the
    # leading 1·x dropped: exact, the same bytes)
    envelope: torch.Tensor | None = None

    def times(factor: torch.Tensor) -> torch.Tensor:
        return factor if envelope is None else envelope.mul_(factor)

    if apertured:
        c = (cut * 1e-3).to(torch.float32)[:, None, None]
        if soft_aperture:
            ap = torch.clamp((c - alpha32) / denom + 0.5, 0.0, 1.0)
            ap[:, 0, 0] = 1.0
        else:
            ap = (alpha32 <= c).to(torch.float32)
        envelope = times(torch.where(torch.isinf(c), torch.ones_like(ap), ap))
    fs = _batch(focal_spread, batch, dev, 0.0)
    if bool((fs != 0).any()):
        a = ((0.5 * math.pi / lam * fs) ** 2).to(torch.float32)[:, None, None]
        envelope = times(torch.exp(-a * alpha4))
    th = _batch(angular_spread, batch, dev, 0.0)
    if bool((th != 0).any()) and terms:
        t = th * 1e-3
        a = (torch.sign(t) * (t / 2) ** 2 * scale**2)[:, None, None]
        grad2 = _contract(w, G).square()
        if bool(w_phi.any()):  # non-round aberrations (m > 0); else the term is +0 and adding it is exact
            grad2 += _contract(w_phi, G).square()
        envelope = times(torch.exp(-a * grad2).to(torch.float32))
    if envelope is None:
        envelope = torch.ones((batch, *alpha.shape), dtype=torch.float32, device=dev)
    H = torch.polar(envelope, -phase)
    if octant:
        H = _octant_expand(H, _octant(gpts[0], dev)[2].reshape(-1), gpts)
    return H


def _octant_expand(H: torch.Tensor, index: torch.Tensor, gpts: tuple[int, int]) -> torch.Tensor:
    """H (B, U) on the :func:`_octant` representatives -> (B, nx, ny), each pixel its representative's value. On the
    CPU row by row as 8-byte words (the same bits): a complex64 ``index_select`` along the rows' axis took ≈ 4× as long
    (1.9 vs 0.45 ms for one 640² H, one thread); accelerators gather the batch in one kernel."""
    batch = H.shape[0]
    if H.device.type != "cpu":
        return H.reshape(batch, -1).index_select(1, index).reshape(batch, *gpts)
    words = torch.view_as_real(H).view(torch.int64).reshape(batch, -1)
    out = torch.empty((batch, index.numel()), dtype=torch.int64)
    for b in range(batch):
        torch.index_select(words[b], 0, index, out=out[b])
    return torch.view_as_complex(out.view(torch.float32).reshape(batch, -1, 2)).reshape(batch, *gpts)
