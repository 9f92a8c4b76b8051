"""Studies (configs/studies/*.yaml): a tiny study end to end through the real Dagster graph (`hrtem study
run`), reuse of exit waves between variants, the evaluation matrix on identical sets (a simulated test set and
a folder of labelled micrographs written here), the report (study.json, card, PNG plots), resume, the
transfer axis, and bad specs failing with one line and nothing written."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml
from dagster_helpers import (
    REPO,
    browser,
    dagster_dev,
    graphql,
    isolated_hf_datasets_cache,  # noqa: F401 (autouse fixture)
    require_chromium,
    tiny_spec_dict,
)
from PIL import Image

from hrtem_dataset.cli import main
from hrtem_dataset.studies import load_study

REAL_DEV = REPO.parent / "shared" / "real-dev"
TRAINING = {"encoder": "tu-resnet18", "encoder_depth": 3, "decoder_channels": [32, 16, 16], "steps": 20,
            "batch_size": 2, "lr": 0.002, "image_size": 64}


def run_cli(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def write_real_folder(root: Path, n: int = 3, pixel_size: float = 0.25) -> Path:
    """Labelled 'micrographs': dark discs (particles) on a noisy bright background + their masks."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["name,pixel_size_angstrom"]
    yy, xx = np.mgrid[:96, :96]
    for i in range(n):
        cx, cy, r = 30 + 12 * i, 50 - 6 * i, 14 + 2 * i
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        img = np.clip(170 - 70 * mask + rng.normal(0, 12, mask.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"disc{i}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / f"disc{i}.png")
        rows.append(f"disc{i},{pixel_size}")
    (root / "MANIFEST.csv").write_text("\n".join(rows) + "\n")
    return root


def write_datasets(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / "base.yaml"
    base.write_text(yaml.safe_dump(tiny_spec_dict(model=False, name="tinybase", train=2, validation=1, test=0,
                                                  seed=3)))
    ev = folder / "eval.yaml"
    ev.write_text(yaml.safe_dump(tiny_spec_dict(model=False, name="tinyeval", train=0, validation=0, test=2,
                                                seed=99)))
    return base, ev


def write_study(folder: Path, **kw) -> Path:
    base, ev = write_datasets(folder / "datasets")
    d = {"name": "tinystudy", "seed": 5, "base": "datasets/base.yaml", "seeds": 2, "training": TRAINING,
         "evaluation": {"simulated": "datasets/eval.yaml", "real": []}}
    d.update(kw)
    path = folder / f"{d['name']}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def _is_png(p: Path) -> bool:
    return p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """2 variants (the base, and an imaging-only variant) × 2 seeds, evaluated on a simulated test set, a
    folder of labelled micrographs and a folder that does not exist (skipped with a warning)."""
    tmp = tmp_path_factory.mktemp("study")
    real = write_real_folder(tmp / "lab")
    spec = write_study(tmp, variants={"base": {}, "narrow": {"imaging.defocus": {"min": -5.0, "max": 5.0},
                                                             "imaging.dose": 5000.0}},
                       evaluation={"simulated": "datasets/eval.yaml", "real": [str(real), str(tmp / "absent")]})
    out = tmp / "out"
    os.environ.pop("HRTEM_HOME", None)
    rc, stdout, stderr = run_cli(["study", "run", spec, "--out", out])
    print(stderr)
    assert rc == 0, stderr[-3000:]
    return {"tmp": tmp, "spec": spec, "out": out, "real": real, "stdout": stdout, "stderr": stderr}


def test_study_matrix_identical_sets_and_reuse(tiny_study):
    out = tiny_study["out"]
    p = json.loads((out / "study" / "study.json").read_text())
    sets = [s["id"] for s in p["evaluation_sets"]]
    assert sets == ["simulated:tinyeval", "real:lab"]
    # the matrix: 2 variants × 2 seeds × 2 evaluation sets, every model on exactly the same sets
    assert len(p["matrix"]) == 2 * 2 * 2
    by_model: dict = {}
    for row in p["matrix"]:
        by_model.setdefault((row["variant"], row["seed"]), []).append(row["set"])
        assert 0.0 <= row["metrics"]["f1"] <= 1.0
    assert sorted(by_model) == [("base", 0), ("base", 1), ("narrow", 0), ("narrow", 1)]
    assert all(sorted(v) == sorted(sets) for v in by_model.values())
    assert p["identical_sets"]["passed"]
    real = [r for r in p["matrix"] if r["set"] == "real:lab"]
    assert all(r["metrics"]["n_images"] == 3 and len(r["metrics"]["per_image"]) == 3 for r in real)
    sim = [r for r in p["matrix"] if r["set"] == "simulated:tinyeval"]
    assert all(r["metrics"]["n_images"] == 2 for r in sim)
    # seeds differ, so the two models of a variant differ; the same seed index is paired across variants
    seeds = {(m["variant"], m["seed"]): m["train_seed"] for m in p["models"]}
    assert seeds[("base", 0)] == seeds[("narrow", 0)] != seeds[("base", 1)]
    # the missing folder: skipped, with a warning in the report
    assert any("absent" in w and "skipped" in w for w in p["warnings"])
    # reuse: the imaging-only variant ran no multislice, it re-imaged the base's 3 exit waves
    ds = p["datasets"]
    assert ds["base"]["waves_simulated"] == 3 and ds["base"]["waves_reused"] == 0
    assert ds["narrow"]["waves_simulated"] == 0 and ds["narrow"]["waves_reused"] == 3
    assert ds["narrow"]["structures_built"] == 0 and ds["narrow"]["structures_reused"] == 3
    assert ds["_evaluation"]["waves_simulated"] == 2
    assert p["reuse"] == {"structures_built": 3, "structures_reused": 3, "waves_simulated": 3, "waves_reused": 3}
    # on disk: each variant's wave files are hard links of one content-addressed file
    ws = out / ".hrtem"
    store = list((ws / "_shared" / "waves").glob("*/*.npz"))
    assert len(store) == 3 + 2  # 3 training structures (shared by both variants) + 2 test structures
    narrow = sorted((ws / "hrtem-tiny" / "0.0.1" / "tinystudy-narrow" / "waves").glob("*.npz"))
    base = sorted((ws / "hrtem-tiny" / "0.0.1" / "tinystudy-base" / "waves").glob("*.npz"))
    assert len(narrow) == len(base) == 3
    assert [a.stat().st_ino for a in narrow] == [b.stat().st_ino for b in base]
    # but the images differ (different imaging conditions)
    img = sorted((ws / "hrtem-tiny" / "0.0.1" / "tinystudy-narrow" / "images").glob("*.npz"))
    img_b = sorted((ws / "hrtem-tiny" / "0.0.1" / "tinystudy-base" / "images").glob("*.npz"))
    assert img and img[0].read_bytes() != img_b[0].read_bytes()
    assert p["leakage"]["passed"] and p["leakage"]["test_structures"] == 2


def test_study_report_files_and_plots(tiny_study):
    folder = tiny_study["out"] / "study"
    readme = (folder / "README.md").read_text()
    assert readme.startswith("---\nlicense: cc-by-4.0")
    assert "| variant (f1, mean ± std over seeds) | simulated:tinyeval | real:lab |" in readme
    for v in ("base", "narrow"):
        assert f"| {v} | " in readme
    assert "is best with f1" in readme and "## Lineage" in readme and "hrtem-tiny 0.0.1" in readme
    assert "Exit waves simulated: **3**, reused from other variants/studies: **3**" in readme
    assert "**warning:**" in readme and "absent" in readme
    plots = sorted((folder / "plots").glob("*.png"))
    assert [p.name for p in plots] == ["real_lab.png", "simulated_tinyeval.png"]
    for p in plots:
        assert _is_png(p)
        a = np.asarray(Image.open(p).convert("L"), dtype=np.float64)
        assert min(a.shape) >= 200 and a.std() > 10  # axes, points, labels: not a blank image
        assert len(np.unique(a)) > 20
    # the table numbers are the seed mean ± std of study.json
    p = json.loads((folder / "study.json").read_text())
    f1 = [r["metrics"]["f1"] for r in p["matrix"] if r["variant"] == "base" and r["set"] == "real:lab"]
    assert "| base | " in readme and f"{np.mean(f1):.3f} ± {np.std(f1, ddof=1):.3f}" in readme
    # `hrtem study report DIR` re-renders the card and the plots from study.json alone
    before = readme
    (folder / "README.md").unlink()
    for q in plots:
        q.unlink()
    rc, stdout, stderr = run_cli(["study", "report", tiny_study["out"]])
    assert rc == 0, stderr
    assert (folder / "README.md").read_text() == before
    assert all(_is_png(q) for q in plots)
    # the folder is a Hub dataset repo: the matrix as a parquet table, publishable with `hrtem publish`
    import pyarrow.parquet as pq

    t = pq.read_table(folder / "data" / "matrix.parquet").to_pylist()
    assert len(t) == 8 and {r["evaluation_set"] for r in t} == {"simulated:tinyeval", "real:lab"}
    assert sorted(r["f1"] for r in t) == sorted(r["metrics"]["f1"] for r in p["matrix"])
    rc, stdout, stderr = run_cli(["publish", folder, "--repo-id", "org/tiny-study", "--dry-run"])
    assert rc == 0, stderr
    listed = stdout + stderr
    assert "data/matrix.parquet" in listed and "study.json" in listed and "plots/real_lab.png" in listed


def test_study_dagster_graph_and_resume(tiny_study):
    out = tiny_study["out"]
    with dg.DagsterInstance.from_config(str(out / ".dagster")) as inst:
        parts = inst.get_materialized_partitions(dg.AssetKey(["tinystudy", "trained_models"]))
        assert parts == {"base|0", "base|1", "narrow|0", "narrow|1"}
        for name in ("evaluation_sets", "variant_datasets", "evaluation_matrix", "study_report"):
            ev = inst.get_latest_materialization_event(dg.AssetKey(["tinystudy", name]))
            assert ev is not None, name
        md = inst.get_latest_materialization_event(dg.AssetKey(["tinystudy", "study_report"])).asset_materialization.metadata
        assert md["preview"].value.count("data:image/png;base64,") == 2 and "| narrow | " in md["preview"].value
        assert md["waves_simulated"].value == 3 and md["waves_reused"].value == 3
    # resume: a second run reuses every model and evaluation (no retraining, same matrix)
    models = sorted((out / ".hrtem" / "studies" / "tinystudy").rglob("model.safetensors"))
    assert len(models) == 4
    mtimes = [m.stat().st_mtime_ns for m in models]
    before = json.loads((out / "study" / "study.json").read_text())["matrix"]
    rc, _, stderr = run_cli(["study", "run", tiny_study["spec"], "--out", out])
    assert rc == 0, stderr[-2000:]
    assert [m.stat().st_mtime_ns for m in models] == mtimes
    after = json.loads((out / "study" / "study.json").read_text())
    assert after["matrix"] == before
    assert after["reuse"]["waves_simulated"] == 3  # cumulative ledger: nothing simulated again


@pytest.mark.browser
def test_study_group_in_dagster_ui(tiny_study):
    """`dagster dev` on the study's own instance (DIR/.dagster) and spec, seen by headless Chromium: the
    study's group page draws its five assets, the report's materialization carries the plots of
    DIR/study/plots as inline markdown images, and the report's asset page shows that metadata."""
    import base64
    import re

    from dagster_project.studies import STUDY_ASSETS

    require_chromium()
    out, tmp = tiny_study["out"], tiny_study["tmp"]
    (tmp / "no-configs").mkdir(exist_ok=True)
    env = {"DAGSTER_HOME": str(out / ".dagster"), "HRTEM_HOME": str(out / ".hrtem"),
           "HRTEM_STUDIES": str(tiny_study["spec"]), "HRTEM_CONFIGS": str(tmp / "no-configs")}
    with dagster_dev(tmp, env) as (port, _):
        base = f"http://127.0.0.1:{port}"
        dom = browser(f"{base}/locations/dagster_project/asset-groups/tinystudy", tmp, "--dump-dom").stdout
        missing = [a for a in STUDY_ASSETS if a not in dom]
        assert not missing, f"study assets missing from the rendered group graph: {missing}"
        q = """query($key: AssetKeyInput!) { assetOrError(assetKey: $key) { ... on Asset {
                 assetMaterializations(limit: 1) { metadataEntries { label ... on MarkdownMetadataEntry { mdStr } } } } } }"""
        mats = graphql(port, q, {"key": {"path": ["tinystudy", "study_report"]}})["assetOrError"]["assetMaterializations"]
        entries = {e["label"]: e for e in mats[0]["metadataEntries"]}
        assert {"preview", "waves_simulated", "waves_reused", "plots", "study_json"} <= set(entries)
        shown = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("L"))
                 for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", entries["preview"]["mdStr"])]
        files = [np.asarray(Image.open(p).convert("L")) for p in sorted((out / "study" / "plots").glob("*.png"))]
        assert len(shown) == len(files) == 2
        assert all(any(a.shape == b.shape and np.array_equal(a, b) for b in files) for a in shown)
        page = browser(f"{base}/assets/tinystudy/study_report", tmp, "--dump-dom", budget_ms=30000).stdout
        assert "study_report" in page and "waves_simulated" in page, page[-2000:]


def test_study_definitions_group(tmp_path):
    from dagster_project.definitions import build_definitions
    from dagster_project.studies import STUDY_ASSETS, STUDY_CHECKS

    spec = write_study(tmp_path, variants={"a": {}, "b": {"simulation.phonons": 1}})
    defs = build_definitions([tmp_path / "datasets" / "base.yaml"], study_paths=[spec])
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {f"tinystudy/{n}" for n in STUDY_ASSETS} <= keys and "base/structures" in keys
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert {(f"tinystudy/{a}", c) for a, cs in STUDY_CHECKS.items() for c in cs} <= checks
    node = graph.get(dg.AssetKey(["tinystudy", "trained_models"]))
    assert node.partitions_def.get_partition_keys() == ["a|0", "a|1", "b|0", "b|1"]


def test_shipped_studies_valid():
    studies = sorted((REPO / "configs" / "studies").glob("*.yaml"))
    assert {p.stem for p in studies} >= {"quantity", "quality", "diversity", "transfer"}
    for p in studies:
        s = load_study(p)
        assert s.spec.seeds >= 3, p
        assert s.evaluation.config_name == "study-eval"
        for d in s.datasets.values():
            assert d.structures.cell.x == 64.0
        folders = [r.path for r in s.real] + ([s.transfer_folder.path] if s.transfer_folder else [])
        assert folders and all(f == (REPO.parent / "shared" / "real-dev").resolve() for f in folders), p
    q = load_study(REPO / "configs" / "studies" / "quantity.yaml")
    sizes = [v.max_structures for v in q.variants]
    assert max(sizes) / min(sizes) >= 16 and len(q.datasets) == 1  # >= 4 octaves, nested subsets of one build
    quality = load_study(REPO / "configs" / "studies" / "quality.yaml")
    assert len(quality.datasets) == len(quality.variants) - 1  # the base appears twice, built once


@pytest.mark.skipif(not REAL_DEV.is_dir(), reason="../shared/real-dev is absent (CI)")
def test_shipped_transfer_folds_on_real_dev():
    from hrtem_dataset.studies.build import check_transfer

    s = load_study(REPO / "configs" / "studies" / "transfer.yaml")
    plan = check_transfer(s)
    assert plan["n_images"] >= max(s.spec.transfer.k) + 1
    for f in plan["folds"]:
        assert len(f["pool"]) == max(s.spec.transfer.k) and f["heldout"]
        assert not set(f["pool"]) & set(f["heldout"])


@pytest.mark.parametrize("case,needle", [
    ("unknown_key", "simulation.phonon"),
    ("empty_variants", "variants: needs at least one variant"),
    ("k_too_large", "transfer.k = 3"),
    ("bad_value", "simulation.phonons"),
])
def test_bad_study_specs_exit_2_nothing_written(tmp_path, case, needle):
    real = write_real_folder(tmp_path / "lab", n=3)
    kw = {"unknown_key": {"variants": {"a": {}, "b": {"simulation.phonon": 0}}},
          "empty_variants": {"variants": {}},
          "k_too_large": {"transfer": {"folder": str(real), "k": [0, 3], "modes": ["frozen"]}},
          "bad_value": {"variants": {"a": {"simulation.phonons": -1}}}}[case]
    spec = write_study(tmp_path, **kw)
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli(["study", "run", spec, "--out", out])
    assert rc == 2, stderr
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and needle in stderr, stderr
    assert not out.exists()
    assert not (tmp_path / ".hrtem").exists()


def test_transfer_axis_tiny(tmp_path):
    """k = 0 (simulation only) and k = 1 (frozen encoder, from scratch) with a 3-image folder, 2 folds:
    every model is evaluated on the held-back images of each fold (the same for every variant)."""
    real = write_real_folder(tmp_path / "lab", n=3)
    spec = write_study(tmp_path, name="tinytransfer", seeds=1,
                       transfer={"folder": str(real), "k": [0, 1], "modes": ["frozen", "scratch"], "folds": 2,
                                 "steps": 10, "lr": 0.001})
    out = tmp_path / "out"
    rc, _, stderr = run_cli(["study", "run", spec, "--out", out])
    assert rc == 0, stderr[-3000:]
    p = json.loads((out / "study" / "study.json").read_text())
    assert [v["name"] for v in p["variants"]] == ["k0", "k1-frozen", "k1-scratch"]
    assert [s["id"] for s in p["evaluation_sets"]] == ["simulated:tinyeval", "real-heldout:lab"]
    held = p["evaluation_sets"][1]["folds"]
    assert [f["heldout"] for f in held] == [["disc1", "disc2"], ["disc0", "disc2"]]
    assert len(p["matrix"]) == 3 * 1 * 2 and p["identical_sets"]["passed"]
    for row in p["matrix"]:
        if row["set"] == "real-heldout:lab":
            folds = row["metrics"]["folds"]
            assert len(folds) == 2 and all(f["n_images"] == 2 for f in folds)
            assert row["metrics"]["f1"] == pytest.approx(np.mean([f["f1"] for f in folds]))
    models = {m["variant"]: m["paths"] for m in p["models"]}
    assert len(models["k0"]) == 1 and len(models["k1-frozen"]) == 2 and len(models["k1-scratch"]) == 2
    cfg = json.loads((Path(models["k1-frozen"][0]) / "config.json").read_text())
    assert "encoder" in json.dumps(cfg)
    assert (out / "study" / "plots" / "real-heldout_lab.png").is_file()
    assert "k = 1 real images, frozen" in (out / "study" / "README.md").read_text()


def test_identical_variants_train_once(tmp_path):
    """Two variants with identical settings have the same model fingerprint: the second links the first's
    complete model folder instead of training (no training call happens here: a fresh fingerprint would)."""
    from hrtem_dataset.studies import members

    root = tmp_path / "models"
    first = root / "phonons-2" / "seed-0"
    first.mkdir(parents=True)
    (first / "config.json").write_text("{}")
    (first / "model.safetensors").write_bytes(b"weights")
    (first / ".study-metrics.json").write_text('{"val_f1": 0.9}')
    (first / members.FINGERPRINT).write_text("fp-same\n")
    twin = root / "sampling-0.1" / "seed-0"
    res = members._train(twin, "fp-same", models_root=root, dataset="unused")
    assert res["reused"] and res["copied_from"] == str(first) and res["metrics"] == {"val_f1": 0.9}
    assert (twin / "model.safetensors").stat().st_ino == (first / "model.safetensors").stat().st_ino
    assert members._complete(twin, "fp-same")
    again = members._train(twin, "fp-same", models_root=root)  # now complete in place
    assert again["reused"] and "copied_from" not in again
    # another seed (another fingerprint) finds no twin, and leftovers of the copy are never left behind
    assert members._find_complete(root, "fp-other", root / "x") is None
    assert not [p for p in twin.parent.iterdir() if p.name.startswith(".")]
