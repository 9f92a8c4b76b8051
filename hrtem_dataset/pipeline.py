"""Per-shard stage functions of the dataset pipeline (no Dagster imports).

Data flows one way — spec → structures → exit waves → imaged samples → dataset folder → model — and every
stage reads only the spec and the output of the stage before it. A *shard* is a block of
``spec.shard_size`` consecutive structures (``spec.shard_indices(shard)``); it is the unit of parallel work
(one Dagster partition). Intermediate artifacts live in the workspace::

    <root>/<name>/<version>/<config>/
        structure_specs.jsonl              concrete scene spec + seeds + split of every structure
        structures/<structure_id>.extxyz   atoms, per-atom ``particle_id``, ``info["scene"]``
        waves/<structure_id>.npz           scene waves (P, nx, ny), particle-only waves (nx, ny), settings
        images/shard-NNNNN.npz             one file per shard: images, masks, instance maps + row metadata
        <stage>/_fingerprint.json          hash of the spec sections the stage depends on

Resumable and atomic: every file is written through :func:`hrtem_dataset.io.atomic_path` (temporary name,
renamed on success), so a file that exists is complete, and each stage skips the outputs that already
exist. A stage directory built from a different spec (its fingerprint differs) is never mixed with new
outputs: the stage raises :class:`InputError` naming the directory (bump ``version`` or delete it).

Seeds come from the spec only (:func:`hrtem_dataset.seeding.derive_seed`): structure ``i`` uses
``derive_seed(seed, "structure", i)`` (concrete scene spec and atoms, as ``hrtem structures sample``),
its exit waves ``derive_seed(seed, "simulation", i)`` (frozen phonons), its imaging conditions
``derive_seed(seed, "imaging", i)`` (each condition carries its own ``noise_seed``, the row's ``seed``). The
same spec gives the same bytes, whatever the shard order, process or machine.

Every stage returns a small JSON-able stats dict (counts, timings, throughput) used as Dagster metadata.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .io import atomic_path, atomic_write_text, workspace_root
from .seeding import derive_seed, spec_hash
from .specs import DatasetSpec, SimulationSpec

SPLITS = ("train", "validation", "test")
VACUUM_MARGIN = 6.0
"""Å: pixels farther than this from every particle atom count as vacuum in the particle-only waves."""


# --------------------------------------------------------------------------------------------------
# Layout, ids, fingerprints
# --------------------------------------------------------------------------------------------------


def config_dir(spec: DatasetSpec, root: str | Path | None = None) -> Path:
    """``<root>/<name>/<version>/<config>`` (root: argument, else ``$HRTEM_HOME``, else ``./.hrtem``)."""
    return workspace_root(root) / spec.name / spec.version / spec.config_name


def structure_id(spec: DatasetSpec, index: int) -> str:
    """Id of global structure ``index``: ``<config>-NNNNNN`` (unique within a dataset repo)."""
    return f"{spec.config_name}-{index:06d}"


def sample_id(spec: DatasetSpec, index: int, k: int) -> str:
    """Id of image ``k`` of structure ``index``."""
    return f"{structure_id(spec, index)}-{k:03d}"


def structure_path(spec: DatasetSpec, index: int, root=None) -> Path:
    return config_dir(spec, root) / "structures" / f"{structure_id(spec, index)}.extxyz"


def waves_path(spec: DatasetSpec, index: int, root=None) -> Path:
    return config_dir(spec, root) / "waves" / f"{structure_id(spec, index)}.npz"


def images_path(spec: DatasetSpec, shard: int, root=None) -> Path:
    return config_dir(spec, root) / "images" / f"shard-{shard:05d}.npz"


def simulation_settings(spec: DatasetSpec, engine: str | None = None, device: str | None = None) -> SimulationSpec:
    """The spec's simulation settings with optional engine/device overrides (validated)."""
    update = {k: v for k, v in (("engine", engine), ("device", device)) if v}
    try:
        return SimulationSpec.model_validate({**spec.simulation.model_dump(), **update})
    except Exception as exc:  # pydantic ValidationError -> one line
        from .errors import format_validation_error

        raise InputError(format_validation_error(exc, "simulation")) from None


def fingerprints(spec: DatasetSpec, engine: str | None = None) -> dict[str, str]:
    """Hash of everything each stage's outputs depend on (device excluded: it changes speed, not physics)."""
    sim = simulation_settings(spec, engine).model_dump(mode="json", exclude={"device"})
    s = spec_hash({"seed": spec.seed, "structures": spec.structures.model_dump(mode="json")})
    w = spec_hash({"structures": s, "simulation": sim})
    return {"structures": s, "waves": w}


