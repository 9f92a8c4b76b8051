"""Segmentation models: learning, save/load, transfer learning, evaluation, inference, bad input.

The training data are tiny synthetic HRTEM-like images (tests/models_synthetic.py) written as a folder
laid out like a Hub dataset repo and read back through ``datasets.load_dataset``. CPU only: the CUDA/AMP
code paths exist in models/train.py but are not exercised here.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from dagster_helpers import isolated_hf_datasets_cache  # noqa: F401 (autouse fixture: a private datasets cache)
from models_synthetic import synthetic_image, write_dataset, write_user_folder
from scipy import ndimage

from hrtem_dataset.cli import main
from hrtem_dataset.errors import InputError

torch.set_num_threads(2)

PIXEL = 0.5  # Å, pixel size of the synthetic dataset
SMALL = ["--encoder", "tu-resnet18", "--encoder-depth", "3", "--decoder-channels", "32,16,16"]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def f1_score(pred, true) -> float:
    p, t = np.asarray(pred).astype(bool), np.asarray(true).astype(bool)
    return 2 * np.sum(p & t) / max(1, np.sum(p) + np.sum(t))


def write_mrc(path: Path, a: np.ndarray, pixel_size: float) -> None:
    """Minimal MRC2014 file (mode 2, float32) with the voxel size in the header (Xlen/MX, Å)."""
    a = np.ascontiguousarray(a, dtype="<f4")
    ny, nx = a.shape
    h = np.zeros(256, dtype="<i4")
    f = h.view("<f4")
    h[0:3] = (nx, ny, 1)
    h[3] = 2
    h[7:10] = (nx, ny, 1)
    f[10:13] = (nx * pixel_size, ny * pixel_size, pixel_size)
    f[13:16] = 90.0
    h[16:19] = (1, 2, 3)
    f[19], f[20], f[21] = a.min(), a.max(), a.mean()
    b = bytearray(h.tobytes())
    b[208:212] = b"MAP "
    b[212:216] = bytes([0x44, 0x44, 0, 0])
    path.write_bytes(bytes(b) + a.tobytes())


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds") / "hrtem-synthetic", config="default",
                         sizes={"train": 24, "validation": 8, "test": 8}, pixel_size=PIXEL, seed=0)


@pytest.fixture(scope="module")
def trained(dataset_dir, tmp_path_factory) -> dict:
    """One small U-Net (ResNet-18 encoder, depth 3) trained through ``hrtem train`` for 30 steps."""
    out = tmp_path_factory.mktemp("model") / "unet"
    rc, stdout, stderr = run_cli(["train", "--dataset", dataset_dir, "--config", "default", "--out", out, *SMALL,
                                  "--steps", "30", "--batch-size", "8", "--lr", "3e-3", "--seed", "0",
                                  "--val-every", "5", "--quiet"])
    assert rc == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 1
    return {"dir": out, "metrics": json.loads(lines[0]),
            "history": json.loads((out / "history.json").read_text())}


def test_training_learns_f1_above_0_8(trained, dataset_dir):
    hist = trained["history"]
    assert hist[-1]["step"] == 30
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]  # loss falls
    assert hist[-1]["train_f1"] > hist[0]["train_f1"] + 0.3
    m = trained["metrics"]
    assert m["f1"] >= 0.8, m  # validation split
    assert m["iou"] >= 0.65 and m["detection_recall"] >= 0.8
    # held-out test split through `hrtem evaluate`: exactly one JSON line
    rc, stdout, stderr = run_cli(["evaluate", "--model", trained["dir"], "--dataset", dataset_dir,
                                  "--config", "default", "--split", "test"])
    assert rc == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 1
    ev = json.loads(lines[0])
    for k in ("iou", "f1", "precision", "recall", "n_true_particles", "n_matched_particles", "detection_f1",
              "diameter_error_abs_mean_A"):
        assert k in ev
    assert ev["n_images"] == 8 and ev["split"] == "test"
    assert ev["f1"] >= 0.75 and ev["detection_f1"] >= 0.7, ev
    assert 0 <= ev["diameter_error_abs_mean_A"] < 2.0  # Å, particles are 8–14 Å across


def test_save_load_identical_outputs_and_model_card(trained, tmp_path):
    from models import from_pretrained, save_pretrained

    m1 = from_pretrained(trained["dir"])
    assert m1.hrtem_config.pixel_size == pytest.approx(PIXEL)
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y1 = m1(x)
    save_pretrained(m1, tmp_path / "copy", metrics={"f1": 0.5}, dataset={"id": "org/ds", "hub": True})
    m2 = from_pretrained(tmp_path / "copy")
    with torch.no_grad():
        y2 = m2(x)
    assert torch.equal(y1, y2)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    card = (trained["dir"] / "README.md").read_text()
    assert card.startswith("---") and "model-index:" in card and "image-segmentation" in card
    assert f"{trained['metrics']['f1']:.4f}"[:5] in card  # metric value in the card
    assert "Pixel size: 0.5 Å" in card and "Limitations" in card and "Intended use" in card
    cfg = json.loads((trained["dir"] / "hrtem.json").read_text())
    assert cfg["model"]["encoder"] == "tu-resnet18" and cfg["training"]["steps_done"] == 30
    assert cfg["dataset"]["version"] == "0.0.1" and cfg["dataset"]["n_train"] == 24
    card2 = (tmp_path / "copy" / "README.md").read_text()
    assert "datasets:\n- org/ds" in card2


def _user_folder(root: Path, n: int = 5, seed: int = 3, pixel_size: float = PIXEL) -> Path:
    return write_user_folder(root, n, seed, pixel_size)


@pytest.mark.parametrize("freeze", ["encoder", "decoder"])
def test_fine_tune_freezes_encoder_or_decoder(trained, tmp_path, freeze):
    from models import fine_tune, from_pretrained

    # the 'decoder' lab records at 0.25 Å: its micrographs are resampled to the model's 0.5 Å
    user = _user_folder(tmp_path / "lab", pixel_size=PIXEL if freeze == "encoder" else 0.25)
    out = tmp_path / "ft"
    if freeze == "encoder":  # through the CLI
        rc, _, stderr = run_cli(["train", "--init-from", trained["dir"], "--freeze", "encoder", "--user-data", user,
                                 "--out", out, "--steps", "3", "--batch-size", "4", "--lr", "1e-3", "--quiet"])
        assert rc == 0, stderr
        # the fine-tuned model evaluated on the lab's folder (auto-detected micrograph folder)
        rc, stdout, stderr = run_cli(["evaluate", "--model", out, "--dataset", user])
        assert rc == 0, stderr
        ev = json.loads(stdout)
        assert ev["n_images"] == 5 and 0 <= ev["f1"] <= 1 and ev["n_true_particles"] >= 5
    else:
        res = fine_tune(trained["dir"], out, user_data=user, freeze="decoder", steps=3, batch_size=4, lr=1e-3,
                        progress=False)
        assert res["completed"] and res["metrics"]["n_images"] == 1  # 20 % of 5 held out for validation
    before, after = from_pretrained(trained["dir"]), from_pretrained(out)
    sb, sa = before.state_dict(), after.state_dict()
    frozen_prefix = ("encoder.",) if freeze == "encoder" else ("decoder.", "segmentation_head.")
    frozen = [k for k in sb if k.startswith(frozen_prefix)]
    trainable = [k for k, _ in before.named_parameters() if not k.startswith(frozen_prefix)]
    assert frozen and trainable
    for k in frozen:  # parameters and BatchNorm statistics
        assert torch.equal(sb[k], sa[k]), k
    changed = [k for k in trainable if not torch.equal(sb[k], sa[k])]
    assert len(changed) >= 0.9 * len(trainable)
    cfg = json.loads((out / "hrtem.json").read_text())
    assert cfg["training"]["freeze"] == freeze and cfg["dataset"]["fine_tune_data"] == user.name  # no local paths
    assert cfg["training"]["crop"] == 64 and cfg["model"]["pixel_size"] == PIXEL  # 128² at 0.25 Å -> 64²


def test_segment_16bit_tiff_and_calibrated_mrc(trained, tmp_path):
    import tifffile
    from PIL import Image

    from models import from_pretrained
    from models.inference import predict_proba

    rng = np.random.default_rng(11)
    # 16-bit TIFF larger than the tile: tiled inference with overlap, --pixel-size given
    img, truth = synthetic_image(rng, (96, 160), PIXEL, n_particles=(3, 5))
    tif = tmp_path / "micrograph.tif"
    tifffile.imwrite(tif, img.astype(np.uint16))
    out = tmp_path / "tif_mask.png"
    rc, stdout, stderr = run_cli(["segment", tif, "--model", trained["dir"], "--out", out, "--pixel-size", PIXEL,
                                  "--tile", "64", "--overlap", "16"])
    assert rc == 0, stderr
    mask = np.asarray(Image.open(out))
    assert mask.shape == img.shape and set(np.unique(mask)) <= {0, 1}
    assert f1_score(mask, truth) >= 0.75
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    _, n = ndimage.label(mask, structure=np.ones((3, 3)))
    assert len(rows) == n >= 2
    areas = np.array([float(r["area_A2"]) for r in rows])
    assert areas.sum() == pytest.approx(mask.sum() * PIXEL**2, rel=1e-3)
    d = np.array([float(r["equivalent_diameter_A"]) for r in rows])
    np.testing.assert_allclose(d, 2 * np.sqrt(areas / np.pi), rtol=1e-3)
    assert json.loads(stdout)["pixel_size_source"] == "argument"
    # the tiled prediction agrees with a single pass over the whole image
    model = from_pretrained(trained["dir"])
    p_tiled = predict_proba(model, img, tile=64, overlap=16).argmax(0)
    p_whole = predict_proba(model, img, tile=512).argmax(0)
    assert np.mean(p_tiled == p_whole) > 0.97

    # MRC with a 0.25 Å voxel size in its header: read the calibration, rescale 2x to the model's 0.5 Å
    img2, truth2 = synthetic_image(rng, (128, 128), 0.25, n_particles=(2, 3))
    mrc = tmp_path / "micrograph.mrc"
    write_mrc(mrc, img2, 0.25)
    out2 = tmp_path / "mrc_mask.png"
    rc, stdout, stderr = run_cli(["segment", mrc, "--model", trained["dir"], "--out", out2])
    assert rc == 0, stderr
    info = json.loads(stdout)
    assert info["pixel_size_source"] == "file" and info["pixel_size"] == pytest.approx(0.25, rel=1e-5)
    mask2 = np.asarray(Image.open(out2))
    assert mask2.shape == (128, 128)
    assert f1_score(mask2, truth2) >= 0.7
    rows2 = list(csv.DictReader(open(out2.with_suffix(".csv"))))
    assert sum(float(r["area_A2"]) for r in rows2) == pytest.approx(mask2.sum() * 0.25**2, rel=1e-3)


def test_bad_input_exit_code_2_and_nothing_written(dataset_dir, trained, tmp_path):
    def check(argv, *must_contain, absent=()):
        rc, _, stderr = run_cli(argv)
        assert rc == 2, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr
        for s in must_contain:
            assert str(s) in lines[0]
        for p in absent:
            assert not Path(p).exists(), p

    out = tmp_path / "never"
    check(["train", "--dataset", dataset_dir, "--out", out, "--encoder", "tu-no_such_net"], "tu-no_such_net",
          absent=[out])
    garbage = tmp_path / "broken.tif"
    garbage.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    check(["segment", garbage, "--model", trained["dir"], "--out", tmp_path / "m.png"], "broken.tif",
          absent=[tmp_path / "m.png", tmp_path / "m.csv"])
    dm4 = tmp_path / "broken.dm4"
    dm4.write_bytes(b"\x00\x00\x00\x04" + b"\x01" * 64)
    check(["segment", dm4, "--model", trained["dir"], "--out", tmp_path / "m.png"], "broken.dm4",
          absent=[tmp_path / "m.png"])
    check(["segment", tmp_path / "missing.png", "--model", trained["dir"], "--out", tmp_path / "m.png"],
          "missing.png")
    nomask = write_dataset(tmp_path / "nomask", sizes={"train": 2, "validation": 1}, with_masks=False)
    check(["train", "--dataset", nomask, "--out", out, *SMALL, "--steps", "1"], "mask", absent=[out])
    check(["evaluate", "--model", trained["dir"], "--dataset", nomask, "--split", "validation"], "mask")
    check(["train", "--dataset", dataset_dir, "--config", "nope", "--out", out], "nope", absent=[out])
    check(["segment", garbage, "--model", tmp_path / "no_model", "--out", tmp_path / "m.png"], "no_model")


def test_resume_reproduces_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    from models import train

    ds = write_dataset(tmp_path / "ds", sizes={"train": 8, "validation": 2}, seed=5)
    kw = dict(encoder="tu-resnet18", encoder_depth=3, decoder_channels=(16, 8, 8), steps=4, batch_size=4,
              lr=1e-3, seed=7, progress=False)
    full = train(ds, tmp_path / "full", **kw)
    part = train(ds, tmp_path / "resumed", stop_after_steps=3, **kw)  # stops mid-epoch (2 steps/epoch)
    assert not part["completed"] and part["steps"] == 3
    assert (tmp_path / "resumed" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    resumed = train(ds, tmp_path / "resumed", **kw)
    assert resumed["completed"] and resumed["steps"] == 4
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in full["history"]] == [h["train_loss"] for h in resumed["history"]]
    with pytest.raises(InputError, match="different settings"):
        train(ds, tmp_path / "resumed", **{**kw, "lr": 2e-3})


def test_dagster_hooks_train_from_spec_and_evaluate_model(tmp_path):
    from hrtem_dataset.specs import ModelTrainingSpec
    from models import evaluate_model, train_from_spec

    ds = write_dataset(tmp_path / "ds", sizes={"train": 4, "validation": 2, "test": 2}, seed=9)
    spec = ModelTrainingSpec(steps=2, batch_size=4, lr=1e-3, encoder_depth=3, decoder_channels=[16, 8, 8])
    m = train_from_spec(ds, "default", spec, tmp_path / "model", seed=1)
    assert m["steps"] == 2 and {"iou", "f1", "precision", "recall", "train_loss"} <= set(m)
    ev = evaluate_model(tmp_path / "model", ds, "default", "test")
    assert ev["n_images"] == 2 and ev["split"] == "test"
    # the hook's numbers are the pooled pixel scores of the saved model on the test split, recomputed here
    # from the model folder and the split's rows through lower-level functions
    from models import from_pretrained
    from models.data import load_samples
    from models.inference import predict_mask
    from models.metrics import pixel_metrics

    model = from_pretrained(tmp_path / "model")
    samples = load_samples(ds, "default", "test")
    pred = np.concatenate([predict_mask(model, s.image, s.pixel_size).ravel() for s in samples])
    true = np.concatenate([s.mask.ravel() for s in samples])
    ref = pixel_metrics(pred, true)
    for k in ("iou", "f1", "precision", "recall"):
        assert ev[k] == pytest.approx(ref[k], abs=1e-9), k
    json.dumps(ev, allow_nan=False)  # strict JSON
    cfg = json.loads((tmp_path / "model" / "hrtem.json").read_text())
    assert cfg["model"]["decoder_channels"] == [16, 8, 8] and cfg["training"]["seed"] == 1


def test_pixel_and_detection_metrics_known_values():
    from models.metrics import SegmentationMetrics, particle_table, pixel_metrics

    true = np.zeros((40, 40), np.uint8)
    true[5:15, 5:15] = 1  # 100 px
    true[25:35, 25:35] = 1  # 100 px
    pred = np.zeros_like(true)
    pred[5:15, 7:17] = 1  # overlaps the first: inter 80, union 120 -> IoU 2/3 (matched)
    pred[25:28, 25:28] = 1  # 9 px inside the second: IoU 0.09 (not matched)
    pred[0:2, 38:40] = 1  # 4 px false positive
    m = pixel_metrics(pred, true)
    tp, fp, fn = 89, 20 + 4, 111
    assert m["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["precision"] == pytest.approx(tp / (tp + fp)) and m["recall"] == pytest.approx(tp / (tp + fn))
    acc = SegmentationMetrics()
    acc.update(pred, true, pixel_size=0.5)
    r = acc.compute()
    assert (r["n_true_particles"], r["n_pred_particles"], r["n_matched_particles"]) == (2, 3, 1)
    assert r["detection_precision"] == pytest.approx(1 / 3) and r["detection_recall"] == pytest.approx(0.5)
    assert r["matched_iou_mean"] == pytest.approx(80 / 120)
    assert r["area_rel_error_mean"] == pytest.approx(0.0)
    rows = particle_table(true, pixel_size=0.5)
    assert [row["area_A2"] for row in rows] == [25.0, 25.0]
    assert rows[0]["equivalent_diameter_A"] == pytest.approx(2 * np.sqrt(25 / np.pi))
    assert (rows[0]["centroid_row"], rows[0]["centroid_col"]) == (9.5, 9.5)
    assert rows[1]["centroid_x_A"] == pytest.approx(29.5 * 0.5)
    empty = pixel_metrics(np.zeros((4, 4)), np.zeros((4, 4)))
    assert empty == {"iou": 1.0, "f1": 1.0, "precision": 1.0, "recall": 1.0}


def test_unknown_encoder_and_offline_push(tmp_path):
    from models import build_model, push_to_hub

    with pytest.raises(InputError, match="tu-not_a_model"):
        build_model("tu-not_a_model")
    with pytest.raises(InputError, match="offline"):
        push_to_hub(tmp_path, "someone/hrtem-unet")


def test_on_the_fly_imaging_from_exit_waves(tmp_path):
    from models_synthetic import write_exit_wave_dataset

    from hrtem_dataset.specs import ImagingDistributionSpec
    from models import train
    from models.data import OnTheFlyImaging, load_samples

    ds = write_exit_wave_dataset(tmp_path / "waves", sizes={"train": 8, "validation": 4})
    samples = load_samples(ds, "waves", "train")
    assert samples[0].waves.shape == (2, 64, 64) and samples[0].sampling == (0.25, 0.25)
    spec = ImagingDistributionSpec(pixel_size=0.5, defocus={"min": -50.0, "max": 50.0}, dose=500.0)
    gen = OnTheFlyImaging(samples, spec, crop=32, batch_size=2, seed=0)
    (x1, y1), (x2, y2) = next(iter(gen.epoch(0))), next(iter(gen.epoch(0)))
    assert tuple(x1.shape) == (2, 1, 32, 32) and tuple(y1.shape) == (2, 32, 32)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)  # seeded conditions, crops and shot noise
    assert abs(float(x1.mean())) < 1e-3 and int(y1.sum()) > 0  # standardised, particles present

    # a new condition per image and per step: one wave, noise-free, imaged twice in one batch and again in
    # the next epoch; the whole 32² field (no crop), compared by sorted values (blind to the dihedral flips)
    one = samples[:1]
    clean = ImagingDistributionSpec(pixel_size=0.5, defocus={"min": -200.0, "max": 200.0})
    g1 = OnTheFlyImaging(one, clean, crop=32, batch_size=2, seed=0, samples_per_epoch=2)
    (a, _), (b, _) = next(iter(g1.epoch(0))), next(iter(g1.epoch(1)))
    def sv(t):
        return np.sort(t.numpy().ravel())
    assert np.abs(sv(a[0]) - sv(a[1])).max() > 0.05  # two images of one batch: two conditions
    assert np.abs(sv(a[0]) - sv(b[0])).max() > 0.05  # the same image at the next step: another condition
    fixed = ImagingDistributionSpec(pixel_size=0.5, defocus=30.0)  # one fixed condition: identical images
    g2 = OnTheFlyImaging(one, fixed, crop=32, batch_size=2, seed=0, samples_per_epoch=2)
    (c, _), (d, _) = next(iter(g2.epoch(0))), next(iter(g2.epoch(1)))
    assert np.abs(sv(c[0]) - sv(c[1])).max() < 1e-4 and np.abs(sv(c[0]) - sv(d[0])).max() < 1e-4

    # and a U-Net learns from the on-the-fly images
    res = train(ds, tmp_path / "model", config="waves", imaging=spec, encoder="tu-resnet18", encoder_depth=3,
                decoder_channels=(16, 8, 8), steps=40, batch_size=4, lr=3e-3, seed=0, progress=False)
    hist = res["history"]
    assert res["completed"] and res["metrics"]["n_images"] == 4  # validation imaged once, then evaluated
    assert hist[-1]["train_loss"] < 0.6 * hist[0]["train_loss"], [h["train_loss"] for h in hist]
    assert res["metrics"]["f1"] >= 0.4 and res["metrics"]["precision"] >= 0.7, res["metrics"]


def test_segment_png_and_uncalibrated_image_warns(trained, tmp_path):
    """An 8-bit PNG has no calibration: `hrtem segment` assumes the model's pixel size and says so on
    stderr; with --pixel-size there is no warning. The mask finds the particles either way."""
    from PIL import Image

    rng = np.random.default_rng(21)
    img, true = synthetic_image(rng, (96, 96), PIXEL)
    png = tmp_path / "micrograph.png"
    Image.fromarray(np.clip(img / img.max() * 255, 0, 255).astype(np.uint8)).save(png)
    out = tmp_path / "mask.png"
    rc, stdout, stderr = run_cli(["segment", png, "--model", trained["dir"], "--out", out])
    assert rc == 0, stderr
    assert "warning" in stderr and "micrograph.png" in stderr and f"{PIXEL} Å" in stderr
    mask = np.asarray(Image.open(out))
    assert mask.shape == (96, 96) and set(np.unique(mask)) <= {0, 1}
    assert f1_score(mask, true) >= 0.7
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) >= 1 and float(rows[0]["area_A2"]) > 10
    out2 = tmp_path / "mask2.png"
    rc, _, stderr = run_cli(["segment", png, "--model", trained["dir"], "--out", out2, "--pixel-size", PIXEL])
    assert rc == 0 and "warning" not in stderr
    assert np.array_equal(np.asarray(Image.open(out2)), mask)  # same pixel size: the same mask


def test_flat_lab_folder_layout_equals_images_masks_layout(trained, tmp_path):
    """A flat lab folder (NAME.tif + NAME_mask.png) holds the same micrographs as images/ + masks/: the
    same images are loaded (the _mask files are not taken for micrographs) and evaluation gives the same
    numbers."""
    import shutil

    from models.data import load_user_folder

    nested = _user_folder(tmp_path / "nested", n=3)
    flat = tmp_path / "flat"
    flat.mkdir()
    for tif in sorted((nested / "images").glob("*.tif")):
        shutil.copy(tif, flat / tif.name)
        shutil.copy(nested / "masks" / f"{tif.stem}.png", flat / f"{tif.stem}_mask.png")
    a, b = load_user_folder(nested), load_user_folder(flat)
    assert [s.name for s in b] == [s.name for s in a] == ["mic0", "mic1", "mic2"]
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask) and x.mask.any()
        assert y.pixel_size == pytest.approx(PIXEL)  # from the TIFF calibration
    res = {}
    for name, folder in (("nested", nested), ("flat", flat)):
        rc, stdout, stderr = run_cli(["evaluate", "--model", trained["dir"], "--dataset", folder])
        assert rc == 0, stderr
        res[name] = json.loads(stdout)
    assert res["flat"]["n_images"] == 3 and res["flat"]["f1"] == pytest.approx(res["nested"]["f1"])
    assert res["flat"]["f1"] >= 0.6


def test_dihedral_augmentation_covers_the_group_and_moves_masks_with_images():
    from models.data import CropBatches, Sample, dihedral

    a = np.arange(12.0).reshape(3, 4)
    outs = [dihedral(a, k, t) for k in range(4) for t in (False, True)]
    assert len({o.tobytes() + bytes(o.shape) for o in outs}) == 8  # 8 distinct transforms
    assert np.array_equal(dihedral(a, 1, False), np.rot90(a)) and np.array_equal(dihedral(a, 0, True), a.T)
    t = torch.from_numpy(a)
    for k in range(4):
        for tr in (False, True):
            assert np.array_equal(dihedral(t, k, tr).numpy(), dihedral(a, k, tr))  # torch = numpy
    # an asymmetric "L" particle: every training crop's mask is exactly where the image is bright, and over
    # one epoch all 8 orientations occur
    img = np.zeros((32, 32), np.float32)
    img[4:28, 4:10] = 1.0
    img[22:28, 4:20] = 1.0
    mask = (img > 0).astype(np.uint8)
    batches = CropBatches([Sample(img, mask, 0.5, "L")], crop=32, batch_size=8, seed=3, samples_per_epoch=64)
    seen = set()
    for x, y in batches.epoch(0):
        for xi, yi in zip(x[:, 0], y, strict=True):
            assert np.array_equal(yi == 1, xi > xi.mean())
            seen.add(yi.astype(np.uint8).tobytes())
    assert len(seen) == 8
    plain = CropBatches([Sample(img, mask, 0.5, "L")], crop=32, batch_size=8, seed=3, samples_per_epoch=16,
                        augment=False)
    assert {y.astype(np.uint8).tobytes() for _, ys in plain.epoch(0) for y in ys} == {mask.astype(np.int64).astype(np.uint8).tobytes()}


def _loss_data(tmp_path):
    return write_dataset(tmp_path / "ds", sizes={"train": 4}, shape=(32, 32), seed=2)


def test_loss_is_cross_entropy_plus_dice(tmp_path):
    """The first step's recorded loss is CE + dice_weight × soft Dice of the initial model on the first
    batch, recomputed here from the same seeds (dice_weight 0: cross-entropy alone)."""
    import segmentation_models_pytorch as smp

    from hrtem_dataset.seeding import derive_seed
    from models import build_model, train
    from models.build import size_multiple
    from models.data import CropBatches, choose_crop, load_samples

    ds = _loss_data(tmp_path)
    kw = dict(encoder="tu-resnet18", encoder_depth=3, decoder_channels=(16, 8, 8), steps=1, batch_size=4,
              lr=1e-3, seed=5, progress=False)
    torch.manual_seed(derive_seed(5, "model-init") % (2**63))
    model = build_model("tu-resnet18", encoder_depth=3, decoder_channels=(16, 8, 8))
    model.train()
    samples = load_samples(ds, None, "train")
    crop = choose_crop([s.mask.shape for s in samples], None, size_multiple(model))
    x, y = next(iter(CropBatches(samples, crop, 4, 5).epoch(0)))
    with torch.no_grad():
        logits = model(torch.as_tensor(x)).float()
    y = torch.as_tensor(y)
    ce = float(torch.nn.CrossEntropyLoss()(logits, y))
    dice = float(smp.losses.DiceLoss(mode="multiclass", from_logits=True)(logits, y))
    assert dice > 0.05 and ce > 0.05
    both = train(ds, tmp_path / "both", **kw)["history"][0]["train_loss"]
    ce_only = train(ds, tmp_path / "ce", dice_weight=0.0, **kw)["history"][0]["train_loss"]
    assert ce_only == pytest.approx(ce, rel=1e-4)
    assert both == pytest.approx(ce + dice, rel=1e-4)


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
def test_learning_rate_schedules(tmp_path, schedule):
    """One step per epoch, so the history holds the learning rate after every step."""
    from models import train

    ds = _loss_data(tmp_path)
    res = train(ds, tmp_path / "m", encoder="tu-resnet18", encoder_depth=3, decoder_channels=(8, 8, 8), steps=8,
                batch_size=4, lr=1e-2, seed=0, schedule=schedule, progress=False)
    lrs = np.array([h["lr"] for h in res["history"]])
    assert len(lrs) == 8
    if schedule == "constant":
        assert np.allclose(lrs, 1e-2)
    elif schedule == "cosine":  # lr(t) = eta_min + (lr - eta_min)(1 + cos(pi t / T)) / 2, eta_min = lr / 100
        t = np.arange(1, 9)
        assert lrs == pytest.approx(1e-4 + (1e-2 - 1e-4) * (1 + np.cos(np.pi * t / 8)) / 2, rel=1e-6)
    else:  # warm-up to the peak lr over the first quarter, then annealing far below it
        # (the value recorded after the 8th and last step is OneCycleLR's, past its end: not used by any step)
        used = lrs[:-1]
        peak = int(np.argmax(used))
        assert peak <= 1 and used[peak] == pytest.approx(1e-2, rel=1e-6)
        assert np.all(np.diff(used[peak:]) < 0) and used[-1] < 1e-5
