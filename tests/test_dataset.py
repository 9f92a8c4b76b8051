"""Dataset packaging: Features, deterministic parquet shards, load_dataset round trip, card, publishing.

Rows are made here (random images, disc masks, instance maps, plausible lineage) with exactly the row
schema of the pipeline, so these tests do not depend on the physics stages. ``load_dataset(folder,
config, revision=tag)`` needs the Hub (tags are Hub objects) and is not tested here; the local folder
is the same repo layout that ``hrtem publish`` uploads and tags.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hrtem_dataset import __version__
from hrtem_dataset.cli import main
from hrtem_dataset.dataset import (
    check_no_leakage,
    contrast_stretch,
    image_features,
    publish,
    version_dir,
    write_dataset_config,
)
from hrtem_dataset.dataset.features import column_docs
from hrtem_dataset.errors import InputError
from hrtem_dataset.seeding import derive_seed, rng
from hrtem_dataset.specs import DatasetSpec, SplitSpec, load_spec

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (24, 20)
SECRET = "hf_secretTOKEN0123456789abcdefXYZ"


def tiny_spec(seed: int = 7, config: str = "tiny", kind: str = "images", version: str = "0.1.0") -> DatasetSpec:
    return DatasetSpec(name="hrtem-test", config_name=config, kind=kind, version=version, seed=seed,
                       splits=SplitSpec(train=3, validation=1, test=1), shard_size=2)


def _labels(g, shape):
    """Two discs at random centres: mask (bool) and instance map (1, 2)."""
    x, y = np.mgrid[: shape[0], : shape[1]]
    inst = np.zeros(shape, np.int32)
    for k in (1, 2):
        cx, cy, r = g.uniform(4, shape[0] - 4), g.uniform(4, shape[1] - 4), g.uniform(2.0, 4.0)
        inst[((x - cx) ** 2 + (y - cy) ** 2 < r**2) & (inst == 0)] = k
    return inst > 0, inst


def make_rows(spec: DatasetSpec, images_per_structure: int = 2, shape=SHAPE) -> dict[str, list[dict]]:
    """Rows by split as the pipeline makes them: structure i goes to ``spec.split_of(i)``."""
    out: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for i in range(spec.n_structures):
        st = f"s{i:05d}"
        g = rng(spec.seed, "structure", i)
        mask, inst = _labels(g, shape)
        particles = [{"material": "Au", "shape": "sphere", "radius": float(g.uniform(10, 35)), "twins": 1}
                     for _ in range(2)]
        structure = {"seed": derive_seed(spec.seed, "structure", i), "particles": particles, "n_particles": 2,
                     "substrate": {"kind": "amorphous_carbon", "thickness": float(g.uniform(20, 80))}}
        for k in range(images_per_structure):
            seed = derive_seed(spec.seed, "image", i, k)
            gi = np.random.default_rng(seed)
            row = {
                "image": gi.normal(1.0, 0.2, shape).astype(np.float32),
                "mask": mask, "instances": inst,
                "sample_id": f"{st}-{k:03d}", "structure_id": st, "seed": seed,
                "pixel_size": 0.2, "defocus": float(gi.uniform(-250, 250)), "zero_defocus": -31.5,
                "Cs": 0.0, "dose": None if k == 0 else float(gi.uniform(30, 600)),
                "focal_spread": 20.0, "angular_spread": 0.2, "aberrations": {"C12": 5.0, "phi12": 0.3},
                "structure": structure, "engine": "torch", "engine_version": "2.14.1",
                "energy": 300e3, "sampling": (0.1, 0.1), "phonons": 2,
            }
            if spec.kind == "exit_waves":
                for key in ("image", "defocus", "Cs", "dose", "focal_spread", "angular_spread", "aberrations"):
                    row.pop(key)
                waves = (gi.normal(1, 0.1, (2, 2 * shape[0], 2 * shape[1]))
                         + 1j * gi.normal(0, 0.1, (2, 2 * shape[0], 2 * shape[1]))).astype(np.complex64)
                row["waves"] = waves
            out[spec.split_of(i)].append(row)
    return out


def load(folder, config, tmp_path):
    import datasets

    return datasets.load_dataset(str(folder), config, cache_dir=str(tmp_path / "hf-cache"))


def parquet_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted((folder / "data").rglob("*.parquet"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny two-configuration folder: ``tiny`` (images, train in 3 shards) and ``waves`` (exit waves)."""
    folder = tmp_path_factory.mktemp("ds") / "hrtem-test" / "0.1.0"
    spec = tiny_spec()
    rows = make_rows(spec)
    write_dataset_config(rows, spec, folder, max_shard_bytes=12500)
    wspec = tiny_spec(seed=8, config="waves", kind="exit_waves")
    wrows = make_rows(wspec, images_per_structure=1)
    write_dataset_config(wrows, wspec, folder)
    return folder, spec, rows, wspec, wrows


