"""Folders of labelled real micrographs (lab layout: images/ + masks/ + MANIFEST.csv): evaluation with known
F1, batch segmentation of a folder, clean errors for bad folders, and the measurement on the shared real
development set (skipped when ../shared/real-dev is absent)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hrtem_dataset.cli import main
from hrtem_dataset.errors import InputError
from models.build import ModelConfig
from models.evaluate import evaluate

REAL_DEV = Path(__file__).resolve().parents[2] / "shared" / "real-dev"


class ThresholdModel(torch.nn.Module):
    """A 'segmentation model' with a known answer: particle where the standardised input is > 0."""

    def __init__(self, pixel_size: float):
        super().__init__()
        self.hrtem_config = ModelConfig(encoder_depth=2, pixel_size=pixel_size)

    def forward(self, x):
        return torch.cat([-x, x], dim=1) * 50.0


def run_cli(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def disc(n: int, r: float, cx: float, cy: float) -> np.ndarray:
    y, x = np.mgrid[:n, :n]
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def write_folder(root: Path, specs: list[tuple[str, float, float, float]], manifest: bool = True) -> dict:
    """Images with a bright disc of radius r_img, masks with a disc of radius r_mask (same centre):
    the threshold model finds the image disc, so each image's F1 is known from the pixel counts."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    expected = {"tp": 0, "fp": 0, "fn": 0, "per_image": {}}
    rows = ["name,pixel_size_angstrom,notes"]
    for name, px, r_img, r_mask in specs:
        n = 96
        pred, true = disc(n, r_img, 40, 50), disc(n, r_mask, 40, 50)
        img = np.where(pred, 200, 60).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"{name}.png")
        Image.fromarray((true * 255).astype(np.uint8)).save(root / "masks" / f"{name}.png")
        tp, fp, fn = int((pred & true).sum()), int((pred & ~true).sum()), int((~pred & true).sum())
        expected["tp"] += tp
        expected["fp"] += fp
        expected["fn"] += fn
        expected["per_image"][name] = 2 * tp / (2 * tp + fp + fn)
        rows.append(f"{name},{px},a note")
    if manifest:
        (root / "MANIFEST.csv").write_text("\n".join(rows) + "\n")
    expected["f1"] = 2 * expected["tp"] / (2 * expected["tp"] + expected["fp"] + expected["fn"])
    return expected


def test_real_folder_evaluation_known_pooled_and_per_image_f1(tmp_path):
    specs = [("a", 0.5, 20, 20), ("b", 0.5, 20, 25), ("c", 0.5, 15, 10), ("d", 0.5, 30, 22)]
    exp = write_folder(tmp_path / "real", specs)
    res = evaluate(ThresholdModel(0.5), user_data=tmp_path / "real", device="cpu")
    assert res["n_images"] == 4
    assert res["f1"] == pytest.approx(exp["f1"], abs=1e-9)
    per = {r["name"]: r for r in res["per_image"]}
    for name, f1 in exp["per_image"].items():
        assert per[name]["f1"] == pytest.approx(f1, abs=1e-9)
        assert per[name]["pixel_size"] == 0.5  # from MANIFEST.csv (PNGs carry no calibration)
    assert res["f1_image_mean"] == pytest.approx(np.mean(list(exp["per_image"].values())), abs=1e-9)
    assert per["a"]["f1"] == 1.0 and res["f1"] < 1.0
    # one disc per image, matched at IoU > 0.5 except where the radii differ a lot (c: IoU 0.44)
    assert res["n_true_particles"] == 4 and res["n_matched_particles"] == 3


def test_real_folder_pixel_sizes_from_manifest_are_used_for_resampling(tmp_path):
    """Images at 0.25 Å resampled to a 0.5 Å model and back keep their F1 (to the resampling's edge error);
    the same images declared at 0.5 Å need no resampling at all."""
    specs = [("x", 0.25, 20, 25), ("y", 0.25, 30, 22)]
    exp = write_folder(tmp_path / "real", specs)
    res = evaluate(ThresholdModel(0.5), user_data=tmp_path / "real", device="cpu")
    assert [r["pixel_size"] for r in res["per_image"]] == [0.25, 0.25]
    assert res["f1"] == pytest.approx(exp["f1"], abs=0.02)
    res2 = evaluate(ThresholdModel(0.5), user_data=tmp_path / "real", pixel_size=0.5, device="cpu")
    assert res2["f1"] == pytest.approx(exp["f1"], abs=1e-9)


