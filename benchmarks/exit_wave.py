"""Exit-wave benchmark: torch engine vs abTEM on the reference scene; prints one JSON object.

Reference scene (the structures benchmark's): 12.8 × 12.8 nm, 4 nm amorphous carbon at 2 g/cm³ plus a
2.5 nm-radius Au sphere (≈ 70k atoms), 300 kV, 0.1 Å sampling (1280²), 2 Å slices, one configuration.
Times are warm (second run). ``peak_rss_torch_gb`` is the process's peak RSS after the torch runs
(before abTEM is imported). ``rel_l2_bilinear`` compares abTEM with the torch engine in its
abTEM-compatible discretisation (bilinear structure factors), isolating the remaining pipeline.
Usage: python benchmarks/exit_wave.py [--threads 2] [--device cpu|cuda] [--batch 0] [--no-abtem]
"""

from __future__ import annotations

import argparse
import json
import resource
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=0, help="also time a batch of this many phonon configs")
    parser.add_argument("--no-abtem", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from hrtem_dataset.simulation import simulate_exit_wave, simulate_exit_waves

    atoms = reference_scene()
    kw = dict(energy=300e3, sampling=0.1, slice_thickness=2.0, parametrization="lobato")
    out: dict = {"n_atoms": len(atoms), "cell": [float(c) for c in atoms.cell.lengths()], "device": args.device,
                 "threads": args.threads, "torch": torch.__version__}

    def timed(fn, repeat=2):
        times = []
        for _ in range(repeat):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            result = fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return result, times

    wave, t = timed(lambda: simulate_exit_wave(atoms, device=args.device, **kw))
    out["torch_s_cold"], out["torch_s"] = t[0], t[-1]
    out["gpts"] = list(wave.shape)
    if args.batch:
        waves, tb = timed(lambda: simulate_exit_waves([atoms], phonons=args.batch, seed=0, device=args.device, **kw),
                          repeat=1)
        out["batch"] = args.batch
        out["batch_s"] = tb[-1]
        out["waves_per_s"] = args.batch / tb[-1]
    out["peak_rss_torch_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if not args.no_abtem:
        ref, ta = timed(lambda: simulate_exit_wave(atoms, engine="abtem", device=args.device, **kw))
        out["abtem_s_cold"], out["abtem_s"] = ta[0], ta[-1]
        out["speedup"] = ta[-1] / t[-1]
        out["rel_l2"] = _rel(wave, ref)
        bil = simulate_exit_wave(atoms, device=args.device, structure_factors="bilinear", **kw)
        out["rel_l2_bilinear"] = _rel(bil, ref)
        out["peak_rss_total_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(out))


if __name__ == "__main__":
    main()
