"""The generalist configurations (sim-to-real) and the realistic training augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from hrtem_dataset.specs import Choice, DatasetSpec, load_spec
from models.augment import degrade
from models.data import CropBatches, Sample

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["au-generalist-cpu.yaml", "au-generalist.yaml"])
def test_generalist_configs_validate_and_cover_real_conditions(name):
    spec = load_spec(CONFIGS / name, DatasetSpec)
    im = spec.imaging
    assert im.pixel_size == 0.4
    rec = im.recorded_pixel_size
    assert isinstance(rec, Choice) and min(rec.values) <= 0.2 and max(rec.values) >= 0.8
    assert spec.structures.n_particles.min == 0  # cells without particles
    assert spec.structures.cell.x >= 128.0  # particles of real sizes fit
    assert spec.structures.particles.radius.min <= 10.0 and spec.structures.particles.radius.max >= 35.0
    assert {"C12", "C21", "C23"} <= set(im.aberrations)  # residual astigmatism, coma, three-fold
    assert spec.model is not None and spec.model.augment == "realistic"
    assert set(spec.structures.particles.shapes.values) == {"sphere", "wulff", "decahedron", "icosahedron"}


def test_degrade_is_seeded_standardised_and_applies_each_step():
    rng = np.random.default_rng(0)
    x = ndimage.gaussian_filter(rng.standard_normal((96, 96)), 1.5).astype(np.float32)
    x = (x - x.mean()) / x.std()
    a = degrade(x, np.random.default_rng(5))
    b = degrade(x, np.random.default_rng(5))
    assert a.dtype == np.float32 and a.shape == x.shape and np.array_equal(a, b)
    outs = [degrade(x, np.random.default_rng(s)) for s in range(60)]
    for o in outs:
        assert abs(float(o.mean())) < 1e-4 and float(o.std()) == pytest.approx(1.0, abs=1e-3)
    # 8-bit quantisation shows as few distinct levels; clipping as a flat maximum; most draws change the crop
    assert any(len(np.unique(o)) <= 256 for o in outs)
    assert sum(not np.allclose(o, x, atol=1e-3) for o in outs) >= 50
    # blur and median filtering lower the high-frequency content in some draws
    hf = lambda im: float(np.abs(np.diff(im, axis=0)).mean())  # noqa: E731
    assert min(hf(o) for o in outs) < 0.8 * hf(x)


def test_crop_batches_realistic_is_reproducible():
    rng = np.random.default_rng(1)
    samples = [Sample(rng.poisson(50, (64, 64)).astype(np.float32), (rng.random((64, 64)) > 0.7).astype(np.uint8),
                      0.4, f"s{i}") for i in range(4)]
    b1 = list(CropBatches(samples, 32, 2, seed=3, augment="realistic").epoch(0))
    b2 = list(CropBatches(samples, 32, 2, seed=3, augment="realistic").epoch(0))
    plain = list(CropBatches(samples, 32, 2, seed=3, augment=True).epoch(0))
    assert all(np.array_equal(x1, x2) and np.array_equal(y1, y2) for (x1, y1), (x2, y2) in zip(b1, b2, strict=True))
    assert any(not np.allclose(x1, x0) for (x1, _), (x0, _) in zip(b1, plain, strict=True))
