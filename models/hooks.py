"""Entry points for the Dagster assets (``trained_model``, ``model_evaluation``, ``published_model``).

Kept deliberately small: plain arguments in, plain dicts out, no Dagster imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hrtem_dataset.specs import ModelTrainingSpec

from .evaluate import evaluate, json_safe
from .train import train


def train_from_spec(dataset_dir: str | Path, config_name: str | None, spec: ModelTrainingSpec | None,
                    out_dir: str | Path, seed: int = 0, *, progress: bool = False,
                    device: str | None = None) -> dict[str, Any]:
    """Train a U-Net on ``dataset_dir``/``config_name`` with the hyper-parameters of ``spec`` and save the
    model folder (safetensors + config.json + model card) to ``out_dir``.

    Returns the final validation metrics (``iou``, ``f1``, ``precision``, ``recall``, detection
    statistics, ``train_loss``) plus ``steps`` and ``time_s``. An asset check can compare ``f1`` with
    ``spec.min_f1``.
    """

    spec = spec or ModelTrainingSpec()
    # the spec's fields are train()'s keyword arguments (one training spec); min_f1 is only a check floor
    kw: dict[str, Any] = {**spec.model_dump(exclude={"min_f1"}, exclude_none=True), "seed": int(seed)}
    res = train(dataset_dir, out_dir, config=config_name, progress=progress, device=device, **kw)
    return {**res["metrics"], "steps": res["steps"], "time_s": res["time_s"]}


def evaluate_model(model_dir: str | Path, dataset_dir: str | Path, config: str | None = None,
                   split: str = "test", *, device: str | None = None) -> dict[str, Any]:
    """Evaluate a saved model folder on a dataset split; returns the flat metrics dict of
    :func:`models.evaluate.evaluate` (JSON-safe: undefined values are None)."""

    return json_safe(evaluate(model_dir, dataset_dir, config, split, device=device))
