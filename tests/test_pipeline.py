"""Per-shard stage functions (hrtem_dataset.pipeline) on the real structure, simulation, imaging, label
and dataset modules, with a tiny configuration (4 structures of 28 Å, 2 shards, 0.2 Å sampling)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from dagster_helpers import isolated_hf_datasets_cache, tiny_spec_dict  # noqa: F401 (autouse fixture)

from hrtem_dataset import pipeline as pl
from hrtem_dataset.errors import InputError
from hrtem_dataset.seeding import derive_seed
from hrtem_dataset.specs import DatasetSpec, load_spec


def _spec(**kw) -> DatasetSpec:
    return DatasetSpec.model_validate(tiny_spec_dict(model=False, **kw))


def _run_shard(spec, shard, root) -> dict:
    return {"structures": pl.build_structures_shard(spec, shard, root),
            "waves": pl.simulate_shard(spec, shard, root),
            "images": pl.image_shard(spec, shard, root)}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny configuration built shard by shard, as the Dagster partitions do."""
    root = tmp_path_factory.mktemp("ws")
    spec = _spec()
    plan = pl.plan_structures(spec, root)
    stats = [_run_shard(spec, s, root) for s in range(spec.n_shards)]
    return spec, root, plan, stats


def test_layout_ids_and_stats(built):
    spec, root, plan, stats = built
    assert spec.n_shards == 2 and plan["structures"] == 4 and plan["splits"] == {"train": 2, "validation": 1, "test": 1}
    base = root / "hrtem-tiny" / "0.0.1" / "tiny"
    assert pl.config_dir(spec, root) == base
    assert sorted(p.name for p in (base / "structures").glob("*.extxyz")) == [f"tiny-{i:06d}.extxyz" for i in range(4)]
    assert sorted(p.name for p in (base / "waves").glob("*.npz")) == [f"tiny-{i:06d}.npz" for i in range(4)]
    assert sorted(p.name for p in (base / "images").glob("*.npz")) == ["shard-00000.npz", "shard-00001.npz"]
    assert not list(base.rglob("*.tmp*"))  # atomic writes leave no temporaries
    lines = [json.loads(x) for x in (base / "structure_specs.jsonl").read_text().splitlines()]
    assert [x["seed"] for x in lines] == [derive_seed(spec.seed, "structure", i) for i in range(4)]
    assert [x["split"] for x in lines] == ["train", "train", "validation", "test"]
    for shard, s in enumerate(stats):
        built_atoms = [pl.read_structure(spec, i, root) for i in spec.shard_indices(shard)]
        assert s["structures"]["computed"] == 2 and s["structures"]["atoms"] == sum(len(a) for a in built_atoms)
        assert s["structures"]["particle_atoms"] == sum(int((a.arrays["particle_id"] >= 0).sum()) for a in built_atoms)
        # rates are counts over the stage's own wall time
        st, wv, im = s["structures"], s["waves"], s["images"]
        assert st["atoms_per_s"] == pytest.approx(st["atoms"] / st["seconds"])
        assert s["waves"]["computed"] == 2 and s["waves"]["exit_waves"] == 4  # 2 structures × (scene + particles)
        assert wv["waves_per_s"] == pytest.approx(wv["exit_waves"] / wv["seconds"])
        assert s["images"]["rows"] == 2 and s["images"]["images"] == 2
        assert im["images_per_s"] == pytest.approx(im["images"] / im["seconds"])


def test_exit_waves_physics(built):
    """Flux conservation and vacuum: |ψ_particles| = 1 away from the particle, mean |ψ_scene|² ≈ 1."""
    spec, root, _, _ = built
    w = pl.load_waves(spec, 0, root)
    n = math.ceil(28.0 / 0.2)
    assert w["scene"].shape == (1, n, n) and w["particles"].shape == (n, n)
    assert w["scene"].dtype == np.complex64 and w["sampling"] == pytest.approx((0.2, 0.2))
    assert w["engine"] == "torch" and w["energy"] == 300e3
    for shard in range(spec.n_shards):
        q = pl.waves_summary(spec, shard, root)
        assert q["nonfinite"] == 0 and q["missing"] == 0
        assert abs(q["vacuum_intensity_min"] - 1) < 2e-3 and abs(q["vacuum_intensity_max"] - 1) < 2e-3
        assert 0.95 < q["scene_intensity_min"] <= q["scene_intensity_max"] < 1.01
    # the particle phase is positive and large over the particle (Au: ~0.5-1 rad at 300 kV for r = 5 Å)
    atoms = pl.read_structure(spec, 0, root)
    vac = pl.vacuum_region(atoms, w["particles"].shape, w["sampling"])
    assert 0.3 < vac.mean() < 0.99
    assert np.angle(w["particles"])[~vac].max() > 0.3


