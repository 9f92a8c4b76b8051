"""Foundation: seeds, spec hashing, atomic writes, physics constants, CLI error handling."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hrtem_dataset.errors import InputError
from hrtem_dataset.io import atomic_dir, atomic_path, atomic_write_text, read_npz
from hrtem_dataset.seeding import derive_seed, spec_hash
from hrtem_dataset.simulation.physics import interaction_parameter, wavelength
from hrtem_dataset.specs import DatasetSpec, ImagingDistributionSpec, Uniform, load_spec, validate_spec


def test_relativistic_wavelength_and_sigma_match_design_values():
    assert wavelength(300e3) == pytest.approx(0.019687, abs=5e-7)
    assert interaction_parameter(300e3) == pytest.approx(6.52616e-4, rel=1e-5)
    # textbook 200 kV (Kirkland, Advanced Computing in EM, Table 2.2: 0.02508 Å)
    assert wavelength(200e3) == pytest.approx(0.02508, abs=1e-5)


def test_derive_seed_is_stable_and_key_sensitive():
    a = derive_seed(1234, "structure", 7)
    assert a == derive_seed(1234, "structure", 7)
    assert a != derive_seed(1234, "structure", 8)
    assert a != derive_seed(1235, "structure", 7)
    assert 0 <= a < 2**63


@pytest.mark.parametrize("args,pinned", [
    ((0, "structure", 0), 7961501393976742751),
    ((1234, "structure", 7), 8358152943888997372),
    ((7, "phonons", 3), 6203669619249708995),
])
def test_derive_seed_pinned_values(args, pinned):
    """Seeds must never change across versions or machines (else every dataset changes silently).

    The pinned numbers were computed by hand, not by ``derive_seed``: the first 8 bytes (little-endian) of
    SHA-256 of the JSON list ``[root, *keys]``, top bit cleared, e.g. for ``[0, "structure", 0]``.
    """
    import hashlib
    import json

    assert derive_seed(*args) == pinned
    digest = hashlib.sha256(json.dumps(list(args)).encode()).digest()
    assert int.from_bytes(digest[:8], "little") & (2**63 - 1) == pinned


def test_spec_hash_changes_with_any_field():
    s1 = DatasetSpec(name="x", seed=1)
    s2 = DatasetSpec(name="x", seed=2)
    assert spec_hash(s1) == s1.hash() != spec_hash(s2)
    assert len(s1.hash()) == 16


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a" / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []
    atomic_write_text(target, "ok")
    assert target.read_text() == "ok"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_read_npz_equals_np_load_and_names_damaged_files(tmp_path):
    """The GIL-free reader gives np.load's arrays (values, dtypes, shapes, memory order) for stored members of
    every kind, compressed members through np.load, and a clear error for a damaged or truncated file."""
    rng = np.random.default_rng(0)
    arrays = {"c": (rng.normal(size=(2, 64, 48)) + 1j * rng.normal(size=(2, 64, 48))).astype(np.complex64),
              "f": np.asfortranarray(rng.normal(size=(5, 7))), "e": np.zeros((0, 3), np.int16),
              "s": np.str_("héllo"), "i": np.int64(3), "b": np.array([True, False]), "u": np.arange(9, dtype=">u4")}
    for save in (np.savez, np.savez_compressed):
        save(tmp_path / "a.npz", **arrays)
        got, ref = read_npz(tmp_path / "a.npz"), dict(np.load(tmp_path / "a.npz"))
        assert sorted(got) == sorted(ref)
        for k in ref:
            assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape and np.array_equal(got[k], ref[k])
        assert got["f"].flags["F_CONTIGUOUS"] and got["c"].flags["C_CONTIGUOUS"] and got["c"].flags["WRITEABLE"]
    np.savez(tmp_path / "a.npz", **arrays)
    raw = bytearray((tmp_path / "a.npz").read_bytes())
    raw[raw.find(b"\x93NUMPY") + 200] ^= 0xFF  # flip a byte of the first member's data: CRC mismatch
    (tmp_path / "bad.npz").write_bytes(bytes(raw))
    for name, data in (("bad.npz", None), ("cut.npz", bytes(raw[: len(raw) // 2])), ("txt.npz", b"not a zip")):
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match=name):
            read_npz(tmp_path / name)


def test_atomic_dir_replaces_whole_directory(tmp_path):
    d = tmp_path / "ds"
    with atomic_dir(d) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(ValueError):
        with atomic_dir(d) as tmp:
            (tmp / "b.txt").write_text("2")
            raise ValueError
    assert sorted(p.name for p in d.iterdir()) == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_spec_rejects_unknown_keys_and_unphysical_values(tmp_path):
    with pytest.raises(InputError, match="simulation.sampling"):
        validate_spec({"name": "x", "simulation": {"sampling": -0.1}}, DatasetSpec)
    with pytest.raises(InputError, match="bogus"):
        validate_spec({"name": "x", "bogus": 1}, DatasetSpec)
    with pytest.raises(InputError, match="imaging.defocus.*max"):
        validate_spec({"name": "x", "imaging": {"defocus": {"min": 2, "max": 1}}}, DatasetSpec)
    with pytest.raises(ValueError, match="max"):
        Uniform.model_validate({"min": 2, "max": 1})
    with pytest.raises(InputError, match="C99"):
        validate_spec({"aberrations": {"C99": 1.0}}, ImagingDistributionSpec)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(InputError, match="bad.yaml.*malformed YAML"):
        load_spec(bad, DatasetSpec)
    with pytest.raises(InputError, match="missing.yaml: file not found"):
        load_spec(tmp_path / "missing.yaml", DatasetSpec)


def test_split_assignment_is_by_structure_and_shards_cover_all():
    spec = DatasetSpec(name="x", splits={"train": 5, "validation": 2, "test": 3}, shard_size=4)
    assert spec.n_shards == 3
    covered = [i for s in range(spec.n_shards) for i in spec.shard_indices(s)]
    assert covered == list(range(10))
    assert [spec.split_of(i) for i in range(10)] == ["train"] * 5 + ["validation"] * 2 + ["test"] * 3


def _reduced(spec: DatasetSpec) -> DatasetSpec:
    """The same configuration (materials, shapes, defects, orientations, imaging distribution, series,
    recorded pixel sizes, labels) on a 28 Å cell, one structure, small particles, at most one phonon and
    a sampling no finer than needed, so one structure and its images build in seconds."""
    st = spec.structures
    parts = st.particles.model_copy(update={"radius": Uniform(min=5.0, max=6.0)})
    structures = st.model_copy(update={
        "cell": st.cell.model_copy(update={"x": 28.0, "y": 28.0}), "substrate_thickness": 8.0,
        "n_particles": st.n_particles.model_copy(update={"min": 1, "max": 1}), "particles": parts,
        "min_separation": 2.0, "vacuum": 3.0})
    finest = spec.imaging.pixel_size
    if spec.imaging.recorded_pixel_size is not None:
        from hrtem_dataset.specs import param_bounds

        finest = min(finest, param_bounds(spec.imaging.recorded_pixel_size)[0])
    simulation = spec.simulation.model_copy(update={
        "sampling": min(0.2, finest), "phonons": min(spec.simulation.phonons, 1), "device": "cpu"})
    imaging = spec.imaging.model_copy(update={"images_per_structure": 1})
    return DatasetSpec.model_validate({**spec.model_dump(), "structures": structures.model_dump(),
                                       "simulation": simulation.model_dump(), "imaging": imaging.model_dump(),
                                       "splits": {"train": 1, "validation": 0, "test": 0}, "shard_size": 1,
                                       "model": None})


def test_all_shipped_dataset_configs_build_a_structure_and_an_image(tmp_path):
    """Every shipped configuration validates, and one structure + its images build through the real
    pipeline stages at reduced size (a config that validates but cannot build fails here)."""
    from hrtem_dataset import pipeline as pl

    root = Path(__file__).resolve().parents[1] / "configs"
    configs = sorted(root.glob("*.yaml"))
    assert len(configs) >= 9, "configs/*.yaml must exist"
    for path in configs:
        spec = load_spec(path, DatasetSpec)
        assert spec.n_structures > 0 and spec.config_name == path.stem
        small = _reduced(spec)
        ws = tmp_path / path.stem
        pl.plan_structures(small, ws)
        assert pl.build_structures_shard(small, 0, ws)["computed"] == 1
        atoms = pl.read_structure(small, 0, ws)
        assert (atoms.arrays["particle_id"] == -1).any(), path.name  # the substrate is there
        assert pl.simulate_shard(small, 0, ws)["computed"] == 1
        stats = pl.image_shard(small, 0, ws)
        rows = list(pl.read_image_shard(small, 0, ws))
        assert len(rows) == stats["rows"] == pl.expected_rows_per_structure(small) >= 1, path.name
        n = round(28.0 / small.imaging.pixel_size)
        key = "image" if small.kind == "images" else "mask"
        for r in rows:
            assert abs(r[key].shape[0] - n) <= 1, (path.name, r[key].shape)
            assert all(math.isfinite(float(v)) for v in np.asarray(r[key], float).ravel()[:: 97]), path.name
        series = small.imaging.series
        if series is not None:  # one image per series value, differing in that parameter only
            assert [r["conditions"][series.param] for r in rows] == pytest.approx(series.values), path.name
        q = pl.images_summary(small, 0, ws)
        assert q["nonfinite"] == 0, (path.name, q)


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "hrtem_dataset.cli", "materialize", str(tmp_path / "nope.yaml"),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "nope.yaml" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_cli_version_and_output_path_errors(tmp_path, monkeypatch):
    from hrtem_dataset import __version__
    from hrtem_dataset.cli import main

    r = subprocess.run([sys.executable, "-m", "hrtem_dataset.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == __version__
    scene = Path(__file__).resolve().parents[1] / "configs" / "structures" / "example-scene.yaml"
    assert main(["structures", "build", str(scene), "--out", str(tmp_path)]) == 2  # a directory
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    paper = scene.with_name("paper.yaml")
    assert main(["structures", "sample", str(paper), "--n", "1", "--out", str(foreign)]) == 2
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]
    monkeypatch.chdir(foreign)
    assert main(["structures", "sample", str(paper), "--n", "1", "--out", "."]) == 2
    assert main(["structures", "sample", str(paper), "--n", "1", "--out", ".."]) == 2
    with pytest.raises(InputError, match="at least one structure"):
        validate_spec({"name": "x", "splits": {"train": 0, "validation": 0, "test": 0}}, DatasetSpec)

