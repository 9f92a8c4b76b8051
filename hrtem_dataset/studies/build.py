"""Building the datasets of a study with reuse of structures and exit waves (no Dagster imports).

Reuse rule: the pipeline keys its stage folders by ``config_name`` (``<root>/<name>/<version>/<config>``),
and each variant of a study gets its own ``config_name`` (``<study>-<variant>``). Structures and exit
waves do not depend on the name, only on their stage fingerprint (:func:`hrtem_dataset.workspace.fingerprints`:
seed + structure distribution, + simulation settings and engine). A content-addressed store::

    <root>/_shared/structures/<structures fingerprint>/<index:06d>.extxyz
    <root>/_shared/waves/<waves fingerprint>/<index:06d>.npz

holds one hard link (a copy where links are impossible) of every structure / exit-wave file built by any
study. Before a stage runs for a shard, the files of that shard found in the store under the variant's
fingerprint are linked into the variant's stage folder, so the pipeline finds them and skips them; after
the stage, the new files are linked into the store. Variants that differ only in imaging (or labels,
splits of the same structures...) therefore re-image the same exit waves and run no multislice. Variants
whose whole dataset spec is identical share one build (:func:`~hrtem_dataset.studies.spec.load_study`);
quantity variants train on nested subsets of one build. Ledgers count, per dataset, the exit waves
simulated and the ones taken from the store (cumulated over runs).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from models.data import IMAGE_SUFFIXES, load_user_folder

from ..errors import InputError
from ..io import atomic_dir, atomic_path, atomic_write_text, workspace_root
from ..specs import DatasetSpec
from ..stages import (
    assemble_dataset,
    build_structures_shard,
    image_shard,
    plan_structures,
    read_structure,
    simulate_shard,
)
from ..workspace import (
    config_dir,
    dataset_dir,
    fingerprints,
    images_path,
    simulation_settings,
    structure_id,
    structure_path,
    waves_path,
)
from .spec import Study

STAGES = {"structures": ("structures", ".extxyz"), "waves": ("waves", ".npz")}


def study_dir(study: Study, root=None) -> Path:
    """Study artifacts (models, evaluations, folds, ledgers): ``<root>/studies/<name>/<version>``."""
    return workspace_root(root) / "studies" / study.name / study.spec.version


def store_dir(root=None) -> Path:
    return workspace_root(root) / "_shared"


def _link(src: Path, dst: Path) -> None:
    """``dst`` becomes a hard link of ``src`` (a copy across file systems), atomically."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def _stage_file(spec: DatasetSpec, stage: str, index: int, root) -> Path:
    return structure_path(spec, index, root) if stage == "structures" else waves_path(spec, index, root)