def test_hrtem_evaluate_on_a_folder_prints_pooled_and_per_image(tmp_path):
    from models.hub import save_pretrained

    model = ThresholdModel(0.5)
    # a real saved U-Net is needed for the CLI: build a tiny one and check the JSON layout only here
    from models.build import build_model

    unet = build_model("tu-resnet18", encoder_depth=2, decoder_channels=(16, 8))
    unet.hrtem_config.pixel_size = 0.5
    save_pretrained(unet, tmp_path / "m")
    write_folder(tmp_path / "real", [("a", 0.5, 20, 20), ("b", 0.4, 20, 25)])
    rc, out, err = run_cli(["evaluate", "--model", tmp_path / "m", "--dataset", tmp_path / "real", "--device", "cpu"])
    assert rc == 0, err
    res = json.loads(out)
    assert res["n_images"] == 2 and [r["name"] for r in res["per_image"]] == ["a", "b"]
    assert [r["pixel_size"] for r in res["per_image"]] == [0.5, 0.4]
    assert 0.0 <= res["f1"] <= 1.0 and "f1_image_mean" in res
    del model


@pytest.mark.parametrize("case", ["no_masks", "mismatched_shape", "missing_pixel_size", "bad_manifest"])
def test_bad_real_folder_fails_with_one_line_and_writes_nothing(tmp_path, case):
    from models.build import build_model
    from models.hub import save_pretrained

    unet = build_model("tu-resnet18", encoder_depth=2, decoder_channels=(16, 8))
    unet.hrtem_config.pixel_size = 0.5
    save_pretrained(unet, tmp_path / "m")
    real = tmp_path / "real"
    write_folder(real, [("a", 0.5, 20, 20), ("b", 0.5, 20, 25)])
    expect = {"no_masks": "no mask", "mismatched_shape": "differs from its image",
              "missing_pixel_size": "no pixel size", "bad_manifest": "pixel_size_angstrom"}[case]
    if case == "no_masks":
        (real / "masks" / "b.png").unlink()
    elif case == "mismatched_shape":
        Image.fromarray(np.zeros((50, 60), np.uint8)).save(real / "masks" / "b.png")
    elif case == "missing_pixel_size":
        (real / "MANIFEST.csv").write_text("name,pixel_size_angstrom\na,0.5\n")
    else:
        (real / "MANIFEST.csv").write_text("name,pixel_size_angstrom\na,0.5\nb,fast\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    rc, out, err = run_cli(["evaluate", "--model", tmp_path / "m", "--dataset", real, "--device", "cpu"])
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], err
    assert "Traceback" not in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    # segmenting the folder checks the same things before writing anything
    rc, out, err = run_cli(["segment", real, "--model", tmp_path / "m", "--out", tmp_path / "masks-out",
                            "--device", "cpu", "--quiet"])
    if case in ("missing_pixel_size", "bad_manifest"):
        assert rc == 2 and err.startswith("error:") and expect in err
    assert not (tmp_path / "masks-out").exists() or rc == 0