def images_fingerprint(spec: DatasetSpec, root=None) -> str:
    """Fingerprint of the images stage: the fingerprint of the exit waves actually on disk (whatever
    engine made them) + the imaging, label, kind, shard and split settings."""
    f = config_dir(spec, root) / "waves" / "_fingerprint.json"
    if not f.exists():
        raise InputError(f"{f.parent}: no exit waves yet (run the exit_waves stage first)")
    waves = json.loads(f.read_text())["fingerprint"]
    return spec_hash({"waves": waves, "kind": spec.kind, "shard_size": spec.shard_size,
                      "splits": spec.splits.model_dump(mode="json"),  # shard membership and row splits
                      "imaging": spec.imaging.model_dump(mode="json"), "labels": spec.labels.model_dump(mode="json")})


@contextlib.contextmanager
def _file_lock(path: Path):
    """An OS file lock (``filelock``): a second process waits until the first releases it or ends."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


def _one_writer(stage: str):
    """Decorator of a per-shard stage function: one writer per shard of a workspace stage folder
    (``<config_dir>/<stage>/.shard-NNNNN.lock``); a second process building the same shard waits, then
    finds the finished files and reuses them. Different shards still run in parallel."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(spec: DatasetSpec, shard: int, root=None, *args, **kw):
            _shard_of(spec, shard)  # a bad shard index fails before any lock file is made
            with _file_lock(config_dir(spec, root) / stage / f".shard-{int(shard):05d}.lock"):
                return fn(spec, shard, root, *args, **kw)
        return wrapper
    return deco


def _claim_stage_dir(spec: DatasetSpec, stage: str, fingerprint: str, root) -> Path:
    """Create ``<config_dir>/<stage>`` with its fingerprint, or check the fingerprint of an existing one
    (under the stage folder's lock, so two writers never claim it with different fingerprints at once)."""
    with _file_lock(config_dir(spec, root) / f".{stage}.lock"):
        return _claim_stage_dir_locked(spec, stage, fingerprint, root)


def _claim_stage_dir_locked(spec: DatasetSpec, stage: str, fingerprint: str, root) -> Path:
    d = config_dir(spec, root) / stage
    f = d / "_fingerprint.json"
    payload = {"stage": stage, "fingerprint": fingerprint, "dataset": spec.name, "version": spec.version,
               "config_name": spec.config_name}
    if f.exists():
        old = json.loads(f.read_text()).get("fingerprint")
        # a stage folder holding nothing but its fingerprint (a first attempt that failed before writing
        # any artifact) is re-claimed by the new spec instead of locking the workspace
        unused = all(p.name == f.name or p.name.startswith(".") for p in d.iterdir())
        if old != fingerprint and unused:
            atomic_write_text(f, json.dumps(payload, sort_keys=True) + "\n")
        elif old != fingerprint:
            raise InputError(f"{d}: built from a different spec ({stage} fingerprint {old} != {fingerprint}); "
                             f"bump the dataset version or delete that folder")
    else:
        atomic_write_text(f, json.dumps(payload, sort_keys=True) + "\n")
    return d


def _shard_of(spec: DatasetSpec, shard: int) -> range:
    if not isinstance(shard, int | np.integer) or isinstance(shard, bool):
        raise InputError(f"shard: expected an integer, got {shard!r}")
    return spec.shard_indices(int(shard))


def _rate(n: float, seconds: float) -> float:
    return float(n / seconds) if seconds > 0 else 0.0


# --------------------------------------------------------------------------------------------------
# Stage 0: concrete structure specs
# --------------------------------------------------------------------------------------------------


def scene_spec_for(spec: DatasetSpec, index: int):
    """Concrete :class:`~hrtem_dataset.specs.SceneSpec` of global structure ``index`` (deterministic; the
    same draw as ``hrtem structures sample`` with the dataset seed)."""
    from .structures import sample_scene_spec, scene_seed

    return sample_scene_spec(spec.structures, scene_seed(spec.seed, index))


def plan_structures(spec: DatasetSpec, root=None) -> dict:
    """Write ``structure_specs.jsonl``: one line per structure with id, split, shard, seeds and the concrete
    scene spec. Cheap (no atoms are built). Returns stats incl. material and radius summaries."""
    t0 = time.perf_counter()
    path = config_dir(spec, root) / "structure_specs.jsonl"
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
    path = config_dir(spec, root) / "structure_specs.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------
# Stage 1: structures
# --------------------------------------------------------------------------------------------------


