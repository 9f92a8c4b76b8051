"""Small shared helpers: tensors, devices, grids (no physics)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputError


def as_pair(value: float | Sequence[float], name: str) -> tuple[float, float]:
    """``0.1`` or ``(0.1, 0.1)`` -> ``(0.1, 0.1)``; must be finite and > 0."""
    if isinstance(value, torch.Tensor | np.ndarray):
        value = value.tolist()
    if isinstance(value, int | float):
        pair = (float(value), float(value))
    else:
        try:
            pair = tuple(float(v) for v in value)  # type: ignore[union-attr]
        except TypeError:
            raise InputError(f"{name}: expected a number or a pair of numbers, got {value!r}") from None
        if len(pair) != 2:
            raise InputError(f"{name}: expected 2 values, got {len(pair)}")
    if not all(math.isfinite(v) and v > 0 for v in pair):
        raise InputError(f"{name}: must be finite and > 0, got {value!r}")
    return pair  # type: ignore[return-value]


def complex_tensor(waves, device: torch.device | None = None) -> torch.Tensor:
    """numpy/torch complex array -> complex64 tensor on ``device``."""
    t = waves if isinstance(waves, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(waves))
    if not t.is_complex():
        t = t.to(torch.float32)
    t = t.to(device=device or t.device)
    return t.to(torch.complex64)


def intensity_(psi: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """|ψ|² (float32, ``psi``'s shape) of a contiguous complex64 tensor whose memory is scratch: squares
    view_as_real(ψ) in place and adds the two halves — the same float32 operations, bit for bit, as
    view_as_real(ψ).square().sum(-1) and re² + im², in one pass fewer and no reduction over a length-2 axis
    (1.1 vs 3.1 ms for 4 × 640² on 2 threads). ``psi`` holds the squares afterwards; ``out``: where to write |ψ|²."""
    r = torch.view_as_real(psi)
    r.square_()
    return torch.add(r[..., 0], r[..., 1], out=out)


def check_finite(t: torch.Tensor, name: str) -> None:
    """:class:`InputError` naming ``name`` when ``t`` holds NaN or Inf. A NaN or Inf anywhere makes the sum
    non-finite, so a finite sum proves the tensor finite with one reduction (20× cheaper than the element-wise
    test on a 2 × 640² wave stack); only a non-finite sum (NaN/Inf, or an overflow of huge finite values) is
    checked element by element."""
    x = torch.view_as_real(t) if t.is_complex() else t
    if not x.is_floating_point() or bool(torch.isfinite(x.sum())):
        return
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name}: contains NaN or Inf")


def phonon_stack(waves, device: torch.device | None, name: str) -> torch.Tensor:
    """Exit waves (nx, ny) or (phonons, nx, ny) -> finite complex64 tensor (phonons, nx, ny) on ``device``;
    anything else raises :class:`InputError` naming ``name``."""
    t = complex_tensor(waves, device)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise InputError(f"{name}: expected (nx, ny) or (phonons, nx, ny), got shape {tuple(t.shape)}")
    check_finite(t, name)
    return t

