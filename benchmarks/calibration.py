"""Zero-defocus calibration: the paper's grid search vs ``search="fast"`` (band-limited coarse scan confirmed
on the full wave, particle windows, a downhill walk over the fine grid values from a parabola's vertex) and
``search="parabolic"`` (the scan confirmed on the waves' band-limited grid, a parabola's vertex) on the
particles-in-vacuum exit waves of the first ``--shards`` shards of a configuration (default
configs/au-baseline-cpu.yaml, one shard: 8 structures, 640² at 0.1 Å). The searches run in the same
process on the same waves, alternately, ``--repeats`` times; prints one JSON object with min and median
seconds per structure, the ratios, how many structures get the grid search's value and the largest
difference from it, and the mean number of full-band evaluations of the fast and parabolic searches (the
grid search does every value of every stage: ``grid_evaluations_mean``).

Usage: python benchmarks/calibration.py [CONFIG.yaml] [--repeats 3] [--shards 1] [--threads N]
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
from hrtem_dataset.imaging import calibration
from hrtem_dataset.imaging.calibration import (
    calibrate_zero_defocus,
    defocus_search_range,
    first_stage_grid,
    particle_windows,
)
from hrtem_dataset.specs import DatasetSpec, load_spec
from hrtem_dataset.workspace import shard_indices


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default="configs/au-baseline-cpu.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shards", type=int, default=1, help="calibrate the structures of the first N shards")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default; the images stage gives each worker 1)")
    args = ap.parse_args()
    if args.shards < 1:
        ap.error("--shards must be >= 1")
    spec = load_spec(args.config, DatasetSpec)
    steps = tuple(spec.imaging.calibration_steps)
    with tempfile.TemporaryDirectory(prefix="hrtem-bench-") as tmp:
        root = Path(tmp)
        pl.plan_structures(spec, root)
        items = []
        for shard in range(min(args.shards, spec.n_shards)):
            pl.build_structures_shard(spec, shard, root)
            pl.simulate_shard(spec, shard, root)
            for i in shard_indices(spec, shard):
                a = pl.read_structure(spec, i, root)
                if "particle_id" in a.arrays and (a.arrays["particle_id"] >= 0).any():
                    w = pl.load_waves(spec, i, root)
                    items.append((w["particles"], w["sampling"], w["energy"], a))
    evaluations: list[int] = []

    class Counting(calibration._Memo):  # counts the full-band evaluations of the fast and parabolic searches
        def __init__(self, f):
            super().__init__(f)
            evaluations.append(0)

        def __call__(self, defoci):
            before = self.evaluations
            out = super().__call__(defoci)
            evaluations[-1] += self.evaluations - before
            return out

    calibration._Memo = Counting
    if args.threads:
        torch.set_num_threads(args.threads)
    searches = ("grid", "fast", "parabolic")
    times: dict[str, list[float]] = {search: [] for search in searches}
    values: dict[str, list[float]] = {}
    counts: dict[str, float] = {}
    for _ in range(args.repeats):
        for search in searches:
            t0 = time.perf_counter()
            evaluations.clear()
            values[search] = [calibrate_zero_defocus(w, s, e, atoms=a, steps=steps, search=search)
                              for w, s, e, a in items]
            times[search].append((time.perf_counter() - t0) / len(items))
            counts[search] = round(sum(evaluations) / max(len(evaluations), 1), 1)
    windowed = sum(particle_windows(a, w.shape[-2:], s) is not None for w, s, _, a in items)
    result = {
        "benchmark": "zero_defocus_calibration", "config": args.config, "structures": len(items),
        "wave_shape": list(items[0][0].shape), "steps": list(steps), "structures_with_windows": windowed,
        "grid_evaluations_mean": round(sum(first_stage_grid(defocus_search_range(a), steps[0]).size
                                           + sum(2 * round(p / q) + 1 for p, q in zip(steps[:-1], steps[1:], strict=True))
                                           for *_, a in items) / len(items), 1),
    }
    for search in searches:
        result[f"{search}_s_per_structure"] = {"min": round(min(times[search]), 4),
                                               "median": round(statistics.median(times[search]), 4)}
    for search in searches[1:]:
        diffs = [abs(a - b) for a, b in zip(values["grid"], values[search], strict=True)]
        result[search] = {
            "speedup_vs_grid_median": round(statistics.median(times["grid"]) / statistics.median(times[search]), 2),
            "max_abs_difference_A": round(max(diffs), 3), "same_value": sum(d == 0 for d in diffs),
            "full_band_evaluations_mean": counts[search]}
    result["parabolic"]["speedup_vs_fast_median"] = round(
        statistics.median(times["fast"]) / statistics.median(times["parabolic"]), 2)
    result.update({"repeats": args.repeats, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                   "machine": platform.machine(), "load_average_1min": round(os.getloadavg()[0], 2)})
    return result


if __name__ == "__main__":
    print(json.dumps(main()))