@_one_writer("structures")
def build_structures_shard(spec: DatasetSpec, shard: int, root=None, *, force: bool = False) -> dict:
    """Build the atoms of every structure of ``shard`` into ``structures/<structure_id>.extxyz``.

    Structures whose file exists are skipped (``force`` rebuilds them). Returns counts, atoms built and
    atoms/s of the structures built in this call.
    """
    from .structures import sample_scene, write_extxyz

    indices = _shard_of(spec, shard)
    _claim_stage_dir(spec, "structures", fingerprints(spec)["structures"], root)
    t0 = time.perf_counter()
    computed = reused = atoms_built = particle_atoms = 0
    for i in indices:
        path = structure_path(spec, i, root)
        if path.exists() and not force:
            reused += 1
            continue
        _, _, _, atoms = sample_scene(spec.structures, spec.seed, i)  # seed derive_seed(seed, "structure", i)
        write_extxyz(atoms, path)  # atomic
        computed += 1
        atoms_built += len(atoms)
        particle_atoms += int(np.count_nonzero(np.asarray(atoms.arrays["particle_id"]) >= 0))
    dt = time.perf_counter() - t0
    return {"shard": int(shard), "structures": len(indices), "computed": computed, "reused": reused,
            "atoms": atoms_built, "particle_atoms": particle_atoms, "seconds": dt,
            "atoms_per_s": _rate(atoms_built, dt)}


def read_structure(spec: DatasetSpec, index: int, root=None):
    from .structures import read_extxyz

    path = structure_path(spec, index, root)
    if not path.exists():
        raise InputError(f"{path}: missing structure (run the structures stage for its shard first)")
    return read_extxyz(path)


# --------------------------------------------------------------------------------------------------
# Stage 2: exit waves
# --------------------------------------------------------------------------------------------------


@_one_writer("waves")
def simulate_shard(spec: DatasetSpec, shard: int, root=None, engine: str | None = None,
                   device: str | None = None, *, force: bool = False) -> dict:
    """Multislice exit waves of every structure of ``shard`` into ``waves/<structure_id>.npz``.

    Each file holds ``scene`` (complex64 (P, nx, ny), the full scene, P = max(phonons, 1)), ``particles``
    (complex64 (nx, ny), particle atoms alone in vacuum, static lattice — the label source), ``sampling``
    (Å, per axis), ``energy`` (eV), ``gpts``, ``phonons``, ``engine``, ``engine_version`` and ``n_atoms``.
    ``engine``/``device`` override the spec (the engine is part of the stage fingerprint).
    Returns counts, timings, atoms/s (atoms × configurations / s) and exit waves/s.
    """
    from .simulation import simulate_scene

    indices = _shard_of(spec, shard)
    sim = simulation_settings(spec, engine, device)
    _claim_stage_dir(spec, "waves", fingerprints(spec, sim.engine)["waves"], root)
    t0 = time.perf_counter()
    computed = reused = atoms_done = waves_done = 0
    engine_version = None
    used_device = sim.device
    for i in indices:
        path = waves_path(spec, i, root)
        if path.exists() and not force:
            reused += 1
            continue
        atoms = read_structure(spec, i, root)
        out = simulate_scene(atoms, sim, derive_seed(spec.seed, "simulation", i))
        scene = np.asarray(out["scene"], dtype=np.complex64)
        if scene.ndim == 2:
            scene = scene[None]
        particles = np.asarray(out["particles"], dtype=np.complex64)
        engine_version = str(out.get("engine_version", ""))
        used_device = str(out.get("device", sim.device))
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, scene=scene, particles=particles,
                     sampling=np.broadcast_to(np.asarray(out["sampling"], dtype=np.float64), (2,)).copy(),
                     energy=np.float64(out.get("energy", sim.energy)), gpts=np.asarray(out.get("gpts", scene.shape[1:])),
                     phonons=np.int64(sim.phonons), engine=np.str_(out.get("engine", sim.engine)),
                     engine_version=np.str_(engine_version), n_atoms=np.int64(len(atoms)))
        computed += 1
        atoms_done += len(atoms) * scene.shape[0]
        waves_done += scene.shape[0] + 1
    dt = time.perf_counter() - t0
    return {"shard": int(shard), "structures": len(indices), "computed": computed, "reused": reused,
            "engine": sim.engine, "engine_version": engine_version, "device": used_device, "seconds": dt,
            "exit_waves": waves_done, "waves_per_s": _rate(waves_done, dt), "atoms_per_s": _rate(atoms_done, dt)}


def load_waves(spec: DatasetSpec, index: int, root=None) -> dict[str, Any]:
    """Arrays and settings of one structure's exit waves (plain numpy / Python values)."""
    path = waves_path(spec, index, root)
    if not path.exists():
        raise InputError(f"{path}: missing exit waves (run the exit_waves stage for its shard first)")
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    for k in ("engine", "engine_version"):
        out[k] = str(out[k])
    out["energy"] = float(out["energy"])
    out["phonons"] = int(out["phonons"])
    out["sampling"] = tuple(float(s) for s in out["sampling"])
    return out