def test_images_labels_and_lineage(built):
    spec, root, _, _ = built
    rows = list(pl.read_image_shard(spec, 1, root))
    assert [r["sample_id"] for r in rows] == ["tiny-000002-000", "tiny-000003-000"]
    assert [r["split"] for r in rows] == ["validation", "test"]
    for r in rows:
        assert r["image"].dtype == np.float32 and r["image"].shape == r["mask"].shape == r["instances"].shape
        assert r["image"].shape == (112, 112)  # 28 Å at 0.25 Å pixels
        assert set(np.unique(r["mask"])) == {0, 1} and r["instances"].max() == 1  # one particle
        assert r["conditions"]["dose"] == 1000.0 and -50 <= r["conditions"]["defocus"] <= 50
        assert r["engine"] == "torch" and r["structure"]["particles"] and r["particles"]
        index = int(r["structure_id"].split("-")[-1])
        # the noise seed of image 0 of structure i derives from (root seed, "imaging", i), never from order/time
        assert r["seed"] == r["conditions"]["noise_seed"] == derive_seed(derive_seed(spec.seed, "imaging", index),
                                                                          "noise", 0)
        assert math.isfinite(r["zero_defocus"])
        # counts at 1000 e/Å² and 0.25 Å pixels: mean ≈ 62.5 (Poisson noise, vacuum-normalised intensity)
        assert r["image"].mean() == pytest.approx(1000 * 0.25**2, rel=0.05)
    assert rows[0]["seed"] != rows[1]["seed"]
    q = pl.images_summary(spec, 1, root)
    assert q["nonfinite"] == 0 and q["empty_masks"] == 0 and 0.005 < q["coverage_min"] <= q["coverage_max"] < 0.2
    assert abs(q["image_mean_min"] - 1) < 0.05
    assert pl.expected_rows(spec) == {"train": 2, "validation": 1, "test": 1}


def test_resume_skips_and_recomputes_only_missing(built, tmp_path):
    spec, root, _, _ = built
    again = _run_shard(spec, 0, root)
    assert again["structures"]["computed"] == 0 and again["structures"]["reused"] == 2
    assert again["waves"]["computed"] == 0 and again["images"]["reused"] == 1
    # a structure rebuilt alone in a fresh workspace is identical (seeds come from the spec, not the order)
    fresh = tmp_path / "fresh"
    pl.build_structures_shard(spec, 1, fresh)
    assert _sha(pl.structure_path(spec, 3, fresh)) == _sha(pl.structure_path(spec, 3, root))
    # delete one exit wave and one imaged shard: only those are recomputed, with the same content
    wp, ip = pl.waves_path(spec, 1, root), pl.images_path(spec, 0, root)
    old_w, old_rows = pl.load_waves(spec, 1, root)["scene"], list(pl.read_image_shard(spec, 0, root))
    wp.unlink()
    ip.unlink()
    again = _run_shard(spec, 0, root)
    assert again["waves"]["computed"] == 1 and again["waves"]["reused"] == 1 and again["images"]["computed"] == 1
    np.testing.assert_array_equal(pl.load_waves(spec, 1, root)["scene"], old_w)
    new_rows = list(pl.read_image_shard(spec, 0, root))
    for a, b in zip(old_rows, new_rows, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])


