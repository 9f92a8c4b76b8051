"""Models of a study (one per variant × seed) and their evaluation on every evaluation set.

Training and evaluation go through :mod:`models` (``models.train.train``, ``models.evaluate.evaluate``).
Everything is resumable: a model folder whose ``.study-fingerprint`` matches is reused (an interrupted
training resumes from its checkpoint), and every (model, evaluation set) result is cached as a JSON file
keyed by the model and evaluation-set fingerprints. Seeds derive from the study seed: seed index ``s``
trains with ``derive_seed(study.seed, "train", s)`` for every variant (paired comparisons).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from hrtem_dataset.jsonsafe import finite
from models.evaluate import evaluate, json_safe
from models.train import train

from ..errors import InputError
from ..io import atomic_write_text
from ..seeding import derive_seed, spec_hash
from ..stages import expected_rows_per_structure
from ..workspace import dataset_dir, images_fingerprint
from .build import check_transfer, fold_folders, folder_hash, study_dir
from .spec import Study

FINGERPRINT = ".study-fingerprint"


def member_dir(study: Study, variant: str, seed: int, root=None) -> Path:
    return study_dir(study, root) / "models" / variant / f"seed-{int(seed)}"


def _hyper(study: Study) -> dict[str, Any]:
    t = study.spec.training
    return {"encoder": t.encoder, "epochs": t.epochs, "steps": t.steps, "batch_size": t.batch_size, "lr": t.lr,
            "image_size": t.image_size, "encoder_depth": t.encoder_depth,
            "decoder_channels": t.decoder_channels, "schedule": t.schedule, "augment": t.augment}


def _complete(out: Path, fp: str) -> bool:
    f = out / FINGERPRINT
    return ((out / "config.json").is_file() and (out / "model.safetensors").is_file() and f.is_file()
            and f.read_text().strip() == fp)


def _find_complete(models_root: Path | None, fp: str, exclude: Path) -> Path | None:
    """Another complete model folder under ``models_root`` with fingerprint ``fp`` (a variant with identical
    settings, e.g. the shared base of two series), or None."""
    if models_root is None or not models_root.is_dir():
        return None
    for f in sorted(models_root.glob(f"**/{FINGERPRINT}")):
        if f.parent.resolve() != exclude.resolve() and _complete(f.parent, fp):
            return f.parent
    return None


def _link_tree(src: Path, out: Path) -> None:
    """``out`` becomes a copy of ``src`` (files hard-linked where the file system allows), atomically."""
    tmp = out.parent / f".{out.name}.copy-{uuid.uuid4().hex[:8]}"

    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    try:
        shutil.copytree(src, tmp, copy_function=link)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _reused(out: Path, fp: str, copied_from: Path | None = None) -> dict:
    m = out / ".study-metrics.json"
    res = {"path": str(out), "fingerprint": fp, "reused": True,
           "metrics": json.loads(m.read_text()) if m.is_file() else {}}
    if copied_from is not None:
        res["copied_from"] = str(copied_from)
    return res


def _train(out: Path, fp: str, *, device=None, models_root: Path | None = None, **kw) -> dict:
    """Train into ``out`` unless a complete model with fingerprint ``fp`` is there or elsewhere under
    ``models_root`` (then it is linked into ``out``: the fingerprint covers the data, the training
    settings and the seed, so two variants with identical settings train once)."""

    if _complete(out, fp):
        return _reused(out, fp)
    twin = _find_complete(models_root, fp, out)
    if twin is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        _link_tree(twin, out)
        return _reused(out, fp, twin)
    f, pending = out / FINGERPRINT, out / ".study-fingerprint.pending"
    if any(p.is_file() and p.read_text().strip() != fp for p in (f, pending)):
        shutil.rmtree(out)  # a model (or an interrupted training) of another spec: start over
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(pending, fp + "\n")  # an interrupted training of this spec resumes from its checkpoint
    # Validate once, after the last epoch: small quantity variants have one-batch epochs, and validating
    # after each of them cost more than the training itself.
    res = train(out_dir=out, progress=False, device=None if device in (None, "auto") else device,
                val_every=1 << 30, **kw)
    metrics = {k: v for k, v in res["metrics"].items() if isinstance(v, int | float) and not isinstance(v, bool)}
    atomic_write_text(out / ".study-metrics.json", json.dumps(finite(metrics), sort_keys=True) + "\n")
    atomic_write_text(f, fp + "\n")
    return {"path": str(out), "fingerprint": fp, "reused": False, "metrics": metrics}


def train_member(study: Study, variant: str, seed: int, root=None, *, device: str | None = None,
                 plan: dict | None = None) -> dict:
    """Train the model of (``variant``, ``seed``); returns its folder(s), fingerprint(s) and metrics.

    Transfer variants with k > 0 train one model per fold (``fold-<f>/``), starting from the k = 0 model
    of the same seed (trained first when missing); they are skipped (``skipped`` says why) when the
    transfer folder is absent."""
    v = study.variant(variant)
    out = member_dir(study, variant, seed, root)
    train_seed = derive_seed(study.spec.seed, "train", int(seed))
    if v.k is None or v.k == 0:
        spec = study.datasets[v.dataset]
        data = dataset_dir(spec, root)
        max_samples = v.max_structures * expected_rows_per_structure(spec) if v.max_structures else None
        fp = spec_hash({"images": images_fingerprint(spec, root), "dataset": spec.hash(),
                        "training": study.spec.training.model_dump(mode="json", exclude={"min_f1"}),
                        "seed": train_seed, "max_samples": max_samples})
        res = _train(out, fp, device=device, models_root=study_dir(study, root) / "models", dataset=data,
                     config=spec.config_name, max_samples=max_samples,
                     seed=train_seed, model_name=f"{study.name}-{variant}-seed{seed}", **_hyper(study))
        return {"variant": variant, "seed": int(seed), "train_seed": train_seed, "dataset": spec.config_name,
                "dataset_spec_hash": spec.hash(), "max_samples": max_samples, "models": [res],
                "reused": res["reused"]}
    plan = plan if plan is not None else check_transfer(study)
    if plan is None or plan.get("missing"):
        return {"variant": variant, "seed": int(seed), "models": [], "reused": False,
                "skipped": f"transfer folder {study.transfer_folder.path} not found"}
    t = study.spec.transfer
    base = None
    if v.mode != "scratch":
        base = train_member(study, "k0", seed, root, device=device, plan=plan) if any(
            x.name == "k0" for x in study.variants) else _pretrain(study, seed, root, device)
    models = []
    for f in range(len(plan["folds"])):
        train_dir, _ = fold_folders(study, plan, f, v.k, root)
        fseed = derive_seed(study.spec.seed, "finetune", int(seed), f)
        hyper = _hyper(study)
        hyper.update(steps=t.steps, lr=t.lr if v.mode != "scratch" else (t.scratch_lr or study.spec.training.lr))
        extra: dict[str, Any] = {}
        if v.mode != "scratch":
            extra = {"init_from": base["models"][0]["path"], "freeze": "encoder" if v.mode == "frozen" else None}
        fp = spec_hash({"base": base["models"][0]["fingerprint"] if base else None, "mode": v.mode, "k": v.k,
                        "images": plan["folds"][f]["pool"][:v.k], "folder": plan["hash"], "hyper": hyper,
                        "seed": fseed})
        models.append(_train(out / f"fold-{f}", fp, device=device, models_root=study_dir(study, root) / "models",
                             user_data=train_dir, seed=fseed,
                             model_name=f"{study.name}-{variant}-seed{seed}-fold{f}", **hyper, **extra))
    return {"variant": variant, "seed": int(seed), "train_seed": train_seed, "k": v.k, "mode": v.mode,
            "models": models, "reused": all(m["reused"] for m in models),
            "base_model": base["models"][0]["path"] if base else None}


def _pretrain(study: Study, seed: int, root, device) -> dict:
    """The simulation-trained model of a transfer study whose k list has no 0 (stored like a k0 model)."""
    k0 = replace(study.variants[0], name="k0", k=0, mode=None)
    tmp = Study(**{**study.__dict__, "variants": [k0, *study.variants]})
    return train_member(tmp, "k0", seed, root, device=device)


# --------------------------------------------------------------------------------------------------
# Evaluation sets and the matrix
# --------------------------------------------------------------------------------------------------


def evaluation_sets(study: Study, root=None, plan: dict | None = None) -> dict:
    """The evaluation sets of the study (identical for every model) and the skipped folders.

    The simulated set must be built (:func:`~hrtem_dataset.studies.build.build_evaluation_dataset`)."""
    ev = study.evaluation
    sets = [{"id": f"simulated:{ev.config_name}", "kind": "simulated", "dataset": str(dataset_dir(ev, root)),
             "config": ev.config_name, "split": "test", "spec_hash": ev.hash(),
             "hash": spec_hash({"images": images_fingerprint(ev, root), "spec": ev.hash()}),
             "source": str(study.evaluation_path)}]
    skipped = []
    for r in study.real:
        if r.exists:
            sets.append({"id": r.id, "kind": "real", "path": str(r.path), "hash": folder_hash(r.path)})
        else:
            skipped.append({"id": r.id, "path": str(r.path),
                            "warning": f"real folder {r.path} not found: evaluation set {r.id} skipped"})
    if study.transfer_folder is not None:
        plan = plan if plan is not None else check_transfer(study)
        tf = study.transfer_folder
        if plan and not plan.get("missing"):
            sets.append({"id": tf.id, "kind": "real-heldout", "path": str(tf.path), "hash": plan["hash"],
                         "folds": [{"fold": f["fold"], "heldout": f["heldout"]} for f in plan["folds"]]})
        else:
            skipped.append({"id": tf.id, "path": str(tf.path),
                            "warning": f"transfer folder {tf.path} not found: evaluation set {tf.id} and the "
                                       "variants with k > 0 skipped"})
    return {"sets": sets, "skipped": skipped, "hash": spec_hash([s["hash"] for s in sets])}


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)


def _evaluate_one(model_dir: str, eval_set: dict, device, folder: Path | None = None) -> dict:

    dev = None if device in (None, "auto") else device
    if eval_set["kind"] == "simulated":
        res = evaluate(model_dir, eval_set["dataset"], eval_set["config"], eval_set["split"], device=dev)
    else:
        res = evaluate(model_dir, user_data=folder or eval_set["path"], device=dev)
    return {k: v for k, v in json_safe(res).items() if k not in ("model", "dataset", "config", "split")}


def _mean_metrics(results: list[dict]) -> dict:
    """Mean of every numeric metric over folds (None where undefined in all)."""
    keys = [k for k in results[0] if k != "per_image"]
    out: dict[str, Any] = {}
    for k in keys:
        vals = [r.get(k) for r in results]
        nums = [float(x) for x in vals if isinstance(x, int | float) and not isinstance(x, bool)]
        out[k] = (sum(nums) / len(nums)) if nums else None
    if len(results) > 1:
        out["folds"] = results
    elif "per_image" in results[0]:
        out["per_image"] = results[0]["per_image"]
    return out


def evaluate_member(study: Study, trained: dict, sets: dict, root=None, *, device: str | None = None,
                    plan: dict | None = None) -> dict[str, dict]:
    """Metrics of one (variant, seed) model on every evaluation set: ``{set id: metrics}`` (cached)."""
    if trained.get("skipped"):
        return {}
    variant, seed = trained["variant"], trained["seed"]
    cache = study_dir(study, root) / "evaluations" / variant / f"seed-{seed}"
    v = study.variant(variant)
    out = {}
    for s in sets["sets"]:
        fp = spec_hash({"models": [m["fingerprint"] for m in trained["models"]], "set": s["hash"], "id": s["id"]})
        path = cache / f"{_slug(s['id'])}.json"
        if path.is_file():
            rec = json.loads(path.read_text())
            if rec.get("fingerprint") == fp:
                out[s["id"]] = rec["metrics"]
                continue
        if s["kind"] == "real-heldout":
            plan = plan if plan is not None else check_transfer(study)
            results = []
            for f in range(len(plan["folds"])):
                _, held = fold_folders(study, plan, f, v.k or 0, root)
                model = trained["models"][f if len(trained["models"]) > 1 else 0]["path"]
                results.append(_evaluate_one(model, s, device, held))
        else:
            results = [_evaluate_one(m["path"], s, device) for m in trained["models"]]
        metrics = _mean_metrics(results)
        atomic_write_text(path, json.dumps({"fingerprint": fp, "variant": variant, "seed": seed, "set": s["id"],
                                            "metrics": finite(metrics)}, indent=1, sort_keys=True) + "\n")
        out[s["id"]] = finite(metrics)
    return out


def check_identical_sets(matrix: list[dict], sets: dict, expected_members: list[tuple[str, int]]) -> dict:
    """Every (variant, seed) that was not skipped has a result on exactly the study's evaluation sets."""
    want = sorted(s["id"] for s in sets["sets"])
    by_member: dict[tuple[str, int], list[str]] = {}
    for row in matrix:
        by_member.setdefault((row["variant"], row["seed"]), []).append(row["set"])
    bad = {f"{v}|{s}": sorted(by_member.get((v, s), [])) for v, s in expected_members
           if sorted(by_member.get((v, s), [])) != want}
    return {"passed": not bad, "sets": want, "mismatched": bad}


def read_trained(study: Study, variant: str, seed: int, root=None, plan: dict | None = None) -> dict:
    """The record of a trained (variant, seed) without training (InputError when it is not complete)."""
    rec_path = member_dir(study, variant, seed, root) / ".study-member.json"
    if not rec_path.is_file():
        raise InputError(f"{rec_path.parent}: model {variant}|{seed} not trained yet (materialize trained_models)")
    return json.loads(rec_path.read_text())


def write_trained(study: Study, rec: dict, root=None) -> None:
    p = member_dir(study, rec["variant"], rec["seed"], root) / ".study-member.json"
    atomic_write_text(p, json.dumps(finite(rec), indent=1, sort_keys=True) + "\n")
