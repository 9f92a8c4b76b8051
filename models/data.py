"""Training and evaluation data: built datasets (local folder or Hub id), user micrograph folders.

Sources
- A built dataset, read with ``datasets.load_dataset(path_or_id, config, split=...)``. ``images``
  configurations give rows with ``image`` (2-D float32 intensity, indexed [x, y]), ``mask`` (PNG of class
  indices 0 = background, 1 = particle) and ``pixel_size`` (Å). ``exit_waves`` configurations give
  ``waves_real``/``waves_imag`` (P, nx, ny), ``sampling``, ``energy`` and ``mask`` at ``pixel_size``;
  they are imaged on the fly on the training device with :func:`hrtem_dataset.imaging.image_batch`
  under conditions drawn from an :class:`~hrtem_dataset.specs.ImagingDistributionSpec`.
- A folder of the user's labelled micrographs: ``FOLDER/images/NAME.<ext>`` + ``FOLDER/masks/NAME.png``,
  or a flat folder with ``NAME.<ext>`` + ``NAME_mask.png``; any format of :mod:`models.imageio`.

Preprocessing (paper protocol): per-image standardisation (zero mean, unit standard deviation over the whole
image), random square crops, and the 8 dihedral transforms (4 rotations × optional transpose) — the
symmetry group of the square pixel grid, under which HRTEM images of randomly oriented particles are
statistically invariant. All randomness comes from seeds derived with :func:`hrtem_dataset.seeding.derive_seed`.

Size: over 400 lines because both batch samplers (pre-rendered images, on-the-fly imaging of exit waves)
share the sample loading, crop choice and augmentation of this module; they are one data path.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hrtem_dataset.errors import InputError
from hrtem_dataset.imaging import conditions_to_tensors, image_batch, sample_imaging_conditions
from hrtem_dataset.seeding import derive_seed

from .augment import degrade
from .imageio import IMAGE_SUFFIXES, read_image, read_mask, resample, rescaled_shape


@dataclass
class Sample:
    """One labelled image: raw intensity (float32 2-D), mask (uint8 0/1 or None), pixel size (Å or None)."""

    image: np.ndarray
    mask: np.ndarray | None
    pixel_size: float | None = None
    name: str = ""


@dataclass
class WaveSample:
    """One exit-wave row: waves complex64 (P, nx, ny) at ``sampling`` Å, mask at ``pixel_size`` Å."""

    waves: np.ndarray
    sampling: float | tuple[float, float]
    energy: float
    mask: np.ndarray
    pixel_size: float
    zero_defocus: float = 0.0
    name: str = ""


def standardize(image: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Per-image standardisation: (I − mean) / std over the whole image (float32)."""
    a = np.asarray(image, dtype=np.float32)
    return ((a - a.mean()) / max(float(a.std()), eps)).astype(np.float32)


def _is_user_folder(path: Path) -> bool:
    if not path.is_dir():
        return False
    if (path / "images").is_dir():
        return True
    if (path / "README.md").is_file() or (path / "data").is_dir():
        return False
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())


def open_split(dataset: str | Path, config: str | None = None, split: str = "train",
               revision: str | None = None):
    """``datasets.load_dataset(dataset, config, split=split)`` with errors turned into InputError."""
    import datasets

    p = Path(dataset)
    if p.exists() and not p.is_dir():
        raise InputError(f"dataset {dataset}: expected a dataset folder (README.md + data/) or a Hub id")
    if not p.exists() and (str(dataset).startswith((".", "/")) or str(dataset).count("/") > 1):
        raise InputError(f"dataset {dataset}: folder not found")
    where = f"dataset {dataset}" + (f" config {config!r}" if config else "") + f" split {split!r}"
    quiet = not datasets.are_progress_bars_disabled()
    if quiet:  # no "Generating split" bars: stderr stays clean (errors are one line)
        datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(str(dataset), config, split=split, revision=revision)
    except Exception as exc:  # FileNotFoundError, ValueError (unknown config/split), offline Hub errors ...
        msg = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise InputError(f"{where}: cannot load ({type(exc).__name__}: {msg})") from None
    finally:
        if quiet:
            datasets.enable_progress_bars()