def test_changed_spec_is_never_mixed(built):
    spec, root, _, _ = built
    changed = DatasetSpec.model_validate({**spec.model_dump(), "imaging": {**spec.imaging.model_dump(), "dose": 50.0}})
    assert pl.fingerprints(changed) == pl.fingerprints(spec)  # structures and waves are still valid
    pl.build_structures_shard(changed, 0, root)
    with pytest.raises(InputError, match=r"images: built from a different spec"):
        pl.image_shard(changed, 0, root)
    with pytest.raises(InputError, match="engine"):
        pl.simulate_shard(spec, 0, root, engine="nonsense")
    with pytest.raises(InputError, match="shard 5 out of range"):
        pl.build_structures_shard(spec, 5, root)


def test_assemble_and_load_dataset(built, tmp_path):
    import datasets

    from hrtem_dataset.dataset import check_no_leakage

    spec, root, _, _ = built
    stats = pl.assemble_dataset(spec, root)
    assert stats["rows"] == {"train": 2, "validation": 1, "test": 1} and stats["total_rows"] == 4
    folder = pl.dataset_dir(spec, root)
    assert stats["path"] == str(folder) and folder.name.startswith("dataset-")
    ds = datasets.load_dataset(str(folder), "tiny")
    assert {k: len(v) for k, v in ds.items()} == {"train": 2, "validation": 1, "test": 1}
    row = ds["test"][0]
    assert row["sample_id"] == "tiny-000003-000" and row["structure_id"] == "tiny-000003"
    img, mask = np.asarray(row["image"], np.float32), np.asarray(row["mask"])
    ref = next(r for r in pl.read_image_shard(spec, 1, root) if r["sample_id"] == "tiny-000003-000")
    np.testing.assert_array_equal(img, ref["image"])
    np.testing.assert_array_equal(mask, ref["mask"])
    assert row["spec_hash"] == spec.hash() and row["engine"] == "torch"
    assert check_no_leakage(folder, "tiny").passed
    # deterministic: assembling again gives byte-identical parquet shards
    first = {p.name: _sha(p) for p in sorted((folder / "data" / "tiny").glob("*.parquet"))}
    pl.assemble_dataset(spec, root, tmp_path / "again")
    assert {p.name: _sha(p) for p in sorted((tmp_path / "again" / "data" / "tiny").glob("*.parquet"))} == first
    # publishing merges configurations of one dataset version; another version is refused
    dest = tmp_path / "published"
    pl.publish_dataset(spec, root, dest)
    assert datasets.load_dataset(str(dest), "tiny")["train"].num_rows == 2
    other = DatasetSpec.model_validate({**spec.model_dump(), "version": "0.0.2"})
    import shutil

    shutil.copytree(pl.config_dir(spec, root), pl.config_dir(other, root))  # the same shards as version 0.0.2
    pl.assemble_dataset(other, root)
    with pytest.raises(InputError, match="one folder is one dataset version"):
        pl.publish_dataset(other, root, dest)
    # with a Hub repo id the same folder goes through huggingface_hub; offline (conftest) it stops cleanly
    with pytest.raises(InputError, match="offline"):
        pl.publish_dataset(spec, root, tmp_path / "hub", repo_id="org/hrtem-tiny")


