"""Stage 2: multislice exit waves of each structure.

Format — ``waves/<structure_id>.npz`` (pickle-free), one file per structure:
``scene`` complex64 (P, nx, ny), the full scene, P = max(phonons, 1) frozen-phonon configurations;
``particles`` complex64 (nx, ny), the particle atoms alone in vacuum on a static lattice (the label
source); ``sampling`` (Å, per axis), ``energy`` (eV), ``gpts``, ``phonons``, ``engine``, ``engine_version``,
``n_atoms`` and ``antialias_transmission`` (the transmission scheme the engine ran; absent in files written
before 0.2.0, which all band-limited the transmission functions). Seed: ``derive_seed(seed, "simulation", i)``.
The engine is part of the stage fingerprint, the device is not (it changes speed, not physics).

Checks and their tolerances:
- ``no_nan_inf`` (blocking): no structure of the shard has NaN/inf waves or misses its file.
- ``vacuum_intensity`` (blocking): mean |ψ|² of the particle-only waves over vacuum pixels
  (:func:`hrtem_dataset.labels.vacuum_region`) is 1 ± ``VACUUM_INTENSITY_TOL``, and mean |ψ|² of the scene
  waves is 1 ± ``SCENE_INTENSITY_TOL`` (flux is lost only outside the antialias aperture).
"""

from __future__ import annotations

import contextlib
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import previews
from ..errors import InputError
from ..io import atomic_path, read_npz
from ..labels import vacuum_region
from ..runtime import stage_runtime
from ..seeding import derive_seed
from ..simulation import simulate_scene
from ..specs import DatasetSpec
from ..workspace import (
    claim_stage_dir,
    fingerprints,
    one_writer,
    previews_dir,
    shard_indices,
    simulation_settings,
    waves_path,
)
from .base import CheckSpec, RunContext, Stage, StageResult, in_order_torch_streams, outcome, rate
from .structures import read_structure

SCENE_INTENSITY_TOL = 0.05    # mean |ψ|² of scene waves: flux lost outside the antialias aperture only
VACUUM_INTENSITY_TOL = 0.01   # mean |ψ|² of particle-only waves over vacuum pixels

NO_NAN_INF = CheckSpec("no_nan_inf", "no NaN or inf in the arrays")
VACUUM_INTENSITY = CheckSpec("vacuum_intensity",
                             f"particle-only waves: mean |ψ|² over vacuum = 1 ± {VACUUM_INTENSITY_TOL}; "
                             f"scene waves: mean |ψ|² = 1 ± {SCENE_INTENSITY_TOL} (flux conservation)")


@one_writer("waves")
@stage_runtime()  # one BLAS thread, no full garbage collections (see stage_runtime)
def simulate_shard(spec: DatasetSpec, shard: int, root=None, engine: str | None = None,
                   device: str | None = None, *, force: bool = False) -> dict:
    """Multislice exit waves of every structure of ``shard`` into ``waves/<structure_id>.npz`` (the module's
    format). ``engine``/``device`` override the spec. Returns counts, timings, atoms/s (atoms ×
    configurations / s) and exit waves/s."""
    indices = shard_indices(spec, shard)
    sim = simulation_settings(spec, engine, device)
    claim_stage_dir(spec, "waves", fingerprints(spec, sim.engine)["waves"], root)
    t0 = time.perf_counter()
    computed = atoms_done = waves_done = 0
    engine_version = None
    used_device = sim.device
    todo = [i for i in indices if force or not waves_path(spec, i, root).exists()]
    reused = len(indices) - len(todo)
    # one I/O thread writes the previous waves while the simulation runs (on a GPU the stage is mostly such host
    # work) and, one structure at a time, reads the next structure meanwhile; side by side (CPU, 2–3 threads),
    # the workers read their own structures. Results are taken in order and the I/O thread runs its tasks in
    # submission order with at most one write in flight, so a failed read, simulation or write is raised here
    # with the files on disk that the sequential loop would have left (the with-block lets a submitted write
    # finish first and cancels the structures not started yet)
    workers = structure_workers(spec, sim, len(todo))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hrtem-waves-io") as io, \
            contextlib.ExitStack() as stack:
        if workers > 1:  # structures simulated side by side, results taken (and written) in order
            results = stack.enter_context(in_order_torch_streams(lambda i: _simulate_one(spec, sim, i, root), todo,
                                                                 workers, "hrtem-waves"))
        else:  # one at a time, the I/O thread reading the next structure meanwhile
            results = _sequential(io, spec, sim, todo, root)
            stack.callback(results.close)  # on an error below: no further structure is read
        writing = None
        for i, (atoms, out) in zip(todo, results, strict=True):
            scene = np.asarray(out["scene"], dtype=np.complex64)
            if scene.ndim == 2:
                scene = scene[None]
            engine_version = str(out.get("engine_version", ""))
            used_device = str(out.get("device", sim.device))
            if writing is not None:
                writing.result()
            writing = io.submit(_write_waves, waves_path(spec, i, root), scene, out, sim, len(atoms), engine_version)
            computed += 1
            atoms_done += len(atoms) * scene.shape[0]
            waves_done += scene.shape[0] + 1
        if writing is not None:
            writing.result()
    dt = time.perf_counter() - t0
    return {"shard": int(shard), "structures": len(indices), "computed": computed, "reused": reused,
            "engine": sim.engine, "engine_version": engine_version, "device": used_device, "seconds": dt,
            "exit_waves": waves_done, "waves_per_s": rate(waves_done, dt), "atoms_per_s": rate(atoms_done, dt)}