def test_segment_folder_writes_mask_and_csv_per_image(tmp_path, monkeypatch):
    from models import inference
    from models.build import build_model
    from models.hub import save_pretrained

    unet = build_model("tu-resnet18", encoder_depth=2, decoder_channels=(16, 8))
    unet.hrtem_config.pixel_size = 0.5
    save_pretrained(unet, tmp_path / "m")
    real = tmp_path / "real"
    write_folder(real, [("a", 0.5, 20, 20), ("b", 0.25, 20, 25), ("c", 0.5, 10, 10)], manifest=False)
    (tmp_path / "px.csv").write_text("name,pixel_size_angstrom\na.png,0.5\nb,0.25\nc,0.5\n")
    # the U-Net above is untrained: swap in the threshold model so the masks are known
    monkeypatch.setattr("models.inference.from_pretrained", lambda ref, **kw: ThresholdModel(0.5))
    rc, out, err = run_cli(["segment", real, "--model", tmp_path / "m", "--out", tmp_path / "seg",
                            "--pixel-sizes", tmp_path / "px.csv", "--device", "cpu", "--quiet"])
    assert rc == 0, err
    res = json.loads(out)
    assert res["images"] == 3 and res["particles"] == 3
    files = sorted(p.name for p in (tmp_path / "seg").iterdir())
    assert files == ["a.csv", "a.png", "b.csv", "b.png", "c.csv", "c.png", "summary.csv"]
    for name, r, px in (("a", 20, 0.5), ("b", 20, 0.25), ("c", 10, 0.5)):
        mask = np.asarray(Image.open(tmp_path / "seg" / f"{name}.png"))
        assert mask.shape == (96, 96) and set(np.unique(mask)) <= {0, 1}
        want = disc(96, r, 40, 50)
        f1 = 2 * (mask.astype(bool) & want).sum() / (mask.sum() + want.sum())
        assert f1 > (0.93 if px != 0.5 else 0.999)  # b is resampled to the model's 0.5 Å and back
        rows = list(csv.DictReader(open(tmp_path / "seg" / f"{name}.csv")))
        assert len(rows) == 1
        assert float(rows[0]["equivalent_diameter_A"]) == pytest.approx(2 * r * px, rel=0.05)
    summary = (tmp_path / "seg" / "summary.csv").read_text().splitlines()
    assert summary[0] == "name,pixel_size_angstrom,particles,particle_fraction" and len(summary) == 4
    # a second run into the same (now non-empty) folder is refused, nothing changes
    before = {p.name: p.read_bytes() for p in (tmp_path / "seg").iterdir()}
    rc, out, err = run_cli(["segment", real, "--model", tmp_path / "m", "--out", tmp_path / "seg",
                            "--pixel-sizes", tmp_path / "px.csv", "--device", "cpu", "--quiet"])
    assert rc == 2 and "new or empty folder" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "seg").iterdir()} == before
    del inference


def test_real_dev_measurement(tmp_path):
    """The shared real development set loads with its per-image pixel sizes (skips when absent); a model
    evaluates on it with pooled and per-image F1. The model numbers are in README.md (benchmarks/real_dev.py)."""
    if not (REAL_DEV / "images").is_dir():
        pytest.skip(f"{REAL_DEV} not present")
    from models.data import load_user_folder

    samples = load_user_folder(REAL_DEV, require_pixel_size=True)
    assert len(samples) == 7
    assert {round(s.pixel_size, 3) for s in samples} <= {0.198, 0.504, 0.53}
    res = evaluate(ThresholdModel(0.4), user_data=REAL_DEV, device="cpu")
    assert res["n_images"] == 7 and len(res["per_image"]) == 7
    # a particle-blind threshold is a poor segmenter of real images: the measurement can tell it apart
    assert res["f1"] < 0.6
    with pytest.raises(InputError):
        load_user_folder(REAL_DEV, pixel_sizes=tmp_path / "absent.csv")


def test_evaluate_record_puts_real_evaluation_in_the_model_card(tmp_path):
    from models.build import build_model
    from models.hub import save_pretrained

    unet = build_model("tu-resnet18", encoder_depth=2, decoder_channels=(16, 8))
    unet.hrtem_config.pixel_size = 0.5
    save_pretrained(unet, tmp_path / "m", metrics={"f1": 0.91}, training={"steps": 1},
                    dataset={"id": "sim", "recorded_pixel_size": [0.2, 0.8]})
    config_before = (tmp_path / "m" / "config.json").read_bytes()
    card = (tmp_path / "m" / "README.md").read_text()
    assert "recorded at 0.2–0.8 Å/px" in card and "Evaluation on real micrographs" not in card
    write_folder(tmp_path / "lab-set", [("a", 0.5, 20, 20), ("b", 0.4, 20, 25)])
    rc, out, err = run_cli(["evaluate", "--model", tmp_path / "m", "--dataset", tmp_path / "lab-set",
                            "--device", "cpu", "--record"])
    assert rc == 0, err
    res = json.loads(out)
    rec = json.loads((tmp_path / "m" / "real_evaluation.json").read_text())
    assert rec["lab-set"]["f1"] == pytest.approx(res["f1"]) and len(rec["lab-set"]["per_image"]) == 2
    card = (tmp_path / "m" / "README.md").read_text()
    assert "## Evaluation on real micrographs" in card and "`lab-set` | 2 | 0.4–0.5 |" in card
    assert "| 0.9100 |" in card  # the simulated metrics stay
    assert (tmp_path / "m" / "config.json").read_bytes() == config_before
    # --record needs a folder of micrographs
    rc, out, err = run_cli(["evaluate", "--model", tmp_path / "m", "--dataset", tmp_path / "nothing",
                            "--device", "cpu", "--record"])
    assert rc == 2 and err.startswith("error: --record")


