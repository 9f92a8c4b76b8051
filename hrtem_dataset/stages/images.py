"""Stage 3: imaged samples — noisy HRTEM images and pixel-exact labels of each shard.

Format — ``images/shard-NNNNN.npz`` (pickle-free, one file per shard): ``image_<n>`` (float32, absent for
``exit_waves`` configurations), ``mask_<n>`` (uint8 0/1) and ``instances_<n>`` (int32) per row ``n``, and
``rows``: a JSON list of the rows' lineage (ids, seed, conditions, zero defocus, structure record,
per-particle table, engine, ...). Seeds: imaging conditions ``derive_seed(seed, "imaging", i)``, each
carrying its own ``noise_seed`` (the row's ``seed``).

Checks and their tolerances:
- ``no_nan_inf`` (blocking): no image has NaN/inf.
- ``mean_intensity`` (warning): the mean image intensity, normalised so vacuum ≈ 1 (dose noise, MTF(0) = 1),
  is 1 ± ``IMAGE_MEAN_TOL``.
- ``label_coverage`` (blocking): every image of a structure with particles has a non-empty mask and no mask
  covers more than ``COVERAGE_MAX`` of the field (that means a broken threshold).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import previews
from ..device import background_thread
from ..errors import InputError
from ..imaging import calibrate_zero_defocus, render_image, sample_imaging_conditions
from ..imaging._common import phonon_stack
from ..imaging.image import wave_spectrum
from ..io import atomic_path, npz_writer
from ..jsonsafe import plain
from ..labels import make_labels
from ..runtime import stage_runtime
from ..seeding import derive_seed
from ..specs import DatasetSpec
from ..spectra import fft2
from ..workspace import (
    claim_stage_dir,
    images_fingerprint,
    images_path,
    one_writer,
    previews_dir,
    sample_id,
    shard_indices,
    structure_id,
    waves_path,
)
from .base import CheckSpec, RunContext, Stage, StageResult, in_order_torch_streams, outcome, rate
from .exit_waves import load_waves
from .structures import read_structure

IMAGE_MEAN_TOL = 0.2          # mean image intensity (vacuum ≈ 1, dose noise, MTF(0) = 1)
COVERAGE_MAX = 0.9            # a mask covering > 90 % of the field means a broken threshold

NO_NAN_INF = CheckSpec("no_nan_inf", "no NaN or inf in the arrays")
MEAN_INTENSITY = CheckSpec("mean_intensity", f"mean image intensity (vacuum-normalised) within 1 ± {IMAGE_MEAN_TOL}",
                           blocking=False)
LABEL_COVERAGE = CheckSpec("label_coverage",
                           f"every image with particles has a non-empty mask; coverage ≤ {COVERAGE_MAX}")


@one_writer("images")
@stage_runtime()  # one BLAS thread, no full garbage collections (see stage_runtime)
def image_shard(spec: DatasetSpec, shard: int, root=None, *, force: bool = False, workers: int | None = None) -> dict:
    """Images and labels of every structure of ``shard`` into ``images/shard-NNNNN.npz`` (one file).

    Per structure: the zero defocus is calibrated on the particle-only waves (minimum contrast, when
    ``imaging.calibrate_zero_defocus``), the imaging conditions are drawn from the spec, each image is
    rendered from the scene waves (coherence, MTF, dose noise) at ``pixel_size`` and labelled from the
    particle-only waves on the same grid. ``exit_waves`` configurations keep only the labels (one row per
    structure; imaging happens on the fly at training time).

    Imaging runs on the CPU: the dose-noise draws of torch differ between CPU and CUDA generators, and the
    dataset bytes must not depend on the machine (the multislice, the expensive part, uses the GPU).
    Structures are independent (own seeds, own noise generators), so ``workers`` of them are imaged at once,
    each in one torch thread (default :func:`image_workers`); the file is the same bytes for any number.
    A shard whose file exists is skipped.

    Returned timings: ``seconds`` (wall), ``work_s`` (the structures' seconds summed over workers) and its
    parts ``calibration_s``, ``render_s``, ``labels_s`` and ``particle_spectrum_s`` (the particle waves'
    transform, shared by the calibration and the labels, which would need it without a calibration; all summed
    over workers: compare them with ``work_s``, not with the wall time).
    """
    indices = shard_indices(spec, shard)
    claim_stage_dir(spec, "images", images_fingerprint(spec, root), root)
    path = images_path(spec, shard, root)
    t0 = time.perf_counter()
    if path.exists() and not force:
        return {"shard": int(shard), "structures": len(indices), "computed": 0, "reused": 1,
                "rows": len(read_image_shard_rows(spec, shard, root)), "seconds": time.perf_counter() - t0,
                "images_per_s": 0.0}
    n_workers = image_workers(spec, indices, root) if workers is None else max(1, min(int(workers), len(indices)))
    rows: list[dict] = []
    total = dict.fromkeys(("work_s", "calibration_s", "render_s", "labels_s", "particle_spectrum_s"), 0.0)
    # each structure's arrays are deflated into the file as soon as it and those before it are done, by a writer
    # thread of low priority that takes a core when one idles (compressing the shard after the imaging took
    # 0.2-0.3 s of a 1.4 s stage on 2 cores); in structure order, ``rows`` last: the same file for any number of
    # workers
    with _in_threads(lambda i: _image_structure(spec, i, root), list(indices), n_workers) as results, \
            atomic_path(path) as tmp, open(tmp, "wb") as fh, npz_writer(fh) as add, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="hrtem-images-writer",
                               initializer=background_thread) as writer:
        def write(first: int, structure_rows: list) -> None:
            for n, (_, row_arrays) in enumerate(structure_rows, first):
                for name, a in row_arrays.items():
                    add(f"{name}_{n}", a)

        writes = []
        for res in results:
            writes.append(writer.submit(write, len(rows), res["rows"]))
            rows.extend(row for row, _ in res["rows"])
            for k in total:
                total[k] += res[k]
        for w in writes:
            w.result()
        add("rows", np.str_(json.dumps(rows, sort_keys=True)))
    dt = time.perf_counter() - t0
    n_img = len(rows) if spec.kind == "images" else 0
    return {"shard": int(shard), "structures": len(indices), "computed": 1, "reused": 0, "rows": len(rows),
            "images": n_img, "seconds": dt, "images_per_s": rate(n_img, dt), "workers": n_workers, **total}


IMAGE_WORKING_SET = 10  # a structure's imaging working memory, in multiples of its exit-wave file (measured ≈ 7×)


def image_workers(spec: DatasetSpec, indices, root=None) -> int:
    """Structures imaged at once: one per torch thread this process may use (``torch.get_num_threads()``),
    at most the shard's structures, and as many as half the memory limit holds at ``IMAGE_WORKING_SET`` × the
    largest exit-wave file of the shard."""
    import torch

    from ..limits import memory_limit

    n = max(1, min(len(indices), torch.get_num_threads()))
    sizes = [p.stat().st_size for p in (waves_path(spec, i, root) for i in indices) if p.exists()]
    limit = memory_limit()
    if sizes and limit:
        n = min(n, max(1, int(limit // 2 // (IMAGE_WORKING_SET * max(sizes)))))
    return n


@contextlib.contextmanager
def _in_threads(fn, items: list, workers: int):
    """Yields an iterator of ``fn(x)`` for the items, in order: with ``workers`` > 1 computed ahead in a thread
    pool (torch ops release the GIL; torch's intra-op threads set to 1 meanwhile), else one by one as the
    iterator is read. On an error the items not started are cancelled and the running ones finish first."""
    if workers <= 1 or len(items) <= 1:
        yield (fn(x) for x in items)
        return
    with in_order_torch_streams(fn, items, workers, "hrtem-images") as results:
        yield results


def _image_structure(spec: DatasetSpec, i: int, root=None) -> dict:
    """Rows of structure ``i`` for :func:`image_shard`: ``rows`` = [(lineage dict, {"image"/"mask"/"instances":
    array})], and its seconds (``work_s``, ``calibration_s``, ``render_s``, ``labels_s``, ``particle_spectrum_s``)."""
    t_start = time.perf_counter()
    calib_s = render_s = label_s = 0.0
    w = load_waves(spec, i, root)
    atoms = read_structure(spec, i, root)
    sampling, energy = w["sampling"], w["energy"]
    t = time.perf_counter()
    # on the CPU whatever the simulation's device: the same exit waves give the same bytes on any machine (CUDA's
    # random numbers and FFT rounding differ); training on a GPU images exit waves on the fly (OnTheFlyImaging)
    # search the minimum-contrast plane over the particles' heights (faster and never outside them)
    has_particles = "particle_id" in atoms.arrays and bool((atoms.arrays["particle_id"] >= 0).any())
    # no particles (all dropped): the particle wave is vacuum, there is no contrast minimum to find
    calibrating = spec.imaging.calibrate_zero_defocus and has_particles
    # the particle waves' transform, once: the fast searches and the labels' zero-defocus plane both start from it
    # (the same bytes as each transforming the waves); timed on its own: the labels need it without a calibration
    particle_spectrum = fft2(phonon_stack(w["particles"], None, "particle_waves")) if calibrating else None
    spectrum_s = time.perf_counter() - t
    t = time.perf_counter()
    zero = (float(calibrate_zero_defocus(w["particles"], sampling, energy, device="cpu", atoms=atoms,
                                         steps=tuple(spec.imaging.calibration_steps),
                                         search=spec.imaging.calibration_search, spectrum=particle_spectrum))
            if calibrating else 0.0)
    calib_s += time.perf_counter() - t
    scene = dict(atoms.info.get("scene") or {})
    lineage = {"structure_id": structure_id(spec, i), "structure": plain(scene),
               "substrate_thickness": _substrate_thickness(scene), "zero_defocus": zero, "energy": energy,
               "sampling": list(sampling), "phonons": w["phonons"], "engine": w["engine"],
               "engine_version": w["engine_version"] or "unknown", "split": spec.split_of(i), "index": i}
    labels_cache: dict[float, dict] = {}  # labels depend on the pixel size only

    def labels_at(pixel_size: float) -> dict:
        nonlocal label_s
        key = float(pixel_size)
        if key not in labels_cache:
            t = time.perf_counter()
            labels_cache[key] = make_labels(w["particles"], atoms, w["sampling"], key, spec.labels,
                                            zero_defocus=zero, energy=w["energy"], spectrum=particle_spectrum)
            label_s += time.perf_counter() - t
        return labels_cache[key]

    rows: list[tuple[dict, dict]] = []
    if spec.kind == "exit_waves":
        lab = labels_at(spec.imaging.pixel_size)
        rows.append(({**lineage, "sample_id": structure_id(spec, i), "seed": derive_seed(spec.seed, "simulation", i),
                      "pixel_size": float(spec.imaging.pixel_size),
                      "particles": plain(lab.get("particles") or scene.get("particles") or [])},
                     {"mask": np.asarray(lab["mask"]).astype(np.uint8),
                      "instances": np.asarray(lab["instances"], dtype=np.int32)}))
    else:
        conditions = sample_imaging_conditions(spec.imaging, derive_seed(spec.seed, "imaging", i))
        t = time.perf_counter()
        # the scene waves' FFT once per structure, shared by its images (the same bytes as one FFT per image)
        scene_spectrum = wave_spectrum(w["scene"], device="cpu")
        render_s += time.perf_counter() - t
        for k, cond in enumerate(conditions):
            seed = int(cond.get("noise_seed", derive_seed(spec.seed, "image", i, k)))
            t = time.perf_counter()
            img = np.asarray(render_image(w["scene"], sampling, energy, cond, zero, seed, device="cpu",
                                          spectrum=scene_spectrum, cropped_ifft=spec.imaging.cropped_ifft),
                             dtype=np.float32)
            render_s += time.perf_counter() - t
            lab = labels_at(cond["pixel_size"])
            mask = np.asarray(lab["mask"])
            if mask.shape != img.shape:
                raise RuntimeError(f"labels {mask.shape} and image {img.shape} grids differ for "
                                   f"{sample_id(spec, i, k)} at pixel size {cond['pixel_size']}")
            rows.append(({**lineage, "sample_id": sample_id(spec, i, k), "seed": seed,
                          "pixel_size": float(cond["pixel_size"]), "conditions": plain(cond),
                          "particles": plain(lab.get("particles") or scene.get("particles") or [])},
                         {"image": img, "mask": mask.astype(np.uint8),
                          "instances": np.asarray(lab["instances"], dtype=np.int32)}))
    return {"rows": rows, "work_s": time.perf_counter() - t_start, "calibration_s": calib_s, "render_s": render_s,
            "labels_s": label_s, "particle_spectrum_s": spectrum_s}


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
    return len(sample_imaging_conditions(spec.imaging, derive_seed(spec.seed, "imaging", 0)))


def images_summary(spec: DatasetSpec, shard: int, root=None) -> dict:
    """Quality numbers of an imaged shard for the checks: non-finite images, mean image intensity
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


def images_checks(spec: DatasetSpec, q: dict) -> list:
    """The outcomes of ``no_nan_inf``, ``mean_intensity`` and ``label_coverage`` for an :func:`images_summary`."""
    mean_ok = (spec.kind != "images") or (
        q["nonfinite"] == 0 and abs(q["image_mean_min"] - 1) <= IMAGE_MEAN_TOL
        and abs(q["image_mean_max"] - 1) <= IMAGE_MEAN_TOL)
    cov_ok = q["empty_masks"] == 0 and q["coverage_max"] <= COVERAGE_MAX
    return [
        outcome(NO_NAN_INF, q["nonfinite"] == 0, f"{q['nonfinite']} images with NaN/inf"),
        outcome(MEAN_INTENSITY, mean_ok, "image means in [{:.3f}, {:.3f}]".format(q["image_mean_min"], q["image_mean_max"]),
                image_mean_min=q["image_mean_min"], image_mean_max=q["image_mean_max"]),
        outcome(LABEL_COVERAGE, cov_ok, "coverage in [{:.4f}, {:.4f}], {} empty masks".format(
            q["coverage_min"], q["coverage_max"], q["empty_masks"]),
            coverage_min=q["coverage_min"], coverage_max=q["coverage_max"], coverage_mean=q["coverage_mean"]),
    ]


def image_problems(spec: DatasetSpec, shard: int, root=None) -> list[str]:
    """Why a shard's images fail the blocking checks (empty when they pass)."""
    return [c.description for c in images_checks(spec, images_summary(spec, shard, root))
            if not c.passed and not c.warn]


class ImagedSamplesStage(Stage):
    """Noisy HRTEM images + pixel-exact labels of one shard (one .npz of rows)."""

    name, fingerprint, deps, partitioned = "imaged_samples", "images", ("exit_waves",), True
    kinds = frozenset({"numpy"})
    checks = (NO_NAN_INF, MEAN_INTENSITY, LABEL_COVERAGE)

    def materialize(self, spec: DatasetSpec, ctx: RunContext) -> StageResult:
        stats = image_shard(spec, ctx.shard, ctx.root, force=ctx.force)
        q = images_summary(spec, ctx.shard, ctx.root)
        first = next(read_image_shard(spec, ctx.shard, ctx.root))
        if "image" in first:
            pngs = {"Image": previews.image_png(first["image"]),
                    "Mask overlay": previews.mask_overlay_png(first["image"], first["mask"])}
        else:  # exit_waves configurations: labels only (images are rendered on the fly at training time)
            pngs = {"Mask": previews.image_png(first["mask"].astype(np.float32))}
        return StageResult(stats, {**{f"q_{k}": v for k, v in q.items()}, "spec_hash": spec.hash()},
                           path=str(images_path(spec, ctx.shard, ctx.root)), row_count=q["rows"],
                           checks=images_checks(spec, q),
                           previews=previews.save_pngs(pngs, previews_dir(spec, ctx.root), f"images-{ctx.shard:05d}"))
