"""The model stages: train the spec's U-Net on the built dataset, evaluate it, publish it.

They live in :mod:`models` (not in :mod:`hrtem_dataset.stages`) because they run the models: the dataset
library never imports :mod:`models`; the models depend on it.

Format — ``<config_dir>/model/``: a Hub model repo layout (``model.safetensors``, ``config.json``,
``hrtem.json``, ``README.md``) plus ``.hrtem-fingerprint`` (:func:`~hrtem_dataset.workspace.model_fingerprint`:
a complete model of the same fingerprint is reused, only its operating point is updated) and
``.hrtem-metrics.json`` (validation metrics); ``<config_dir>/evaluation.json``: ``{"split", "metrics"}`` on the
test split (validation when there is none). Publishing copies the model folder (and ``evaluation.json``,
so that the card reports the held-out metrics) and, with a repo id, pushes it tagged ``v<version>``.

Check ``metric_above_floor`` (blocking): the evaluation F1 is at least the spec's ``model.min_f1``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from hrtem_dataset.errors import InputError
from hrtem_dataset.io import atomic_dir, atomic_write_text, make_public_files
from hrtem_dataset.jsonsafe import plain
from hrtem_dataset.seeding import derive_seed
from hrtem_dataset.specs import DatasetSpec
from hrtem_dataset.stages.base import CheckSpec, RunContext, Stage, StageResult, outcome
from hrtem_dataset.stages.dataset import published_result
from hrtem_dataset.workspace import dataset_dir, evaluation_path, model_dir, model_fingerprint, published_dir

from .hooks import evaluate_model, train_from_spec
from .hub import card_with_evaluation, push_to_hub, set_operating_point

METRIC_ABOVE_FLOOR = CheckSpec("metric_above_floor", "test F1 ≥ model.min_f1 of the spec")


def _device(device: str | None) -> str | None:
    return None if device in (None, "auto") else device


def _flat_numbers(d: dict) -> dict:
    return {f"val_{k}" if k in ("iou", "f1", "precision", "recall") else k: v for k, v in d.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def _require_model(spec: DatasetSpec, root) -> Path:
    out = model_dir(spec, root)
    if not (out / "config.json").is_file():
        raise InputError(f"{out}: no trained model (run trained_model first)")
    return out


def train_model(spec: DatasetSpec, root=None, *, device: str | None = None, force: bool = False,
                progress: bool = False) -> dict:
    """Train the spec's segmentation model on the built dataset into ``<config_dir>/model`` (a Hub model
    repo layout). A complete model trained from the same dataset and model spec is reused; an interrupted
    training resumes from its checkpoint (models.train)."""
    if spec.model is None:
        raise InputError(f"{spec.name}/{spec.config_name}: the spec has no 'model' section")
    data = dataset_dir(spec, root)
    out = model_dir(spec, root)
    fp_file = out / ".hrtem-fingerprint"
    fp = model_fingerprint(spec, root)
    complete = (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    t0 = time.perf_counter()
    if complete and not force and fp_file.exists() and fp_file.read_text().strip() == fp:
        # the operating point is not trained: no retraining
        set_operating_point(out, spec.model.threshold, spec.model.min_particle_area)
        metrics = json.loads((out / ".hrtem-metrics.json").read_text()) if (out / ".hrtem-metrics.json").exists() else {}
        return {"path": str(out), "reused": True, "seconds": time.perf_counter() - t0, **_flat_numbers(metrics)}
    if fp_file.exists() and fp_file.read_text().strip() != fp:
        shutil.rmtree(out, ignore_errors=True)  # stale model of another dataset/model spec: start over
    metrics = train_from_spec(data, spec.config_name, spec.model, out, seed=derive_seed(spec.seed, "model"),
                              device=_device(device), progress=progress)
    atomic_write_text(out / ".hrtem-metrics.json", json.dumps(plain(metrics), sort_keys=True, default=str))
    atomic_write_text(fp_file, fp + "\n")
    dt = time.perf_counter() - t0
    return {"path": str(out), "reused": False, "seconds": dt, **_flat_numbers(metrics)}


def evaluate(spec: DatasetSpec, root=None, *, device: str | None = None) -> dict:
    """Evaluate ``<config_dir>/model`` on the test split (validation when there is no test split) of the
    built dataset; writes ``<config_dir>/evaluation.json``. Returns the metrics, the split and the path."""
    data = dataset_dir(spec, root)
    mdir = _require_model(spec, root)
    split = "test" if spec.splits.test > 0 else "validation"
    t0 = time.perf_counter()
    metrics = evaluate_model(mdir, data, spec.config_name, split, device=_device(device))
    metrics = {k: v for k, v in plain(metrics).items() if k not in ("model", "dataset", "config", "split")}
    path = atomic_write_text(evaluation_path(spec, root),
                             json.dumps({"split": split, "metrics": metrics}, indent=1, sort_keys=True) + "\n")
    return {"metrics": metrics, "split": split, "path": str(path), "seconds": time.perf_counter() - t0}


def publish_model(spec: DatasetSpec, root=None, dest: str | Path | None = None, *, repo_id: str | None = None,
                  token: str | None = None, private: bool = False) -> dict:
    """Copy the trained model folder (Hub model repo layout, plus ``evaluation.json``) to ``dest`` and,
    with ``repo_id``, push it to the Hub tagged ``v<version>`` of the dataset it was trained on."""
    mdir = _require_model(spec, root)
    dest = Path(dest) if dest is not None else published_dir(spec, root) / "model"
    t0 = time.perf_counter()
    with atomic_dir(dest) as tmp:
        shutil.copytree(mdir, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*", "*.tmp", "checkpoints"))
        if dest.is_dir():  # files a user put next to the model survive the atomic replacement
            for extra in dest.iterdir():
                if not (tmp / extra.name).exists():
                    (shutil.copytree if extra.is_dir() else shutil.copy2)(extra, tmp / extra.name)
        ev = evaluation_path(spec, root)
        if ev.exists():  # the card then reports the held-out metrics, not the validation ones
            shutil.copyfile(ev, tmp / "evaluation.json")
            evaluation = json.loads(ev.read_text())
            card_with_evaluation(tmp, evaluation["metrics"], evaluation["split"])
        make_public_files(tmp)
    out = {"path": str(dest), "files": sum(1 for p in dest.rglob("*") if p.is_file()),
           "seconds": time.perf_counter() - t0, "repo_id": repo_id}
    if repo_id:
        out["url"] = push_to_hub(dest, repo_id, token=token, private=private, tag=f"v{spec.version}")
    return out


class _ModelStage(Stage):
    fingerprint = "model"

    def applies(self, spec: DatasetSpec) -> bool:
        return spec.model is not None and spec.kind == "images"  # models train and evaluate on rendered images


class TrainedModelStage(_ModelStage):
    """U-Net segmentation model trained on the train split (Hub model repo layout)."""

    name, deps, kinds = "trained_model", ("dataset_splits",), frozenset({"pytorch"})

    def materialize(self, spec: DatasetSpec, ctx: RunContext) -> StageResult:
        stats = train_model(spec, ctx.root, device=ctx.device, progress=ctx.progress)
        return StageResult({k: v for k, v in stats.items() if k != "path"}, {"spec_hash": spec.hash()},
                           path=stats["path"])


class ModelEvaluationStage(_ModelStage):
    """IoU / F1 / precision / recall of the model on the test split."""

    name, deps, kinds = "model_evaluation", ("trained_model",), frozenset({"pytorch"})
    checks = (METRIC_ABOVE_FLOOR,)

    def materialize(self, spec: DatasetSpec, ctx: RunContext) -> StageResult:
        stats = evaluate(spec, ctx.root, device=ctx.device)
        metrics = stats["metrics"]
        floor = spec.model.min_f1
        f1 = float(metrics.get("f1", float("nan")))
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        return StageResult(numbers, {"split": stats.get("split", "test"), "metrics": metrics}, path=stats["path"],
                           checks=[outcome(METRIC_ABOVE_FLOOR, math.isfinite(f1) and f1 >= floor,
                                           f"F1 {f1:.4f} vs floor {floor:.4f}", f1=f1, floor=float(floor))])


class PublishedModelStage(_ModelStage):
    """The model folder at the publishing target (local Hub layout; pushed with a repo id)."""

    name, deps, kinds = "published_model", ("model_evaluation",), frozenset({"huggingface"})

    def materialize(self, spec: DatasetSpec, ctx: RunContext) -> StageResult:
        p = ctx.publish
        dest = p.dest / "model" if p.dest is not None else None
        return published_result(publish_model(spec, ctx.root, dest, repo_id=p.model_repo_id, token=p.token,
                                              private=p.private))


MODEL_STAGES = (TrainedModelStage(), ModelEvaluationStage(), PublishedModelStage())
