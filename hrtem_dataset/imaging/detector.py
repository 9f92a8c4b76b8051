"""Detector model: electron dose (Poisson shot noise), a parametrised MTF and Gaussian read noise.

Order (physical, as in Vulović et al., Acta Cryst. D 66 (2010) 97): incident electrons arrive as
Poisson counts, counts ~ Poisson(I · dose · pixel area), with I the image intensity normalised so that
vacuum has I = 1 and dose in e/Å²; the detector then spreads the signal — the MTF multiplies the
Fourier transform of the counts, blurring signal and shot noise alike; finally Gaussian read noise
(σ in counts) is added. Noise-free images (no dose) get the MTF only.

MTF model (``mtf`` parameters, spatial frequency ω in units of the detector Nyquist frequency, 0..1
along an axis, radial in 2-D):

    MTF(ω) = (1 − floor) / (1 + (ω / half_width)^power) + floor

(a Lorentzian-type roll-off of a scintillator-coupled camera; ``half_width`` is where the modulated part
has fallen to ½). Parameters: ``floor`` ∈ [0, 1) (default 0), ``half_width`` > 0 (default 0.5),
``power`` > 0 (default 2). An empty dict is a perfect detector (MTF ≡ 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from ..errors import InputError
from ..specs import MTF_DEFAULTS, validate_mtf
from ._common import as_pair

__all__ = ["MTF_DEFAULTS", "apply_dose", "apply_mtf", "mtf_rfft", "poisson_counts", "validate_mtf"]

def mtf_rfft(shape: tuple[int, int], params: Mapping[str, float], device="cpu") -> torch.Tensor:
    """MTF sampled on the ``rfft2`` grid of an image of ``shape``: float32 (m_x, m_y//2+1)."""
    p = validate_mtf(params)
    if p is None:
        return torch.ones((shape[0], shape[1] // 2 + 1), device=device)
    wx = torch.fft.fftfreq(shape[0], device=device, dtype=torch.float64) * 2.0
    wy = torch.fft.rfftfreq(shape[1], device=device, dtype=torch.float64) * 2.0
    w = torch.sqrt(wx[:, None] ** 2 + wy[None, :] ** 2)
    m = (1 - p["floor"]) / (1 + (w / p["half_width"]) ** p["power"]) + p["floor"]
    return m.to(torch.float32)


def apply_mtf(image, params: Mapping[str, float] | None):
    """Multiply the spectrum of a real image (…, m_x, m_y) by the MTF; numpy or torch in and out."""
    if validate_mtf(params) is None:
        return image
    is_numpy = not isinstance(image, torch.Tensor)
    t = torch.from_numpy(np.asarray(image, dtype=np.float32)) if is_numpy else image
    shape = (t.shape[-2], t.shape[-1])
    out = torch.fft.irfft2(torch.fft.rfft2(t) * mtf_rfft(shape, params, t.device), s=shape)
    return out.numpy() if is_numpy else out


def poisson_counts(
    intensity: torch.Tensor,
    dose: torch.Tensor,
    pixel_area: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Poisson(I · dose · pixel area) per pixel; ``dose`` (B,) e/Å² broadcast over (B, m_x, m_y).
    Images whose dose is NaN or ≤ 0 are returned unchanged (noise-free)."""
    d = dose.to(intensity.dtype).reshape(-1, *([1] * (intensity.ndim - 1)))
    noisy = torch.isfinite(d) & (d > 0)
    rate = torch.clamp(intensity, min=0) * torch.where(noisy, d, torch.ones_like(d)) * pixel_area
    counts = torch.poisson(rate, generator=generator)
    return torch.where(noisy, counts, intensity)


def apply_dose(
    intensity,
    dose: float,
    pixel_size: float | tuple[float, float],
    seed: int | None = 0,
    read_noise: float = 0.0,
    mtf: Mapping[str, float] | None = None,
    generator: torch.Generator | None = None,
):
    """Detected counts per pixel for an intensity image (vacuum = 1) at ``dose`` [e/Å²].

    counts = MTF ⊛ Poisson(I · dose · pixel area) + N(0, read_noise²). numpy in -> numpy float32 out
    (seeded by ``seed``), torch in -> torch out (``generator``, or one seeded by ``seed``, on the
    tensor's device). Same seed and device -> identical output.
    """
    if not (math.isfinite(dose) and dose > 0):
        raise InputError(f"dose: must be finite and > 0 e/Å², got {dose}")
    if not (math.isfinite(read_noise) and read_noise >= 0):
        raise InputError(f"read_noise: must be >= 0, got {read_noise}")
    px = as_pair(pixel_size, "pixel_size")
    is_numpy = not isinstance(intensity, torch.Tensor)
    t = torch.from_numpy(np.asarray(intensity, dtype=np.float32)) if is_numpy else intensity.to(torch.float32)
    if generator is None:
        generator = torch.Generator(device=t.device)
        generator.manual_seed(int(seed or 0))
    batch = t.reshape(-1, *t.shape[-2:]) if t.ndim >= 2 else t.reshape(1, 1, -1)
    counts = poisson_counts(
        batch, torch.full((batch.shape[0],), float(dose), device=t.device), px[0] * px[1], generator
    )
    counts = apply_mtf(counts, mtf)
    if read_noise > 0:
        counts = counts + read_noise * torch.randn(counts.shape, generator=generator, device=t.device)
    counts = counts.reshape(t.shape)
    return counts.numpy() if is_numpy else counts
