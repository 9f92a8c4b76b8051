"""Exit-wave benchmark: torch engine vs abTEM on the reference scene; prints one JSON object.

Reference scene (the structures benchmark's): 12.8 × 12.8 nm, 4 nm amorphous carbon at 2 g/cm³ plus a
2.5 nm-radius Au sphere (≈ 70k atoms), 300 kV, 0.1 Å sampling (1280²), 2 Å slices, one configuration.
One cold run per engine, then ``--repeat`` warm runs of each, interleaved (torch, abTEM, torch, ...) so
both see the same machine state; min and median reported, ``speedup`` = abTEM median / torch median.
``rel_l2_bilinear`` compares abTEM with the torch engine in its abTEM-compatible discretisation (bilinear
structure factors, band-limited transmission functions), isolating the remaining pipeline.

Transmission schemes: the torch engine's default uses each transmission function as it is (Prismatic's
scheme); abTEM band-limits it (one more FFT pair per slice). ``torch_antialiased`` times the torch engine in
abTEM's scheme in the same interleaved loop (``speedup_same_scheme`` = abTEM median / its median: the
like-for-like ratio), and ``rel_l2_schemes`` is the difference of the torch engine's two schemes.

Breakdown: one more torch run under :func:`~hrtem_dataset.simulation.torch_engine.profile_phases` gives
per phase (gridding, structure factors, potential, transmission, propagation) the wall seconds summed over
threads, the CPU seconds and the FFTs it ran; the same FFTs are timed on their own (one torch thread,
min of 5) in the same process: ``fft_floor_cpu_s`` is the CPU time those transforms need at the least,
``fft_floor_wall_s`` that time spread over ``--threads`` cores, ``torch_over_fft_floor`` the engine's
median over it (1.0 = nothing but the FFTs the multislice must do).

Thread policy (CPU): torch uses ``--threads`` threads (default 2); with 2–3 threads the engine runs its
FFTs single-threaded in the main thread and builds transmission functions in as many worker threads
(one stream per core). ``--load N`` starts N CPU-bound competitor processes for the timed runs, to see
how each engine degrades when the CPU is shared.
Usage: python benchmarks/exit_wave.py [--threads 2] [--repeat 3] [--load 0] [--device cpu|cuda] [--batch 0]
[--no-abtem]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time

import numpy as np


def reference_scene(seed: int = 0):
    try:
        from hrtem_dataset.specs import SceneSpec
        from hrtem_dataset.structures import build_scene
    except ImportError:  # structures module absent: random a-C + fcc Au sphere
        build_scene = None
    if build_scene is not None:
        spec = SceneSpec.model_validate({
            "cell": {"x": 128.0, "y": 128.0},
            "substrate": {"kind": "amorphous_carbon", "thickness": 40.0, "density": 2.0},
            "particles": [{"material": "Au", "shape": "sphere", "radius": 25.0, "orientation": "[110]"}],
        })
        return build_scene(spec, seed)
    from ase import Atoms
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    n_c = int(round(2.0 / 12.011 * 6.02214076e23 * 1e-24 * 128 * 128 * 40))
    carbon = rng.uniform([0, 0, 10], [128, 128, 50], (n_c, 3))
    au = bulk("Au", "fcc", a=4.078, cubic=True).repeat((14, 14, 14))
    p = au.positions - au.positions.mean(0)
    p = p[np.linalg.norm(p, axis=1) < 25.0] + [64, 64, 76]
    atoms = Atoms(["C"] * n_c + ["Au"] * len(p), positions=np.vstack([carbon, p]), cell=[128, 128, 112], pbc=True)
    atoms.set_array("particle_id", np.r_[-np.ones(n_c, int), np.zeros(len(p), int)])
    return atoms


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _stats(times: list[float]) -> dict:
    return {"min_s": round(min(times), 3), "median_s": round(statistics.median(times), 3),
            "runs_s": [round(t, 3) for t in times]}


def _busy(stop) -> None:  # a CPU-bound competitor (pure Python loop, one core)
    while not stop.is_set():
        sum(range(10000))


def fft_counts(phases: dict) -> dict:
    """The transforms a run under ``torch_engine.profile_phases`` counted: complex 2-D FFTs (forward and inverse),
    the structure factors' real FFTs and the potential's inverse real FFTs."""
    return {"fft2_or_ifft2": sum(v["fft2"] for v in phases.values()),
            "rfft2": phases.get("structure_factors", {}).get("rfft2", 0),
            "irfft2": phases.get("potential", {}).get("rfft2", 0)}


def fft_reference(gpts, threads: int = 1, repeat: int = 5) -> dict:
    """Seconds of one complex64 fft2, one rfft2 and one irfft2 on ``gpts`` with ``threads`` torch threads (min)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        z = torch.randn(gpts, dtype=torch.complex64, generator=g)
        r = torch.randn(gpts, generator=g)
        zk = torch.fft.rfft2(r)

        def best(fn):
            fn()
            ts = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return min(ts)

        return {"fft2_s": best(lambda: torch.fft.fft2(z)), "rfft2_s": best(lambda: torch.fft.rfft2(r)),
                "irfft2_s": best(lambda: torch.fft.irfft2(zk, s=gpts))}
    finally:
        torch.set_num_threads(previous)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3, help="warm timed runs per engine (after one cold run)")
    parser.add_argument("--batch", type=int, default=0, help="also time a batch of this many phonon configs")
    parser.add_argument("--load", type=int, default=0,
                        help="run this many CPU-bound competitor processes during the timed runs")
    parser.add_argument("--no-abtem", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from hrtem_dataset.simulation import simulate_exit_wave, simulate_exit_waves
    from hrtem_dataset.simulation.torch_engine import profile_phases

    atoms = reference_scene()
    kw = dict(energy=300e3, sampling=0.1, slice_thickness=2.0, parametrization="lobato")
    out: dict = {"n_atoms": len(atoms), "cell": [float(c) for c in atoms.cell.lengths()], "device": args.device,
                 "threads": args.threads, "torch": torch.__version__, "competitor_processes": args.load,
                 "load_average_1min_before": round(os.getloadavg()[0], 2), "machine": platform.machine(),
                 "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    cuda = args.device.startswith("cuda")

    def timed(fn, repeat):
        times, result = [], None
        for _ in range(repeat):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            result = fn()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return result, times

    stop = mp.Event()
    competitors = [mp.Process(target=_busy, args=(stop,), daemon=True) for _ in range(args.load)]
    torch_run = lambda: simulate_exit_wave(atoms, device=args.device, **kw)  # noqa: E731
    band_run = lambda: simulate_exit_wave(atoms, device=args.device, antialias_transmission=True, **kw)  # noqa: E731
    abtem_run = lambda: simulate_exit_wave(atoms, engine="abtem", device=args.device, **kw)  # noqa: E731
    wave, cold = timed(torch_run, 1)
    out["torch_s_cold"] = round(cold[0], 3)
    band, _ = timed(band_run, 1)
    out["rel_l2_schemes"] = _rel(band, wave)
    if not args.no_abtem:
        ref, cold = timed(abtem_run, 1)
        out["abtem_s_cold"] = round(cold[0], 3)
    for c in competitors:
        c.start()
    try:
        times = {"torch": [], "abtem": [], "torch_antialiased": []}
        for _ in range(args.repeat):  # interleaved, so the engines see the same machine state
            times["torch"] += timed(torch_run, 1)[1]
            if not args.no_abtem:
                times["abtem"] += timed(abtem_run, 1)[1]
            times["torch_antialiased"] += timed(band_run, 1)[1]
    finally:
        stop.set()
        for c in competitors:
            c.join()
    out["torch"] = _stats(times["torch"])
    out["torch_s"] = out["torch"]["median_s"]
    out["torch_antialiased"] = _stats(times["torch_antialiased"])
    out["gpts"] = list(wave.shape)
    if not args.no_abtem:
        out["abtem"] = _stats(times["abtem"])
        out["abtem_s"] = out["abtem"]["median_s"]
        out["speedup"] = round(out["abtem"]["median_s"] / out["torch"]["median_s"], 2)
        out["speedup_min"] = round(out["abtem"]["min_s"] / out["torch"]["min_s"], 2)
        out["speedup_same_scheme"] = round(out["abtem"]["median_s"] / out["torch_antialiased"]["median_s"], 2)
        out["rel_l2"] = _rel(wave, ref)
        out["rel_l2_same_scheme"] = _rel(band, ref)
        bil = simulate_exit_wave(atoms, device=args.device, structure_factors="bilinear", antialias_transmission=True,
                                 **kw)
        out["rel_l2_bilinear"] = _rel(bil, ref)
    out["load_average_1min_after"] = round(os.getloadavg()[0], 2)

    # breakdown: one more torch run with the phase profiler, and the FFTs it ran timed on their own
    with profile_phases() as phases:
        t0 = time.perf_counter()
        torch_run()
        profiled = time.perf_counter() - t0
    out["profiled_run_s"] = round(profiled, 3)
    out["phases"] = {k: {"thread_s": round(v["s"], 3), "cpu_s": round(v["cpu_s"], 3), "fft2": v["fft2"],
                         "rfft2": v["rfft2"]} for k, v in phases.items()}
    if not cuda:
        ref_fft = fft_reference(tuple(wave.shape))
        count = fft_counts(phases)
        floor = (count["fft2_or_ifft2"] * ref_fft["fft2_s"] + count["rfft2"] * ref_fft["rfft2_s"]
                 + count["irfft2"] * ref_fft["irfft2_s"])
        out["fft_reference_1_thread"] = {k: round(v * 1e3, 2) for k, v in ref_fft.items()} | {"unit": "ms"}
        out["fft_count"] = count
        out["fft_floor_cpu_s"] = round(floor, 3)
        out["fft_floor_wall_s"] = round(floor / max(args.threads, 1), 3)
        out["torch_over_fft_floor"] = round(out["torch"]["median_s"] / out["fft_floor_wall_s"], 2)
    if args.batch:  # one untimed batch first (memory pools grow to the batch's size), then ``repeat`` timed ones
        def batch_run():
            return simulate_exit_waves([atoms], phonons=args.batch, seed=0, device=args.device, **kw)

        out["batch_s_cold"] = round(timed(batch_run, 1)[1][0], 3)
        tb = timed(batch_run, max(args.repeat, 1))[1]
        out["batch"] = args.batch
        out["batch_runs_s"] = [round(t, 3) for t in tb]
        median = statistics.median(tb)
        out["batch_s"] = round(median, 3)
        out["waves_per_s"] = round(args.batch / median, 3)
        out["waves_per_s_best"] = round(args.batch / min(tb), 3)
    out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