def vacuum_region(atoms, shape: tuple[int, int], sampling: tuple[float, float],
                  margin: float = VACUUM_MARGIN) -> np.ndarray:
    """Bool ``[x, y]`` map of grid pixels farther than ``margin`` Å (in projection) from every particle
    atom — vacuum in the particle-only exit waves, where |ψ| must be 1. Vectorised: a 2-D histogram of
    atom positions and a Euclidean distance transform."""
    from scipy.ndimage import distance_transform_edt

    pid = np.asarray(atoms.arrays.get("particle_id", np.zeros(len(atoms), int)))
    pos = atoms.positions[pid >= 0]
    if len(pos) == 0:
        return np.ones(shape, bool)
    lx, ly = shape[0] * sampling[0], shape[1] * sampling[1]
    # nearest grid point (bins centred on the samples), periodic in x and y
    extent = [[-sampling[0] / 2, lx - sampling[0] / 2], [-sampling[1] / 2, ly - sampling[1] / 2]]
    px = np.mod(pos[:, 0] + sampling[0] / 2, lx) - sampling[0] / 2
    py = np.mod(pos[:, 1] + sampling[1] / 2, ly) - sampling[1] / 2
    hist, _, _ = np.histogram2d(px, py, bins=shape, range=extent)
    pad = (int(math.ceil(margin / sampling[0])) + 1, int(math.ceil(margin / sampling[1])) + 1)
    empty = np.pad(hist == 0, [(pad[0], pad[0]), (pad[1], pad[1])], mode="wrap")
    dist = distance_transform_edt(empty, sampling=sampling)[pad[0]:pad[0] + shape[0], pad[1]:pad[1] + shape[1]]
    return dist > margin


def waves_summary(spec: DatasetSpec, shard: int, root=None) -> dict:
    """Quality numbers of a shard's exit waves for the asset checks.

    ``nonfinite``: structures whose waves contain NaN/inf. ``scene_intensity_*``: mean |ψ|² of the scene
    waves (flux conservation: ≈ 1, slightly less from scattering outside the antialias aperture).
    ``vacuum_intensity_*``: mean |ψ|² of the particle-only waves over vacuum pixels (exactly 1 ideally).
    """
    nonfinite, scene_i, vac_i, missing = 0, [], [], 0
    for i in _shard_of(spec, shard):
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


# --------------------------------------------------------------------------------------------------
# Stage 3: imaged samples (images + labels)
# --------------------------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


