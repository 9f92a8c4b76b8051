"""Fourier cropping: resample a periodic image from the simulation sampling to a detector pixel size.

Cropping the discrete Fourier transform to the frequencies the new grid can represent is an ideal
low-pass filter followed by exact resampling: nothing above the new Nyquist frequency survives, so
nothing aliases (unlike strided subsampling or binning), the mean is kept exactly, and for signals
band-limited below the new Nyquist frequency the energy Σ|x|²·pixel area is kept too (Parseval).

The output grid keeps the field of view: m = round(n · sampling / pixel_size) pixels per axis, so the
actual pixel size is n·sampling/m (:func:`resampled_sampling`), equal to the requested one whenever the
extent is a multiple of it. The crop keeps the m lowest frequencies per axis (for even m the Nyquist
row/column of the output is the Hermitian average, as ``irfft`` implies). m > n zero-pads (interpolates).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..spectra import crop_spectrum
from ._common import as_pair


def resampled_shape(
    shape: Sequence[int], sampling: float | Sequence[float], pixel_size: float | Sequence[float]
) -> tuple[int, int]:
    """Output grid (m_x, m_y) for resampling an (n_x, n_y) image at ``sampling`` to ``pixel_size`` [Å]."""
    s = as_pair(sampling, "sampling")
    p = as_pair(pixel_size, "pixel_size")
    return tuple(max(1, int(round(n * si / pi))) for n, si, pi in zip(shape[-2:], s, p, strict=True))  # type: ignore[return-value]


def resampled_sampling(
    shape: Sequence[int], sampling: float | Sequence[float], pixel_size: float | Sequence[float]
) -> tuple[float, float]:
    """Actual pixel size [Å] per axis after :func:`resample` (extent / m)."""
    s = as_pair(sampling, "sampling")
    m = resampled_shape(shape, sampling, pixel_size)
    return tuple(n * si / mi for n, si, mi in zip(shape[-2:], s, m, strict=True))  # type: ignore[return-value]


def fourier_crop(image, shape: Sequence[int]):
    """Band-limit and resample a real periodic image (…, n_x, n_y) to ``shape`` (m_x, m_y).

    numpy in -> numpy out (float32), torch in -> torch out (same device). The mean is preserved.
    """
    is_numpy = not isinstance(image, torch.Tensor)
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)) if is_numpy else image
    if t.is_complex():
        raise InputError("fourier_crop: expected a real image (crop complex waves with fourier_crop_complex)")
    if t.ndim < 2:
        raise InputError(f"fourier_crop: expected at least 2 dimensions, got shape {tuple(t.shape)}")
    m = (int(shape[-2]), int(shape[-1]))
    if min(m) < 1:
        raise InputError(f"fourier_crop: output shape must be >= 1, got {m}")
    n = t.shape[-2:]
    spec = torch.fft.rfft2(t.to(torch.float32))
    out = torch.fft.irfft2(crop_spectrum(spec, m), s=m) * (m[0] * m[1] / (n[0] * n[1]))
    return out.numpy() if is_numpy else out


def resample(image, sampling: float | Sequence[float], pixel_size: float | Sequence[float]):
    """:func:`fourier_crop` from ``sampling`` to ``pixel_size`` [Å] (grid from :func:`resampled_shape`)."""
    shape = resampled_shape(image.shape, sampling, pixel_size)
    if tuple(image.shape[-2:]) == shape:
        return image
    return fourier_crop(image, shape)


def interpolate(image, shape: Sequence[int], *, nearest: bool = False):
    """Resample a recorded (non-periodic) 2-D image to ``shape``: antialiased bilinear, or nearest for masks.

    This is how a micrograph is brought to a model's pixel size at inference (``hrtem segment``), and how
    an image recorded at ``recorded_pixel_size`` is delivered at ``pixel_size`` in a dataset: one function,
    so training data and inference see the same resampling. numpy in -> numpy out, torch in -> torch out.
    """
    import torch.nn.functional as F

    m = (int(shape[-2]), int(shape[-1]))
    is_numpy = not isinstance(image, torch.Tensor)
    if tuple(image.shape[-2:]) == m:
        return image
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)) if is_numpy else image.to(torch.float32)
    lead = t.shape[:-2]
    t4 = t.reshape(-1, 1, *t.shape[-2:])
    if nearest:
        out = F.interpolate(t4, size=m, mode="nearest-exact")
    else:
        out = F.interpolate(t4, size=m, mode="bilinear", align_corners=False, antialias=True)
    out = out.reshape(*lead, *m)
    if is_numpy:
        out = out.numpy()
        return out.astype(np.asarray(image).dtype) if nearest else out
    return out
