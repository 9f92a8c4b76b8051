"""Tiny dataset configurations shared by the pipeline and Dagster tests (kept small for 2-core CI)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def tiny_spec_dict(*, model: bool = True, name: str = "tiny", train: int = 2, validation: int = 1, test: int = 1,
                   shard_size: int = 2, seed: int = 3) -> dict:
    """4 structures (2/1/1) in 2 shards: 28 Å cells, one Au particle of radius 5–6 Å on 1 nm of carbon,
    0.2 Å sampling, static lattice, one noisy image per structure at 0.25 Å pixels."""
    d = {
        "name": "hrtem-tiny",
        "config_name": name,
        "kind": "images",
        "version": "0.0.1",
        "seed": seed,
        "structures": {
            "cell": {"x": 28.0, "y": 28.0},
            "substrate_thickness": 10.0,
            "n_particles": {"min": 1, "max": 1},
            "particles": {"materials": {"values": ["Au"]}, "radius": {"min": 5.0, "max": 6.0}},
            "min_separation": 4.0,
            "vacuum": 4.0,
        },
        "simulation": {"engine": "torch", "sampling": 0.2, "slice_thickness": 2.0, "phonons": 0, "device": "cpu"},
        "imaging": {"pixel_size": 0.25, "defocus": {"min": -50.0, "max": 50.0}, "dose": 1000.0,
                    "images_per_structure": 1},
        "splits": {"train": train, "validation": validation, "test": test},
        "shard_size": shard_size,
    }
    if model:
        d["model"] = {"encoder": "tu-mobilenetv3_small_050", "steps": 3, "batch_size": 2, "lr": 0.001, "image_size": 64,
                      "min_f1": 0.0}
    return d


def write_tiny_config(folder: Path, stem: str = "tiny", **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(tiny_spec_dict(**kw), sort_keys=False))
    return path


@pytest.fixture(scope="module", autouse=True)
def isolated_hf_datasets_cache(tmp_path_factory):
    """A private `datasets` cache for the module (in process and for subprocesses).

    `load_dataset(<local folder>)` keys its Arrow cache on the folder *name*, the configuration and the
    card's `dataset_info` (sizes), not on the file contents: two different builds in folders both named
    `dataset` with equal sizes would otherwise share one cache entry and the second load would return
    the first build's rows.
    """
    import os

    import datasets

    cache = tmp_path_factory.mktemp("hf_datasets_cache")
    old_attr, old_env = datasets.config.HF_DATASETS_CACHE, os.environ.get("HF_DATASETS_CACHE")
    datasets.config.HF_DATASETS_CACHE = cache
    os.environ["HF_DATASETS_CACHE"] = str(cache)
    yield cache
    datasets.config.HF_DATASETS_CACHE = old_attr
    if old_env is None:
        os.environ.pop("HF_DATASETS_CACHE", None)
    else:
        os.environ["HF_DATASETS_CACHE"] = old_env
