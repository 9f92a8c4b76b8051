"""Fourier-space cropping and zero-padding of periodic fields (same field of view, other grid): the one
implementation behind the detector grids of the imaging (:mod:`hrtem_dataset.imaging.resample`) and the
resampling of Prismatic's waves (:mod:`hrtem_dataset.simulation.prismatic_engine`); and the 2-D FFTs of
stacks of planes (:func:`fft2`, :func:`plane_groups`) that the multislice and the imaging share.

Frequencies kept along an axis of length m: 0..⌈m/2⌉−1 and −⌊m/2⌋..−1 (numpy's ``fftfreq`` order); the
mean value is preserved (vacuum stays 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["crop_spectrum", "fft2", "fourier_crop_complex", "plane_groups"]

#: On the CPU, stacks of planes at least this large (bytes per complex64 plane: 512²) are transformed one
#: plane at a time: MKL's batched 2-D transforms of 640²–1280² planes took 1.4–2.7× as long as a loop over
#: the planes on this project's 2-core machines (smaller planes: no gain); results are bit-identical.
PLANE_LOOP_BYTES = 512 * 512 * 8


def plane_groups(n_planes: int, plane_shape: Sequence[int], device: torch.device) -> list[slice]:
    """Slices of a stack of ``n_planes`` planes that go through one 2-D FFT call each: single planes on the CPU
    for planes of at least :data:`PLANE_LOOP_BYTES`, the whole stack otherwise (and always on CUDA)."""
    n = max(int(n_planes), 1)
    big = int(plane_shape[-2]) * int(plane_shape[-1]) * 8 >= PLANE_LOOP_BYTES
    step = 1 if device.type == "cpu" and big else n
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def fft2(x: torch.Tensor, *, inverse: bool = False, out: torch.Tensor | None = None,
         norm: str | None = None) -> torch.Tensor:
    """``torch.fft.fft2`` (``ifft2`` with ``inverse``) over the last two axes of ``x``, plane by plane where
    :func:`plane_groups` says so; ``out`` may be ``x`` itself (complex input). Bit-identical to one call."""
    fn = torch.fft.ifft2 if inverse else torch.fft.fft2
    groups = plane_groups(x[..., 0, 0].numel(), x.shape[-2:], x.device)
    if len(groups) == 1:
        return fn(x, out=out, norm=norm)
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype if x.is_complex() else torch.complex64, device=x.device)
    xs, os_ = x.reshape(-1, *x.shape[-2:]), out.view(-1, *x.shape[-2:])
    for g in groups:
        fn(xs[g], out=os_[g], norm=norm)
    return out


def _band_slices(n: int, m: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(source, destination) slices along one unshifted FFT axis of length ``n`` cut (or zero-padded) to ``m``:
    the lowest frequencies 0..⌈k/2⌉−1 and −⌊k/2⌋..−1, k = min(n, m), keep their ends of the axis."""
    k = min(n, m)
    return (slice(0, (k + 1) // 2),) * 2, (slice(n - k // 2, n), slice(m - k // 2, m))


def _crop_rows(spec: torch.Tensor, m: int) -> torch.Tensor:
    """Keep the m lowest frequencies along dim −2 of an (unshifted) FFT axis: 0..⌈m/2⌉−1 and −⌊m/2⌋..−1
    (zero-padding when m exceeds the input length)."""
    n = spec.shape[-2]
    if m <= n:
        return torch.cat([spec[..., src, :] for src, _ in _band_slices(n, m)], dim=-2)
    out = spec.new_zeros((*spec.shape[:-2], m, spec.shape[-1]))
    for src, dst in _band_slices(n, m):
        out[..., dst, :] = spec[..., src, :]
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


def crop_complex_spectrum(spec: torch.Tensor, shape: Sequence[int], out: torch.Tensor | None = None) -> torch.Tensor:
    """Crop (or zero-pad) a complex ``fft2`` spectrum (…, n_x, n_y) to its ``shape`` (m_x, m_y) lowest
    frequencies (per axis indices 0…⌈m/2⌉−1 and −⌊m/2⌋…−1); contiguous. One copy per quadrant, into ``out``
    when given (contiguous, (…, m_x, m_y))."""
    m = (int(shape[-2]), int(shape[-1]))
    n = tuple(int(v) for v in spec.shape[-2:])
    if out is None:
        out = spec.new_empty((*spec.shape[:-2], *m))
    if m[0] > n[0] or m[1] > n[1]:
        out.zero_()
    for src_x, dst_x in _band_slices(n[0], m[0]):
        for src_y, dst_y in _band_slices(n[1], m[1]):
            out[..., dst_x, dst_y] = spec[..., src_x, src_y]
    return out


def fourier_crop_complex(waves: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Band-limit and resample complex waves (…, n_x, n_y) to ``shape``; keeps the mean (vacuum = 1)."""
    m = (int(shape[-2]), int(shape[-1]))
    n = waves.shape[-2:]
    spec = crop_complex_spectrum(torch.fft.fft2(waves), m)
    return torch.fft.ifft2(spec) * (m[0] * m[1] / (n[0] * n[1]))
