"""Segmentation baselines for HRTEM nanoparticle images: U-Net with timm encoders.

- :func:`build_model` — U-Net (segmentation-models-pytorch) with a timm encoder (``tu-resnet18`` default).
- :func:`train` / :func:`fine_tune` — training from a built dataset (folder or Hub id) or a folder of
  labelled micrographs; transfer learning with a frozen encoder or decoder.
- :func:`evaluate` — IoU, F1, precision, recall and per-particle detection.
- :func:`save_pretrained` / :func:`from_pretrained` / :func:`push_to_hub` — Hub model folders.
- :func:`segment` — masks and per-particle tables for dm3/dm4/emd/ser/mrc/tif/png micrographs.
- :func:`train_from_spec` / :func:`evaluate_model` — hooks for the Dagster assets.

Heavy libraries (torch, smp, datasets) are imported lazily by the functions that need them.

Import it as ``hrtem_dataset.models`` (the same objects): a ``models/`` folder in the working directory
cannot shadow that name.
"""

from __future__ import annotations

from .build import ModelConfig, build_model
from .evaluate import evaluate
from .hooks import evaluate_model, train_from_spec
from .hub import from_pretrained, push_to_hub, save_pretrained
from .inference import segment
from .train import fine_tune, train

__all__ = [
    "ModelConfig",
    "build_model",
    "evaluate",
    "evaluate_model",
    "fine_tune",
    "from_pretrained",
    "push_to_hub",
    "save_pretrained",
    "segment",
    "train",
    "train_from_spec",
]
