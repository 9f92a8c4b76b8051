"""Stages 0 and 1: the structure plan (``structure_specs.jsonl``) and the atoms of each shard.

Format:
- ``structure_specs.jsonl``: one JSON line per structure — ``index``, ``structure_id``, ``split``, ``shard``,
  ``seed`` (``derive_seed(seed, "structure", i)``) and the concrete ``scene`` spec (cheap: no atoms built).
- ``structures/<structure_id>.extxyz``: the atoms (ASE extended XYZ), a per-atom ``particle_id`` (-1:
  substrate) and ``info["scene"]``, the concrete scene record.

Check ``atoms_valid`` (blocking): every structure has atoms, finite positions with z inside the cell (x, y
are periodic: the multislice wraps them; z must lie in the slab that is sliced, to ``Z_TOLERANCE`` Å),
and particles when its scene has any.
"""

from __future__ import annotations

import json
import time

import numpy as np

from .. import previews
from ..device import usable_cpus
from ..errors import InputError
from ..io import atomic_write_text
from ..runtime import stage_runtime
from ..seeding import derive_seed
from ..specs import DatasetSpec
from ..structures import read_extxyz, sample_scene, sample_scene_spec, scene_seed, write_extxyz
from ..workspace import (
    SPLITS,
    claim_stage_dir,
    fingerprints,
    one_writer,
    previews_dir,
    shard_indices,
    structure_id,
    structure_path,
    structure_specs_path,
)
from .base import CheckSpec, RunContext, Stage, StageResult, in_order_threads, outcome, rate

Z_TOLERANCE = 1e-6
"""Å: how far outside [0, cell z] an atom may sit (rounding of the positions written)."""

ATOMS_VALID = CheckSpec("atoms_valid", "every structure has atoms, finite positions with z inside the cell, "
                                       "and its particles")

# --------------------------------------------------------------------------------------------------
# Stage 0: the plan
# --------------------------------------------------------------------------------------------------


def scene_spec_for(spec: DatasetSpec, index: int):
    """Concrete :class:`~hrtem_dataset.specs.SceneSpec` of global structure ``index`` (deterministic; the
    same draw as ``hrtem structures sample`` with the dataset seed)."""
    return sample_scene_spec(spec.structures, scene_seed(spec.seed, index))


def plan_structures(spec: DatasetSpec, root=None) -> dict:
    """Write ``structure_specs.jsonl``: one line per structure with id, split, shard, seeds and the concrete
    scene spec. Cheap (no atoms are built). Returns stats incl. material and radius summaries."""
    t0 = time.perf_counter()
    path = structure_specs_path(spec, root)
    lines, materials, radii, n_particles = [], {}, [], []
    for i in range(spec.n_structures):
        scene = scene_spec_for(spec, i)
        rec = {"index": i, "structure_id": structure_id(spec, i), "split": spec.split_of(i),
               "shard": i // spec.shard_size, "seed": derive_seed(spec.seed, "structure", i),
               "scene": scene.model_dump(mode="json")}
        lines.append(json.dumps(rec, sort_keys=True))
        n_particles.append(len(scene.particles))
        for p in scene.particles:
            materials[p.material] = materials.get(p.material, 0) + 1
            radii.append(p.radius)
    text = "\n".join(lines) + "\n"
    reused = path.exists() and path.read_text() == text
    if not reused:
        atomic_write_text(path, text)
    return {
        "structures": spec.n_structures, "shards": spec.n_shards, "reused": bool(reused),
        "splits": {s: sum(1 for i in range(spec.n_structures) if spec.split_of(i) == s) for s in SPLITS},
        "particles": int(sum(n_particles)), "materials": materials,
        "radius_min": float(min(radii)) if radii else None, "radius_max": float(max(radii)) if radii else None,
        "seconds": time.perf_counter() - t0, "path": str(path),
    }


def read_structure_specs(spec: DatasetSpec, root=None) -> list[dict]:
    path = structure_specs_path(spec, root)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------
# Stage 1: atoms
# --------------------------------------------------------------------------------------------------


