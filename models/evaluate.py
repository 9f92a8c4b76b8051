"""Evaluation of a segmentation model on a dataset split or on a folder of labelled micrographs.

Metrics (:mod:`models.metrics`): pixel IoU, F1, precision and recall of the particle class accumulated
over the split, and per-particle detection (connected components matched at IoU > 0.5: counts, detection
precision/recall/F1, mean matched IoU, relative area error, equivalent-diameter error in Å). Each image
is predicted at the model's pixel size (rescaled when its own pixel size differs) and compared with its
mask on its own grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hrtem_dataset.errors import InputError
from hrtem_dataset.jsonsafe import finite

from .data import WaveSample, _is_user_folder, load_samples, load_user_folder
from .device import resolve_device
from .hub import from_pretrained
from .inference import check_tta
from .train import validate


def evaluate(model, dataset: str | Path | None = None, config: str | None = None, split: str = "test", *,
             user_data: str | Path | None = None, pixel_size: float | None = None, device: str | None = None,
             tile: int = 512, max_samples: int | None = None, tta: str = "none") -> dict[str, Any]:
    """Evaluate ``model`` (a model, a model folder or a Hub id) on ``dataset``/``config``/``split`` or on
    ``user_data`` (a folder of micrographs + mask PNGs; a ``dataset`` path that is such a folder works too).

    Returns a flat dict: ``iou``, ``f1``, ``precision``, ``recall`` (pixels pooled over the images),
    ``f1_image_mean``, ``n_images``, particle-detection statistics, ``per_image`` (name, pixel size, F1, IoU;
    folders of micrographs only), and ``model``, ``dataset``, ``config``, ``split`` for the record (NaN where
    undefined), and ``tta`` when the predictions had test-time augmentation (:func:`models.inference.predict_proba`).
    """
    resolve_device(device)  # before loading anything
    check_tta(tta)
    if isinstance(model, str | Path):

        model_ref = str(model)
        model = from_pretrained(model)
    else:
        model_ref = "<in-memory model>"
    if user_data is None and dataset is not None and _is_user_folder(Path(dataset)):
        user_data, dataset = dataset, None
    if user_data is not None:
        # a model trained at a pixel size needs every image's pixel size to resample it
        samples = load_user_folder(user_data, pixel_size=pixel_size,
                                   require_pixel_size=bool(getattr(model.hrtem_config, "pixel_size", None)))
        source = {"dataset": str(user_data), "config": None, "split": None}
    elif dataset is not None:
        samples = load_samples(dataset, config, split, max_samples=max_samples)
        source = {"dataset": str(dataset), "config": config, "split": split}
    else:
        raise InputError("--dataset: evaluation needs a dataset or a folder of labelled micrographs")
    if samples and isinstance(samples[0], WaveSample):
        raise InputError(f"dataset {dataset} config {config!r}: evaluation needs an 'images' configuration")
    metrics = validate(model, samples, device=device, detection=True, tile=tile, per_image=user_data is not None,
                       tta=tta)
    return {**metrics, "model": model_ref, **source, **({"tta": tta} if tta != "none" else {})}


def json_safe(d: dict) -> dict:
    """NaN/inf -> None (recursively; numpy scalars -> Python) so the dict serialises as strict JSON."""
    return finite(dict(d))