def test_load_dataset_round_trip_images(built, tmp_path):
    folder, spec, rows, _, _ = built
    files = sorted(p.name for p in (folder / "data" / "tiny").iterdir())
    assert files == ["test-00000-of-00001.parquet", "train-00000-of-00003.parquet", "train-00001-of-00003.parquet",
                     "train-00002-of-00003.parquet", "validation-00000-of-00001.parquet"]
    ds = load(folder, "tiny", tmp_path)
    assert set(ds) == {"train", "validation", "test"}
    assert {s: ds[s].num_rows for s in ds} == {"train": 6, "validation": 2, "test": 2}
    assert ds["train"].features == image_features(SHAPE)
    assert ds["train"].features["instances"].dtype == "int32" and ds["train"].features["image"].dtype == "float32"
    assert list(ds["train"].features) == list(column_docs("images"))
    np_ds = ds.with_format("numpy")
    for split, written in rows.items():
        got = np_ds[split]
        assert list(got["sample_id"]) == sorted(r["sample_id"] for r in written)  # sorted by sample_id
        by_id = {r["sample_id"]: r for r in written}
        for j in range(got.num_rows):
            row = got[j]
            src = by_id[row["sample_id"]]
            assert row["image"].dtype == np.float32
            assert np.array_equal(row["image"].view(np.uint32), src["image"].view(np.uint32))  # bit for bit
            assert np.array_equal(row["mask"], src["mask"].astype(np.uint8))
            assert np.array_equal(row["instances"], src["instances"])  # stored int32 (numpy format gives int64)
            assert np.array_equal(row["preview"], contrast_stretch(src["image"]))
            assert int(row["seed"]) == src["seed"] and row["structure_id"] == src["structure_id"]
            assert float(row["defocus"]) == src["defocus"] and float(row["zero_defocus"]) == -31.5
            assert (np.isnan(row["dose"]) if src["dose"] is None else float(row["dose"]) == src["dose"])
            assert row["pixel_size"] == np.float32(0.2)
            assert json.loads(row["aberrations"]) == src["aberrations"]
            assert json.loads(row["structure"]) == src["structure"]
            assert json.loads(row["particles"]) == src["structure"]["particles"]
            assert list(row["materials"]) == ["Au", "Au"] and int(row["n_particles"]) == 2
            assert float(row["substrate_thickness"]) == src["structure"]["substrate"]["thickness"]
            assert json.loads(row["conditions"])["defocus"] == src["defocus"]
            assert list(row["sampling"]) == [0.1, 0.1] and int(row["phonons"]) == 2
            assert (row["engine"], row["engine_version"]) == ("torch", "2.14.1")
            assert row["spec_hash"] == spec.hash() and row["dataset_version"] == "0.1.0"
            assert row["package_version"] == __version__ and row["config_name"] == "tiny"
    # the plain (python) format returns None for a noise-free image's dose
    assert ds["train"][0]["dose"] is None


def test_exit_wave_configuration_round_trip(built, tmp_path):
    folder, _, _, wspec, wrows = built
    ds = load(folder, "waves", tmp_path).with_format("numpy")
    assert {s: ds[s].num_rows for s in ds} == {"train": 3, "validation": 1, "test": 1}
    feats = ds["train"].features
    assert feats["waves_real"].shape == (2, 2 * SHAPE[0], 2 * SHAPE[1]) and feats["instances"].shape == SHAPE
    assert "defocus" not in feats and "dose" not in feats and "zero_defocus" in feats
    src = {r["sample_id"]: r for r in wrows["train"]}
    row = ds["train"][1]
    waves = row["waves_real"] + 1j * row["waves_imag"]
    # complex64 stored as two float32 columns: the schema (numpy formatting hands float32 back even from a
    # float64 column, so the row's dtype alone would not notice) and the values read back
    assert feats["waves_real"].dtype == feats["waves_imag"].dtype == "float32"
    assert row["waves_real"].dtype == row["waves_imag"].dtype == np.float32
    assert np.array_equal(waves.astype(np.complex64), src[row["sample_id"]]["waves"])
    assert np.array_equal(row["mask"], src[row["sample_id"]]["mask"].astype(np.uint8))