def test_exit_waves_configuration(tmp_path):
    """kind: exit_waves — one row per structure with the complex waves and the labels at pixel_size."""
    import datasets

    d = tiny_spec_dict(model=False, train=1, validation=0, test=1, shard_size=1)
    spec = DatasetSpec.model_validate({**d, "kind": "exit_waves", "config_name": "tinyew"})
    for shard in range(spec.n_shards):
        _run_shard(spec, shard, tmp_path)
    q = pl.images_summary(spec, 0, tmp_path)
    assert q["rows"] == 1 and q["empty_masks"] == 0 and math.isnan(q["image_mean_min"])
    stats = pl.assemble_dataset(spec, tmp_path)
    assert stats["rows"] == pl.expected_rows(spec) == {"train": 1, "test": 1}
    row = datasets.load_dataset(stats["path"], "tinyew")["test"][0]
    waves = np.asarray(row["waves_real"]) + 1j * np.asarray(row["waves_imag"])
    np.testing.assert_allclose(waves, pl.load_waves(spec, 1, tmp_path)["scene"], atol=0)
    assert np.asarray(row["mask"]).shape == (112, 112) and row["structure_id"] == "tinyew-000001"

    # training on the pipeline-built exit_waves folder images the waves on the fly with the imaging spec the
    # folder records (specs/tinyew.yaml: ±50 Å defocus, 1000 e/Å²): the same run as passing that spec
    # explicitly, and not the noise-free default a folder without the spec would give
    from hrtem_dataset.specs import ImagingDistributionSpec, load_spec
    from models import train

    assert load_spec(Path(stats["path"]) / "specs" / "tinyew.yaml", DatasetSpec).imaging == spec.imaging
    kw = dict(config="tinyew", encoder="tu-resnet18", encoder_depth=3, decoder_channels=(16, 8, 8), steps=3,
              batch_size=2, image_size=64, lr=1e-3, seed=0, progress=False)

    def losses(out, **extra):
        return [h["train_loss"] for h in train(stats["path"], tmp_path / out, **kw, **extra)["history"]]

    from_folder = losses("m-folder")
    assert from_folder == losses("m-explicit", imaging=spec.imaging.model_copy(update={"pixel_size": 0.25}))
    assert from_folder != losses("m-clean", imaging=ImagingDistributionSpec(pixel_size=0.25))


def test_vacuum_region_is_periodic():
    """Regression: an atom 0.2 Å from the cell edge makes the pixels across the edge non-vacuum."""
    from ase import Atoms

    atoms = Atoms("Au", positions=[[19.8, 10.0, 5.0]], cell=[20, 20, 10], pbc=True)
    atoms.set_array("particle_id", np.array([0]))
    vac = pl.vacuum_region(atoms, (100, 100), (0.2, 0.2), margin=6.0)
    assert not vac[0, 50] and not vac[97, 50] and not vac[5, 50]  # 0.2, 0.4 and 1.2 Å from the atom
    assert vac[50, 50] and vac[68, 50]  # 9.8 and 6.2 Å away
    assert not vac[70, 50]  # 5.8 Å away


def _vacuum_by_distance_transform(atoms, shape, sampling, margin):
    """The vacuum map as a Euclidean distance transform of the wrap-padded empty pixels gives it (the reference)."""
    from scipy import ndimage

    pos = atoms.positions[atoms.arrays["particle_id"] >= 0]
    lx, ly = shape[0] * sampling[0], shape[1] * sampling[1]
    extent = [[-sampling[0] / 2, lx - sampling[0] / 2], [-sampling[1] / 2, ly - sampling[1] / 2]]
    px = np.mod(pos[:, 0] + sampling[0] / 2, lx) - sampling[0] / 2
    py = np.mod(pos[:, 1] + sampling[1] / 2, ly) - sampling[1] / 2
    hist, _, _ = np.histogram2d(px, py, bins=shape, range=extent)
    pad = (int(np.ceil(margin / sampling[0])) + 1, int(np.ceil(margin / sampling[1])) + 1)
    empty = np.pad(hist == 0, [(pad[0], pad[0]), (pad[1], pad[1])], mode="wrap")
    dist = ndimage.distance_transform_edt(empty, sampling=sampling)[pad[0]:pad[0] + shape[0], pad[1]:pad[1] + shape[1]]
    return dist > margin