@_one_writer("images")
def image_shard(spec: DatasetSpec, shard: int, root=None, *, force: bool = False) -> dict:
    """Images and labels of every structure of ``shard`` into ``images/shard-NNNNN.npz`` (one file).

    Per structure: the zero defocus is calibrated on the particle-only waves (minimum contrast, when
    ``imaging.calibrate_zero_defocus``), the imaging conditions are drawn from the spec, each image is
    rendered from the scene waves (coherence, MTF, dose noise) at ``pixel_size`` and labelled from the
    particle-only waves on the same grid. ``exit_waves`` configurations keep only the labels (one row per
    structure; imaging happens on the fly at training time).

    Imaging runs on the CPU: the dose-noise draws of torch differ between CPU and CUDA generators, and the
    dataset bytes must not depend on the machine (the multislice, the expensive part, uses the GPU).

    The file (pickle-free ``.npz``) holds ``image_<n>``, ``mask_<n>`` (uint8 0/1), ``instances_<n>`` (int32)
    per row ``n`` and ``rows``: a JSON list of the rows' lineage (ids, seed, conditions, zero defocus,
    structure record, per-particle table, engine, ...). A shard whose file exists is skipped.
    """
    from .imaging import calibrate_zero_defocus, render_image, sample_imaging_conditions
    from .labels import make_labels

    indices = _shard_of(spec, shard)
    _claim_stage_dir(spec, "images", images_fingerprint(spec, root), root)
    path = images_path(spec, shard, root)
    t0 = time.perf_counter()
    if path.exists() and not force:
        return {"shard": int(shard), "structures": len(indices), "computed": 0, "reused": 1,
                "rows": len(read_image_shard_rows(spec, shard, root)), "seconds": time.perf_counter() - t0,
                "images_per_s": 0.0}
    arrays: dict[str, np.ndarray] = {}
    rows: list[dict] = []
    calib_s = render_s = label_s = 0.0
    for i in indices:
        w = load_waves(spec, i, root)
        atoms = read_structure(spec, i, root)
        sampling, energy = w["sampling"], w["energy"]
        t = time.perf_counter()
        # search the minimum-contrast plane over the particles' heights (faster and never outside them)
        has_particles = "particle_id" in atoms.arrays and bool((atoms.arrays["particle_id"] >= 0).any())
        # no particles (all dropped): the particle wave is vacuum, there is no contrast minimum to find
        zero = (float(calibrate_zero_defocus(w["particles"], sampling, energy, device="cpu", atoms=atoms,
                                             steps=tuple(spec.imaging.calibration_steps),
                                             search=spec.imaging.calibration_search))
                if spec.imaging.calibrate_zero_defocus and has_particles else 0.0)
        calib_s += time.perf_counter() - t
        scene = dict(atoms.info.get("scene") or {})
        lineage = {"structure_id": structure_id(spec, i), "structure": _jsonable(scene),
                   "substrate_thickness": _substrate_thickness(scene), "zero_defocus": zero, "energy": energy,
                   "sampling": list(sampling), "phonons": w["phonons"], "engine": w["engine"],
                   "engine_version": w["engine_version"] or "unknown", "split": spec.split_of(i), "index": i}
        labels_cache: dict[float, dict] = {}  # labels depend on the pixel size only

        def labels_at(pixel_size: float, w=w, atoms=atoms, zero=zero, cache=labels_cache) -> dict:
            nonlocal label_s
            key = float(pixel_size)
            if key not in cache:
                t = time.perf_counter()
                cache[key] = make_labels(w["particles"], atoms, w["sampling"], key, spec.labels,
                                         zero_defocus=zero, energy=w["energy"])
                label_s += time.perf_counter() - t
            return cache[key]

        if spec.kind == "exit_waves":
            lab = labels_at(spec.imaging.pixel_size)
            n = len(rows)
            arrays[f"mask_{n}"] = np.asarray(lab["mask"]).astype(np.uint8)
            arrays[f"instances_{n}"] = np.asarray(lab["instances"], dtype=np.int32)
            rows.append({**lineage, "sample_id": structure_id(spec, i), "seed": derive_seed(spec.seed, "simulation", i),
                         "pixel_size": float(spec.imaging.pixel_size),
                         "particles": _jsonable(lab.get("particles") or scene.get("particles") or [])})
            continue
        conditions = sample_imaging_conditions(spec.imaging, derive_seed(spec.seed, "imaging", i))
        for k, cond in enumerate(conditions):
            seed = int(cond.get("noise_seed", derive_seed(spec.seed, "image", i, k)))
            t = time.perf_counter()
            img = np.asarray(render_image(w["scene"], sampling, energy, cond, zero, seed, device="cpu"),
                             dtype=np.float32)
            render_s += time.perf_counter() - t
            lab = labels_at(cond["pixel_size"])
            mask = np.asarray(lab["mask"])
            if mask.shape != img.shape:
                raise RuntimeError(f"labels {mask.shape} and image {img.shape} grids differ for "
                                   f"{sample_id(spec, i, k)} at pixel size {cond['pixel_size']}")
            n = len(rows)
            arrays[f"image_{n}"] = img
            arrays[f"mask_{n}"] = mask.astype(np.uint8)
            arrays[f"instances_{n}"] = np.asarray(lab["instances"], dtype=np.int32)
            rows.append({**lineage, "sample_id": sample_id(spec, i, k), "seed": seed,
                         "pixel_size": float(cond["pixel_size"]), "conditions": _jsonable(cond),
                         "particles": _jsonable(lab.get("particles") or scene.get("particles") or [])})
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, rows=np.str_(json.dumps(rows, sort_keys=True)), **arrays)
    dt = time.perf_counter() - t0
    n_img = len(rows) if spec.kind == "images" else 0
    return {"shard": int(shard), "structures": len(indices), "computed": 1, "reused": 0, "rows": len(rows),
            "images": n_img, "seconds": dt, "images_per_s": _rate(n_img, dt), "calibration_s": calib_s,
            "render_s": render_s, "labels_s": label_s}


def _substrate_thickness(scene: dict) -> float | None:
    sub = scene.get("substrate")
    if isinstance(sub, dict):
        t = sub.get("thickness")
        return None if t is None else float(t)
    return None


def read_image_shard(spec: DatasetSpec, shard: int, root=None) -> Iterator[dict]:
    """Rows of one imaged shard: lineage dict + ``image`` (float32), ``mask`` (uint8), ``instances`` (int32)."""
    path = images_path(spec, shard, root)
    if not path.exists():
        raise InputError(f"{path}: missing imaged shard (run the imaged_samples stage for shard {shard} first)")
    with np.load(path, allow_pickle=False) as z:
        rows = json.loads(str(z["rows"]))
        for n, row in enumerate(rows):
            out = dict(row)
            for key in ("image", "mask", "instances"):
                if f"{key}_{n}" in z.files:
                    out[key] = z[f"{key}_{n}"]
            yield out