def test_model_threshold_is_the_operating_point_and_changes_without_retraining(tmp_path):
    """A model's stored threshold decides particle pixels (P(particle) > threshold); set_threshold changes it
    in config.json and the card, keeps the weights, and the same image then gives the expected masks."""
    from models.build import build_model
    from models.hub import from_pretrained, save_pretrained, set_threshold
    from models.inference import predict_mask, predict_proba

    torch.manual_seed(0)
    unet = build_model("tu-resnet18", encoder_depth=2, decoder_channels=(16, 8))
    unet.hrtem_config.pixel_size = 0.5
    save_pretrained(unet, tmp_path / "m", metrics={"f1": 0.5})
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    model = from_pretrained(tmp_path / "m")
    p = predict_proba(model, img)[1]
    assert np.array_equal(predict_mask(model, img), (p > 0.5).astype(np.uint8))  # default: arg-max
    weights = (tmp_path / "m" / "model.safetensors").read_bytes()
    thr = float(np.quantile(p, 0.3))  # a threshold that marks ~70 % of the pixels
    assert set_threshold(tmp_path / "m", thr) and not set_threshold(tmp_path / "m", thr)
    model = from_pretrained(tmp_path / "m")
    assert model.hrtem_config.threshold == pytest.approx(thr)
    assert np.array_equal(predict_mask(model, img), (p > thr).astype(np.uint8))
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == weights
    cfg = json.loads((tmp_path / "m" / "hrtem.json").read_text())
    assert cfg["training"]["metrics_threshold"] == 0.5
    assert f"P(particle) > {thr:g}" in (tmp_path / "m" / "README.md").read_text()
    with pytest.raises(InputError):
        set_threshold(tmp_path / "m", 1.5)


def test_min_particle_area_drops_small_predicted_particles_and_is_an_operating_point(tmp_path):
    """Predicted particles (8-connected components) smaller than the model's ``min_particle_area`` Å² are
    dropped from the mask and so from the particle table; ``min_area`` overrides it (0 keeps all); areas use
    the image's pixel size, else the model's; a bad value is refused naming ``--min-area`` before any work;
    set_operating_point stores it in hrtem.json and the card without touching the weights."""
    from models.build import build_model
    from models.hub import from_pretrained, save_pretrained, set_operating_point
    from models.inference import predict_mask, remove_small_particles, segment
    from models.metrics import label_particles

    n = 96
    big, small = disc(n, 12, 30, 30), disc(n, 2, 70, 70)  # ≈ 450 and 13 pixels
    diagonal = np.zeros((n, n), bool)
    diagonal[85, 10] = diagonal[86, 11] = True  # one 8-connected particle of 2 pixels
    img = np.where(big | small | diagonal, 200.0, 60.0).astype(np.float32)
    model = ThresholdModel(0.5)  # 0.5 Å pixels: ≈ 113, 3.3 and 0.5 Å²
    everything = predict_mask(model, img, 0.5)
    assert label_particles(everything)[1] == 3 and np.array_equal(everything.astype(bool), big | small | diagonal)
    model.hrtem_config.min_particle_area = 25.0
    assert np.array_equal(predict_mask(model, img, 0.5).astype(bool), big)
    assert np.array_equal(predict_mask(model, img), predict_mask(model, img, 0.5))  # the model's pixel size
    assert np.array_equal(predict_mask(model, img, 0.5, min_area=0), everything)
    assert not predict_mask(model, img, 0.5, min_area=200.0).any()  # even the big one (113 Å²) goes
    assert np.array_equal(remove_small_particles(everything, 0.5, 3.0).astype(bool), big | small)
    assert np.array_equal(remove_small_particles(everything, None, 25.0), everything)  # no pixel size: kept
    assert len(segment(img, model, pixel_size=0.5)["particles"]) == 1
    assert len(segment(img, model, pixel_size=0.5, min_area=0)["particles"]) == 3
    for bad in (-1.0, float("nan")):
        with pytest.raises(InputError, match="--min-area"):
            segment(img, model, pixel_size=0.5, min_area=bad)
    rc, out, err = run_cli(["segment", tmp_path / "nothing.png", "--model", tmp_path / "m", "--out",
                            tmp_path / "o.png", "--min-area", "-1", "--device", "cpu"])
    assert rc == 2 and err.startswith("error: --min-area") and not (tmp_path / "o.png").exists()

    torch.manual_seed(0)
    unet = build_model("tu-resnet18", encoder_depth=2, decoder_channels=(16, 8))
    unet.hrtem_config.pixel_size = 0.5
    save_pretrained(unet, tmp_path / "m", metrics={"f1": 0.5})
    assert from_pretrained(tmp_path / "m").hrtem_config.min_particle_area == 0.0  # saved before: keeps all
    weights = (tmp_path / "m" / "model.safetensors").read_bytes()
    assert set_operating_point(tmp_path / "m", min_particle_area=25.0)
    assert not set_operating_point(tmp_path / "m", 0.5, 25.0)  # nothing changed
    assert from_pretrained(tmp_path / "m").hrtem_config.min_particle_area == 25.0
    meta = json.loads((tmp_path / "m" / "hrtem.json").read_text())
    assert meta["training"]["metrics_min_particle_area"] == 0.0 and "metrics_threshold" not in meta["training"]
    assert "smaller than 25 Å² dropped" in (tmp_path / "m" / "README.md").read_text()
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == weights
    with pytest.raises(InputError, match="min_particle_area"):
        set_operating_point(tmp_path / "m", min_particle_area=-5.0)