def _stage_usable(spec: DatasetSpec, stage: str, fingerprint: str, root) -> bool:
    """The variant's stage folder is new or was built with ``fingerprint`` (never mix specs)."""
    f = config_dir(spec, root) / stage / "_fingerprint.json"
    if not f.exists():
        return True
    try:
        return json.loads(f.read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


def import_from_store(spec: DatasetSpec, stage: str, fingerprint: str, shard: int, root=None) -> int:
    """Link the store's files of ``shard`` into the variant's stage folder; returns how many were linked."""
    if not _stage_usable(spec, stage, fingerprint, root):
        return 0  # the pipeline stage raises its "built from a different spec" error
    folder, ext = STAGES[stage]
    src_dir = store_dir(root) / folder / fingerprint
    n = 0
    for i in spec.shard_indices(shard):
        dst, src = _stage_file(spec, stage, i, root), src_dir / f"{i:06d}{ext}"
        if not dst.exists() and src.is_file():
            _link(src, dst)
            n += 1
    return n


def export_to_store(spec: DatasetSpec, stage: str, fingerprint: str, shard: int, root=None) -> None:
    folder, ext = STAGES[stage]
    dst_dir = store_dir(root) / folder / fingerprint
    for i in spec.shard_indices(shard):
        src, dst = _stage_file(spec, stage, i, root), dst_dir / f"{i:06d}{ext}"
        if src.is_file() and not dst.exists():
            _link(src, dst)


def _ledger_path(study: Study, key: str, root) -> Path:
    return study_dir(study, root) / "builds" / f"{key}.json"


def read_ledger(study: Study, key: str, root=None) -> dict:
    p = _ledger_path(study, key, root)
    base = {"structures_built": 0, "structures_reused": 0, "waves_simulated": 0, "waves_reused": 0}
    if p.is_file():
        base.update(json.loads(p.read_text()))
    return base


def _dataset_complete(spec: DatasetSpec, root) -> bool:
    try:
        d = dataset_dir(spec, root)
    except InputError:
        return False
    return (d / "specs" / f"{spec.config_name}.json").is_file() and (d / "data" / spec.config_name).is_dir() \
        and (d / "README.md").is_file()


def build_dataset(spec: DatasetSpec, root=None, *, engine: str | None = None, device: str | None = None,
                  ledger: Path | None = None) -> dict:
    """Every stage of ``spec`` up to the dataset folder, reusing structures and exit waves from the store.

    Returns ``structures_built``, ``structures_reused`` (linked from the store), ``waves_simulated``,
    ``waves_reused`` (linked from the store) of this call, cumulated in ``ledger`` (a JSON file) when given,
    plus the dataset folder and the stage fingerprints."""
    sim = simulation_settings(spec, engine, device)
    fp = fingerprints(spec, sim.engine)
    plan_structures(spec, root)
    counts = {"structures_built": 0, "structures_reused": 0, "waves_simulated": 0, "waves_reused": 0}
    total = dict(counts)
    if ledger is not None and ledger.is_file():
        total.update(json.loads(ledger.read_text()))
    for shard in range(spec.n_shards):
        step = dict.fromkeys(counts, 0)
        step["structures_reused"] = import_from_store(spec, "structures", fp["structures"], shard, root)
        st = build_structures_shard(spec, shard, root)
        step["structures_built"] = st["computed"]
        export_to_store(spec, "structures", fp["structures"], shard, root)
        step["waves_reused"] = import_from_store(spec, "waves", fp["waves"], shard, root)
        ws = simulate_shard(spec, shard, root, engine=engine, device=device)
        step["waves_simulated"] = ws["computed"]
        export_to_store(spec, "waves", fp["waves"], shard, root)
        if not images_path(spec, shard, root).exists():
            image_shard(spec, shard, root)
        for k, v in step.items():
            counts[k] += v
            total[k] += v
        if ledger is not None:
            atomic_write_text(ledger, json.dumps(total, sort_keys=True) + "\n")
    if not _dataset_complete(spec, root):
        assemble_dataset(spec, root)
    return {**counts, "cumulative": total, "dataset": str(dataset_dir(spec, root)),
            "config_name": spec.config_name, "fingerprints": fp, "spec_hash": spec.hash(),
            "structures": spec.n_structures}


def build_study_dataset(study: Study, key: str, root=None, **kw) -> dict:
    return build_dataset(study.datasets[key], root, ledger=_ledger_path(study, key, root), **kw)


def build_evaluation_dataset(study: Study, root=None, **kw) -> dict:
    return build_dataset(study.evaluation, root, ledger=_ledger_path(study, "_evaluation", root), **kw)


# --------------------------------------------------------------------------------------------------
# Structure identity (leakage between evaluation and training sets)
# --------------------------------------------------------------------------------------------------


def structure_hash(atoms) -> str:
    """Species + positions (0.01 Å) of a structure: identical structures under different ids hash equal."""
    pos = np.round(np.asarray(atoms.positions, dtype=np.float64), 2) + 0.0  # no -0.0
    h = hashlib.sha256()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(pos.tobytes())
    return h.hexdigest()[:20]


def split_structure_hashes(spec: DatasetSpec, split: str, root=None, limit: int | None = None) -> dict[str, str]:
    """``{structure_id: hash}`` of the structures of ``split`` (the first ``limit`` ones)."""
    idx = [i for i in range(spec.n_structures) if spec.split_of(i) == split]
    if limit is not None:
        idx = idx[:limit]
    return {structure_id(spec, i): structure_hash(read_structure(spec, i, root)) for i in idx}


def training_structure_hashes(study: Study, root=None) -> dict[str, dict[str, str]]:
    """Per variant: the hashes of the structures it trains on."""
    out = {}
    for v in study.variants:
        out[v.name] = split_structure_hashes(study.datasets[v.dataset], "train", root, v.max_structures)
    return out


def leakage(study: Study, root=None) -> dict:
    """Structures of the simulated evaluation test split found in any variant's training set."""
    test = split_structure_hashes(study.evaluation, "test", root)
    inv = {h: sid for sid, h in test.items()}
    found = {}
    for variant, hashes in training_structure_hashes(study, root).items():
        shared = sorted(f"{sid}={inv[h]}" for sid, h in hashes.items() if h in inv)
        if shared:
            found[variant] = shared
    return {"passed": not found, "test_structures": len(test), "shared": found}


# --------------------------------------------------------------------------------------------------
# Folders of real micrographs
# --------------------------------------------------------------------------------------------------


def real_images(folder: Path) -> list[Path]:
    """The labelled images of a real folder (sorted; the layout of models.data.load_user_folder)."""

    folder = Path(folder)
    img_dir = folder / "images" if (folder / "images").is_dir() else folder
    return sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.stem.endswith("_mask"))


