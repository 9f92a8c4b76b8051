"""Benchmark: build the reference scene and print one JSON object with the median build time.

Reference scene (issue 2): 12.8 × 12.8 × 4 nm amorphous carbon at 2.0 g/cm³ (min C–C 1.4 Å) plus one
Au sphere of radius 2.5 nm with one twin (≈ 70k atoms). Target: median < 0.5 s on 2 CPU cores
(Construction Zone: 23 s for the same scene). Different seeds per repeat so no cache helps the substrate.

Also the scene file of the last scene built (``write_extxyz``; the structures stage writes one per structure):
its median write time with the atom lines formatted as arrays (``write_extxyz_s``) and with the %-format they
replace (``write_extxyz_percent_s``), alternating in this process (the same bytes: ``same_bytes``), and the
median time to read it back (``read_extxyz_s``).

Usage: python benchmarks/structures.py [--repeats 7]
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

from hrtem_dataset.specs import SceneSpec
from hrtem_dataset.structures import build_scene, exporters, read_extxyz, write_extxyz

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
    io = scene_file_times(atoms, args.repeats)
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
        **io,
        "cpu_count": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }))


def scene_file_times(atoms, repeats: int) -> dict:
    """Median seconds to write ``atoms`` as extxyz (array-formatted and %-formatted atom lines, alternating) and to
    read it back, and whether both writers gave the same bytes."""
    arrays = exporters._atom_lines
    times: dict[str, list[float]] = {"write_extxyz_s": [], "write_extxyz_percent_s": [], "read_extxyz_s": []}
    with tempfile.TemporaryDirectory() as d:
        paths = {"write_extxyz_s": Path(d) / "arrays.extxyz", "write_extxyz_percent_s": Path(d) / "percent.extxyz"}
        try:
            for _ in range(repeats):
                for key, path in paths.items():
                    exporters._atom_lines = arrays if key == "write_extxyz_s" else (lambda *a: None)
                    t0 = time.perf_counter()
                    write_extxyz(atoms, path)
                    times[key].append(time.perf_counter() - t0)
        finally:
            exporters._atom_lines = arrays
        for _ in range(repeats):
            t0 = time.perf_counter()
            read_extxyz(paths["write_extxyz_s"])
            times["read_extxyz_s"].append(time.perf_counter() - t0)
        same = paths["write_extxyz_s"].read_bytes() == paths["write_extxyz_percent_s"].read_bytes()
    return {**{k: round(statistics.median(v), 4) for k, v in times.items()}, "same_bytes": same}


if __name__ == "__main__":
    main()
