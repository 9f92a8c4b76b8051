"""PNG helpers, in one place: the 8-bit contrast stretch, deterministic PNG encoding (the dataset's
``preview`` column), and the small previews of stage outputs (shown inline in the Dagster UI, written next
to the artifacts). Used by the dataset writer, the dataset card and the stages.

Arrays follow the project convention ``[x, y]``; PNG rows are image rows, so arrays are transposed to
show ``x`` horizontally and ``y`` vertically (as matplotlib ``imshow(a.T, origin="lower")`` would,
flipped so that ``y`` grows downwards like a micrograph on screen).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

from .io import atomic_write_bytes

# Colours of particles 0..n-1 in structure projections (substrate is grey).
_PALETTE = np.array([
    [230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66], [0, 114, 178], [213, 94, 0], [204, 121, 167],
], dtype=np.float32)


def contrast_stretch(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """8-bit copy of ``image``: the ``low``–``high`` percentile range of its finite values mapped linearly
    onto 0–255 (rounded); non-finite pixels and a flat image give 0."""
    a = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, dtype=np.uint8)
    lo, hi = np.percentile(a[finite], [low, high])
    if not hi > lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.round(np.clip((np.where(finite, a, lo) - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes (mode ``L``) of a 2-D uint8 array; rows = first axis. Deterministic (no metadata)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _to_png(rgb_or_gray: np.ndarray, max_size: int = 192) -> bytes:
    arr = np.ascontiguousarray(np.swapaxes(rgb_or_gray, 0, 1))  # [x, y] -> rows = y
    img = Image.fromarray(arr)
    if max(img.size) > max_size:
        img.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    # zlib level 6, not PIL's optimize (level 9): on the large flat areas of these previews level 9 took 38–126 ms
    # per preview (a structure projection, a particle wave's phase) instead of 4–9 ms, for files 2–16 % smaller
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def image_png(image: np.ndarray, max_size: int = 192) -> bytes:
    """Contrast-stretched grey PNG of an ``[x, y]`` image."""
    return _to_png(contrast_stretch(image), max_size)


def mask_overlay_png(image: np.ndarray, mask: np.ndarray, max_size: int = 192, alpha: float = 0.45) -> bytes:
    """The image in grey with the particle mask tinted red (same ``[x, y]`` grid)."""
    g = contrast_stretch(image).astype(np.float32)
    rgb = np.stack([g, g, g], axis=-1)
    m = np.asarray(mask, bool)
    rgb[m] = (1 - alpha) * rgb[m] + alpha * np.array([255.0, 30.0, 30.0])
    return _to_png(rgb.astype(np.uint8), max_size)


def structure_projection_png(positions: np.ndarray, numbers: np.ndarray, particle_id: np.ndarray | None,
                             cell_xy: tuple[float, float], pixel: float | None = None, max_size: int = 192) -> bytes:
    """Projection of the atoms along z: Z-weighted 2-D histogram (≈ projected potential, darker = more),
    particles coloured by id over the grey substrate. Vectorised ``np.histogram2d``, no per-atom loop."""
    pixel = pixel or max(cell_xy) / max_size
    nx = max(1, int(np.ceil(cell_xy[0] / pixel)))
    ny = max(1, int(np.ceil(cell_xy[1] / pixel)))
    rng = [[0.0, cell_xy[0]], [0.0, cell_xy[1]]]
    pos = np.asarray(positions, np.float64)
    z = np.asarray(numbers, np.float64)
    pid = np.full(len(pos), -1) if particle_id is None else np.asarray(particle_id)
    total, _, _ = np.histogram2d(pos[:, 0] % cell_xy[0], pos[:, 1] % cell_xy[1], bins=(nx, ny), range=rng,
                                 weights=z)
    shade = 1.0 - np.sqrt(total / total.max()) if total.max() > 0 else np.ones_like(total)
    rgb = np.repeat((shade * 255.0)[..., None], 3, axis=-1)
    for k in np.unique(pid[pid >= 0]):
        sel = pid == k
        h, _, _ = np.histogram2d(pos[sel, 0] % cell_xy[0], pos[sel, 1] % cell_xy[1], bins=(nx, ny), range=rng)
        hit = h > 0
        rgb[hit] = 0.35 * rgb[hit] + 0.65 * _PALETTE[int(k) % len(_PALETTE)]
    return _to_png(np.clip(rgb, 0, 255).astype(np.uint8), max_size)


def markdown_images(pngs: dict[str, bytes]) -> str:
    """Markdown with the PNGs inline as data URIs (rendered by the Dagster UI's markdown metadata)."""
    parts = []
    for title, png in pngs.items():
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(f"**{title}**\n\n![{title}](data:image/png;base64,{b64})\n")
    return "\n".join(parts)


def save_pngs(pngs: dict[str, bytes], folder: Path, stem: str) -> dict[str, Path]:
    """Write the previews next to the artifacts (atomically); returns title -> path."""
    out = {}
    for title, png in pngs.items():
        slug = "".join(c if c.isalnum() else "_" for c in title.lower()).strip("_")
        out[title] = atomic_write_bytes(Path(folder) / f"{stem}_{slug}.png", png)
    return out
