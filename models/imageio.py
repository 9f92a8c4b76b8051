"""Reading micrographs (dm3, dm4, emd, ser, mrc, tif, png, ...) with their pixel-size calibration, writing masks.

- Every rosettasciio (``rsciio``) format that holds a calibrated 2-D image (:data:`RSCIIO_READERS`):
  DigitalMicrograph ``.dm3``/``.dm4``, EMD ``.emd`` (Thermo Fisher Velox and NCEM/Berkeley), FEI/Thermo TIA
  ``.ser`` (and ``.emi``), ``.mrc``, HyperSpy ``.hspy``, Semper ``.unf``, Ripple ``.rpl`` (+ ``.raw``)
  and Phenom ``.elid`` (Digital Surf ``.sur`` is left out: its images do not round-trip pixel for pixel). The calibration is the scale/units of the signal
  axes (rsciio reports MRC voxel sizes in nm); the first 2-D image in the file is used.
- TIFF is read with tifffile; the pixel size comes from ImageJ metadata (``unit`` + XResolution) or a
  centimetre ResolutionUnit when it is microscopic, else from the instrument metadata rsciio reads
  (FEI/Thermo ``FEI_HELIOS``/``FEI_SFEG`` tags with ``[Scan] PixelWidth`` in m, Zeiss, Olympus, ...).
- PNG/JPEG/BMP are read with Pillow (no calibration; colour images are converted to luminance).

Pixel sizes are returned in Å (nm × 10, µm × 10⁴, pm ÷ 100). Arrays are returned as float32 in the file's
row-major orientation (rows first), exactly as they will be written back as masks.
Anything unreadable raises :class:`~hrtem_dataset.errors.InputError` naming the file.
"""

from __future__ import annotations

import importlib
import io
import math
from pathlib import Path

import numpy as np

from hrtem_dataset.errors import InputError
from hrtem_dataset.imaging.resample import interpolate
from hrtem_dataset.io import atomic_path

RSCIIO_READERS = {
    ".dm3": "digitalmicrograph", ".dm4": "digitalmicrograph", ".emd": "emd", ".ser": "tia", ".emi": "tia",
    ".mrc": "mrc", ".hspy": "hspy", ".unf": "semper", ".rpl": "ripple", ".elid": "phenom",
}
"""File suffix -> rosettasciio module (``rsciio.<module>.file_reader``) for the formats with 2-D images."""
EM_SUFFIXES = tuple(RSCIIO_READERS)
TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
IMAGE_SUFFIXES = EM_SUFFIXES + TIFF_SUFFIXES + PIL_SUFFIXES + (".npy",)

_UNIT_TO_ANGSTROM = {
    "a": 1.0, "å": 1.0, "Å": 1.0, "angstrom": 1.0, "angstroms": 1.0, "ang": 1.0,
    "nm": 10.0, "nanometer": 10.0, "nanometers": 10.0, "nanometre": 10.0,
    "pm": 0.01, "um": 1e4, "µm": 1e4, "μm": 1e4, "micron": 1e4, "microns": 1e4, "\\u00b5m": 1e4,
    "mm": 1e7, "cm": 1e8, "m": 1e10,
}


def to_angstrom(scale: float | None, units: str | None) -> float | None:
    """Convert a length ``scale`` in ``units`` to Å; None for unknown or non-length units."""
    if scale is None or units is None:
        return None
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        return None
    factor = _UNIT_TO_ANGSTROM.get(str(units).strip().lower()) or _UNIT_TO_ANGSTROM.get(str(units).strip())
    if factor is None or not math.isfinite(scale) or scale <= 0:
        return None
    return scale * factor


def _as_2d(data, path: Path) -> np.ndarray:
    a = np.asarray(data)
    if a.dtype.kind == "c":
        raise InputError(f"{path}: complex data is not an intensity image")
    a = np.squeeze(a)
    if a.ndim != 2:
        raise InputError(f"{path}: expected a single 2-D image, got an array of shape {a.shape}")
    if a.shape[0] < 2 or a.shape[1] < 2:
        raise InputError(f"{path}: image too small {a.shape}")
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise InputError(f"{path}: image contains NaN or infinite values")
    return a


def _read_rsciio(path: Path, module: str | None = None) -> tuple[np.ndarray, float | None]:
    module = module or RSCIIO_READERS[path.suffix.lower()]
    file_reader = importlib.import_module(f"rsciio.{module}").file_reader
    signals = file_reader(str(path))
    # Pick the first signal that is an image (two signal axes, or a squeezable 2-D array).
    chosen = None
    for s in signals:
        if np.squeeze(np.asarray(s["data"])).ndim == 2:
            chosen = s
            break
    if chosen is None:
        shapes = [np.shape(s["data"]) for s in signals]
        raise InputError(f"{path}: no 2-D image in the file (signal shapes {shapes})")
    data = chosen["data"]
    axes = [ax for ax in chosen.get("axes", []) if int(ax.get("size", 2)) > 1]
    scales = [to_angstrom(ax.get("scale"), ax.get("units")) for ax in axes[-2:]]
    px = None
    if len(scales) == 2 and all(s is not None for s in scales):
        if abs(scales[0] - scales[1]) > 0.02 * max(scales):
            raise InputError(f"{path}: non-square pixels ({scales[0]:.4g} x {scales[1]:.4g} Å) are not supported")
        px = float(scales[-1])
    return data, px