def read_image_shard_rows(spec: DatasetSpec, shard: int, root=None) -> list[dict]:
    """Lineage of the rows of one imaged shard, without the arrays."""
    with np.load(images_path(spec, shard, root), allow_pickle=False) as z:
        return json.loads(str(z["rows"]))


def expected_rows_per_structure(spec: DatasetSpec) -> int:
    """Rows each structure contributes: 1 for ``exit_waves``; the number of imaging conditions drawn for
    it for ``images`` (``sample_imaging_conditions`` of structure 0: the count does not depend on the seed)."""
    if spec.kind == "exit_waves":
        return 1
    from .imaging import sample_imaging_conditions

    return len(sample_imaging_conditions(spec.imaging, derive_seed(spec.seed, "imaging", 0)))


def images_summary(spec: DatasetSpec, shard: int, root=None) -> dict:
    """Quality numbers of an imaged shard for the asset checks: non-finite images, mean image intensity
    (normalised so vacuum ≈ 1), label coverage (mask fraction) and empty masks of images with particles."""
    nonfinite, means, cover, empty, rows = 0, [], [], 0, 0
    for row in read_image_shard(spec, shard, root):
        rows += 1
        if "image" in row:
            img = row["image"]
            if not np.all(np.isfinite(img)):
                nonfinite += 1
            else:  # counts when a dose is set: mean = I * dose * pixel area
                cond = row.get("conditions") or {}
                dose, px = cond.get("dose"), cond.get("recorded_pixel_size") or row["pixel_size"]
                scale = float(dose) * float(px) ** 2 if dose else 1.0
                means.append(float(img.mean()) / scale)
        m = row["mask"]
        cover.append(float(np.count_nonzero(m)) / m.size)
        if cover[-1] == 0 and len((row.get("structure") or {}).get("particles") or []) > 0:
            empty += 1  # the structure has particles but the label is empty
    return {"rows": rows, "nonfinite": nonfinite,
            "image_mean_min": min(means) if means else math.nan, "image_mean_max": max(means) if means else math.nan,
            "coverage_min": min(cover) if cover else math.nan, "coverage_max": max(cover) if cover else math.nan,
            "coverage_mean": float(np.mean(cover)) if cover else math.nan, "empty_masks": empty}


# --------------------------------------------------------------------------------------------------
# Stage 4: the dataset folder
# --------------------------------------------------------------------------------------------------


def dataset_rows(spec: DatasetSpec, root=None) -> dict[str, Iterator[dict]]:
    """Rows of every split (streamed shard by shard), in the row schema of :mod:`hrtem_dataset.dataset`."""
    by_split = {s: [] for s in SPLITS}
    for shard in range(spec.n_shards):
        for i in spec.shard_indices(shard):
            by_split[spec.split_of(i)].append(shard)

    def rows_of(split: str) -> Iterator[dict]:
        for shard in sorted(set(by_split[split])):
            for row in read_image_shard(spec, shard, root):
                if row.pop("split") != split:
                    continue
                row.pop("index", None)
                if spec.kind == "exit_waves":
                    row["waves"] = load_waves(spec, int(row["structure_id"].rsplit("-", 1)[1]), root)["scene"]
                yield row

    return {s: rows_of(s) for s in SPLITS if by_split[s]}


def dataset_dir(spec: DatasetSpec, root=None) -> Path:
    """The built configuration: ``<config_dir>/dataset-<content id>``.

    The folder name carries a content id (images fingerprint + spec hash) because ``datasets`` keys its
    Arrow cache of a local folder on the folder *name*, the configuration and the card's sizes — not on the
    file contents — so a rebuilt dataset of the same size under the same name would be read back from the
    cache of the previous build (by training and evaluation)."""
    return config_dir(spec, root) / f"dataset-{spec_hash({'images': images_fingerprint(spec, root), 'spec': spec.hash()})[:12]}"