def test_same_spec_gives_identical_bytes_and_seed_changes_them(built, tmp_path):
    folder, spec, rows, _, _ = built
    # same rows in another order, written to another folder: identical parquet bytes and card
    shuffled = {s: list(reversed(r)) for s, r in make_rows(spec).items()}
    other = write_dataset_config({s: iter(r) for s, r in shuffled.items()}, spec, tmp_path / "b",
                                 max_shard_bytes=12500)
    first = parquet_bytes(folder)
    second = parquet_bytes(other)
    assert {k: v for k, v in first.items() if k.startswith("data/tiny/")} == second
    assert (other / "specs" / "tiny.yaml").read_bytes() == (folder / "specs" / "tiny.yaml").read_bytes()
    # a different seed changes every shard
    spec2 = tiny_spec(seed=99)
    third = parquet_bytes(write_dataset_config(make_rows(spec2), spec2, tmp_path / "c", max_shard_bytes=12500))
    assert set(third) == set(second)
    assert all(third[k] != second[k] for k in second)


def test_no_structure_in_two_splits(built, tmp_path):
    folder, *_ = built
    report = check_no_leakage(folder, "tiny")
    assert report.passed and report.structures == {"train": 3, "validation": 1, "test": 1}
    ds = load(folder, "tiny", tmp_path)
    ids = {s: set(ds[s]["structure_id"]) for s in ds}
    assert not (ids["train"] & ids["validation"]) and not (ids["train"] & ids["test"])
    assert not (ids["validation"] & ids["test"])

    # the writer refuses rows that put one structure into two splits, and writes nothing
    spec = tiny_spec()
    rows = make_rows(spec)
    rows["test"].append({**rows["train"][0], "sample_id": "zz-leak"})
    with pytest.raises(InputError, match=r"column 'structure_id'.*already in split 'train'"):
        write_dataset_config(rows, spec, tmp_path / "leak")
    assert not (tmp_path / "leak" / "data").exists() and not list((tmp_path / "leak").glob(".*"))

    # the check (used by the Dagster asset check) finds a leak in a tampered folder
    bad = tmp_path / "tampered"
    write_dataset_config(make_rows(spec), spec, bad)
    train = sorted((bad / "data" / "tiny").glob("train-*"))[0]
    (bad / "data" / "tiny" / "test-00000-of-00001.parquet").write_bytes(train.read_bytes())
    report = check_no_leakage(bad, "tiny")
    assert not report.passed and sorted(report.shared["train/test"]) == ["s00000", "s00001", "s00002"]
    assert main(["dataset", "check", str(bad)]) == 2
    assert main(["dataset", "check", str(folder), "--config", "tiny"]) == 0
    # --config is a configuration name, never a path out of the folder
    elsewhere = tmp_path / "elsewhere"
    write_dataset_config(make_rows(spec), spec, elsewhere)
    assert main(["dataset", "check", str(folder), "--config", "../elsewhere/data/tiny"]) == 2
    assert main(["dataset", "check", str(folder), "--config", "nope"]) == 2


def test_bad_rows_name_the_column_and_keep_the_folder(built, tmp_path):
    folder, spec, _, _, _ = built
    before = parquet_bytes(folder)
    good = make_rows(spec)

    def broken(**change):
        rows = {s: [dict(r) for r in rs] for s, rs in good.items()}
        rows["train"][1].update(change)
        for k, v in list(change.items()):
            if v is None and k != "dose":
                rows["train"][1].pop(k)
        return rows

    cases = [
        (broken(zero_defocus=None), r"missing column 'zero_defocus'"),
        (broken(image=np.ones((5, 5), np.float32), mask=np.zeros((5, 5)), instances=np.zeros((5, 5), int)),
         r"column 'image': shape \(5, 5\) differs from the configuration's \(24, 20\)"),
        (broken(mask=np.zeros((5, 5))), r"column 'mask': shape \(5, 5\) differs"),
        (broken(mask=np.full(SHAPE, 3)), r"column 'mask': class indices"),
        (broken(image=np.full(SHAPE, np.nan, np.float32)), r"column 'image': contains NaN"),
        (broken(sample_id=good["train"][0]["sample_id"]), r"duplicate sample_id"),
        (broken(spec_hash="0000"), r"column 'spec_hash'"),
        (broken(structure=[1, 2]), r"column 'structure'"),
        (broken(substrate_thicknes=30.0), r"unknown column 'substrate_thicknes'"),
        (broken(split="test"), r"column 'split': row says 'test'"),
        (broken(seed="abc"), r"column 'seed': expected a number"),
    ]
    for rows, pattern in cases:
        with pytest.raises(InputError, match=pattern) as exc:
            write_dataset_config(rows, spec, folder, max_shard_bytes=12500)
        assert "\n" not in str(exc.value) and "split 'train' row 1" in str(exc.value)
    with pytest.raises(InputError, match="unknown split 'dev'"):
        write_dataset_config({"dev": []}, spec, folder)
    assert parquet_bytes(folder) == before
    assert not [p for p in folder.rglob("*") if p.name.startswith(".")]  # no staging/temporary left


