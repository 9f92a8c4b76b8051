"""The accelerator paths against the CPU reference: exit waves, images, zero-defocus calibration, on-the-fly
imaging and AMP training on the device under test, compared with the same computation on the CPU.

The device under test is ``HRTEM_TEST_DEVICE`` when set, else ``cuda`` when torch sees a GPU, else the CPU: on
a machine without a GPU (CI) every comparison runs CPU against CPU, which keeps these tests themselves working
(and the batching, noise and training checks meaningful) until a GPU runs them (``benchmarks/gpu_checks.sh``).

Tolerances: the CUDA engine's structure factors are scatter-adds with atomics (summation order not fixed) and
cuFFT rounds differently from the CPU's FFT, so the waves agree to float32 rounding accumulated over the slices
(relative L2 ≤ 1e-5), not bit for bit; images inherit that; the dose noise comes from each device's own
generator, so noisy images are compared by their statistics and their reproducibility on the device.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from ase import Atoms
from sim_scenes import small_scene

DEVICE = os.environ.get("HRTEM_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def rel_l2(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def scene(seed: int = 0) -> Atoms:
    """A 24 Å cell (240² at 0.1 Å): 12 Å of amorphous carbon and an Au cluster (r 6 Å) tagged ``particle_id`` 0."""
    return small_scene(cell=24.0, carbon=12.0, radius=6.0, seed=seed)


@pytest.fixture(scope="module")
def waves():
    """The scene (2 phonon configurations) and its particles, simulated on the device and on the CPU."""
    from hrtem_dataset.simulation import simulate_scene
    from hrtem_dataset.specs import SimulationSpec

    atoms = scene()
    out = {}
    for dev in ("cpu", DEVICE):
        spec = SimulationSpec(energy=300e3, sampling=0.1, slice_thickness=2.0, phonons=2, device=dev)
        out[dev] = simulate_scene(atoms, spec, seed=7)
    return atoms, out["cpu"], out[DEVICE]


def test_exit_waves_match_the_cpu(waves):
    _, cpu, dev = waves
    assert dev["device"].startswith(DEVICE) and dev["scene"].shape == cpu["scene"].shape == (2, 240, 240)
    assert rel_l2(dev["scene"], cpu["scene"]) < 1e-5
    assert rel_l2(dev["particles"], cpu["particles"]) < 1e-5
    assert abs(float(np.abs(cpu["scene"]).mean()) - 1.0) < 0.2  # a real specimen, not an all-vacuum wave


def test_batched_waves_on_the_device_equal_one_at_a_time():
    """Several structures of one cell in one batch (the engine's GPU mode) give each structure's own wave."""
    from hrtem_dataset.simulation import simulate_exit_waves

    structures = [scene(seed=s) for s in (1, 2, 3)]
    for a in structures:
        a.cell = structures[0].cell  # one cell (same slicing): one batch
    together = simulate_exit_waves(structures, sampling=0.1, phonons=2, seed=[4, 5, 6], device=DEVICE)
    for a, s, w in zip(structures, (4, 5, 6), together, strict=True):
        alone = simulate_exit_waves(a, sampling=0.1, phonons=2, seed=s, device=DEVICE)[0]
        assert rel_l2(w, alone) < 1e-5  # batched and single cuFFT plans round differently


def _conditions(batch: int, device) -> dict:
    g = torch.Generator().manual_seed(1)

    def u(lo, hi):
        return (lo + (hi - lo) * torch.rand(batch, generator=g, dtype=torch.float64)).to(device)

    return {"defocus": u(-150, 150), "Cs": u(-2e4, 2e4), "C12": u(0, 20), "phi12": u(0, math.pi),
            "focal_spread": u(0, 40), "angular_spread": u(0, 0.4),
            "semiangle_cutoff": torch.tensor([25.0, math.inf, 40.0, 30.0][:batch], dtype=torch.float64).to(device)}


@pytest.mark.parametrize("cropped", [False, True])
def test_noise_free_images_match_the_cpu(waves, cropped):
    from hrtem_dataset.imaging import image_batch

    _, cpu, _ = waves
    w = torch.from_numpy(np.stack([cpu["scene"]] * 4))  # (4, P, nx, ny): four conditions
    ref = image_batch(w, 0.1, 300e3, _conditions(4, "cpu"), pixel_size=0.2, cropped_ifft=cropped,
                      mtf={"floor": 0.05, "half_width": 0.6, "power": 2.0})
    got = image_batch(w.to(DEVICE), 0.1, 300e3, _conditions(4, DEVICE), pixel_size=0.2, cropped_ifft=cropped,
                      mtf={"floor": 0.05, "half_width": 0.6, "power": 2.0})
    assert got.device.type == torch.device(DEVICE).type and got.shape == ref.shape == (4, 120, 120)
    assert rel_l2(got.cpu().numpy(), ref.numpy()) < 1e-5
    assert float(ref.std()) > 0.01  # contrast to compare


def test_noisy_images_are_reproducible_and_poisson_on_the_device(waves):
    from hrtem_dataset.imaging import image_batch

    _, cpu, _ = waves
    w = torch.from_numpy(np.stack([cpu["scene"]] * 2)).to(DEVICE)
    cond = {"defocus": torch.tensor([40.0, -60.0], dtype=torch.float64, device=DEVICE),
            "dose": torch.tensor([800.0, 800.0], device=DEVICE)}
    clean = image_batch(w, 0.1, 300e3, {"defocus": cond["defocus"]}, pixel_size=0.2)
    images = []
    for _ in range(2):
        gen = torch.Generator(device=DEVICE).manual_seed(11)
        images.append(image_batch(w, 0.1, 300e3, cond, pixel_size=0.2, generator=gen))
    assert torch.equal(images[0], images[1])
    expected = clean * 800.0 * 0.2 * 0.2  # counts per pixel: intensity × dose × pixel area
    resid = (images[0] - expected) / expected.clamp_min(1e-6).sqrt()
    assert abs(float(images[0].mean() / expected.mean()) - 1.0) < 0.01
    assert 0.9 < float(resid.std()) < 1.1  # Poisson: variance = mean


@pytest.mark.parametrize("search", ["grid", "fast", "parabolic"])
def test_zero_defocus_calibration_matches_the_cpu(waves, search):
    from hrtem_dataset.imaging import calibrate_zero_defocus

    atoms, cpu, _ = waves
    values = [calibrate_zero_defocus(cpu["particles"], cpu["sampling"], cpu["energy"], atoms=atoms, device=dev,
                                     search=search) for dev in ("cpu", DEVICE)]
    assert abs(values[0] - values[1]) <= 0.1 + 1e-9, values  # at most one fine step apart (float rounding)


def test_on_the_fly_imaging_on_the_device(waves):
    from hrtem_dataset.specs import ImagingDistributionSpec
    from models.data import OnTheFlyImaging, WaveSample

    _, cpu, _ = waves
    mask = np.zeros((120, 120), np.uint8)
    mask[40:80, 40:80] = 1
    samples = [WaveSample(cpu["scene"], cpu["sampling"], cpu["energy"], mask, 0.2, name=f"s{i}") for i in range(3)]
    spec = ImagingDistributionSpec(pixel_size=0.2, defocus={"min": -80.0, "max": 80.0}, dose=1000.0)
    batches = [next(iter(OnTheFlyImaging(samples, spec, crop=120, batch_size=3, seed=0, device=DEVICE).epoch(0)))
               for _ in range(2)]
    (x, y), (x2, y2) = batches
    assert tuple(x.shape) == (3, 1, 120, 120) and tuple(y.shape) == (3, 120, 120)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # seeded on the device too
    assert abs(float(x.mean())) < 1e-3 and 0.9 < float(x.std()) < 1.1  # standardised images


def test_amp_training_on_the_device_learns(tmp_path):
    """The training loop's device path (autocast + GradScaler on CUDA) on labelled micrographs: the loss falls."""
    from models_synthetic import write_user_folder

    from models import train

    data = write_user_folder(tmp_path / "lab", n=10, seed=5)
    res = train(user_data=data, out_dir=tmp_path / "model", encoder="tu-resnet18", encoder_depth=3,
                decoder_channels=(16, 8, 8), steps=40, batch_size=4, lr=3e-3, seed=0, progress=False,
                device=DEVICE)
    hist = res["history"]
    assert res["completed"] and np.isfinite(hist[-1]["train_loss"])
    assert hist[-1]["train_loss"] < 0.7 * hist[0]["train_loss"], [h["train_loss"] for h in hist]