def assemble_dataset(spec: DatasetSpec, root=None, out_dir: str | Path | None = None) -> dict:
    """Write the dataset folder (a Hub dataset repo layout, ``load_dataset(out_dir, config)``) from the
    imaged shards: ``data/<config>/<split>-NNNNN-of-NNNNN.parquet`` + dataset card. Every shard must exist.
    ``out_dir`` defaults to :func:`dataset_dir`. Returns row counts per split and timings."""
    from .dataset import write_dataset_config

    missing = [s for s in range(spec.n_shards) if not images_path(spec, s, root).exists()]
    if missing:
        raise InputError(f"{config_dir(spec, root) / 'images'}: shards {missing} are not imaged yet")
    out = Path(out_dir) if out_dir is not None else dataset_dir(spec, root)
    t0 = time.perf_counter()
    write_dataset_config(dataset_rows(spec, root), spec, out)
    info = json.loads((out / "specs" / f"{spec.config_name}.json").read_text())
    splits = {s: int(v["num_examples"]) for s, v in info.get("splits", {}).items()}
    dt = time.perf_counter() - t0
    return {"path": str(out), "rows": splits, "total_rows": sum(splits.values()),
            "structures": {s: int(v.get("num_structures", 0)) for s, v in info.get("splits", {}).items()},
            "seconds": dt, "rows_per_s": _rate(sum(splits.values()), dt)}


def expected_rows(spec: DatasetSpec) -> dict[str, int]:
    """Rows each split must have according to the spec."""
    per = expected_rows_per_structure(spec)
    counts = {"train": spec.splits.train, "validation": spec.splits.validation, "test": spec.splits.test}
    return {s: n * per for s, n in counts.items() if n > 0}


def _readable(folder: Path) -> None:
    """Published files are for others: 0644 (atomic writes create owner-only temporaries)."""
    for p in folder.rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            p.chmod(0o644)


