"""Benchmark: write and load a dataset configuration of realistic image size (no physics).

Writes ``--rows`` rows of ``--size``² float32 images (plus masks, instance maps, previews and lineage) with
:func:`hrtem_dataset.dataset.write_dataset_config`, then loads them with ``datasets.load_dataset`` and reads
every image. Prints one JSON object: write/load/read throughput, parquet size, shard count, and whether a
second write gives byte-identical files.

    .venv/bin/python benchmarks/dataset_write.py --rows 48 --size 640
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def rows(n: int, size: int, n_train: int):
    from hrtem_dataset.seeding import derive_seed

    x, y = np.mgrid[:size, :size]
    for i in range(n):
        g = np.random.default_rng(i)
        inst = np.zeros((size, size), np.int32)
        for k in range(1, 4):
            cx, cy, r = g.uniform(0.2, 0.8, 2).tolist() + [g.uniform(0.05, 0.12)]
            inst[((x / size - cx) ** 2 + (y / size - cy) ** 2 < r**2) & (inst == 0)] = k
        yield "train" if i < n_train else "test", {
            "image": g.poisson(200 * (1 - 0.2 * (inst > 0))).astype(np.float32) / 200,
            "mask": inst > 0, "instances": inst, "sample_id": f"s{i:06d}-000", "structure_id": f"s{i:06d}",
            "seed": derive_seed(0, "image", i), "pixel_size": 0.2, "defocus": 50.0, "zero_defocus": -20.0,
            "Cs": 0.0, "dose": 200.0, "focal_spread": 20.0, "angular_spread": 0.2, "aberrations": {},
            "structure": {"particles": [{"material": "Au", "radius": 20.0}] * 3, "substrate": {"thickness": 40.0}},
            "engine_version": "bench",
        }


def build(out: Path, n: int, size: int):
    from hrtem_dataset.dataset import write_dataset_config
    from hrtem_dataset.specs import DatasetSpec, SplitSpec

    n_train = int(0.8 * n)
    spec = DatasetSpec(name="bench", config_name="bench", splits=SplitSpec(train=n_train, validation=0,
                                                                           test=n - n_train))
    by_split: dict[str, list] = {"train": [], "test": []}
    for split, row in rows(n, size, n_train):
        by_split[split].append(row)
    t = time.perf_counter()
    write_dataset_config(by_split, spec, out)
    return time.perf_counter() - t


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((folder / "data").rglob("*.parquet")):
        h.update(p.read_bytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--size", type=int, default=640)
    args = ap.parse_args()
    import datasets

    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        t_write = build(a, args.rows, args.size)
        build(b, args.rows, args.size)
        files = sorted((a / "data").rglob("*.parquet"))
        nbytes = sum(p.stat().st_size for p in files)
        t = time.perf_counter()
        ds = datasets.load_dataset(str(a), "bench", cache_dir=str(Path(tmp) / "cache"))
        t_load = time.perf_counter() - t
        t = time.perf_counter()
        n_read = 0
        for row in ds["train"].with_format("numpy"):
            n_read += int(row["image"].shape[0] > 0)
        t_read = time.perf_counter() - t
        print(json.dumps({
            "rows": args.rows, "image_size": args.size, "write_s": round(t_write, 3),
            "write_rows_per_s": round(args.rows / t_write, 2), "parquet_mb": round(nbytes / 2**20, 2),
            "shards": len(files), "load_dataset_s": round(t_load, 3),
            "read_train_rows_per_s": round(n_read / t_read, 2), "byte_identical_rebuild": digest(a) == digest(b),
        }))


if __name__ == "__main__":
    main()
