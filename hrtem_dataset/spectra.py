"""Fourier-space cropping and zero-padding of periodic fields (same field of view, other grid): the one
implementation behind the detector grids of the imaging (:mod:`hrtem_dataset.imaging.resample`) and the
resampling of Prismatic's waves (:mod:`hrtem_dataset.simulation.prismatic_engine`).

Frequencies kept along an axis of length m: 0..⌈m/2⌉−1 and −⌊m/2⌋..−1 (numpy's ``fftfreq`` order); the
mean value is preserved (vacuum stays 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["crop_spectrum", "fourier_crop_complex"]


def _crop_rows(spec: torch.Tensor, m: int) -> torch.Tensor:
    """Keep the m lowest frequencies along dim −2 of an (unshifted) FFT axis: 0..⌈m/2⌉−1 and −⌊m/2⌋..−1
    (zero-padding when m exceeds the input length)."""
    n = spec.shape[-2]
    pos = (m + 1) // 2
    neg = m // 2
    if m <= n:
        return torch.cat([spec[..., :pos, :], spec[..., n - neg :, :]], dim=-2)
    out = spec.new_zeros((*spec.shape[:-2], m, spec.shape[-1]))
    npos, nneg = (n + 1) // 2, n // 2
    out[..., :npos, :] = spec[..., :npos, :]
    out[..., m - nneg :, :] = spec[..., n - nneg :, :]
    return out


def crop_spectrum(spec: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Crop (or zero-pad) a real image's ``rfft2`` spectrum (…, n_x, n_y//2+1) to ``shape`` (m_x, m_y)."""
    mx, my = shape
    out = _crop_rows(spec, mx)
    cols = my // 2 + 1
    if cols <= out.shape[-1]:
        return out[..., :cols]
    pad = out.new_zeros((*out.shape[:-1], cols))
    pad[..., : out.shape[-1]] = out
    return pad


def fourier_crop_complex(waves: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Band-limit and resample complex waves (…, n_x, n_y) to ``shape``; keeps the mean (vacuum = 1)."""
    m = (int(shape[-2]), int(shape[-1]))
    n = waves.shape[-2:]
    spec = torch.fft.fft2(waves)
    spec = _crop_rows(spec, m[0]).transpose(-1, -2)
    spec = _crop_rows(spec, m[1]).transpose(-1, -2)
    return torch.fft.ifft2(spec) * (m[0] * m[1] / (n[0] * n[1]))