def _mask_array(m, where: str) -> np.ndarray:
    a = np.asarray(m)
    if a.ndim == 3:  # RGB(A) PNG
        a = a[..., 0]
    if a.ndim != 2:
        raise InputError(f"{where}: mask must be 2-D, got shape {a.shape}")
    return (a > 0).astype(np.uint8)


def load_samples(dataset: str | Path, config: str | None = None, split: str = "train", *,
                 require_masks: bool = True, revision: str | None = None,
                 max_samples: int | None = None) -> list[Sample] | list[WaveSample]:
    """Load a split of a built dataset into memory.

    Returns :class:`Sample` s for an ``images`` configuration and :class:`WaveSample` s for an
    ``exit_waves`` configuration. A split without a ``mask`` column raises :class:`InputError` when
    ``require_masks`` (training and evaluation need labels).
    """
    ds = open_split(dataset, config, split, revision)
    cols = set(ds.column_names)
    where = f"dataset {dataset}" + (f" config {config!r}" if config else "") + f" split {split!r}"
    if require_masks and "mask" not in cols:
        raise InputError(f"{where}: no 'mask' column (labelled images are needed for training/evaluation)")
    if max_samples is not None:
        ds = ds.select(range(min(int(max_samples), len(ds))))
    if len(ds) == 0:
        raise InputError(f"{where}: the split is empty")
    name_col = "sample_id" if "sample_id" in cols else None
    if {"waves_real", "waves_imag"} <= cols:
        keep = [c for c in ("waves_real", "waves_imag", "sampling", "energy", "mask", "pixel_size",
                            "zero_defocus", name_col) if c and c in cols]
        out: list = []
        for i, row in enumerate(ds.select_columns(keep).with_format("numpy")):
            waves = (np.asarray(row["waves_real"], np.float32) + 1j * np.asarray(row["waves_imag"], np.float32))
            if waves.ndim == 2:
                waves = waves[None]
            sampling = tuple(float(v) for v in np.atleast_1d(np.asarray(row["sampling"], dtype=np.float64)))
            out.append(WaveSample(
                waves=waves.astype(np.complex64), sampling=sampling if len(sampling) == 2 else sampling[0],
                energy=float(row.get("energy", 300e3)), mask=_mask_array(row["mask"], where),
                pixel_size=float(row["pixel_size"]), zero_defocus=float(row.get("zero_defocus", 0.0) or 0.0),
                name=str(row[name_col]) if name_col else f"{split}-{i}"))
        return out
    if "image" not in cols:
        raise InputError(f"{where}: no 'image' column (columns: {', '.join(sorted(cols))})")
    keep = [c for c in ("image", "mask", "pixel_size", name_col) if c and c in cols]
    samples: list[Sample] = []
    for i, row in enumerate(ds.select_columns(keep).with_format("numpy")):
        img = np.asarray(row["image"], dtype=np.float32)
        if img.ndim != 2:
            raise InputError(f"{where} row {i}: image must be 2-D, got shape {img.shape}")
        mask = _mask_array(row["mask"], where) if "mask" in row else None
        if mask is not None and mask.shape != img.shape:
            raise InputError(f"{where} row {i}: mask shape {mask.shape} != image shape {img.shape}")
        px = float(row["pixel_size"]) if "pixel_size" in row else None
        samples.append(Sample(img, mask, px, str(row[name_col]) if name_col else f"{split}-{i}"))
    return samples


MANIFEST = "MANIFEST.csv"


def read_manifest(folder: str | Path, path: str | Path | None = None) -> dict[str, float]:
    """Per-image pixel sizes (Å) from ``path`` or ``folder/MANIFEST.csv`` (columns ``name,pixel_size_angstrom``;
    other columns are ignored; ``name`` is the image's file name with or without suffix). ``{}`` when
    ``path`` is None and the folder has no manifest."""
    if path is None:
        path = Path(folder) / MANIFEST
        if not path.is_file():
            return {}
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: pixel-size CSV not found")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read ({type(exc).__name__})") from None
    if not rows or not {"name", "pixel_size_angstrom"} <= set(rows[0]):
        raise InputError(f"{path}: needs the columns name,pixel_size_angstrom")
    out: dict[str, float] = {}
    for i, row in enumerate(rows, start=2):
        name, value = (row.get("name") or "").strip(), (row.get("pixel_size_angstrom") or "").strip()
        try:
            px = float(value)
        except ValueError:
            raise InputError(f"{path} line {i}: pixel_size_angstrom {value!r} is not a number") from None
        if not (math.isfinite(px) and 0.005 < px <= 100.0):
            raise InputError(f"{path} line {i}: pixel_size_angstrom must be in (0.005, 100] Å, got {value}")
        if not name:
            raise InputError(f"{path} line {i}: empty name")
        out[Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name] = px
    return out