def test_test_time_augmentation_commutes_with_the_image_symmetries_and_refuses_unknown_modes(tmp_path):
    """``tta``: the probabilities averaged over the image's mirror images and 180° turn (``flips``) or over its
    8 symmetries (``d4``), each mapped back — so the prediction of a transformed image is the transformed
    prediction, which a U-Net alone does not give; ``none`` is the plain prediction; an unknown mode is refused
    naming ``--tta`` (CLI: exit 2) before any work."""
    from models.build import build_model
    from models.inference import predict_proba, segment

    torch.manual_seed(0)
    unet = build_model("tu-resnet18", encoder_depth=2, decoder_channels=(16, 8))
    img = np.random.default_rng(0).normal(size=(64, 80)).astype(np.float32)  # a multiple of 16: no padding
    plain = predict_proba(unet, img)
    assert np.array_equal(predict_proba(unet, img, tta="none"), plain)

    def mirror(a):
        return np.flip(a, -1)

    def turn(a):
        return np.rot90(a, 1, axes=(-2, -1))

    def half_turn(a):
        return np.rot90(a, 2, axes=(-2, -1))

    def transpose(a):
        return a.swapaxes(-1, -2)

    assert not np.allclose(mirror(predict_proba(unet, np.ascontiguousarray(mirror(img)))), plain, atol=1e-3)
    for mode, group in (("flips", (mirror, half_turn, lambda a: np.flip(a, -2))), ("d4", (turn, transpose))):
        p = predict_proba(unet, img, tta=mode)
        assert p.shape == plain.shape and np.allclose(p.sum(0), 1, atol=1e-5)
        for g in group:
            assert np.allclose(predict_proba(unet, np.ascontiguousarray(g(img)), tta=mode), g(p), atol=1e-5)
    write_folder(tmp_path / "lab", [("a", 0.5, 10, 12), ("b", 0.5, 14, 12)])
    model = ThresholdModel(0.5)  # a pixel-wise model: every transform gives the same mask
    plain_res, tta_res = (evaluate(model, user_data=tmp_path / "lab", tta=t) for t in ("none", "d4"))
    assert "tta" not in plain_res and tta_res["tta"] == "d4" and tta_res["f1"] == pytest.approx(plain_res["f1"])
    with pytest.raises(InputError, match="--tta"):
        segment(img, unet, pixel_size=0.5, tta="rot")
    rc, out, err = run_cli(["segment", tmp_path / "nothing.png", "--model", tmp_path / "m", "--out",
                            tmp_path / "o.png", "--tta", "all", "--device", "cpu"])
    assert rc == 2 and err.startswith("error: --tta") and not (tmp_path / "o.png").exists()
