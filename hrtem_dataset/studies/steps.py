"""The steps of a study, one per Dagster asset (plain arguments in, JSON-able dicts out, no Dagster):

``prepare_evaluation`` (simulated test set + real folders + transfer folds) → ``build_variants`` (variant
datasets with reuse, leakage check) → ``train`` (one model per variant × seed) → ``evaluate_all`` (the
matrix: every model on every evaluation set) → ``report`` (study.json, README.md, plots).
Intermediate records live in :func:`~hrtem_dataset.studies.build.study_dir`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..errors import InputError
from ..io import atomic_write_text
from ..workspace import fingerprints
from . import build as b
from . import members as m
from .report import summarize, write_report
from .spec import Study


def _write(study: Study, root, name: str, obj) -> Path:
    return atomic_write_text(b.study_dir(study, root) / name, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _read(study: Study, root, name: str, what: str) -> dict:
    p = b.study_dir(study, root) / name
    if not p.is_file():
        raise InputError(f"{p}: missing (materialize {what} first)")
    return json.loads(p.read_text())


def prepare_evaluation(study: Study, root=None, *, engine: str | None = None, device: str | None = None) -> dict:
    """Check the transfer folder (k vs its size: one-line InputError), build the simulated evaluation
    dataset and record the evaluation sets (``evaluation_sets.json``)."""
    plan = b.check_transfer(study)
    stats = b.build_evaluation_dataset(study, root, engine=engine, device=device)
    sets = m.evaluation_sets(study, root, plan)
    rec = {**sets, "plan": plan, "build": stats}
    _write(study, root, "evaluation_sets.json", rec)
    return rec


def build_variants(study: Study, root=None, *, engine: str | None = None, device: str | None = None) -> dict:
    """Build every variant dataset (shared structures/exit waves through the store); reuse counts and the
    leakage check against the simulated test set (``datasets.json``)."""
    per = {}
    for key in study.datasets:
        stats = b.build_study_dataset(study, key, root, engine=engine, device=device)
        spec = study.datasets[key]
        per[key] = {"name": spec.name, "version": spec.version, "config_name": spec.config_name,
                    "spec_hash": spec.hash(), "fingerprints": stats["fingerprints"], "path": stats["dataset"],
                    "structures": spec.n_structures, "this_run": {k: stats[k] for k in
                    ("structures_built", "structures_reused", "waves_simulated", "waves_reused")},
                    **stats["cumulative"]}
    totals = {k: sum(d[k] for d in per.values())
              for k in ("structures_built", "structures_reused", "waves_simulated", "waves_reused")}
    leak = b.leakage(study, root)
    rec = {"datasets": per, "reuse": totals, "leakage": leak}
    _write(study, root, "datasets.json", rec)
    return rec


def train(study: Study, variant: str, seed: int, root=None, *, device: str | None = None) -> dict:
    """Train (or reuse) the model of ``variant`` × ``seed``; its record goes next to the model."""
    plan = _read(study, root, "evaluation_sets.json", "evaluation_sets").get("plan")
    rec = m.train_member(study, variant, seed, root, device=device, plan=plan)
    m.write_trained(study, rec, root)
    return rec


def members(study: Study) -> list[tuple[str, int]]:
    return [(v.name, s) for v in study.variants for s in range(study.spec.seeds)]


def evaluate_all(study: Study, root=None, *, device: str | None = None) -> dict:
    """Every trained model on every evaluation set (cached per model and set) → ``matrix.json``."""
    ev = _read(study, root, "evaluation_sets.json", "evaluation_sets")
    rows, skipped, evaluated = [], [], []
    for variant, seed in members(study):
        trained = m.read_trained(study, variant, seed, root)
        if trained.get("skipped"):
            skipped.append({"variant": variant, "seed": seed, "reason": trained["skipped"]})
            continue
        res = m.evaluate_member(study, trained, ev, root, device=device, plan=ev.get("plan"))
        evaluated.append((variant, seed))
        rows.extend({"variant": variant, "seed": seed, "set": sid, "metrics": met} for sid, met in res.items())
    check = m.check_identical_sets(rows, ev, evaluated)
    rec = {"matrix": rows, "skipped_models": skipped, "identical_sets": check,
           "shape": {"variants": len({v for v, _ in evaluated}), "seeds": study.spec.seeds,
                     "sets": len(ev["sets"])}}
    _write(study, root, "matrix.json", rec)
    return rec


def payload(study: Study, root=None) -> dict:
    """The content of study.json."""
    ev = _read(study, root, "evaluation_sets.json", "evaluation_sets")
    ds = _read(study, root, "datasets.json", "variant_datasets")
    mx = _read(study, root, "matrix.json", "evaluation_matrix")
    models = []
    for variant, seed in members(study):
        t = m.read_trained(study, variant, seed, root)
        models.append({"variant": variant, "seed": seed, "train_seed": t.get("train_seed"),
                       "paths": [x["path"] for x in t.get("models", [])],
                       "fingerprints": [x["fingerprint"] for x in t.get("models", [])],
                       **({"skipped": t["skipped"]} if t.get("skipped") else {})})
    variants = []
    for v in study.variants:
        spec = study.datasets[v.dataset]
        variants.append({"name": v.name, "overrides": v.overrides, "dataset": spec.config_name,
                         "dataset_key": v.dataset, "dataset_spec_hash": spec.hash(),
                         "fingerprints": fingerprints(spec), "max_structures": v.max_structures,
                         "k": v.k, "mode": v.mode})
    warnings = [s["warning"] for s in ev["skipped"]] + [f"model {x['variant']}|{x['seed']} skipped: {x['reason']}"
                                                        for x in mx["skipped_models"]]
    evd = ev["build"]
    datasets = {**ds["datasets"], "_evaluation": {
        "name": study.evaluation.name, "version": study.evaluation.version,
        "config_name": study.evaluation.config_name, "spec_hash": study.evaluation.hash(),
        "fingerprints": evd["fingerprints"], "path": evd["dataset"], **evd["cumulative"]}}
    return {"study": study.name, "version": study.spec.version, "description": study.spec.description,
            "license": study.spec.license, "axis": study.spec.axis, "metric": study.spec.metric,
            "seeds": study.spec.seeds, "base": str(study.base_path), "spec_path": str(study.path),
            "spec": study.spec.model_dump(mode="json"), "study_hash": study.hash(), "package_version": __version__,
            "training": study.spec.training.model_dump(mode="json", exclude_defaults=True),
            "variants": variants, "datasets": datasets, "evaluation_sets": ev["sets"], "skipped_sets": ev["skipped"],
            "warnings": warnings, "models": models, "matrix": mx["matrix"], "identical_sets": mx["identical_sets"],
            "reuse": ds["reuse"], "leakage": ds["leakage"]}


def report(study: Study, out_dir: str | Path, root=None) -> dict:
    """Write the study folder (study.json, README.md, plots/) to ``out_dir``; returns paths, PNGs, payload."""
    p = payload(study, root)
    res = write_report(p, out_dir)
    return {**res, "payload": {**p, "summary": summarize(p["matrix"])}}