def publish_dataset(spec: DatasetSpec, root=None, dest: str | Path | None = None, *, repo_id: str | None = None,
                    token: str | None = None, private: bool = False) -> dict:
    """Put the built configuration into the dataset folder ``dest`` (a Hub dataset repo layout that may
    hold other configurations of the same dataset version: they are kept, the card lists all), then, with
    ``repo_id``, upload the folder to the Hub and tag it ``v<version>``."""
    import shutil

    from .dataset import publish, write_dataset_card
    from .dataset.card import read_configs
    from .io import atomic_dir

    src = dataset_dir(spec, root)
    if not (src / "data" / spec.config_name).is_dir():
        raise InputError(f"{src}: configuration {spec.config_name!r} not built (run dataset_splits first)")
    dest = Path(dest) if dest is not None else config_dir(spec, root) / "published" / "dataset"
    t0 = time.perf_counter()
    if dest.is_dir():
        for other, _ in read_configs(dest):
            if (other.name, other.version) != (spec.name, spec.version):
                raise InputError(f"{dest}: holds {other.name} {other.version}, not {spec.name} {spec.version}; "
                                 f"one folder is one dataset version")
    dest.mkdir(parents=True, exist_ok=True)
    with atomic_dir(dest / "data" / spec.config_name) as tmp:
        shutil.copytree(src / "data" / spec.config_name, tmp, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".*", "*.tmp"))
    for rel in (f"specs/{spec.config_name}.yaml", f"specs/{spec.config_name}.json",
                f"assets/preview-{spec.config_name}.png"):
        if (src / rel).exists():
            with atomic_path(dest / rel) as tmp:
                shutil.copyfile(src / rel, tmp)
    report = config_dir(spec, root) / "validation"
    if (report / "validation.json").is_file():  # the configuration's validation report, linked from the card
        with atomic_dir(dest / "validation" / spec.config_name) as tmp:
            shutil.copytree(report, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*", "*.tmp"))
    write_dataset_card(dest)
    _readable(dest)
    out = {"path": str(dest), "files": sum(1 for p in dest.rglob("*") if p.is_file() and not p.name.startswith(".")),
           "seconds": time.perf_counter() - t0, "repo_id": repo_id}
    if repo_id:
        res = publish(dest, repo_id, token=token, private=private)
        out.update({"url": res.url, "tag": res.tag, "uploaded_files": len(res.files)})
    return out


def _model_fingerprint(spec: DatasetSpec, root) -> str:
    """What a trained model depends on: the training data (imaged samples + split sizes), the model
    hyper-parameters (not ``min_f1``, which is only a check threshold) and the seed."""
    model = spec.model.model_dump(mode="json", exclude={"min_f1", "threshold"}) if spec.model else None
    return spec_hash({"images": images_fingerprint(spec, root), "splits": spec.splits.model_dump(mode="json"),
                      "config": spec.config_name, "model": model, "seed": spec.seed})


def train_model(spec: DatasetSpec, root=None, *, device: str | None = None, force: bool = False,
                progress: bool = False) -> dict:
    """Train the spec's segmentation model on the built dataset (``<config_dir>/dataset``) into
    ``<config_dir>/model`` (a Hub model repo layout). A complete model trained from the same dataset and
    model spec is reused; an interrupted training resumes from its checkpoint (models.train)."""
    from models.hooks import train_from_spec

    if spec.model is None:
        raise InputError(f"{spec.name}/{spec.config_name}: the spec has no 'model' section")
    data = dataset_dir(spec, root)
    out = config_dir(spec, root) / "model"
    fp_file = out / ".hrtem-fingerprint"
    fp = _model_fingerprint(spec, root)
    complete = (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    t0 = time.perf_counter()
    if complete and not force and fp_file.exists() and fp_file.read_text().strip() == fp:
        from models.hub import set_threshold

        set_threshold(out, spec.model.threshold)  # the operating point is not trained: no retraining
        metrics = json.loads((out / ".hrtem-metrics.json").read_text()) if (out / ".hrtem-metrics.json").exists() else {}
        return {"path": str(out), "reused": True, "seconds": time.perf_counter() - t0, **_flat_numbers(metrics)}
    if fp_file.exists() and fp_file.read_text().strip() != fp:
        import shutil

        shutil.rmtree(out, ignore_errors=True)  # stale model of another dataset/model spec: start over
    metrics = train_from_spec(data, spec.config_name, spec.model, out, seed=derive_seed(spec.seed, "model"),
                              device=None if device in (None, "auto") else device, progress=progress)
    atomic_write_text(out / ".hrtem-metrics.json", json.dumps(_jsonable(metrics), sort_keys=True, default=str))
    atomic_write_text(fp_file, fp + "\n")
    dt = time.perf_counter() - t0
    return {"path": str(out), "reused": False, "seconds": dt, **_flat_numbers(metrics)}


def _flat_numbers(d: dict) -> dict:
    return {f"val_{k}" if k in ("iou", "f1", "precision", "recall") else k: v for k, v in d.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def evaluate(spec: DatasetSpec, root=None, *, device: str | None = None) -> dict:
    """Evaluate ``<config_dir>/model`` on the test split (validation when there is no test split) of the
    built dataset; writes ``<config_dir>/evaluation.json``. Returns the metrics, the split and the path."""
    from models.hooks import evaluate_model

    data = dataset_dir(spec, root)
    model_dir = config_dir(spec, root) / "model"
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}: no trained model (run trained_model first)")
    split = "test" if spec.splits.test > 0 else "validation"
    t0 = time.perf_counter()
    metrics = evaluate_model(model_dir, data, spec.config_name, split,
                             device=None if device in (None, "auto") else device)
    metrics = {k: v for k, v in _jsonable(metrics).items() if k not in ("model", "dataset", "config", "split")}
    path = atomic_write_text(config_dir(spec, root) / "evaluation.json",
                             json.dumps({"split": split, "metrics": metrics}, indent=1, sort_keys=True) + "\n")
    return {"metrics": metrics, "split": split, "path": str(path), "seconds": time.perf_counter() - t0}


def publish_model(spec: DatasetSpec, root=None, dest: str | Path | None = None, *, repo_id: str | None = None,
                  token: str | None = None, private: bool = False) -> dict:
    """Copy the trained model folder (Hub model repo layout, plus ``evaluation.json``) to ``dest`` and,
    with ``repo_id``, push it to the Hub tagged ``v<version>`` of the dataset it was trained on."""
    import shutil

    model_dir = config_dir(spec, root) / "model"
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}: no trained model (run trained_model first)")
    dest = Path(dest) if dest is not None else config_dir(spec, root) / "published" / "model"
    t0 = time.perf_counter()
    from .io import atomic_dir

    with atomic_dir(dest) as tmp:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".*", "*.tmp", "checkpoints"))
        if dest.is_dir():  # files a user put next to the model survive the atomic replacement
            for extra in dest.iterdir():
                if not (tmp / extra.name).exists():
                    (shutil.copytree if extra.is_dir() else shutil.copy2)(extra, tmp / extra.name)
        ev = config_dir(spec, root) / "evaluation.json"
        if ev.exists():  # the card then reports the held-out metrics, not the validation ones
            from models.hub import card_with_evaluation

            shutil.copyfile(ev, tmp / "evaluation.json")
            evaluation = json.loads(ev.read_text())
            card_with_evaluation(tmp, evaluation["metrics"], evaluation["split"])
        _readable(tmp)
    out = {"path": str(dest), "files": sum(1 for p in dest.rglob("*") if p.is_file()),
           "seconds": time.perf_counter() - t0, "repo_id": repo_id}
    if repo_id:
        from models.hub import push_to_hub

        out["url"] = push_to_hub(dest, repo_id, token=token, private=private, tag=f"v{spec.version}")
    return out
