"""Inference on micrographs: rescaling to the model's pixel size, overlapping tiles, masks and particle tables.

``segment("image.dm4", model)`` reads the micrograph (dm3/dm4/emd/ser/mrc/tif/png, :mod:`models.imageio`), takes
its pixel size from ``pixel_size`` or the file's calibration, resamples it to the pixel size the model was
trained at (``model.hrtem_config.pixel_size``), standardises it (zero mean, unit std over the whole image),
predicts class probabilities on overlapping tiles blended with a linear-ramp window (no seams), resamples
the probabilities back to the input grid and takes the arg-max. The mask therefore has the input's shape.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from hrtem_dataset.errors import InputError
from hrtem_dataset.io import atomic_path, check_output_file
from hrtem_dataset.limits import check_memory

from .build import size_multiple
from .data import load_user_folder, standardize
from .device import resolve_device
from .hub import check_min_particle_area, from_pretrained
from .imageio import mask_png_bytes, read_image, resample, rescaled_shape
from .metrics import label_particles, particle_table


def _device(device: str | None):
    return resolve_device(device)


def _ramp(n: int, overlap: int) -> np.ndarray:
    """1-D blending weight: linear ramps of length ``overlap`` at both ends, 1 in between, never 0."""
    i = np.arange(n, dtype=np.float64)
    w = np.minimum(i + 1, n - i) / max(overlap, 1)
    return np.clip(w, 1e-3, 1.0)


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    s = list(range(0, length - tile, step))
    return s + [length - tile]


TTA_MODES: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flips": ((0, False), (0, True), (2, False), (2, True)),  # the image, its two mirror images, its 180° turn
    "d4": tuple((k, f) for k in range(4) for f in (False, True)),  # every symmetry of the square
}
"""Test-time augmentations: (quarter turns, mirrored) of each transform whose probabilities are averaged."""


def check_tta(tta: str) -> str:
    """``tta`` when it names a :data:`TTA_MODES` entry, else :class:`InputError` naming ``--tta``."""
    if tta not in TTA_MODES:
        raise InputError(f"--tta: expected one of {', '.join(TTA_MODES)}, got {tta!r}")
    return tta


def predict_proba(model, image: np.ndarray, *, tile: int = 512, overlap: int = 64, batch_size: int = 4,
                  device: str | None = None, standardized: bool = False, tta: str = "none") -> np.ndarray:
    """Class probabilities (classes, H, W) float32 of a 2-D image at the model's pixel size.

    Images up to ``tile`` pixels per side run in one pass (reflect-padded to the U-Net's size divisor);
    larger ones are cut into ``tile``² tiles overlapping by ``overlap`` pixels and blended with a
    separable linear-ramp window. ``tta``: test-time augmentation (:data:`TTA_MODES`) — the mean of the
    probabilities of the image's mirror images and 180° turn (``flips``, 4 passes) or of its 8 symmetries
    (``d4``), each mapped back; the result is then unchanged by those transforms of the image.
    """
    transforms = TTA_MODES[check_tta(tta)]
    x = np.asarray(image, np.float32) if standardized else standardize(image)
    if len(transforms) == 1:
        return _predict_proba(model, x, tile, overlap, batch_size, device)
    total = None
    for turns, mirrored in transforms:
        t = np.rot90(x, turns)
        p = _predict_proba(model, np.ascontiguousarray(t[:, ::-1] if mirrored else t), tile, overlap, batch_size,
                           device)
        p = np.rot90(p[:, :, ::-1] if mirrored else p, -turns, axes=(1, 2))
        total = np.array(p) if total is None else total + p
    return total / len(transforms)


def _predict_proba(model, x: np.ndarray, tile: int, overlap: int, batch_size: int, device: str | None) -> np.ndarray:
    """:func:`predict_proba` of one standardised image (no augmentation)."""
    dev = _device(device)
    model = model.to(dev).eval()
    mult = size_multiple(model)
    H, W = x.shape
    tile = max(mult, (int(tile) // mult) * mult)
    overlap = int(min(max(0, overlap), tile // 2))
    if H <= tile and W <= tile:
        th, tw = math.ceil(H / mult) * mult, math.ceil(W / mult) * mult
    else:
        th = tw = tile
    ph, pw = max(0, th - H), max(0, tw - W)
    xp = np.pad(x, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="reflect") if ph or pw else x
    Hp, Wp = xp.shape
    rows, cols = _starts(Hp, th, th - overlap), _starts(Wp, tw, tw - overlap)
    weight = np.outer(_ramp(th, overlap), _ramp(tw, overlap)).astype(np.float32) if len(rows) * len(cols) > 1 \
        else np.ones((th, tw), np.float32)
    classes = int(model.hrtem_config.classes)
    acc = np.zeros((classes, Hp, Wp), np.float32)
    wsum = np.zeros((Hp, Wp), np.float32)
    positions = [(r, c) for r in rows for c in cols]
    with torch.no_grad():
        for b in range(0, len(positions), batch_size):
            pos = positions[b:b + batch_size]
            batch = np.stack([xp[r:r + th, c:c + tw] for r, c in pos])[:, None]
            t = torch.from_numpy(batch).to(dev)
            with torch.autocast(device_type=dev.type, enabled=dev.type == "cuda"):
                logits = model(t)
            prob = torch.softmax(logits.float(), dim=1).cpu().numpy()
            for (r, c), p in zip(pos, prob, strict=True):
                acc[:, r:r + th, c:c + tw] += p * weight
                wsum[r:r + th, c:c + tw] += weight
    acc /= wsum
    return acc[:, ph // 2:ph // 2 + H, pw // 2:pw // 2 + W]


def predict_memory(shape: tuple[int, int], work_shape: tuple[int, int], classes: int = 2,
                   augmented: bool = False) -> int:
    """Upper estimate (bytes) of :func:`predict_mask`'s memory for an image of ``shape`` predicted on
    ``work_shape`` (at the model's pixel size): float32 class probabilities and blending weights plus the
    resampled, standardised and padded copies of the image (and an interpolation buffer) on the working
    grid; the probabilities resampled back, the image and the mask on the input grid. ``augmented``
    (test-time augmentation): the sum of the transforms' probabilities and a transformed image besides."""
    work = int(work_shape[0]) * int(work_shape[1])
    own = int(shape[0]) * int(shape[1])
    return 4 * (work * (classes + 5 + (classes + 1) * augmented) + own * (classes + 3))


def check_min_area(min_area: float | None) -> float | None:
    """``min_area`` [Å²] when it is None or a finite number ≥ 0, else :class:`InputError` naming ``--min-area``."""
    return None if min_area is None else check_min_particle_area(min_area, "--min-area")


def remove_small_particles(mask: np.ndarray, pixel_size: float | None, min_area: float) -> np.ndarray:
    """``mask`` (uint8 0/1) without its particles — 8-connected components, as the metrics and the particle
    table count them — smaller than ``min_area`` Å² at ``pixel_size`` Å; unchanged when either is 0/None."""
    m = np.asarray(mask).astype(np.uint8)
    if not (min_area and min_area > 0 and pixel_size):
        return m
    labels, n = label_particles(m)
    if n == 0:
        return m
    keep = np.bincount(labels.ravel(), minlength=n + 1) * float(pixel_size) ** 2 >= float(min_area)
    keep[0] = False
    return keep[labels].astype(np.uint8)


def predict_mask(model, image: np.ndarray, pixel_size: float | None = None, *, min_area: float | None = None,
                 **kw) -> np.ndarray:
    """Binary particle mask (uint8 0/1) of ``image`` on its own grid: P(particle) above the model's
    ``threshold``, without the predicted particles smaller than its ``min_particle_area`` Å² — the operating
    point stored with the model (0.5 and 0 unless it was saved with others). ``min_area`` [Å²] overrides
    the model's (0 keeps every particle); areas use ``pixel_size``, else the model's pixel size. ``kw``: the
    options of :func:`predict_proba` (``tile``, ``overlap``, ``device``, ``tta``, ...).

    When both ``pixel_size`` (Å) and the model's training pixel size are known and differ by more than 1 %,
    the image is resampled to the model's pixel size first and the probabilities back afterwards.
    """
    model_px = getattr(model.hrtem_config, "pixel_size", None)
    min_area = check_min_area(min_area)
    if min_area is None:
        min_area = float(getattr(model.hrtem_config, "min_particle_area", 0.0) or 0.0)
    img = np.asarray(image, np.float32)
    shape = img.shape
    rescale = bool(pixel_size and model_px and abs(pixel_size / model_px - 1) > 0.01)
    work = rescaled_shape(shape, pixel_size, model_px) if rescale else shape
    check_memory("segmentation", predict_memory(shape, work, int(model.hrtem_config.classes),
                                                augmented=kw.get("tta", "none") != "none"),
                 f"image {shape[0]} x {shape[1]} at {pixel_size:g} Å/px resampled to {work[0]} x {work[1]} "
                 f"at the model's {model_px:g} Å/px" if rescale else f"image {shape[0]} x {shape[1]}")
    if rescale:
        img = resample(img, work)
    prob = predict_proba(model, img, **kw)
    if prob.shape[1:] != shape:
        prob = np.stack([resample(p, shape) for p in prob])
    threshold = float(getattr(model.hrtem_config, "threshold", 0.5))
    if prob.shape[0] == 2:  # binary: the model's operating point (0.5 is the arg-max)
        mask = (prob[1] > threshold).astype(np.uint8)
    else:
        mask = (np.argmax(prob, axis=0) == 1).astype(np.uint8)
    return remove_small_particles(mask, pixel_size or model_px, min_area)


CSV_COLUMNS = ["particle", "area_px", "area_A2", "equivalent_diameter_A", "centroid_row", "centroid_col",
               "centroid_x_A", "centroid_y_A", "touches_border"]


def particles_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def segment(image, model, *, out: str | Path | None = None, csv_path: str | Path | None = None,
            pixel_size: float | None = None, tile: int = 512, overlap: int = 64,
            device: str | None = None, min_area: float | None = None, tta: str = "none") -> dict:
    """Segment a micrograph; optionally write the mask PNG and the per-particle CSV (both or neither).

    ``image``: a path (dm3, dm4, emd, ser, mrc, tif, png, npy, ...) or a 2-D array; ``model``: a model, a local folder or a
    Hub id (:func:`models.hub.from_pretrained`). ``pixel_size`` (Å) overrides the file's calibration;
    without either, the model's pixel size is assumed (a warning is printed). The mask PNG holds class
    indices (0 background, 1 particle; black/white palette); the CSV has one row per connected particle
    (areas in Å², equivalent diameter in Å, centroids in pixels and Å) and defaults to ``out`` with
    suffix ``.csv``. ``min_area`` [Å²]: drop predicted particles smaller than this (default: the model's
    ``min_particle_area``; 0 keeps all). ``tta``: test-time augmentation (``none``, ``flips``, ``d4``; see
    :func:`predict_proba`). Returns ``dict(mask, particles, pixel_size, pixel_size_source, mask_path, csv_path)``.
    """
    resolve_device(device)  # before loading anything
    check_min_area(min_area)
    check_tta(tta)
    if pixel_size is not None and not (pixel_size > 0 and math.isfinite(pixel_size)):
        raise InputError(f"--pixel-size: must be a positive number of Å, got {pixel_size}")
    if out is not None:  # output targets checked before any work: both files or neither, nothing foreign
        target_csv = Path(csv_path) if csv_path is not None else Path(out).with_suffix(".csv")
        for flag, path, suffix in (("--out", Path(out), ".png"), ("--csv", target_csv, ".csv")):
            if path.is_dir():
                raise InputError(f"{flag} {path}: is a folder, not a {suffix} file")
            if path.suffix.lower() != suffix:
                raise InputError(f"{flag} {path}: use a {suffix} name (other files are never overwritten)")
            check_output_file(path, flag)  # inside a file, or an unwritable folder
    if isinstance(model, str | Path):

        model = from_pretrained(model)
    if isinstance(image, str | Path):
        img, file_px = read_image(image)
    else:
        img, file_px = np.asarray(image, np.float32), None
        if img.ndim != 2:
            raise InputError(f"image: expected a 2-D array, got shape {img.shape}")
    model_px = getattr(model.hrtem_config, "pixel_size", None)
    if pixel_size:
        px, source = float(pixel_size), "argument"
    elif file_px:
        px, source = float(file_px), "file"
    else:
        px, source = model_px, "assumed"
        if out is not None:
            print(f"warning: {image if isinstance(image, str | Path) else 'image'} has no pixel-size "
                  f"calibration; assuming the model's {model_px} Å (pass --pixel-size)", file=sys.stderr)
    mask = predict_mask(model, img, px, tile=tile, overlap=overlap, device=device, min_area=min_area, tta=tta)
    rows = particle_table(mask, px)
    result = {"mask": mask, "particles": rows, "pixel_size": px, "pixel_size_source": source,
              "model_pixel_size": model_px, "mask_path": None, "csv_path": None}
    if out is not None:
        out = Path(out)
        csv_path = Path(csv_path) if csv_path is not None else out.with_suffix(".csv")
        with ExitStack() as stack:  # both files appear together, or neither
            tmp_mask = stack.enter_context(atomic_path(out))
            tmp_csv = stack.enter_context(atomic_path(csv_path))
            tmp_mask.write_bytes(mask_png_bytes(mask))
            tmp_csv.write_text(particles_csv(rows))
        result["mask_path"], result["csv_path"] = str(out), str(csv_path)
    return result


def segment_folder(folder: str | Path, model, out_dir: str | Path, *, pixel_size: float | None = None,
                   pixel_sizes: str | Path | None = None, tile: int = 512, overlap: int = 64,
                   device: str | None = None, progress: bool = True, min_area: float | None = None,
                   tta: str = "none") -> dict:
    """Segment every micrograph of ``folder`` (its ``images/`` subfolder when there is one) into
    ``out_dir/NAME.png`` (mask) + ``out_dir/NAME.csv`` (particles) + ``out_dir/summary.csv``.

    Pixel size per image: ``pixel_size`` for all, else the CSV ``pixel_sizes`` or ``folder/MANIFEST.csv``
    (``name,pixel_size_angstrom``), else the file's calibration; an image with none is an error. Every
    image is read and checked before the model runs; ``out_dir`` must be new or empty, and is filled in a
    temporary folder renamed into place at the end (all files or none).
    """
    from rich.progress import Progress


    resolve_device(device)
    check_min_area(min_area)
    check_tta(tta)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"--out {out_dir}: must be a new or empty folder (nothing is overwritten)")
    if pixel_size is not None and not (pixel_size > 0 and math.isfinite(pixel_size)):
        raise InputError(f"--pixel-size: must be a positive number of Å, got {pixel_size}")
    samples = load_user_folder(folder, pixel_size=pixel_size, require_masks=False, require_pixel_size=True,
                               pixel_sizes=pixel_sizes)
    if isinstance(model, str | Path):

        model = from_pretrained(model)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    summary = ["name,pixel_size_angstrom,particles,particle_fraction"]
    try:
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("segment", total=len(samples))
            for s in samples:
                mask = predict_mask(model, s.image, s.pixel_size, tile=tile, overlap=overlap, device=device,
                                    min_area=min_area, tta=tta)
                rows = particle_table(mask, s.pixel_size)
                (tmp / f"{s.name}.png").write_bytes(mask_png_bytes(mask))
                (tmp / f"{s.name}.csv").write_text(particles_csv(rows))
                summary.append(f"{s.name},{s.pixel_size:g},{len(rows)},{float(mask.mean()):.4f}")
                bar.advance(task)
        (tmp / "summary.csv").write_text("\n".join(summary) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        tmp.chmod(0o755)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out_dir), "images": len(samples),
            "particles": sum(int(line.split(",")[2]) for line in summary[1:])}