@one_writer("structures")
@stage_runtime()  # one BLAS thread, no full garbage collections (see stage_runtime)
def build_structures_shard(spec: DatasetSpec, shard: int, root=None, *, force: bool = False) -> dict:
    """Build the atoms of every structure of ``shard`` into ``structures/<structure_id>.extxyz``.

    Structures whose file exists are skipped (``force`` rebuilds them). Returns counts, atoms built and
    atoms/s of the structures built in this call.
    """
    indices = shard_indices(spec, shard)
    claim_stage_dir(spec, "structures", fingerprints(spec)["structures"], root)
    t0 = time.perf_counter()
    todo = [i for i in indices if force or not structure_path(spec, i, root).exists()]
    reused = len(indices) - len(todo)
    computed = atoms_built = particle_atoms = 0

    def scene(i: int):
        return sample_scene(spec.structures, spec.seed, i)[3]  # seed derive_seed(seed, "structure", i)

    # the scenes are drawn side by side (their seeds are their own: the same atoms in any order; the substrate's
    # neighbour searches release the GIL) and written here in order, so a failure leaves the files the one-by-one
    # loop would have left; an au-baseline-cpu shard 1.3–1.8× faster on 2 cores
    workers = max(1, min(len(todo), usable_cpus()))
    with in_order_threads(scene, todo, workers, "hrtem-structures") as scenes:
        for i, atoms in zip(todo, scenes, strict=True):
            write_extxyz(atoms, structure_path(spec, i, root))  # atomic
            computed += 1
            atoms_built += len(atoms)
            particle_atoms += int(np.count_nonzero(np.asarray(atoms.arrays["particle_id"]) >= 0))
    dt = time.perf_counter() - t0
    return {"shard": int(shard), "structures": len(indices), "computed": computed, "reused": reused,
            "atoms": atoms_built, "particle_atoms": particle_atoms, "seconds": dt,
            "atoms_per_s": rate(atoms_built, dt)}


def read_structure(spec: DatasetSpec, index: int, root=None):
    path = structure_path(spec, index, root)
    if not path.exists():
        raise InputError(f"{path}: missing structure (run the structures stage for its shard first)")
    return read_extxyz(path)


def atoms_valid(atoms) -> bool:
    """The ``atoms_valid`` check of one structure (see the module docstring)."""
    pos, lz = atoms.positions, float(atoms.cell[2, 2])
    pid = np.asarray(atoms.arrays.get("particle_id", np.full(len(atoms), -1)))
    wants_particles = bool((atoms.info.get("scene") or {}).get("particles"))
    ok_pos = bool(np.all(np.isfinite(pos)) and np.all(pos[:, 2] >= -Z_TOLERANCE)
                  and np.all(pos[:, 2] <= lz + Z_TOLERANCE))
    return len(atoms) > 0 and ok_pos and not (wants_particles and not np.any(pid >= 0))


def structures_summary(spec: DatasetSpec, shard: int, root=None) -> dict:
    """Atoms in the shard and the ids of the structures that fail ``atoms_valid``."""
    bad, n_atoms = [], 0
    for i in shard_indices(spec, shard):
        atoms = read_structure(spec, i, root)
        n_atoms += len(atoms)
        if not atoms_valid(atoms):
            bad.append(structure_id(spec, i))
    return {"atoms_in_shard": n_atoms, "invalid": bad}


# --------------------------------------------------------------------------------------------------
# Stage objects
# --------------------------------------------------------------------------------------------------


class StructureSpecsStage(Stage):
    """Concrete scene spec, seeds and split of every structure (structure_specs.jsonl)."""

    name, fingerprint = "structure_specs", "structures"

    def materialize(self, spec: DatasetSpec, ctx: RunContext) -> StageResult:
        stats = plan_structures(spec, ctx.root)
        return StageResult(stats, {"spec_hash": spec.hash()}, path=stats["path"], row_count=stats["structures"])


class StructuresStage(Stage):
    """Atomic structures of one shard (extxyz, particle_id per atom)."""

    name, fingerprint, deps, partitioned = "structures", "structures", ("structure_specs",), True
    kinds = frozenset({"ase"})
    checks = (ATOMS_VALID,)

    def materialize(self, spec: DatasetSpec, ctx: RunContext) -> StageResult:
        stats = build_structures_shard(spec, ctx.shard, ctx.root, force=ctx.force)
        q = structures_summary(spec, ctx.shard, ctx.root)
        first = read_structure(spec, shard_indices(spec, ctx.shard)[0], ctx.root)
        png = previews.structure_projection_png(first.positions, first.numbers, first.arrays.get("particle_id"),
                                                (float(first.cell[0, 0]), float(first.cell[1, 1])))
        pngs = previews.save_pngs({"Structure projection": png}, previews_dir(spec, ctx.root),
                                  f"structures-{ctx.shard:05d}")
        bad = q["invalid"]
        return StageResult(stats, {"atoms_in_shard": q["atoms_in_shard"], "spec_hash": spec.hash()}, previews=pngs,
                           checks=[outcome(ATOMS_VALID, not bad, "all structures valid" if not bad
                                           else f"invalid structures: {', '.join(bad)}")])
