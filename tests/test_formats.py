"""Micrograph formats with calibration (models.imageio.read_image): files written here by the formats' own
writers (rosettasciio, tifffile with FEI metadata tags, h5py in the Velox EMD layout), and small real
instrument files from ``../shared/em-formats/`` (rosettasciio's test data; skipped when absent)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from hrtem_dataset.errors import InputError
from models.imageio import IMAGE_SUFFIXES, read_image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "em-formats"
IMG = ((np.arange(48 * 40).reshape(48, 40) * 7) % 251).astype(np.float32)  # rows, cols
NM = 0.025  # nm per pixel = 0.25 Å


def _signal(data, scale=NM, units="nm"):
    return {"data": data, "axes": [
        {"name": "y", "size": data.shape[0], "scale": scale, "offset": 0.0, "units": units, "navigate": False},
        {"name": "x", "size": data.shape[1], "scale": scale, "offset": 0.0, "units": units, "navigate": False}],
        "metadata": {"General": {"title": "test"}, "Signal": {"signal_type": ""}}, "original_metadata": {},
        "tmp_parameters": {}, "attributes": {"_lazy": False}, "learning_results": {}, "models": {},
        "package_info": {"name": "hyperspy", "version": "2.0"}}  # what the .hspy writer expects of a signal


@pytest.mark.parametrize("module,suffix,dtype", [
    ("emd", ".emd", np.float32),          # NCEM/Berkeley EMD (HDF5)
    ("hspy", ".hspy", np.float32),        # HyperSpy HDF5
    ("semper", ".unf", np.float32),       # Semper
    ("ripple", ".rpl", np.uint8),         # Ripple (.rpl + .raw)
    ("tiff", ".tif", np.float32),         # TIFF written by rosettasciio (ImageJ calibration)
])
def test_rosettasciio_written_formats_round_trip_with_calibration(module, suffix, dtype, tmp_path):
    import importlib

    assert suffix in IMAGE_SUFFIXES
    path = tmp_path / f"image{suffix}"
    data = IMG.astype(dtype)
    try:
        importlib.import_module(f"rsciio.{module}").file_writer(str(path), _signal(data))
    except (KeyError, TypeError) as exc:  # a writer API of another rosettasciio version
        pytest.skip(f"rsciio.{module} writer: {exc!r}")
    image, px = read_image(path)
    assert image.dtype == np.float32 and image.shape == (48, 40)
    np.testing.assert_array_equal(image, data.astype(np.float32))
    assert px == pytest.approx(NM * 10, rel=1e-6)  # Å


def test_velox_emd_with_calibration(tmp_path):
    """A Thermo Fisher Velox EMD (HDF5: /Version JSON, /Data/Image/<id>/Data (y, x, frames) and its JSON
    Metadata with BinaryResult.PixelSize in m), laid out as Velox writes it."""
    import h5py

    meta = {"BinaryResult": {"PixelSize": {"width": "1.5e-10", "height": "1.5e-10"}, "PixelUnitX": "m",
                             "PixelUnitY": "m", "Offset": {"x": "0", "y": "0"}, "DetectorIndex": "0"},
            "Detectors": {"Detector-0": {"DetectorName": "BM-Ceta"}}, "Acquisition": {}, "Scan": {},
            "CustomProperties": {}}
    path = tmp_path / "velox.emd"
    with h5py.File(path, "w") as f:
        f.create_dataset("Version", data=np.array([json.dumps({"format": "Velox", "version": "11"}).encode()]))
        g = f.create_group("Data/Image/6f0c1f0e2b1c4a59a4a1b8d2f1e3c7aa")
        g.create_dataset("Data", data=IMG.astype(np.uint16)[:, :, None])
        g.create_dataset("Metadata", data=np.frombuffer(json.dumps(meta).encode(), np.uint8)[:, None])
    image, px = read_image(path)
    np.testing.assert_array_equal(image, IMG)
    assert px == pytest.approx(1.5)


@pytest.mark.parametrize("tag,section", [(34682, "FEI_HELIOS"), (34680, "FEI_SFEG")])
def test_fei_tiff_calibration_from_fei_metadata(tag, section, tmp_path):
    import tifffile

    ini = ("[User]\nDate=01/01/2024\n[Beam]\nHV=300000\n[Scan]\nPixelWidth=2.5e-10\nPixelHeight=2.5e-10\n"
           "[Image]\nResolutionX=40\nResolutionY=48\n")
    path = tmp_path / "fei.tif"
    tifffile.imwrite(path, IMG.astype(np.uint16), extratags=[(tag, "s", 0, ini, True)])
    with tifffile.TiffFile(path) as tf:
        assert section in tf.pages[0].tags  # the FEI tag as the microscope software writes it
    image, px = read_image(path)
    np.testing.assert_array_equal(image, IMG)
    assert px == pytest.approx(2.5)
    # a TIFF without calibration stays uncalibrated (no guess)
    tifffile.imwrite(tmp_path / "plain.tif", IMG.astype(np.uint16))
    assert read_image(tmp_path / "plain.tif")[1] is None


def test_velox_micrograph_segments_with_its_file_calibration(tmp_path):
    """`hrtem segment` on an .emd takes the pixel size from the file."""
    import h5py

    from hrtem_dataset.cli import main
    from models import build_model, save_pretrained

    save_pretrained(build_model("tu-resnet18", encoder_depth=2, decoder_channels=(16, 8), pixel_size=0.5),
                    tmp_path / "m")
    meta = {"BinaryResult": {"PixelSize": {"width": "2.5e-11", "height": "2.5e-11"}, "PixelUnitX": "m",
                             "Offset": {"x": "0", "y": "0"}, "DetectorIndex": "0"},
            "Detectors": {"Detector-0": {"DetectorName": "BM-Ceta"}}, "Acquisition": {}, "Scan": {},
            "CustomProperties": {}}
    with h5py.File(tmp_path / "a.emd", "w") as f:
        f.create_dataset("Version", data=np.array([json.dumps({"format": "Velox", "version": "11"}).encode()]))
        g = f.create_group("Data/Image/0a")
        g.create_dataset("Data", data=np.random.default_rng(0).random((64, 64, 1)).astype(np.float32))
        g.create_dataset("Metadata", data=np.frombuffer(json.dumps(meta).encode(), np.uint8)[:, None])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["segment", str(tmp_path / "a.emd"), "--model", str(tmp_path / "m"), "--out",
                   str(tmp_path / "mask.png"), "--device", "cpu"])
    assert rc == 0
    res = json.loads(out.getvalue())
    assert res["pixel_size"] == pytest.approx(0.25) and res["pixel_size_source"] != "option"
    assert res["shape"] == [64, 64]


def test_unreadable_em_file_is_one_error_naming_it(tmp_path):
    for suffix in (".emd", ".ser", ".dm4", ".unf"):
        bad = tmp_path / f"broken{suffix}"
        bad.write_bytes(b"\0not a micrograph" * 8)
        with pytest.raises(InputError, match=f"broken\\{suffix}"):
            read_image(bad)


# ---- real files written by the instruments' software (../shared/em-formats, never copied here) ----------

REAL = [  # file, shape (rows, cols), pixel size in Å (None: uncalibrated)
    ("fei-haadf-calibrated.dm3", (4, 16), 55.06),  # 0.005506 µm
    ("dm-image-um-unit.dm3", (68, 68), 1686.75),  # 0.16867 µm
    ("64x64_TEM_images_acquire_1.ser", (64, 64), 62.818),  # TIA, 6.2818 nm
    ("64x64_TEM_images_acquire.emi", (64, 64), 62.818),  # the same through its .emi
    ("example_image.emd", (3, 3), None),  # NCEM EMD, uncalibrated
    ("fei-helios-8bit.tif", (471, 512), None),  # FEI TIFF, calibrated in m (value checked below)
]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/em-formats not present")
@pytest.mark.parametrize("name,shape,px", REAL)
def test_real_instrument_files(name, shape, px):
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"{name} not in {SHARED}")
    image, got = read_image(path)
    assert image.shape == shape and image.dtype == np.float32 and np.isfinite(image).all()
    if name.endswith(".tif"):
        import tifffile

        with tifffile.TiffFile(path) as tf:
            assert "fei" in tf.flags and tf.imagej_metadata is None  # calibration only in the FEI metadata
            expected = float(tf.fei_metadata["Scan"]["PixelWidth"]) * 1e10
        assert got == pytest.approx(expected, rel=1e-6)
    elif px is None:
        assert got is None
    else:
        assert got == pytest.approx(px, rel=1e-3)
