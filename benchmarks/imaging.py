"""Imaging throughput: images/s for 640×640 exit waves (0.1 Å) with 8 frozen-phonon configurations each,
imaged with a different random condition per image (defocus, Cs, astigmatism, focal and angular spread,
aperture, dose) and Fourier-cropped to 0.2 Å pixels (320×320), with MTF and shot noise.

Runs on CPU always and on CUDA when available; prints one JSON object.
Usage: python benchmarks/imaging.py [--seconds 10] [--cpu-batch 2] [--cuda-batch 32]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import torch

from hrtem_dataset.imaging import image_batch

N, PHONONS, SAMPLING, PIXEL = 640, 8, 0.1, 0.2


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


def bench(device: torch.device, batch: int, seconds: float) -> dict:
    g = torch.Generator(device=device)
    g.manual_seed(0)
    phase = 0.3 * torch.randn((batch, PHONONS, N, N), generator=g, device=device)
    waves = torch.polar(torch.ones_like(phase), phase)
    mtf = {"floor": 0.05, "half_width": 0.6, "power": 2.0}

    def step():
        out = image_batch(waves, SAMPLING, 300e3, random_conditions(batch, device, g), PIXEL, g, mtf=mtf)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    out = step()  # warm-up (plans, allocations)
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += batch
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    return {
        "images_per_s": round(n / elapsed, 2),
        "batch": batch,
        "images": n,
        "seconds": round(elapsed, 2),
        "output_shape": list(out.shape[1:]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--cpu-batch", type=int, default=2)
    ap.add_argument("--cuda-batch", type=int, default=32)
    args = ap.parse_args()
    result = {
        "benchmark": "imaging",
        "input": f"{N}x{N} complex64 at {SAMPLING} A, {PHONONS} phonon configurations per image",
        "output": f"float32 at {PIXEL} A pixels, per-image CTF + envelopes + aperture + MTF + Poisson noise",
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "machine": platform.processor() or platform.machine(),
        "cpu": bench(torch.device("cpu"), args.cpu_batch, args.seconds),
    }
    if torch.cuda.is_available():
        result["cuda_device"] = torch.cuda.get_device_name(0)
        result["cuda"] = bench(torch.device("cuda"), args.cuda_batch, args.seconds)
    else:
        result["cuda"] = None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