def test_card_configs_versions_and_preview(built, tmp_path):
    import yaml

    folder, spec, _, wspec, _ = built
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["license"] == "cc-by-4.0" and meta["task_categories"] == ["image-segmentation"]
    assert meta["size_categories"] == ["n<1K"] and "hrtem" in meta["tags"]
    assert [c["config_name"] for c in meta["configs"]] == ["tiny", "waves"]
    assert meta["configs"][0]["data_files"] == [{"split": s, "path": f"data/tiny/{s}-*.parquet"}
                                                for s in ("train", "validation", "test")]
    for needle in ("2309.06122", "npj Computational Materials", "load_dataset(", 'revision="v0.1.0"',
                   "assets/preview-tiny.png", "`imaging.defocus`", "`structures.particles.radius` | uniform 10 … 35",
                   "`imaging.pixel_size` | 0.2 | output pixel size, Å", "## Lineage", "spec_hash"):
        assert needle in text, needle
    png = (folder / "assets" / "preview-waves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # `hrtem dataset card` regenerates the same card
    assert main(["dataset", "card", str(folder)]) == 0
    assert (folder / "README.md").read_text() == text

    # rewriting one configuration keeps the other; a different version needs its own folder
    other = tmp_path / "copy"
    write_dataset_config(make_rows(spec), spec, other)
    write_dataset_config(make_rows(wspec, 1), wspec, other)
    write_dataset_config({**make_rows(spec, 1), "validation": []}, spec, other)  # an empty split is left out
    assert sorted(p.name for p in (other / "data").iterdir()) == ["tiny", "waves"]
    assert "waves" in (other / "README.md").read_text()
    reloaded = load(other, "tiny", tmp_path)
    assert {s: reloaded[s].num_rows for s in reloaded} == {"train": 3, "test": 1}
    v2 = tiny_spec(version="0.2.0")
    with pytest.raises(InputError, match="own version folder"):
        write_dataset_config(make_rows(v2, 1), v2, other)
    side = version_dir(tmp_path / "root", v2)
    assert side == tmp_path / "root" / "hrtem-test" / "0.2.0"
    write_dataset_config(make_rows(v2, 1), v2, side)
    assert "version 0.2.0" in (side / "README.md").read_text()


def test_shipped_configurations_are_valid():
    specs = {p.stem: load_spec(p, DatasetSpec) for p in sorted((ROOT / "configs").glob("*.yaml"))
             if p.stem in ("au-baseline", "defocus-series", "dose-series", "structure-series", "exit-waves")}
    assert len(specs) == 5
    assert {s.config_name for s in specs.values()} == set(specs)
    assert {(s.name, s.version) for s in specs.values()} == {("hrtem-au-carbon", "0.2.0")}  # one folder
    assert len({s.seed for s in specs.values()}) == 5  # distinct structures per configuration
    series = specs["defocus-series"].imaging.series
    assert series.param == "defocus" and series.values == [float(v) for v in range(-250, 251, 50)]
    dose = specs["dose-series"].imaging.series
    assert dose.param == "dose" and min(dose.values) == 30 and max(dose.values) == 600
    assert len(specs["structure-series"].structures.particles.materials.values) >= 3
    assert specs["exit-waves"].kind == "exit_waves"
    assert specs["au-baseline"].structures.particles.materials.values == ["Au"]
    assert specs["au-baseline"].structures.substrate_thickness is not None


def _cli(args, env_update, drop=()):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_update)
    return subprocess.run([sys.executable, "-c", "import sys; from hrtem_dataset.cli import main; sys.exit(main())",
                           *args], capture_output=True, text=True, env=env, timeout=120)


def test_publish_dry_run_lists_exactly_the_files(built, capsys):
    folder, *_ = built
    (folder / ".staging-junk.tmp").write_text("x")  # hidden temporaries are never uploaded
    try:
        expected = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                          if p.is_file() and not p.name.startswith("."))
        assert main(["publish", str(folder), "--repo-id", "org/hrtem-test", "--dry-run"]) == 0
        out, err = capsys.readouterr()
        assert out.splitlines() == expected
        assert "README.md" in expected and "data/tiny/train-00002-of-00003.parquet" in expected
        assert "tag v0.1.0" in err and "dataset repo org/hrtem-test" in err
    finally:
        (folder / ".staging-junk.tmp").unlink()
    res = publish(folder, "org/hrtem-test", revision="v0.1.0-rc1", dry_run=True)
    assert res.repo_type == "dataset" and res.tag == "v0.1.0-rc1" and res.files == expected
    assert main(["publish", str(folder), "--repo-id", "not a repo", "--dry-run"]) == 2


