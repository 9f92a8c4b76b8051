"""Pipeline throughput: the stages of one shard of configs/demo.yaml, then the same shard as a Dagster
partition run with every artifact already on disk (the orchestration overhead of a resumed partition).

Prints one JSON object: per-stage seconds and throughput (atoms/s, exit waves/s, images/s), the
dataset assembly rate and the Dagster overhead. Usage: python benchmarks/pipeline.py [CONFIG.yaml]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

from dagster_project.assets import PARTITIONED, build_config_assets, load_config, shard_keys
from dagster_project.resources import PublishTarget, SimulationEngine, Workspace
from hrtem_dataset import pipeline as pl


def main(config: str) -> dict:
    src = load_config(config)
    spec = src.spec
    with tempfile.TemporaryDirectory(prefix="hrtem-bench-") as tmp:
        root = Path(tmp) / "ws"
        t0 = time.perf_counter()
        pl.plan_structures(spec, root)
        s = pl.build_structures_shard(spec, 0, root)
        w = pl.simulate_shard(spec, 0, root)
        i = pl.image_shard(spec, 0, root)
        stages_s = time.perf_counter() - t0
        assets = build_config_assets(src)
        resources = {"workspace": Workspace(root=str(root)), "simulation": SimulationEngine(),
                     "publish_target": PublishTarget(local_dir=str(Path(tmp) / "out"))}
        t1 = time.perf_counter()
        res = dg.materialize(assets, selection=[dg.AssetKey([src.group, n]) for n in PARTITIONED],
                             partition_key=shard_keys(spec)[0], instance=dg.DagsterInstance.ephemeral(),
                             resources=resources, run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}})
        overhead = time.perf_counter() - t1
        assert res.success
    return {
        "config": str(src.path), "shard_structures": s["structures"], "device": w["device"], "engine": w["engine"],
        "structures_atoms_per_s": round(s["atoms_per_s"], 1), "structures_s": round(s["seconds"], 3),
        "exit_waves_per_s": round(w["waves_per_s"], 3), "simulation_atoms_per_s": round(w["atoms_per_s"], 1),
        "exit_waves_s": round(w["seconds"], 3), "images_per_s": round(i["images_per_s"], 3),
        "imaging_s": round(i["seconds"], 3), "zero_defocus_calibration_s": round(i["calibration_s"], 3),
        "shard_total_s": round(stages_s, 3),
        "dagster_resumed_partition_run_s": round(overhead, 3),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parents[1] / "configs" / "demo.yaml"))))