def test_vacuum_region_equals_the_distance_transform():
    """The FFT dilation gives the distance transform's map pixel for pixel: atoms on grid points (distances exactly
    at the margin), anisotropic sampling, grids smaller than the disk (periodic images), several margins."""
    from ase import Atoms

    rng = np.random.default_rng(0)
    for _ in range(150):
        n = int(rng.integers(1, 25))
        shape = (int(rng.integers(6, 90)), int(rng.integers(6, 90)))
        sampling = tuple(float(v) for v in rng.choice([0.1, 0.13, 0.2, 0.25, 0.5], 2))
        margin = float(rng.choice([0.3, 1.0, 2.5, 3.0, 6.0]))
        cell = [shape[0] * sampling[0], shape[1] * sampling[1], 10.0]
        pos = rng.uniform(-1.5, 1.5, (n, 3)) * cell
        pos[: n // 2, :2] = np.round(pos[: n // 2, :2] / sampling) * sampling  # on grid points: ties at the margin
        atoms = Atoms(f"Au{n}", positions=pos, cell=cell, pbc=True)
        atoms.set_array("particle_id", np.where(rng.random(n) < 0.8, 0, -1))  # some substrate atoms: ignored
        if not (atoms.arrays["particle_id"] >= 0).any():
            continue
        got = pl.vacuum_region(atoms, shape, sampling, margin=margin)
        assert np.array_equal(got, _vacuum_by_distance_transform(atoms, shape, sampling, margin)), (shape, sampling,
                                                                                                      margin)


def test_failed_first_attempt_does_not_lock_the_stage(tmp_path):
    """A stage folder that holds only its fingerprint (the first attempt failed before writing anything)
    is re-claimed by a corrected spec; a folder with artifacts still refuses a different spec."""
    spec = DatasetSpec.model_validate(tiny_spec_dict())
    changed = DatasetSpec.model_validate({**spec.model_dump(), "imaging": {**spec.imaging.model_dump(), "dose": 50.0}})
    d = pl.claim_stage_dir(spec, "images", "fp-broken", tmp_path)
    assert pl.claim_stage_dir(changed, "images", "fp-fixed", tmp_path) == d
    assert json.loads((d / "_fingerprint.json").read_text())["fingerprint"] == "fp-fixed"
    (d / "images-00000.npz").write_bytes(b"x")
    with pytest.raises(InputError, match="built from a different spec"):
        pl.claim_stage_dir(spec, "images", "fp-other", tmp_path)



def test_images_stage_writes_the_same_bytes_for_any_number_of_workers(built, monkeypatch):
    """Structures are imaged in parallel (one torch thread each); the shard file is byte-identical to the
    one-at-a-time run, also when the pool is larger than the shard, and the default follows torch's threads."""
    import torch

    spec, root, _, stats = built
    path = pl.images_path(spec, 0, root)
    reference = _sha(path)
    threads = torch.get_num_threads()
    for workers in (1, 2, 5):
        st = pl.image_shard(spec, 0, root, force=True, workers=workers)
        assert _sha(path) == reference, workers
        assert st["workers"] == min(workers, 2) and st["particle_spectrum_s"] > 0
        assert st["work_s"] >= st["calibration_s"] + st["render_s"] + st["labels_s"] + st["particle_spectrum_s"]
    assert torch.get_num_threads() == threads  # restored after the pool
    from hrtem_dataset.stages import images as stage

    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert stage.image_workers(spec, spec.shard_indices(0), root) == 2  # at most the shard's structures
    monkeypatch.setattr(stage, "IMAGE_WORKING_SET", 10**9)  # a working set beyond any memory: one at a time
    assert stage.image_workers(spec, spec.shard_indices(0), root) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_images_stage_writes_each_structure_while_the_next_ones_are_imaged(built, monkeypatch):
    """The shard file is written structure by structure in order, by a low-priority writer thread, while the
    workers image the next structures (not all at the end): the last structure's imaging waits here until the
    first structure's arrays are in the file. ``rows`` is the file's last member; the bytes are the same."""
    import threading
    import zipfile

    import hrtem_dataset.io as hio
    from hrtem_dataset.stages import images as stage

    spec, root, _, _ = built
    path = pl.images_path(spec, 0, root)
    reference = _sha(path)
    indices = list(spec.shard_indices(0))
    first_written, niceness = threading.Event(), []
    original_writer, original_structure = hio.npz_writer, stage._image_structure

    @contextlib.contextmanager
    def watched_writer(fh, level=1):
        with original_writer(fh, level) as add:
            def watched(name, value):
                add(name, value)
                niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
                if name == "instances_0":
                    first_written.set()
            yield watched

    def structure(spec_, i, root_=None):
        if i == indices[-1]:
            assert first_written.wait(60), "structure 0 was not written while the last one was imaged"
        return original_structure(spec_, i, root_)

    monkeypatch.setattr(stage, "npz_writer", watched_writer)
    monkeypatch.setattr(stage, "_image_structure", structure)
    pl.image_shard(spec, 0, root, force=True, workers=2)
    assert _sha(path) == reference
    with zipfile.ZipFile(path) as z:
        assert z.namelist()[-1] == "rows.npy"
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert niceness and all(n == min(19, base + 10) for n in niceness[:-1])  # the arrays: the writer thread


def test_an_error_in_one_structure_or_the_writer_fails_the_images_shard_and_writes_nothing(tmp_path, monkeypatch):
    """A worker's or the writer thread's exception reaches the caller; no shard file (and no temporary) is left behind."""
    from hrtem_dataset.stages import images as stage

    spec = _spec()
    pl.plan_structures(spec, tmp_path)
    pl.build_structures_shard(spec, 0, tmp_path)
    pl.simulate_shard(spec, 0, tmp_path)
    original = stage._image_structure

    def broken(spec_, i, root=None):
        if i == spec.shard_indices(0)[1]:
            raise RuntimeError("structure 1 broke")
        return original(spec_, i, root)

    monkeypatch.setattr(stage, "_image_structure", broken)
    with pytest.raises(RuntimeError, match="structure 1 broke"):
        pl.image_shard(spec, 0, tmp_path, workers=2)
    images = pl.images_path(spec, 0, tmp_path).parent
    assert not pl.images_path(spec, 0, tmp_path).exists() and not list(images.glob("*.tmp*"))
    # the writer thread failing (a full disk) fails the shard the same way
    monkeypatch.setattr(stage, "_image_structure", original)
    original_writer = stage.npz_writer

    @contextlib.contextmanager
    def full_disk(fh, level=1):
        with original_writer(fh, level) as add:
            def failing(name, value):
                if name == "image_1":
                    raise OSError(28, "No space left on device")
                add(name, value)
            yield failing

    monkeypatch.setattr(stage, "npz_writer", full_disk)
    with pytest.raises(OSError, match="No space left"):
        pl.image_shard(spec, 0, tmp_path, workers=2)
    assert not pl.images_path(spec, 0, tmp_path).exists() and not list(images.glob("*.tmp*"))


def test_fast_zero_defocus_search_gives_the_grid_searchs_images_and_labels(tmp_path):
    """The images stage with ``calibration_search: fast`` (band-limited scan confirmed on the full wave,
    fine-grid walk) writes the same images, masks, instance maps and zero-defocus values as with the
    paper's grid search (the same calibrated value, hence the same bytes); with ``parabolic`` every zero
    defocus is within one 0.1 Å step of the grid search's, and rows with the same value have the same arrays."""
    shards = {}
    for search in ("grid", "fast", "parabolic"):
        d = tiny_spec_dict(model=False, train=2, validation=1, test=1, shard_size=4)
        d["imaging"]["images_per_structure"] = 2
        if search != "grid":
            d["imaging"]["calibration_search"] = search
        spec = DatasetSpec.model_validate(d)
        root = tmp_path / search
        pl.plan_structures(spec, root)
        pl.build_structures_shard(spec, 0, root)
        pl.simulate_shard(spec, 0, root)
        pl.image_shard(spec, 0, root)
        shards[search] = dict(np.load(pl.images_path(spec, 0, root)))
    grid, fast = shards["grid"], shards["fast"]
    assert sorted(grid) == sorted(fast) == sorted(shards["parabolic"]) and len(grid) == 1 + 3 * 8
    for k in grid:
        if k != "rows":
            assert np.array_equal(grid[k], fast[k]), k
    zeros = {search: [r["zero_defocus"] for r in json.loads(str(z["rows"]))] for search, z in shards.items()}
    assert zeros["grid"] == zeros["fast"] and all(z != 0.0 for z in zeros["grid"])
    assert all(abs(a - b) <= 0.1 + 1e-9 for a, b in zip(zeros["grid"], zeros["parabolic"], strict=True))
    same = {n for n, (a, b) in enumerate(zip(zeros["grid"], zeros["parabolic"], strict=True)) if a == b}
    assert len(same) >= 4, zeros  # at least half the rows: the grid search's value exactly
    for k in grid:
        if k != "rows" and int(k.rsplit("_", 1)[1]) in same:
            assert np.array_equal(grid[k], shards["parabolic"][k]), k


def test_structure_memory_estimate_counts_every_element_a_scene_can_hold():
    """The side-by-side exit-wave stage sizes one structure with the elements its scenes can hold: the particle
    materials' (elements and compounds) and the carbon substrate's."""
    from hrtem_dataset.stages.exit_waves import scene_species

    assert scene_species(load_spec("configs/au-baseline-cpu.yaml", DatasetSpec)) == 2  # Au, C
    assert scene_species(load_spec("configs/au-generalist.yaml", DatasetSpec)) == 5  # Au, Ag, Pt, Pd, C
    d = tiny_spec_dict(model=False)
    d["structures"]["particles"]["materials"] = {"values": ["Au", "ZnO", "C"]}
    assert scene_species(DatasetSpec.model_validate(d)) == 4  # Au, Zn, O, C


def test_exit_waves_stage_overlaps_io_and_leaves_the_sequential_loops_files(tmp_path, monkeypatch):
    """The exit-wave stage reads the next structure and writes the previous waves in one I/O thread while it
    simulates (on 2–3 CPU threads several structures at once, taken in order): the files are the bytes of
    structure-by-structure runs (one structure per call: nothing side by side), and a failed read (or write) of
    one structure raises its error with the earlier structures' waves complete and nothing of the later ones, no
    temporaries — what the sequential loop leaves."""
    from hrtem_dataset.stages import exit_waves as stage

    d = tiny_spec_dict(model=False, train=2, validation=1, test=1, shard_size=4)
    spec = DatasetSpec.model_validate(d)
    root = tmp_path / "a"
    pl.plan_structures(spec, root)
    pl.build_structures_shard(spec, 0, root)
    import torch

    from hrtem_dataset.workspace import simulation_settings

    # 2–3 torch threads: the structures run side by side (one single-threaded structure per thread), in order
    side_by_side = stage.structure_workers(spec, simulation_settings(spec), 4)
    assert side_by_side == (2 if 2 <= torch.get_num_threads() <= 3 else 1)
    stats = pl.simulate_shard(spec, 0, root)
    assert stats["computed"] == 4 and stats["reused"] == 0 and stats["exit_waves"] == 4 * (max(spec.simulation.phonons, 1) + 1)
    one_by_one = {}
    for i in spec.shard_indices(0):  # the same structures, one stage call each (nothing to overlap)
        path = pl.waves_path(spec, i, root)
        data = path.read_bytes()
        path.unlink()
        assert pl.simulate_shard(spec, 0, root)["computed"] == 1
        one_by_one[i] = path.read_bytes()
        assert one_by_one[i] == data, i
    assert pl.simulate_shard(spec, 0, root)["reused"] == 4

    waves_dir = pl.waves_path(spec, 0, root).parent
    original_read, original_write = stage.read_structure, stage._write_waves
    for broken in ("read", "write"):
        for p in waves_dir.glob("*.npz"):
            p.unlink()
        bad = spec.shard_indices(0)[2]

        def read(spec_, i, root_=None, broken=broken, bad=bad):
            if broken == "read" and i == bad:
                raise InputError(f"structure {i}: unreadable")
            return original_read(spec_, i, root_)

        def write(path, *args, broken=broken, bad=bad):
            if broken == "write" and path == pl.waves_path(spec, bad, root):
                raise OSError(f"{path}: disk full")
            return original_write(path, *args)

        monkeypatch.setattr(stage, "read_structure", read)
        monkeypatch.setattr(stage, "_write_waves", write)
        with pytest.raises((InputError, OSError), match="unreadable" if broken == "read" else "disk full"):
            pl.simulate_shard(spec, 0, root)
        done = sorted(p.name for p in waves_dir.glob("*.npz"))
        assert done == [pl.waves_path(spec, i, root).name for i in spec.shard_indices(0)[:2]], broken
        assert all(pl.waves_path(spec, i, root).read_bytes() == one_by_one[i] for i in spec.shard_indices(0)[:2])
        assert not list(waves_dir.glob(".*tmp*"))


def test_stages_run_with_one_blas_thread_and_no_full_garbage_collections(built, monkeypatch):
    """The per-shard stages pause the cyclic collector (a full collection holds the GIL for ~0.1 s and stalls
    the other workers) and give BLAS one thread (OpenBLAS's worker spins after each threaded call, taking a core
    from the other workers): inside every stage function, including the images workers' threads; after it, both
    as before — also after an error, after nested and overlapping blocks — and the collector left off if it was."""
    import gc
    import threading

    from threadpoolctl import threadpool_info, threadpool_limits

    from hrtem_dataset.runtime import stage_runtime
    from hrtem_dataset.stages import images as stage

    def blas_threads() -> list[int]:
        return [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]

    before = blas_threads()

    spec, root, _, _ = built
    seen = []
    original = stage._image_structure

    def spy(spec_, i, root_=None):
        seen.append(gc.isenabled() or set(blas_threads()) != {1})
        return original(spec_, i, root_)

    monkeypatch.setattr(stage, "_image_structure", spy)
    assert gc.isenabled()
    pl.image_shard(spec, 0, root, force=True, workers=2)
    assert seen and not any(seen) and gc.isenabled() and blas_threads() == before
    from hrtem_dataset.stages import exit_waves, structures

    for module, name, fn in ((structures, "sample_scene", pl.build_structures_shard),
                             (exit_waves, "_write_waves", pl.simulate_shard)):
        inner = getattr(module, name)
        seen.clear()
        monkeypatch.setattr(module, name, lambda *a, _f=inner, **k: (seen.append(gc.isenabled() or set(blas_threads()) != {1}), _f(*a, **k))[1])
        fn(spec, 0, root, force=True)  # the same files again
        assert seen and not any(seen) and gc.isenabled() and blas_threads() == before, name

    @stage_runtime()
    def failing():
        assert not gc.isenabled()
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        failing()
    assert gc.isenabled() and blas_threads() == before
    with stage_runtime(), stage_runtime():  # nested in one thread
        assert set(blas_threads()) == {1}
    assert blas_threads() == before
    inside, release = threading.Event(), threading.Event()

    def other():
        with stage_runtime():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=other)
    with stage_runtime():
        t.start()
        inside.wait(5)
    assert not gc.isenabled() and set(blas_threads()) == {1}  # the other block is still open
    release.set()
    t.join()
    assert gc.isenabled()  # (BLAS: restored by the other thread, which OpenBLAS may ignore; see stage_runtime)
    threadpool_limits(limits=max(before, default=1), user_api="blas")  # as before, for the tests after this one
    gc.disable()
    try:
        with stage_runtime():
            pass
        assert not gc.isenabled()  # it was off before: left off
    finally:
        gc.enable()