def test_publish_model_folder_is_detected(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"encoder": "tu-resnet18", "version": "0.3.0"}))
    (model / "model.safetensors").write_bytes(b"\0" * 16)
    (model / "README.md").write_text("---\nlibrary_name: pytorch\n---\n")
    (model / "checkpoints").mkdir()  # training checkpoints (pickles with optimiser state) are never uploaded
    (model / "checkpoints" / "last.pt").write_bytes(b"\0" * 16)
    res = publish(model, "org/hrtem-unet", dry_run=True)
    assert (res.repo_type, res.tag, res.files) == ("model", "v0.3.0", ["README.md", "config.json",
                                                                        "model.safetensors"])
    with pytest.raises(InputError, match="cannot tell dataset from model"):
        publish(tmp_path, "org/x", dry_run=True)


def test_publish_fails_cleanly_offline_without_token_or_hub_and_never_leaks_the_token(built, tmp_path):
    folder, *_ = built
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    home = tmp_path / "hf-home"  # empty login cache
    args = ["publish", str(folder), "--repo-id", "org/hrtem-test"]

    offline = _cli(args, {"HF_HUB_OFFLINE": "1", "HF_TOKEN": SECRET, "HF_HOME": str(home)})
    assert offline.returncode == 2
    assert offline.stderr.strip().count("\n") == 0 and offline.stderr.startswith("error: ")
    assert "HF_HUB_OFFLINE" in offline.stderr

    no_token = _cli(args, {"HF_HOME": str(home)}, drop=("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"))
    assert no_token.returncode == 2 and "no Hugging Face token" in no_token.stderr
    assert no_token.stderr.strip().count("\n") == 0

    # with a token the real upload path runs up to the network (an unreachable endpoint here)
    unreachable = _cli(args, {"HF_HOME": str(home), "HF_TOKEN": SECRET, "HF_ENDPOINT": "http://127.0.0.1:9"},
                       drop=("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    assert unreachable.returncode == 2
    assert "failed at create_repo" in unreachable.stderr and unreachable.stderr.strip().count("\n") == 0

    for run in (offline, no_token, unreachable):
        assert SECRET not in run.stdout + run.stderr
    # nothing in the folder changed and no file anywhere in it (card, specs, shards) holds the token
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p, b in after.items() if SECRET.encode() in b]
    assert not [p for p in home.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


def test_token_in_environment_is_not_written_by_a_build(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    spec = tiny_spec()
    folder = write_dataset_config(make_rows(spec, 1), spec, tmp_path / "t")
    assert main(["publish", str(folder), "--repo-id", "org/t", "--dry-run"]) == 0
    assert main(["publish", str(folder), "--repo-id", "org/t"]) == 2  # offline in tests (conftest)
    for p in folder.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p


def test_json_columns_are_canonical_and_strict():
    from hrtem_dataset.dataset.rows import to_json

    assert to_json({"b": [np.float32(1.5), np.nan], "a": np.int64(2)}, "x") == '{"a":2,"b":[1.5,null]}'
    with pytest.raises(InputError, match="x: not valid JSON"):
        to_json("{oops", "x")


_DIGEST = """
import hashlib, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_dataset import make_rows, tiny_spec
from hrtem_dataset.dataset import write_dataset_config
spec = tiny_spec()
out = write_dataset_config(make_rows(spec), spec, Path(sys.argv[1]), max_shard_bytes=12500)
h = hashlib.sha256()
for p in sorted(out.rglob("*")):
    if p.is_file():
        h.update(p.relative_to(out).as_posix().encode() + p.read_bytes())
print(h.hexdigest())
"""


def test_whole_folder_is_identical_across_processes(tmp_path):
    """Card, preview figure, specs and shards do not depend on the process (hash seed, order)."""
    digests = []
    for k in (1, 2):
        env = {**os.environ, "PYTHONHASHSEED": str(k)}
        res = subprocess.run([sys.executable, "-c", _DIGEST, str(tmp_path / f"d{k}"), str(Path(__file__).parent)],
                             capture_output=True, text=True, env=env, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        digests.append(res.stdout.strip())
    assert digests[0] == digests[1] and len(digests[0]) == 64
