"""Pipeline throughput: the stages of shard 0 of a configuration (labelled images per hour, seconds and peak
memory per stage), then the same shard as a Dagster partition run with every artifact already on disk (the
orchestration overhead of a resumed partition: ``dagster_resumed_partition_run_s``, the first such run in the
process, and ``dagster_resumed_partition_warm_s``, three more).

Usage: python benchmarks/pipeline.py [CONFIG.yaml] [--structures N] [--no-dagster] [--images-workers-ab]
                                    [--workspace DIR [--structures-only]]

- ``--structures N`` runs only the first N structures of shard 0 (for paper-scale configurations). It
  changes the shard size only: shard 0 becomes the first N structures of the original shard 0, with the
  same seeds (they derive from ``spec.seed`` and the structure index) and the same splits.
- ``--no-dagster`` skips the Dagster part (``dagster_resumed_partition_run_s`` and ``…_warm_s`` are null).
- ``--images-workers-ab`` reruns the images stage (fresh subprocesses, the same shard) alternately with one
  worker and with its own number, twice each: ``images_workers_ab`` (null without the flag).
- ``--workspace DIR`` keeps the workspace in DIR instead of a temporary folder; the stages reuse what DIR
  already holds (``reused`` counts per stage; a reused stage's seconds are those of finding its files). With
  ``--structures-only`` only the structures stage runs (one JSON line of its stats). Together they let a
  machine that cannot build the structures (a GPU image without pymatgen) run the other stages on structures
  built elsewhere: the workspace's plan (``structure_specs.jsonl``) is kept as it is, and
  ``labelled_images_per_hour`` excludes building the structures (``structures_reused`` > 0).

Timing: each stage's own ``seconds`` (the stage function, without interpreter start-up and imports).
``labelled_images_per_hour`` = labelled rows of the shard / (structures + exit waves + images seconds) ×
3600; for ``kind: exit_waves`` configurations the rows are labelled structures (no images are rendered).
The images stage images ``images_workers`` structures at once (see ``hrtem_dataset.stages.images``): its
``imaging_s`` is wall time, ``imaging_work_s``, ``zero_defocus_calibration_s`` and ``particle_spectrum_s`` (the
particle waves' forward transform, shared by the calibration and the labels and timed on its own: the labels
need it without a calibration) are seconds summed over the workers. ``zero_defocus_calibration_share_of_imaging`` (calibration seconds / the stage's work seconds) and
``exit_waves_share_of_labelled_stages``: the shares the speed targets are stated in.

FFT floor (CPU): the exit-wave stage counts the FFTs its multislice runs (the engine's phase profiler), then
runs as many on their own, single-threaded, split over as many threads as it has torch threads
(``exit_waves_fft_floor``: counts, threads, wall seconds of two runs and their best ``wall_s``);
``exit_waves_over_fft_floor`` is the stage's time over that wall time (1.0 = nothing but the transforms the
multislice must do), and
``labelled_images_per_hour_fft_bound`` the labelled images per hour if the exit waves took only that time and
the structures and images stages none: an upper bound for this configuration on this machine, whatever else
gets faster. Null on a GPU.

Memory: the plan runs here; each of the three stages runs in a fresh Python subprocess of this script
(``--stage``) that reads the previous stage's files from the temporary workspace, and reports ``VmHWM``
(peak resident set size of its own address space, /proc/self/status) after the stage. Not
``getrusage(RUSAGE_SELF).ru_maxrss``: on Linux that keeps the peak of the parent's address space across
fork + exec, so a child would report at least this process's peak. The peaks include the interpreter and
the imports (``import_rss_mib``: the RSS of the child just before its stage). ``all_stages_under_4gb``:
every stage peak below 4 GB (4e9 bytes), the issue's bound on the reference workloads.

Prints one JSON object (the machine's load average is in it: timings on a shared machine vary with it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("structures", "exit_waves", "images")
LIMIT_BYTES = 4 * 10**9
DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _vm_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(stage: str, spec_file: str, root: str, workers: int | None = None) -> None:
    """``--stage`` mode: run one stage of shard 0 and print its stats and memory as one JSON line
    (``workers``: the images stage's, which then recomputes its shard)."""
    from hrtem_dataset import pipeline as pl
    from hrtem_dataset.specs import DatasetSpec

    spec = DatasetSpec.model_validate_json(Path(spec_file).read_text())
    start = _vm_bytes("VmRSS")
    run = {"structures": pl.build_structures_shard, "exit_waves": pl.simulate_shard, "images": pl.image_shard}
    kw = {"workers": workers, "force": True} if stage == "images" and workers else {}
    profile = None
    if stage == "exit_waves":  # counts the FFTs the multislice runs (a few µs per phase: no slower)
        try:
            from hrtem_dataset.simulation.torch_engine import profile_phases as profile
        except ImportError:  # an older version of the package (A/B runs against earlier commits): no FFT floor
            pass
    with profile() if profile else contextlib.nullcontext({}) as phases:
        stats = run[stage](spec, 0, root, **kw)
    out = {"stats": stats, "import_rss": start, "peak_rss": _vm_bytes("VmHWM")}
    if stage == "exit_waves":
        out["fft_floor"] = _fft_floor(spec, phases) if stats.get("device") == "cpu" else None
    print(json.dumps(out, default=str))


def _fft_floor(spec, phases: dict, repeat: int = 2) -> dict | None:
    """The exit-wave stage's FFTs (counted by the engine's phase profiler) run on their own: split evenly over
    as many Python threads as this process has torch threads, each transform single-threaded (as the engine
    runs them), wall time the best of ``repeat``. The stage's wall time if it did nothing but the transforms the
    multislice must do, with this machine's real parallel speed-up (2 vCPUs can give far less than 2×)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from exit_wave import fft_counts

    from hrtem_dataset.device import single_threaded_torch
    from hrtem_dataset.simulation.torch_engine import Grid

    counts = fft_counts(phases)
    if not any(counts.values()):
        return None
    cell = spec.structures.cell
    gpts = tuple(Grid.from_sampling((cell.x, cell.y), spec.simulation.sampling).gpts)
    threads = max(1, torch.get_num_threads())

    def work(k: int) -> None:
        g = torch.Generator().manual_seed(k)
        z = torch.randn(gpts, dtype=torch.complex64, generator=g)
        r = torch.randn(gpts, generator=g)
        zk = torch.fft.rfft2(r)
        share = {key: n // threads + (k < n % threads) for key, n in counts.items()}
        for j in range(share["fft2_or_ifft2"]):  # as many inverse as forward transforms, as the engine's
            (torch.fft.ifft2 if j % 2 else torch.fft.fft2)(z)
        for _ in range(share["rfft2"]):
            torch.fft.rfft2(r)
        for _ in range(share["irfft2"]):
            torch.fft.irfft2(zk, s=gpts)

    runs = []
    torch.set_num_threads(1)  # one thread per transform, as the engine runs them (this child exits after)
    # and in each pool thread too: threads started later run their OpenMP regions (MKL's real FFTs) on every
    # core otherwise — oversubscribed, 2.6× this floor's time on 2 cores until 0.2.0 (hrtem_dataset.device)
    with ThreadPoolExecutor(max_workers=threads, initializer=single_threaded_torch) as pool:
        for _ in range(repeat):
            t0 = time.perf_counter()
            list(pool.map(work, range(threads)))
            runs.append(time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return {"gpts": list(gpts), "count": counts, "threads": threads, "runs_s": [round(t, 3) for t in runs],
            "wall_s": min(runs)}


def _run_stage(stage: str, spec_file: Path, root: Path, workers: int | None = None) -> dict:
    extra = ["--images-workers", str(workers)] if workers else []
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--stage", stage,
                          "--spec-file", str(spec_file), "--root", str(root), *extra],
                         stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _images_workers_ab(spec_file: Path, root: Path, workers: int, repeats: int = 2) -> dict:
    """The images stage again in fresh subprocesses, alternately with its ``workers`` and with one, ``repeats``
    times each (the same shard bytes either way): wall seconds of both and the median ratio."""
    runs: dict[str, list[float]] = {"default_s": [], "one_worker_s": []}
    for _ in range(repeats):
        for key, n in (("one_worker_s", 1), ("default_s", workers)):
            runs[key].append(round(_run_stage("images", spec_file, root, n)["stats"]["seconds"], 3))
    ratio = statistics.median(runs["one_worker_s"]) / statistics.median(runs["default_s"])
    return {"workers": workers, **runs, "speedup": round(ratio, 3)}


def cap_structures(spec, n: int):
    """``spec`` with shard 0 cut to its first ``n`` structures: same structures, seeds and splits."""
    from hrtem_dataset.specs import SplitSpec

    n = min(n, len(spec.shard_indices(0)))
    splits = {s: sum(spec.split_of(i) == s for i in range(n)) for s in ("train", "validation", "test")}
    return spec.model_copy(update={"splits": SplitSpec(**splits), "shard_size": n})


def _dagster_overhead(config: str, spec, root: Path, out: Path, warm: int = 3) -> tuple[float, list[float]]:
    """Seconds of a Dagster run of shard 0's partition with every artifact on disk (nothing recomputed: the
    checks, summaries and previews, and Dagster's own work), each on a fresh ephemeral instance: the first run
    in this process, then ``warm`` more (definitions and caches warm, as in a long ``hrtem materialize``)."""
    import dagster as dg

    from dagster_project.assets import PARTITIONED, build_config_assets, load_config, shard_keys
    from dagster_project.resources import PublishTarget, SimulationEngine, Workspace

    src = dataclasses.replace(load_config(config), spec=spec)

    resources = {"workspace": Workspace(root=str(root)), "simulation": SimulationEngine(),
                 "publish_target": PublishTarget(local_dir=str(out))}
    runs = []
    for _ in range(1 + warm):
        t0 = time.perf_counter()
        res = dg.materialize(build_config_assets(src), selection=[dg.AssetKey([src.group, n]) for n in PARTITIONED],
                             partition_key=shard_keys(src.spec)[0], instance=dg.DagsterInstance.ephemeral(),
                             resources=resources,
                             run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}})
        assert res.success
        runs.append(time.perf_counter() - t0)
    return runs[0], runs[1:]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?", default=str(DEMO))
    ap.add_argument("--structures", type=int, default=None, help="run only the first N structures of shard 0")
    ap.add_argument("--no-dagster", action="store_true", help="skip the Dagster resumed-partition run")
    ap.add_argument("--images-workers-ab", action="store_true",
                    help="also rerun the images stage alternately with its workers and with one (images_workers_ab)")
    ap.add_argument("--workspace", help="keep the workspace in this folder; the stages reuse what it holds")
    ap.add_argument("--structures-only", action="store_true", help="with --workspace: build the structures only")
    ap.add_argument("--images-workers", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--spec-file", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.stage:
        return _child(a.stage, a.spec_file, a.root, a.images_workers)
    if a.structures is not None and a.structures < 1:
        ap.error("--structures must be >= 1")
    if a.structures_only and not a.workspace:
        ap.error("--structures-only needs --workspace")

    from hrtem_dataset import pipeline as pl
    from hrtem_dataset.specs import DatasetSpec, load_spec

    full = load_spec(a.config, DatasetSpec)  # Dagster is imported only for its part (a GPU image may lack it)
    spec = cap_structures(full, a.structures) if a.structures else full
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="hrtem-bench-") as tmp:
        root = Path(a.workspace) / "ws" if a.workspace else Path(tmp) / "ws"
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(spec.model_dump_json())
        from hrtem_dataset.workspace import structure_specs_path

        # a workspace's plan is kept (planning draws the scenes, whose Wulff shapes need pymatgen)
        found = a.workspace is not None and structure_specs_path(spec, root).exists()
        plan = {"seconds": 0.0} if found else pl.plan_structures(spec, root)
        if a.structures_only:
            return {"config": str(a.config), "workspace": str(root), **_run_stage("structures", spec_file, root)}
        r = {stage: _run_stage(stage, spec_file, root) for stage in STAGES}
        ab = _images_workers_ab(spec_file, root, r["images"]["stats"]["workers"]) if a.images_workers_ab else None
        overhead, warm = (None, []) if a.no_dagster else _dagster_overhead(a.config, spec, root, Path(tmp) / "out")
    s, w, i = (r[k]["stats"] for k in STAGES)
    i = {"calibration_s": 0.0, "particle_spectrum_s": 0.0, "work_s": 0.0, "workers": 0, **i}  # a reused shard: no work
    floor = r["exit_waves"].get("fft_floor")
    labelled_s = s["seconds"] + w["seconds"] + i["seconds"]
    peak = {k: r[k]["peak_rss"] for k in STAGES}
    mib = 2**20
    return {
        "config": str(a.config), "kind": spec.kind, "shard_structures": s["structures"],
        "structures_cap": a.structures,
        "structures_cap_note": "changes the shard size only: the first N structures of shard 0, same seeds and splits",
        "device": w["device"], "engine": w["engine"], "phonons": spec.simulation.phonons,
        "structures_atoms_per_s": round(s["atoms_per_s"], 1), "structures_s": round(s["seconds"], 3),
        "structures_reused": s["reused"], "exit_waves_reused": w["reused"], "images_reused": i["reused"],
        "exit_waves_per_s": round(w["waves_per_s"], 3), "simulation_atoms_per_s": round(w["atoms_per_s"], 1),
        "exit_waves_s": round(w["seconds"], 3), "images_per_s": round(i["images_per_s"], 3),
        "exit_waves_fft_floor": None if floor is None else {**floor, "wall_s": round(floor["wall_s"], 3)},
        "exit_waves_over_fft_floor": round(w["seconds"] / floor["wall_s"], 2) if floor else None,
        "labelled_images_per_hour_fft_bound": round(i["rows"] / floor["wall_s"] * 3600, 1) if floor else None,
        "imaging_s": round(i["seconds"], 3), "zero_defocus_calibration_s": round(i["calibration_s"], 3),
        "particle_spectrum_s": round(i["particle_spectrum_s"], 3),
        "imaging_work_s": round(i["work_s"], 3), "images_workers": i["workers"], "images_workers_ab": ab,
        "zero_defocus_calibration_share_of_imaging": round(i["calibration_s"] / i["work_s"], 3) if i["work_s"] else None,
        "exit_waves_share_of_labelled_stages": round(w["seconds"] / labelled_s, 3) if labelled_s else None,
        "shard_total_s": round(plan["seconds"] + labelled_s, 3),
        "labelled_rows": i["rows"],
        "labelled_rows_are": "images" if spec.kind == "images" else "structures (kind: exit_waves, no images)",
        "labelled_stages_s": round(labelled_s, 3),
        "labelled_images_per_hour": round(i["rows"] / labelled_s * 3600, 1),
        "peak_rss_mib": {k: round(v / mib, 1) for k, v in peak.items()},
        "import_rss_mib": {k: round(r[k]["import_rss"] / mib, 1) for k in STAGES},
        "peak_rss_method": "VmHWM of a fresh subprocess per stage (includes interpreter and imports)",
        "all_stages_under_4gb": all(v < LIMIT_BYTES for v in peak.values()),
        "cpu_count": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "dagster_resumed_partition_run_s": None if overhead is None else round(overhead, 3),
        "dagster_resumed_partition_warm_s": None if overhead is None else {
            "runs": [round(x, 3) for x in warm], "median": round(statistics.median(warm), 3)},
    }


if __name__ == "__main__":
    result = main()
    if result is not None:
        print(json.dumps(result))