def folder_hash(folder: Path) -> str:
    """Content hash of a real folder's images, masks and manifest."""
    h = hashlib.sha256()
    folder = Path(folder)
    for p in sorted(q for q in folder.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(str(p.relative_to(folder)).encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def check_transfer(study: Study) -> dict | None:
    """Read the transfer folder (when present) and check k against it: at least one image must be held
    back (max k <= n_images - 1). Raises a one-line :class:`InputError`; returns the fold plan."""
    t, tf = study.spec.transfer, study.transfer_folder
    if t is None or tf is None:
        return None
    if not tf.exists:
        return {"missing": True, "folder": str(tf.path)}

    samples = load_user_folder(tf.path, require_masks=True)  # validates images, masks and the manifest
    n, kmax = len(samples), max(t.k)
    if kmax > n - 1:
        raise InputError(f"{study.path}: transfer.k = {kmax} needs at least {kmax + 1} labelled images in "
                         f"{tf.path}, found {n} (k must be <= {n - 1}: one image is held back for evaluation)")
    names = [s.name for s in samples]
    folds = min(t.folds or n, n)
    plan = []
    for f in range(folds):
        pool = [names[(f + i) % n] for i in range(kmax)]  # training images: the first k of the pool
        plan.append({"fold": f, "pool": pool, "heldout": [x for x in names if x not in pool]})
    return {"missing": False, "folder": str(tf.path), "n_images": n, "k_max": kmax, "folds": plan,
            "hash": folder_hash(tf.path)}


def subset_folder(src: Path, names: list[str], dest: Path) -> Path:
    """A folder ``images/`` + ``masks/`` + ``MANIFEST.csv`` holding only ``names`` of ``src`` (hard links;
    manifest rows copied). Built atomically; an existing folder with the same names is kept."""
    src, dest = Path(src), Path(dest)
    marker = dest / ".names.json"
    if marker.is_file() and json.loads(marker.read_text()) == sorted(names):
        return dest
    imgs = {p.stem: p for p in real_images(src)}
    layout = (src / "images").is_dir()
    with atomic_dir(dest) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        for name in names:
            p = imgs[name]
            m = src / "masks" / f"{name}.png" if layout else p.with_name(f"{name}_mask.png")
            for a, b in ((p, tmp / "images" / p.name), (m, tmp / "masks" / f"{name}.png")):
                try:
                    os.link(a, b)
                except OSError:
                    shutil.copyfile(a, b)
        man = src / "MANIFEST.csv"
        if man.is_file():
            with open(man, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            fields = list(rows[0].keys()) if rows else ["name", "pixel_size_angstrom"]
            keep = [r for r in rows if Path((r.get("name") or "").strip()).stem in names
                    or (r.get("name") or "").strip() in names]
            with open(tmp / "MANIFEST.csv", "w", newline="", encoding="utf-8") as fh:
                w = csv.DictWriter(fh, fieldnames=fields)
                w.writeheader()
                w.writerows(keep)
        (tmp / ".names.json").write_text(json.dumps(sorted(names)))
    return dest


def fold_folders(study: Study, plan: dict, fold: int, k: int, root=None) -> tuple[Path | None, Path]:
    """(training folder of the first k pool images or None for k = 0, held-back folder) of ``fold``."""
    f = plan["folds"][fold]
    base = study_dir(study, root) / "folds" / f"fold-{fold}"
    held = subset_folder(Path(plan["folder"]), f["heldout"], base / "heldout")
    train = subset_folder(Path(plan["folder"]), f["pool"][:k], base / f"train-k{k}") if k > 0 else None
    return train, held
