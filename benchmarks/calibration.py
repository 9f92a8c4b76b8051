"""Zero-defocus calibration: the paper's grid search vs ``search="fast"`` (particle windows + golden-section
refinement) on the particles-in-vacuum exit waves of one shard of a configuration (default
configs/au-baseline-cpu.yaml: 8 structures, 640² at 0.1 Å). Both searches run in the same process on the same
waves, alternately, ``--repeats`` times; prints one JSON object with min and median seconds per structure,
the ratio and the largest difference between the two calibrated values.

Usage: python benchmarks/calibration.py [CONFIG.yaml] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hrtem_dataset import pipeline as pl
from hrtem_dataset.imaging.calibration import calibrate_zero_defocus, particle_windows
from hrtem_dataset.specs import DatasetSpec, load_spec
from hrtem_dataset.workspace import shard_indices


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default="configs/au-baseline-cpu.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    spec = load_spec(args.config, DatasetSpec)
    steps = tuple(spec.imaging.calibration_steps)
    with tempfile.TemporaryDirectory(prefix="hrtem-bench-") as tmp:
        root = Path(tmp)
        pl.plan_structures(spec, root)
        pl.build_structures_shard(spec, 0, root)
        pl.simulate_shard(spec, 0, root)
        items = []
        for i in shard_indices(spec, 0):
            w = pl.load_waves(spec, i, root)
            items.append((w["particles"], w["sampling"], w["energy"], pl.read_structure(spec, i, root)))
    times: dict[str, list[float]] = {"grid": [], "fast": []}
    values: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for search in ("grid", "fast"):
            t0 = time.perf_counter()
            values[search] = [calibrate_zero_defocus(w, s, e, atoms=a, steps=steps, search=search)
                              for w, s, e, a in items]
            times[search].append((time.perf_counter() - t0) / len(items))
    windowed = sum(particle_windows(a, w.shape[-2:], s) is not None for w, s, _, a in items)
    return {
        "benchmark": "zero_defocus_calibration", "config": args.config, "structures": len(items),
        "wave_shape": list(items[0][0].shape), "steps": list(steps), "structures_with_windows": windowed,
        "grid_s_per_structure": {"min": round(min(times["grid"]), 4), "median": round(statistics.median(times["grid"]), 4)},
        "fast_s_per_structure": {"min": round(min(times["fast"]), 4), "median": round(statistics.median(times["fast"]), 4)},
        "speedup_median": round(statistics.median(times["grid"]) / statistics.median(times["fast"]), 2),
        "max_abs_difference_A": max(abs(a - b) for a, b in zip(values["grid"], values["fast"], strict=True)),
        "repeats": args.repeats, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "machine": platform.machine(), "load_average_1min": round(os.getloadavg()[0], 2),
    }


if __name__ == "__main__":
    print(json.dumps(main()))
