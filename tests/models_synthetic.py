"""Tiny synthetic HRTEM-like datasets for the model tests (kept separate so the lead can swap in real
simulated data): lattice-fringe discs with amplitude and phase contrast on an amorphous background,
Poisson noise; written as a folder laid out like a Hub dataset repo (parquet + README ``configs:``)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from scipy import ndimage


def synthetic_image(rng: np.random.Generator, shape=(64, 64), pixel_size: float = 0.5, n_particles=(1, 3),
                    radius_A=(4.0, 7.0), dose: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, mask uint8). Lengths in Å; fringe spacing 2.35 Å (Au 111) ± 15 %."""
    nx, ny = shape
    x, y = np.meshgrid(np.arange(nx) * pixel_size, np.arange(ny) * pixel_size, indexing="ij")
    # amorphous carbon: band-limited random phase texture
    amorph = ndimage.gaussian_filter(rng.standard_normal(shape), 0.6 / pixel_size)
    amorph /= amorph.std() + 1e-9
    intensity = 1.0 + 0.12 * amorph
    mask = np.zeros(shape, bool)
    for _ in range(int(rng.integers(n_particles[0], n_particles[1] + 1))):
        r = rng.uniform(*radius_A)
        cx, cy = rng.uniform(r, nx * pixel_size - r), rng.uniform(r, ny * pixel_size - r)
        disc = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
        theta = rng.uniform(0, np.pi)
        period = 2.35 * rng.uniform(0.85, 1.15)
        fringes = np.cos(2 * np.pi * ((x * np.cos(theta) + y * np.sin(theta)) / period) + rng.uniform(0, 6.3))
        intensity = np.where(disc, 0.8 + 0.18 * fringes + 0.04 * amorph, intensity)
        mask |= disc
    counts = rng.poisson(np.clip(intensity, 0, None) * dose * pixel_size**2)  # dose in e/Å²
    return counts.astype(np.float32), mask.astype(np.uint8)


def _png(a: np.ndarray) -> dict:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a.astype(np.uint8), mode="L").save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def write_dataset(root: Path, config: str = "default", sizes=None, shape=(64, 64), pixel_size: float = 0.5,
                  seed: int = 0, with_masks: bool = True) -> Path:
    """A Hub-layout dataset folder with ``image``, ``mask``, ``pixel_size`` (+ lineage) columns."""
    import datasets

    sizes = sizes or {"train": 24, "validation": 8, "test": 8}
    root = Path(root)
    feats = {"image": datasets.Array2D(shape, "float32"), "pixel_size": datasets.Value("float32"),
             "sample_id": datasets.Value("string"), "dataset_version": datasets.Value("string"),
             "spec_hash": datasets.Value("string"), "config_name": datasets.Value("string")}
    if with_masks:
        feats["mask"] = datasets.Image()
    yaml_files = []
    for k, (split, n) in enumerate(sizes.items()):
        rng = np.random.default_rng([seed, k])
        rows = {c: [] for c in feats}
        for i in range(n):
            img, m = synthetic_image(rng, shape, pixel_size)
            rows["image"].append(img)
            if with_masks:
                rows["mask"].append(_png(m))
            rows["pixel_size"].append(pixel_size)
            rows["sample_id"].append(f"{split}-{i:04d}")
            rows["dataset_version"].append("0.0.1")
            rows["spec_hash"].append("synthetic")
            rows["config_name"].append(config)
        ds = datasets.Dataset.from_dict(rows, features=datasets.Features(feats))
        out = root / "data" / config / f"{split}-00000-of-00001.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(out))
        yaml_files.append(f"  - split: {split}\n    path: data/{config}/{split}-*.parquet\n")
    (root / "README.md").write_text(f"---\nconfigs:\n- config_name: {config}\n  data_files:\n"
                                    + "".join(yaml_files) + "---\n# synthetic test dataset\n")
    return root


def write_exit_wave_dataset(root: Path, config: str = "waves", sizes=None, n: int = 64, sampling: float = 0.25,
                            pixel_size: float = 0.5, phonons: int = 2, seed: int = 0) -> Path:
    """An ``exit_waves`` configuration: weak-phase waves of lattice-fringe discs on a random phase
    background (P frozen-phonon-like copies with small jitter), masks at ``pixel_size``."""
    import datasets

    sizes = sizes or {"train": 4, "validation": 2}
    m = int(round(n * sampling / pixel_size))
    root = Path(root)
    feats = datasets.Features({
        "waves_real": datasets.Array3D((phonons, n, n), "float32"),
        "waves_imag": datasets.Array3D((phonons, n, n), "float32"),
        "mask": datasets.Image(), "pixel_size": datasets.Value("float32"),
        "sampling": datasets.List(datasets.Value("float64")), "energy": datasets.Value("float64"),
        "zero_defocus": datasets.Value("float64"), "sample_id": datasets.Value("string")})
    x = np.arange(n) * sampling
    xx, yy = np.meshgrid(x, x, indexing="ij")
    xm = (np.arange(m) + 0.5) * pixel_size
    mx, my = np.meshgrid(xm, xm, indexing="ij")
    parts = []
    for k, (split, count) in enumerate(sizes.items()):
        rng = np.random.default_rng([seed, 100 + k])
        rows = {c: [] for c in feats}
        for i in range(count):
            r = rng.uniform(3.0, 5.0)
            cx, cy = rng.uniform(r, n * sampling - r, size=2)
            theta = rng.uniform(0, np.pi)
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            fr = np.cos(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / 2.35)
            bg = ndimage.gaussian_filter(rng.standard_normal((n, n)), 2.0)
            phase = np.stack([0.05 * bg / bg.std() + disc * (0.6 + 0.3 * fr)
                              + 0.01 * rng.standard_normal((n, n)) for _ in range(phonons)])
            w = np.exp(1j * phase).astype(np.complex64)
            rows["waves_real"].append(w.real.astype(np.float32))
            rows["waves_imag"].append(w.imag.astype(np.float32))
            rows["mask"].append(_png(((mx - cx) ** 2 + (my - cy) ** 2 <= r * r).astype(np.uint8)))
            rows["pixel_size"].append(pixel_size)
            rows["sampling"].append([sampling, sampling])
            rows["energy"].append(300e3)
            rows["zero_defocus"].append(0.0)
            rows["sample_id"].append(f"{split}-{i}")
        out = root / "data" / config / f"{split}-00000-of-00001.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(out))
        parts.append(f"  - split: {split}\n    path: data/{config}/{split}-*.parquet\n")
    (root / "README.md").write_text(f"---\nconfigs:\n- config_name: {config}\n  data_files:\n"
                                    + "".join(parts) + "---\n# synthetic exit waves\n")
    return root


def write_user_folder(root: Path, n: int = 5, seed: int = 3, pixel_size: float = 0.5) -> Path:
    """Labelled 'real' micrographs: 16-bit TIFFs with ImageJ calibration (nm) + same-name mask PNGs,
    32 Å × 32 Å fields of view."""
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        size = int(round(32 / pixel_size))
        img, m = synthetic_image(rng, (size, size), pixel_size)
        tifffile.imwrite(root / "images" / f"mic{i}.tif", img.astype(np.uint16), imagej=True,
                         resolution=(1 / (pixel_size / 10), 1 / (pixel_size / 10)), metadata={"unit": "nm"})
        Image.fromarray(m * 255).save(root / "masks" / f"mic{i}.png")
    return root