def _read_tiff(path: Path) -> tuple[np.ndarray, float | None]:
    import tifffile

    with tifffile.TiffFile(str(path)) as tf:
        data = tf.asarray()
        page = tf.pages[0]
        px = None
        xres = page.tags.get("XResolution")
        if xres is not None:
            num, den = xres.value
            if num > 0 and den > 0:
                per_pixel = den / num  # units per pixel
                ij = tf.imagej_metadata or {}
                if ij.get("unit"):
                    px = to_angstrom(per_pixel, ij["unit"])
                else:
                    unit_tag = page.tags.get("ResolutionUnit")
                    if unit_tag is not None and int(unit_tag.value) == 3 and per_pixel < 1e-3:  # centimetre
                        px = to_angstrom(per_pixel, "cm")
        instrument = bool(set(tf.flags) & {"fei", "sem", "olympus", "sis"}) or any(
            t in page.tags for t in ("FEI_HELIOS", "FEI_SFEG", "CZ_SEM"))
    if px is None and instrument:  # FEI/Thermo, Zeiss, Olympus metadata: rosettasciio's TIFF reader
        try:
            _, px = _read_rsciio(path, "tiff")
        except InputError:
            raise
        except Exception:  # noqa: BLE001 - metadata we cannot parse: the image without calibration
            px = None
    return data, px


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
            im = im.convert("L")
        return np.asarray(im)


def read_image(path: str | Path) -> tuple[np.ndarray, float | None]:
    """Read a micrograph: returns (image float32 (rows, cols), pixel size in Å or None).

    Supported: .dm3 .dm4 .emd .ser .emi .mrc .hspy .unf .rpl .elid (rosettasciio), .tif/.tiff
    (tifffile; FEI/Thermo, Zeiss, Olympus calibration through rosettasciio), .png .jpg .bmp (Pillow), .npy.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{path}: unsupported image format {suffix!r} (use one of {', '.join(IMAGE_SUFFIXES)})")
    try:
        if suffix in EM_SUFFIXES:
            data, px = _read_rsciio(path)
        elif suffix in TIFF_SUFFIXES:
            data, px = _read_tiff(path)
        elif suffix == ".npy":
            data, px = np.load(path, allow_pickle=False), None
        else:
            data, px = _read_pil(path), None
    except InputError:
        raise
    except Exception as exc:  # every reader raises its own exception types on corrupt files
        msg = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise InputError(f"{path}: cannot read image ({type(exc).__name__}: {msg})") from None
    return _as_2d(data, path), px


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask PNG: class indices (0/1, palette or grey) or 0/255; returns uint8 0/1."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("L") if im.mode in ("RGB", "RGBA", "LA") else im)
    except Exception as exc:
        raise InputError(f"{path}: cannot read mask ({type(exc).__name__})") from None
    a = np.squeeze(a)
    if a.ndim != 2:
        raise InputError(f"{path}: mask must be a 2-D image, got shape {a.shape}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise InputError(f"{path}: mask shape {a.shape} differs from its image {tuple(shape)}")
    return (a > 0).astype(np.uint8)


def mask_png_bytes(mask: np.ndarray) -> bytes:
    """PNG of class indices (0 background, 1 particle) with a black/white palette: the pixel values are
    the class indices, and image viewers still show particles in white."""
    from PIL import Image

    a = np.ascontiguousarray(np.asarray(mask).astype(np.uint8))
    im = Image.frombytes("P", (a.shape[1], a.shape[0]), a.tobytes())  # indices kept as they are
    im.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def write_mask_png(path: str | Path, mask: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(mask_png_bytes(mask))
    return Path(path)


def resample(image: np.ndarray, shape: tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    """Resample a 2-D array to ``shape``: antialiased bilinear for images, nearest for masks
    (:func:`hrtem_dataset.imaging.resample.interpolate`, the resampling the datasets' images use too)."""

    return interpolate(image, shape, nearest=nearest)


def rescaled_shape(shape: tuple[int, int], pixel_size: float, target_pixel_size: float) -> tuple[int, int]:
    """Shape of an image of pixel size ``pixel_size`` resampled to ``target_pixel_size`` (same field of view)."""
    f = float(pixel_size) / float(target_pixel_size)
    return (max(2, int(round(shape[0] * f))), max(2, int(round(shape[1] * f))))