def scene_species(spec: DatasetSpec) -> int:
    """Elements a scene of ``spec`` can hold: those of every particle material (element, compound or CIF) and the
    amorphous carbon substrate's."""
    from ..crystals import get_crystal

    elements = {6}
    for material in spec.structures.particles.materials.values:
        elements.update(int(z) for z in np.asarray(get_crystal(material).numbers).ravel())
    return len(elements)


def structure_workers(spec: DatasetSpec, sim, n_structures: int) -> int:
    """Structures simulated at once: on a CPU with 2–3 torch threads (where the torch engine otherwise pipelines
    one structure over the cores), one single-threaded structure per thread — every core on whole structures, no
    fill and drain per structure (au-baseline-cpu shard 0 on 2 cores: 2.8 s instead of 3.4 s, see README,
    "Performance") — as many as half the memory limit holds at the engine's estimate for one structure (with every
    element a scene of the spec can hold: :func:`scene_species`); else 1."""
    import torch

    from ..device import resolve_device
    from ..limits import memory_limit
    from ..simulation.torch_engine import Grid, memory_estimate

    if sim.engine != "torch" or n_structures < 2 or resolve_device(sim.device).type != "cpu":
        return 1
    n = torch.get_num_threads()
    n = min(n, n_structures) if 2 <= n <= 3 else 1
    limit = memory_limit()
    if n > 1 and limit:
        grid = Grid.from_sampling((spec.structures.cell.x, spec.structures.cell.y), sim.sampling)
        one = memory_estimate(grid, max(sim.phonons, 1) + 1, n_species=scene_species(spec), device="cpu")
        n = max(1, min(n, int(limit // 2 // max(one, 1))))
    return n


def _simulate_one(spec: DatasetSpec, sim, i: int, root, atoms=None) -> tuple[Any, dict]:
    """Structure ``i`` (read here unless given) and its :func:`simulate_scene` result."""
    atoms = read_structure(spec, i, root) if atoms is None else atoms
    return atoms, simulate_scene(atoms, sim, derive_seed(spec.seed, "simulation", i))


def _sequential(io, spec: DatasetSpec, sim, todo: list[int], root):
    """:func:`_simulate_one` of each structure in order, the next one read by ``io`` meanwhile."""
    reading = io.submit(read_structure, spec, todo[0], root) if todo else None
    for k, i in enumerate(todo):
        atoms = reading.result()
        reading = io.submit(read_structure, spec, todo[k + 1], root) if k + 1 < len(todo) else None
        yield _simulate_one(spec, sim, i, root, atoms)


def _write_waves(path, scene: np.ndarray, out: dict, sim, n_atoms: int, engine_version: str) -> None:
    """One structure's waves file (the module's format), written atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, scene=scene, particles=np.asarray(out["particles"], dtype=np.complex64),
                 sampling=np.broadcast_to(np.asarray(out["sampling"], dtype=np.float64), (2,)).copy(),
                 energy=np.float64(out.get("energy", sim.energy)), gpts=np.asarray(out.get("gpts", scene.shape[1:])),
                 phonons=np.int64(sim.phonons), engine=np.str_(out.get("engine", sim.engine)),
                 engine_version=np.str_(engine_version), n_atoms=np.int64(n_atoms),
                 antialias_transmission=np.bool_(out.get("antialias_transmission", False)))


def load_waves(spec: DatasetSpec, index: int, root=None) -> dict[str, Any]:
    """Arrays and settings of one structure's exit waves (plain numpy / Python values)."""
    path = waves_path(spec, index, root)
    if not path.exists():
        raise InputError(f"{path}: missing exit waves (run the exit_waves stage for its shard first)")
    out = read_npz(path)  # without holding the GIL (structures are imaged in threads)
    for k in ("engine", "engine_version"):
        out[k] = str(out[k])
    out["energy"] = float(out["energy"])
    out["phonons"] = int(out["phonons"])
    out["antialias_transmission"] = bool(out.get("antialias_transmission", True))  # files before 0.2.0: True
    out["sampling"] = tuple(float(s) for s in out["sampling"])
    return out


def waves_summary(spec: DatasetSpec, shard: int, root=None) -> dict:
    """Quality numbers of a shard's exit waves for the checks.

    ``nonfinite``: structures whose waves contain NaN/inf. ``scene_intensity_*``: mean |ψ|² of the scene
    waves (flux conservation: ≈ 1, slightly less from scattering outside the antialias aperture).
    ``vacuum_intensity_*``: mean |ψ|² of the particle-only waves over vacuum pixels (exactly 1 ideally).
    """
    nonfinite, scene_i, vac_i, missing = 0, [], [], 0
    for i in shard_indices(spec, shard):
        if not waves_path(spec, i, root).exists():
            missing += 1
            continue
        w = load_waves(spec, i, root)
        if not (np.all(np.isfinite(w["scene"])) and np.all(np.isfinite(w["particles"]))):
            nonfinite += 1
            continue
        scene_i.append(float(np.mean(np.abs(w["scene"]) ** 2)))
        vac = vacuum_region(read_structure(spec, i, root), w["particles"].shape, w["sampling"])
        if vac.any():
            vac_i.append(float(np.mean(np.abs(w["particles"][vac]) ** 2)))

    def span(v):
        return (float(min(v)), float(max(v))) if v else (math.nan, math.nan)

    return {"missing": missing, "nonfinite": nonfinite,
            "scene_intensity_min": span(scene_i)[0], "scene_intensity_max": span(scene_i)[1],
            "vacuum_intensity_min": span(vac_i)[0], "vacuum_intensity_max": span(vac_i)[1]}


def waves_checks(q: dict) -> list:
    """The outcomes of ``no_nan_inf`` and ``vacuum_intensity`` for a :func:`waves_summary`."""
    present = q["nonfinite"] == 0 and q["missing"] == 0
    within = all(abs(q[f"{what}_intensity_{end}"] - 1) <= tol for end in ("min", "max")
                 for what, tol in (("vacuum", VACUUM_INTENSITY_TOL), ("scene", SCENE_INTENSITY_TOL)))
    span = {k: q[k] for k in ("vacuum_intensity_min", "vacuum_intensity_max", "scene_intensity_min",
                              "scene_intensity_max")}
    return [outcome(NO_NAN_INF, present, f"{q['nonfinite']} structures with NaN/inf, {q['missing']} missing",
                    nonfinite=q["nonfinite"]),
            outcome(VACUUM_INTENSITY, present and within,
                    "vacuum |ψ|² in [{vacuum_intensity_min:.4f}, {vacuum_intensity_max:.4f}], scene mean |ψ|² in "
                    "[{scene_intensity_min:.4f}, {scene_intensity_max:.4f}]".format(**span), **span)]


class ExitWavesStage(Stage):
    """Multislice exit waves of one shard: full scene (frozen phonons) and particles alone."""

    name, fingerprint, deps, partitioned = "exit_waves", "waves", ("structures",), True
    kinds = frozenset({"pytorch"})
    checks = (NO_NAN_INF, VACUUM_INTENSITY)
    simulation = True

    def materialize(self, spec: DatasetSpec, ctx: RunContext) -> StageResult:
        stats = simulate_shard(spec, ctx.shard, ctx.root, engine=ctx.engine, device=ctx.device, force=ctx.force)
        q = waves_summary(spec, ctx.shard, ctx.root)
        first = load_waves(spec, shard_indices(spec, ctx.shard)[0], ctx.root)
        meta = {"spec_hash": spec.hash(), "engine": first["engine"], "engine_version": first["engine_version"],
                "antialias_transmission": first["antialias_transmission"],
                "sampling_A": list(first["sampling"]), "gpts": [int(x) for x in first["particles"].shape],
                "scene_intensity_min": q["scene_intensity_min"], "vacuum_intensity_min": q["vacuum_intensity_min"]}
        pngs = {"Scene exit wave phase": previews.image_png(np.angle(first["scene"][0])),
                "Particle exit wave phase": previews.image_png(np.angle(first["particles"]))}
        return StageResult(stats, meta, checks=waves_checks(q),
                           previews=previews.save_pngs(pngs, previews_dir(spec, ctx.root), f"waves-{ctx.shard:05d}"))