def test_structures_stage_draws_scenes_side_by_side_with_the_files_of_one_at_a_time(tmp_path, monkeypatch):
    """The structures stage draws a shard's scenes in threads (as many as this process may use) and writes them
    in order: the same files as one at a time, and a failed scene leaves exactly the files before it (those
    after it are cancelled or dropped, never written)."""
    import os

    from hrtem_dataset.stages import structures as stage

    spec = _spec(train=3, validation=1, test=1, shard_size=5)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    pl.plan_structures(spec, tmp_path / "threads")
    stats = pl.build_structures_shard(spec, 0, tmp_path / "threads")
    assert stats["computed"] == 5 and stats["reused"] == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    pl.plan_structures(spec, tmp_path / "one")
    pl.build_structures_shard(spec, 0, tmp_path / "one")
    for i in range(5):
        assert pl.structure_path(spec, i, tmp_path / "threads").read_bytes() == \
            pl.structure_path(spec, i, tmp_path / "one").read_bytes()

    drawn = stage.sample_scene

    def failing(structures, seed, i):
        if i == 2:
            raise InputError("structures: scene 2 cannot be built")
        return drawn(structures, seed, i)

    monkeypatch.setattr(stage, "sample_scene", failing)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    root = tmp_path / "failed"
    pl.plan_structures(spec, root)
    with pytest.raises(InputError, match="scene 2"):
        pl.build_structures_shard(spec, 0, root)
    assert [pl.structure_path(spec, i, root).exists() for i in range(5)] == [True, True, False, False, False]
