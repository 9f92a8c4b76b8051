"""Benchmark: build the reference scene and print one JSON object with the median build time.

Reference scene (issue 2): 12.8 × 12.8 × 4 nm amorphous carbon at 2.0 g/cm³ (min C–C 1.4 Å) plus one
Au sphere of radius 2.5 nm with one twin (≈ 70k atoms). Target: median < 0.5 s on 2 CPU cores
(Construction Zone: 23 s for the same scene). Different seeds per repeat so no cache helps the substrate.

Usage: python benchmarks/structures.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from hrtem_dataset.specs import SceneSpec
from hrtem_dataset.structures import build_scene

REFERENCE = {
    "cell": {"x": 128.0, "y": 128.0},
    "substrate": {"kind": "amorphous_carbon", "thickness": 40.0, "density": 2.0, "min_distance": 1.4},
    "particles": [{"material": "Au", "shape": "sphere", "radius": 25.0, "twins": 1, "orientation": "random"}],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    spec = SceneSpec.model_validate(REFERENCE)
    build_scene(spec, 10_000)  # warm-up: imports, lru caches of crystals
    times, cpu, atoms = [], [], None
    for i in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        atoms = build_scene(spec, i)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    pid = atoms.arrays["particle_id"]
    print(json.dumps({
        "benchmark": "structures.reference_scene",
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
        "median_cpu_s": round(statistics.median(cpu), 4),  # CPU time of this process (all threads)
        "repeats": args.repeats,
        "target_s": 0.5,
        "n_atoms": int(len(atoms)),
        "n_substrate": int((pid < 0).sum()),
        "n_particle": int((pid >= 0).sum()),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
