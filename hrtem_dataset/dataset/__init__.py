"""Hugging Face dataset packaging: features, deterministic parquet shards, dataset card, publishing.

A dataset folder is laid out exactly like a Hub dataset repo (``README.md`` with YAML ``configs:``,
``data/<config>/<split>-NNNNN-of-NNNNN.parquet``) and loads with ``datasets.load_dataset(folder, config)``;
:func:`torch_loader` (or :func:`collate` as a ``collate_fn``) turns a split into a PyTorch ``DataLoader`` of
``(image, mask)`` batches (``(waves, mask)`` for ``exit_waves`` configurations).

Modules: :mod:`.features` (columns and their ``datasets.Features``), :mod:`.rows` (row schema: validation,
normalisation, Arrow encoding), :mod:`.writer` (deterministic parquet shards of a configuration),
:mod:`.checks` (read-side checks of a written folder), :mod:`.card` (dataset card and preview figure),
:mod:`.publish` (upload to the Hub), :mod:`.loader` (PyTorch loading).
"""

from ..previews import contrast_stretch
from .card import render_card, write_dataset_card
from .checks import LeakageReport, check_no_leakage, split_files
from .features import SPLITS, column_docs, exit_wave_features, image_features
from .loader import collate, torch_loader
from .publish import publish
from .writer import version_dir, write_dataset_config

__all__ = [
    "SPLITS",
    "LeakageReport",
    "check_no_leakage",
    "collate",
    "column_docs",
    "contrast_stretch",
    "exit_wave_features",
    "image_features",
    "publish",
    "render_card",
    "split_files",
    "torch_loader",
    "version_dir",
    "write_dataset_card",
    "write_dataset_config",
]