def load_user_folder(folder: str | Path, *, pixel_size: float | None = None,
                     require_masks: bool = True, require_pixel_size: bool = False,
                     pixel_sizes: str | Path | None = None) -> list[Sample]:
    """Labelled micrographs from ``folder`` (layouts in the module docstring), sorted by name.

    Pixel size per image (Å): ``pixel_size`` if given, else the image's row of ``folder/MANIFEST.csv``
    (columns ``name,pixel_size_angstrom``; or the CSV ``pixel_sizes``), else the file's own calibration. Images without a mask raise
    :class:`InputError` when ``require_masks``, images without a pixel size when ``require_pixel_size``.
    Everything is checked before anything is returned.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"user data {folder}: folder not found")
    if (folder / "images").is_dir():
        img_dir, mask_of = folder / "images", lambda p: folder / "masks" / f"{p.stem}.png"
        candidates = sorted(img_dir.iterdir())
    else:
        mask_of = lambda p: p.with_name(f"{p.stem}_mask.png")  # noqa: E731
        candidates = sorted(p for p in folder.iterdir() if not p.stem.endswith("_mask"))
    images = [p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise InputError(f"user data {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    manifest = read_manifest(folder, pixel_sizes)
    out = []
    for p in images:
        m = mask_of(p)
        if require_masks and not m.is_file():
            raise InputError(f"user data {p}: no mask {m.name} (masks are PNGs with the image's name)")
        img, px = read_image(p)
        mask = read_mask(m, img.shape) if m.is_file() else None
        px = float(pixel_size) if pixel_size else manifest.get(p.stem, px)
        if require_pixel_size and not px:
            raise InputError(f"user data {p}: no pixel size (give --pixel-size, a {MANIFEST} row "
                             "name,pixel_size_angstrom, or a calibrated file)")
        out.append(Sample(img, mask, px, p.stem))
    return out


def rescale_samples(samples: list[Sample], target_pixel_size: float | None, tol: float = 0.01) -> list[Sample]:
    """Resample samples whose pixel size differs from ``target_pixel_size`` (Å) by more than ``tol``
    (relative): antialiased bilinear for images, nearest for masks. Samples without a pixel size are kept."""
    if not target_pixel_size:
        return samples
    out = []
    for s in samples:
        if s.pixel_size and abs(s.pixel_size / target_pixel_size - 1) > tol:
            shape = rescaled_shape(s.image.shape, s.pixel_size, target_pixel_size)
            mask = resample(s.mask, shape, nearest=True) if s.mask is not None else None
            s = Sample(resample(s.image, shape), mask, float(target_pixel_size), s.name)
        out.append(s)
    return out


def dataset_pixel_size(samples) -> float | None:
    """Median pixel size (Å) of samples that have one."""
    px = [s.pixel_size for s in samples if s.pixel_size]
    return float(np.median(px)) if px else None


def dihedral(a, k: int, transpose: bool):
    """Apply one of the 8 dihedral transforms to the last two axes (numpy or torch)."""
    if hasattr(a, "rot90") and not isinstance(a, np.ndarray):  # torch
        a = a.rot90(k, dims=(-2, -1))
        return a.transpose(-2, -1) if transpose else a
    a = np.rot90(a, k, axes=(-2, -1))
    return np.swapaxes(a, -2, -1) if transpose else a


def choose_crop(shapes: list[tuple[int, int]], image_size: int | None, multiple: int) -> int:
    """Square crop size: ``image_size`` or the smallest image side, rounded down to ``multiple``
    (the U-Net's size divisor); images smaller than the crop are reflect-padded."""
    smallest = min(min(s) for s in shapes)
    c = min(int(image_size), smallest) if image_size else smallest
    return max(multiple, (c // multiple) * multiple)


def epoch_batches(rng: np.random.Generator, n: int, samples_per_epoch: int,
                  batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, indices)`` of the batches of one epoch of ``samples_per_epoch`` draws from ``n`` samples:
    whole permutations (drawn from ``rng`` before the first batch) concatenated and cut to length."""
    order = np.concatenate([rng.permutation(n) for _ in range(math.ceil(samples_per_epoch / n))])
    order = order[:samples_per_epoch]
    for start in range(0, len(order), batch_size):
        yield start, order[start:start + batch_size]


def random_crop(rng: np.random.Generator, image, mask, crop: int, augment: bool = True):
    """The same random ``crop``² window of ``image`` and ``mask`` (the window's row and column drawn from
    ``rng``; a side shorter than ``crop`` is kept whole) and, with ``augment``, one random dihedral transform
    of both (rotation, then transpose, drawn next); numpy or torch."""
    r0 = int(rng.integers(0, max(1, image.shape[0] - crop + 1)))
    c0 = int(rng.integers(0, max(1, image.shape[1] - crop + 1)))
    x, y = image[r0:r0 + crop, c0:c0 + crop], mask[r0:r0 + crop, c0:c0 + crop]
    if augment:
        k, t = int(rng.integers(4)), bool(rng.integers(2))
        x, y = dihedral(x, k, t), dihedral(y, k, t)
    return x, y


def _pad_to(a: np.ndarray, size: int, mode: str) -> np.ndarray:
    ph, pw = max(0, size - a.shape[-2]), max(0, size - a.shape[-1])
    if ph == 0 and pw == 0:
        return a
    pad = [(0, 0)] * (a.ndim - 2) + [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)]
    return np.pad(a, pad, mode=mode)


class CropBatches:
    """Deterministic training batches of standardised, randomly cropped, dihedrally augmented images.

    ``epoch(e)`` yields ``(x float32 (B, 1, c, c), y int64 (B, c, c))`` numpy batches; the order, crops and
    transforms depend only on (seed, epoch), so a resumed run sees exactly the batches it would have seen.
    ``samples_per_epoch`` crops are drawn per epoch (default: one per image).
    """

    def __init__(self, samples: list[Sample], crop: int, batch_size: int, seed: int,
                 samples_per_epoch: int | None = None, augment: bool | str = True):
        if any(s.mask is None for s in samples):
            raise InputError("training data: every image needs a mask")
        self.images = [_pad_to(standardize(s.image), crop, "reflect") for s in samples]
        self.masks = [_pad_to(s.mask.astype(np.int64), crop, "constant") for s in samples]
        self.crop, self.batch_size, self.seed = int(crop), int(batch_size), int(seed)
        self.augment = bool(augment)
        self.realistic = augment == "realistic"  # + degradations of real recording (models.augment)
        self.samples_per_epoch = int(samples_per_epoch or len(samples))

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.samples_per_epoch / self.batch_size))

    def epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng(derive_seed(self.seed, "batches", int(epoch)))
        for _, idx in epoch_batches(rng, len(self.images), self.samples_per_epoch, self.batch_size):
            xs, ys = [], []
            for i in idx:  # the images are padded to the crop: every window lies inside
                x, y = random_crop(rng, self.images[i], self.masks[i], self.crop, self.augment)
                if self.realistic:
                    x = degrade(x, rng)
                xs.append(np.ascontiguousarray(x))
                ys.append(np.ascontiguousarray(y))
            yield np.stack(xs)[:, None], np.stack(ys)


class OnTheFlyImaging:
    """Training batches imaged on the fly from an ``exit_waves`` configuration on the training device.

    Each step draws a batch of exit waves, draws concrete imaging conditions per sample with
    :func:`hrtem_dataset.imaging.sample_imaging_conditions` (seeded by (seed, epoch, sample)), and renders
    the batch with :func:`hrtem_dataset.imaging.image_batch` (torch, same device). Defocus is taken relative
    to each structure's calibrated zero defocus when the dataset provides ``zero_defocus``. The rendered
    images must have the mask's shape (the dataset stores masks at ``pixel_size``); they are standardised,
    cropped and dihedrally augmented like :class:`CropBatches`.
    """

    def __init__(self, samples: list[WaveSample], imaging, crop: int, batch_size: int, seed: int,
                 device: str = "cpu", samples_per_epoch: int | None = None):
        self._image_batch, self._sample, self._to_tensors = image_batch, sample_imaging_conditions, \
            conditions_to_tensors
        self.samples, self.imaging = samples, imaging
        self.crop, self.batch_size, self.seed, self.device = int(crop), int(batch_size), int(seed), device
        self.samples_per_epoch = int(samples_per_epoch or len(samples))
        # id(sample.waves) -> (sample.waves, the same on an accelerator); the array is held so its id stays unique
        self._on_device: dict[int, tuple[np.ndarray, torch.Tensor]] = {}
        self._device_budget: int | None = None

    def _waves(self, batch: list[WaveSample]) -> torch.Tensor:
        """The batch's waves stacked on the device. On an accelerator each sample's waves are copied there once
        and kept while they fit half the device's free memory (a host stack and copy per batch took 6× a
        training step on an H200); elsewhere stacked and moved per batch (in place on the CPU)."""
        if torch.device(self.device).type != "cuda":
            return torch.from_numpy(np.stack([w.waves for w in batch])).to(self.device)
        if self._device_budget is None:
            self._device_budget = int(torch.cuda.mem_get_info(torch.device(self.device))[0] // 2)
        planes = []
        for w in batch:
            t = self._on_device.get(id(w.waves), (None, None))[1]
            if t is None:
                t = torch.from_numpy(np.ascontiguousarray(w.waves)).to(self.device)
                if t.numel() * t.element_size() <= self._device_budget:
                    self._on_device[id(w.waves)] = (w.waves, t)
                    self._device_budget -= t.numel() * t.element_size()
            planes.append(t)
        return torch.stack(planes)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.samples_per_epoch / self.batch_size))

    def _render(self, batch: list[WaveSample], seeds: list[int], generator):
        # one of the spec's conditions per sample (a series spec yields several per draw)
        conds = []
        for s in seeds:
            drawn = self._sample(self.imaging, s)
            conds.append(drawn[derive_seed(s, "pick") % len(drawn)])
        conditions = self._to_tensors(conds, [w.zero_defocus for w in batch], self.device)
        waves = self._waves(batch)
        return self._image_batch(waves, batch[0].sampling, batch[0].energy, conditions, batch[0].pixel_size,
                                 generator=generator, mtf=dict(self.imaging.mtf) or None)

    def render_samples(self, samples: list[WaveSample], key: str = "validation") -> list[Sample]:
        """Image ``samples`` once with conditions seeded by (seed, key, index): a fixed, reproducible
        validation set of :class:`Sample` s from an ``exit_waves`` split."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(derive_seed(self.seed, key, "noise") % (2**63))
        out = []
        for i, w in enumerate(samples):
            img = self._render([w], [derive_seed(self.seed, key, i)], gen)[0].float().cpu().numpy()
            if img.shape != w.mask.shape:
                raise InputError(f"on-the-fly imaging: image shape {img.shape} != mask shape {w.mask.shape} "
                                 f"for {w.name}")
            out.append(Sample(img, w.mask, w.pixel_size, w.name))
        return out

    def epoch(self, epoch: int):
        rng = np.random.default_rng(derive_seed(self.seed, "batches", int(epoch)))
        gen = torch.Generator(device=self.device)
        gen.manual_seed(derive_seed(self.seed, "imaging-noise", int(epoch)) % (2**63))
        for start, idx in epoch_batches(rng, len(self.samples), self.samples_per_epoch, self.batch_size):
            batch = [self.samples[i] for i in idx]
            seeds = [derive_seed(self.seed, "imaging", int(epoch), int(start + j)) for j in range(len(idx))]
            imgs = self._render(batch, seeds, gen).float()
            imgs = (imgs - imgs.mean(dim=(-2, -1), keepdim=True)) / imgs.std(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
            xs, ys = [], []
            for j, w in enumerate(batch):
                img = imgs[j]
                m = torch.from_numpy(w.mask.astype(np.int64)).to(self.device)
                if tuple(img.shape) != tuple(m.shape):
                    raise InputError(f"on-the-fly imaging: image shape {tuple(img.shape)} != mask shape "
                                     f"{tuple(m.shape)} for {w.name}")
                x, y = random_crop(rng, img, m, self.crop)
                xs.append(x)
                ys.append(y)
            yield torch.stack(xs)[:, None], torch.stack(ys)
