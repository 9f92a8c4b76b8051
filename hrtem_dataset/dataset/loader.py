"""From ``datasets.load_dataset(folder_or_repo, config)`` to a PyTorch ``DataLoader`` of (input, mask) batches.

``with_format("torch")`` alone gives ``image`` as (H, W) but ``mask`` (a PNG ``Image`` column) as
(1, H, W), and torch's default collate fails on list columns such as ``materials``. :func:`collate` is a
``collate_fn`` that keeps only the arrays and returns batches of consistent shapes:

- ``images`` configurations: ``(image, mask)`` with ``image`` float32 (B, 1, H, W) and ``mask`` int64
  (B, 1, H, W) (0 = background, 1 = particle), index for index on the same grid ([x, y] as everywhere);
- ``exit_waves`` configurations: ``(waves, mask)`` with ``waves`` complex64 (B, P, nx, ny) (P frozen-phonon
  configurations at the simulation ``sampling``) and ``mask`` int64 (B, 1, mx, my) at ``pixel_size``; image
  them on the fly with :func:`hrtem_dataset.imaging.image_batch` (what ``hrtem train`` does).

:func:`torch_loader` selects those columns and builds the ``DataLoader``::

    from datasets import load_dataset
    from hrtem_dataset.dataset import torch_loader

    ds = load_dataset("demo-output/dataset", "demo")
    for image, mask in torch_loader(ds["train"], batch_size=4, shuffle=True):
        ...  # image (4, 1, H, W) float32, mask (4, 1, H, W) int64

``collate`` works with rows in any format (python, numpy, torch), e.g.
``DataLoader(ds["train"].with_format("torch"), batch_size=4, collate_fn=collate)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputError

IMAGE_COLUMNS = ("image", "mask")
WAVE_COLUMNS = ("waves_real", "waves_imag", "mask")


def _array(v, name: str) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor
        v = v.detach().cpu().numpy()
    a = np.asarray(v)
    if a.dtype == object:
        raise InputError(f"collate: column {name!r} is not an array")
    return a


def _mask2d(v) -> np.ndarray:
    a = _array(v, "mask")
    if a.ndim == 3:  # (1, H, W) from the torch format, or (H, W, C) from an RGB PNG
        a = a[0] if a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4) else a[..., 0]
    if a.ndim != 2:
        raise InputError(f"collate: mask must be 2-D, got shape {a.shape}")
    return (a > 0).astype(np.int64)


def _stack(arrays: list[np.ndarray], name: str) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputError(f"collate: column {name!r} has rows of different shapes {sorted(shapes)}")
    return np.stack(arrays)


def collate(rows: Sequence[Mapping[str, Any]]):
    """``collate_fn`` for a DataLoader over a split of an hrtem dataset (any format); see the module docs.

    Returns ``(image, mask)`` tensors (B, 1, H, W) for ``images`` rows and ``(waves, mask)`` with waves
    complex64 (B, P, nx, ny) for ``exit_waves`` rows; every other column (lineage, ``materials`` lists,
    previews) is dropped.
    """
    import torch

    if not rows:
        raise InputError("collate: empty batch")
    first = rows[0]
    if "mask" not in first:
        raise InputError("collate: rows have no 'mask' column (an unlabelled split)")
    mask = torch.from_numpy(_stack([_mask2d(r["mask"]) for r in rows], "mask"))[:, None]
    if "waves_real" in first and "waves_imag" in first:
        waves = []
        for r in rows:
            w = _array(r["waves_real"], "waves_real").astype(np.float32) \
                + 1j * _array(r["waves_imag"], "waves_imag").astype(np.float32)
            waves.append((w[None] if w.ndim == 2 else w).astype(np.complex64))
        return torch.from_numpy(_stack(waves, "waves")), mask
    if "image" not in first:
        raise InputError(f"collate: rows have neither 'image' nor 'waves_real'/'waves_imag' "
                         f"(columns: {', '.join(sorted(first))})")
    images = [_array(r["image"], "image").astype(np.float32) for r in rows]
    for a in images:
        if a.ndim != 2:
            raise InputError(f"collate: image must be 2-D, got shape {a.shape}")
    image = torch.from_numpy(_stack(images, "image"))[:, None]
    if image.shape[2:] != mask.shape[2:]:
        raise InputError(f"collate: image {tuple(image.shape[2:])} and mask {tuple(mask.shape[2:])} differ")
    return image, mask


def torch_loader(split, batch_size: int = 8, shuffle: bool = False, **kwargs):
    """A ``torch.utils.data.DataLoader`` of ``(image, mask)`` (``images``) or ``(waves, mask)``
    (``exit_waves``) batches over ``split``, a ``datasets.Dataset`` (e.g. ``load_dataset(folder,
    config)["train"]``). ``kwargs`` go to the DataLoader (``num_workers``, ``drop_last``, ``generator`` ...)."""
    from torch.utils.data import DataLoader

    cols = set(getattr(split, "column_names", None) or [])
    if not cols:
        raise InputError("torch_loader: expected a datasets.Dataset (one split), e.g. load_dataset(...)['train']")
    wanted = WAVE_COLUMNS if {"waves_real", "waves_imag"} <= cols else IMAGE_COLUMNS
    missing = [c for c in wanted if c not in cols]
    if missing:
        raise InputError(f"torch_loader: the split has no {', '.join(repr(c) for c in missing)} column "
                         f"(columns: {', '.join(sorted(cols))})")
    if int(batch_size) < 1:
        raise InputError(f"batch_size: must be >= 1, got {batch_size}")
    data = split.select_columns(list(wanted)).with_format("numpy")
    return DataLoader(data, batch_size=int(batch_size), shuffle=shuffle, collate_fn=collate, **kwargs)
