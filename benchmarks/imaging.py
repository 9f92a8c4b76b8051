"""Imaging throughput: images/s for 640×640 exit waves (0.1 Å) with 8 frozen-phonon configurations each,
imaged with a different random condition per image (defocus, Cs, astigmatism, focal and angular spread,
aperture 20–40 mrad, dose) and Fourier-cropped to 0.2 Å pixels (320×320), with MTF and shot noise.

Two paths of :func:`hrtem_dataset.imaging.image_batch`, alternately in the same process on the same waves and
the same cycle of conditions, ``--repeats`` times each: ``full`` (the reference: inverse FFT and |ψ|² on the
640² simulation grid) and ``cropped`` (``cropped_ifft=True``: the same images to float32 rounding, inverse
FFT and |ψ|² on the smallest FFT-friendly grid that holds the aperture-limited output band). Reports min and
median images/s per path and their ratio, plus the largest relative difference of the noise-free images.

``--images-per-wave K`` (default 1: every image has its own waves, the worst case) images each set of waves
under K conditions with one forward FFT (``spectrum=``, as the dataset's images stage does for the
``images_per_structure`` images of a structure); the forward FFT is inside the timed step.

Runs on CPU always and on CUDA when available; prints one JSON object. ``cropped_ifft`` applies on the CPU
only (on CUDA both paths are the full grid since it measured 0.37× there, H200 2026-11-30: 1,386 vs 3,752
images/s); the key ``cropped_ifft_applies`` says which.
Usage: python benchmarks/imaging.py [--seconds 3] [--repeats 3] [--cpu-batch 2] [--cuda-batch 32]
[--images-per-wave 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import torch

from hrtem_dataset.imaging import image_batch
from hrtem_dataset.spectra import fft2

N, PHONONS, SAMPLING, PIXEL = 640, 8, 0.1, 0.2
MTF = {"floor": 0.05, "half_width": 0.6, "power": 2.0}
PATHS = {"full": False, "cropped": True}


def random_conditions(batch: int, device: torch.device, g: torch.Generator) -> dict[str, torch.Tensor]:
    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(batch, generator=g, device=device, dtype=torch.float64)

    return {
        "defocus": u(-200, 200),
        "Cs": u(-2e4, 2e4),
        "C12": u(0, 30),
        "phi12": u(0, math.pi),
        "focal_spread": u(10, 50),
        "angular_spread": u(0.1, 0.5),
        "semiangle_cutoff": u(20, 40),
        "dose": u(100, 5000),
    }


def bench(device: torch.device, batch: int, seconds: float, repeats: int, per_wave: int = 1) -> dict:
    g = torch.Generator(device=device)
    g.manual_seed(0)
    if per_wave > 1:  # one set of waves, ``per_wave`` conditions: the batch is the conditions
        batch = per_wave
    phase = 0.3 * torch.randn((1 if per_wave > 1 else batch, PHONONS, N, N), generator=g, device=device)
    waves = torch.polar(torch.ones_like(phase), phase).expand(batch, -1, -1, -1)
    conditions = [random_conditions(batch, device, g) for _ in range(16)]  # the same cycle for both paths

    def step(k: int, cropped: bool):
        spectrum = fft2(waves[:1]) if per_wave > 1 else None  # shared: one forward FFT per set of waves
        out = image_batch(waves, SAMPLING, 300e3, conditions[k % len(conditions)], PIXEL, g, mtf=MTF,
                          cropped_ifft=cropped, spectrum=spectrum)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    # agreement of the two paths on noise-free images (no dose) for the whole cycle of conditions
    worst = 0.0
    for cond in conditions:
        clean = {k: v for k, v in cond.items() if k != "dose"}
        a = image_batch(waves, SAMPLING, 300e3, clean, PIXEL, mtf=MTF)
        b = image_batch(waves, SAMPLING, 300e3, clean, PIXEL, mtf=MTF, cropped_ifft=True)
        worst = max(worst, float((a - b).abs().max() / a.abs().max()))
    rates: dict[str, list[float]] = {name: [] for name in PATHS}
    out = None
    for cropped in PATHS.values():
        out = step(0, cropped)  # warm-up (plans, allocations, caches)
    for _ in range(repeats):
        for name, cropped in PATHS.items():
            n, k, t0 = 0, 0, time.perf_counter()
            while True:
                step(k, cropped)
                n, k = n + batch, k + 1
                elapsed = time.perf_counter() - t0
                if elapsed >= seconds:
                    break
            rates[name].append(n / elapsed)
    result = {f"{name}_images_per_s": {"min": round(min(r), 2), "median": round(statistics.median(r), 2),
                                       "runs": [round(v, 2) for v in r]} for name, r in rates.items()}
    result.update({
        "speedup_median": round(statistics.median(rates["cropped"]) / statistics.median(rates["full"]), 2),
        "cropped_ifft_applies": device.type == "cpu",
        "max_relative_difference_noise_free": float(f"{worst:.3g}"),
        "batch": batch,
        "images_per_wave": per_wave,
        "seconds_per_run": seconds,
        "repeats": repeats,
        "output_shape": list(out.shape[1:]),
    })
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu-batch", type=int, default=2)
    ap.add_argument("--cuda-batch", type=int, default=32)
    ap.add_argument("--images-per-wave", type=int, default=1,
                    help="conditions per set of waves sharing one forward FFT (1: every image its own waves)")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    result = {
        "benchmark": "imaging",
        "input": f"{N}x{N} complex64 at {SAMPLING} A, {PHONONS} phonon configurations per image",
        "output": f"float32 at {PIXEL} A pixels, per-image CTF + envelopes + aperture + MTF + Poisson noise",
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "cpu": bench(torch.device("cpu"), args.cpu_batch, args.seconds, args.repeats, args.images_per_wave),
    }
    if torch.cuda.is_available():
        result["cuda_device"] = torch.cuda.get_device_name(0)
        result["cuda"] = bench(torch.device("cuda"), args.cuda_batch, args.seconds, args.repeats, args.images_per_wave)
    else:
        result["cuda"] = None
    result["load_average_1min"] = {"start": round(load0, 2), "end": round(os.getloadavg()[0], 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
