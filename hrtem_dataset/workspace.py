"""The workspace: the single source of stage paths, ids and fingerprints.

Every stage of :mod:`hrtem_dataset.stages` (and the model stage, :mod:`models.stage`) reads and writes its
artifacts under one folder per dataset configuration::

    <root>/<name>/<version>/<config>/                    config_dir(spec, root)
        structure_specs.jsonl                            concrete scene spec + seeds + split of every structure
        structures/<structure_id>.extxyz                 structure_path(spec, i, root)
        waves/<structure_id>.npz                         waves_path(spec, i, root)
        images/shard-NNNNN.npz                           images_path(spec, shard, root)
        dataset-<content id>/                            dataset_dir(spec, root)
        model/                                           model_dir(spec, root)
        evaluation.json, published/, previews/, validation/
        <stage>/_fingerprint.json                        hash of the spec sections the stage depends on

``root`` is the argument, else the ``HRTEM_HOME`` setting (:mod:`hrtem_dataset.settings`), else ``./.hrtem``.

Fingerprints: :func:`fingerprints` hashes what each stage's outputs depend on. The on-disk checks
(:func:`claim_stage_dir`) and the Dagster code versions (:func:`code_versions`) use the same functions, so a
spec change that makes a stage folder stale also marks its asset stale in the UI, and nothing else does.

Concurrency: :func:`one_writer` serialises writers of one shard of one stage folder through an OS file lock;
:func:`claim_stage_dir` creates a stage folder with its fingerprint or refuses one built from another spec.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path

import numpy as np
from filelock import FileLock

from . import __version__
from .errors import InputError, format_validation_error
from .io import atomic_write_text, workspace_root
from .seeding import spec_hash
from .specs import OPERATING_POINT, DatasetSpec, SimulationSpec

SPLITS = ("train", "validation", "test")

# --------------------------------------------------------------------------------------------------
# Paths and ids
# --------------------------------------------------------------------------------------------------


def config_dir(spec: DatasetSpec, root: str | Path | None = None) -> Path:
    """``<root>/<name>/<version>/<config>`` (root: argument, else ``$HRTEM_HOME``, else ``./.hrtem``)."""
    return workspace_root(root) / spec.name / spec.version / spec.config_name


def structure_id(spec: DatasetSpec, index: int) -> str:
    """Id of global structure ``index``: ``<config>-NNNNNN`` (unique within a dataset repo)."""
    return f"{spec.config_name}-{index:06d}"


def sample_id(spec: DatasetSpec, index: int, k: int) -> str:
    """Id of image ``k`` of structure ``index``."""
    return f"{structure_id(spec, index)}-{k:03d}"


def structure_specs_path(spec: DatasetSpec, root=None) -> Path:
    return config_dir(spec, root) / "structure_specs.jsonl"


def structure_path(spec: DatasetSpec, index: int, root=None) -> Path:
    return config_dir(spec, root) / "structures" / f"{structure_id(spec, index)}.extxyz"


def waves_path(spec: DatasetSpec, index: int, root=None) -> Path:
    return config_dir(spec, root) / "waves" / f"{structure_id(spec, index)}.npz"


def images_path(spec: DatasetSpec, shard: int, root=None) -> Path:
    return config_dir(spec, root) / "images" / f"shard-{shard:05d}.npz"


def dataset_dir(spec: DatasetSpec, root=None) -> Path:
    """The built configuration: ``<config_dir>/dataset-<content id>``.

    The folder name carries a content id (images fingerprint + spec hash) because ``datasets`` keys its
    Arrow cache of a local folder on the folder *name*, the configuration and the card's sizes — not on the
    file contents — so a rebuilt dataset of the same size under the same name would be read back from the
    cache of the previous build (by training and evaluation)."""
    return config_dir(spec, root) / f"dataset-{spec_hash({'images': images_fingerprint(spec, root), 'spec': spec.hash()})[:12]}"


def model_dir(spec: DatasetSpec, root=None) -> Path:
    """The trained model (a Hub model repo layout): ``<config_dir>/model``."""
    return config_dir(spec, root) / "model"


def evaluation_path(spec: DatasetSpec, root=None) -> Path:
    return config_dir(spec, root) / "evaluation.json"


def published_dir(spec: DatasetSpec, root=None) -> Path:
    """Default publishing folder of a configuration: ``<config_dir>/published`` (``dataset/``, ``model/``)."""
    return config_dir(spec, root) / "published"


def validation_dir(spec: DatasetSpec, root=None) -> Path:
    """The configuration's physics validation report (``validation.json`` + plots): ``<config_dir>/validation``."""
    return config_dir(spec, root) / "validation"


def previews_dir(spec: DatasetSpec, root=None) -> Path:
    """Preview PNGs written next to the artifacts (Dagster metadata)."""
    return config_dir(spec, root) / "previews"


def shard_indices(spec: DatasetSpec, shard: int) -> range:
    """Global structure indices of ``shard``; :class:`InputError` for a non-integer or unknown shard."""
    if not isinstance(shard, int | np.integer) or isinstance(shard, bool):
        raise InputError(f"shard: expected an integer, got {shard!r}")
    return spec.shard_indices(int(shard))


# --------------------------------------------------------------------------------------------------
# Fingerprints (on-disk staleness and Dagster code versions)
# --------------------------------------------------------------------------------------------------


def simulation_settings(spec: DatasetSpec, engine: str | None = None, device: str | None = None) -> SimulationSpec:
    """The spec's simulation settings with optional engine/device overrides (validated)."""
    update = {k: v for k, v in (("engine", engine), ("device", device)) if v}
    try:
        return SimulationSpec.model_validate({**spec.simulation.model_dump(), **update})
    except Exception as exc:  # pydantic ValidationError -> one line
        raise InputError(format_validation_error(exc, "simulation")) from None


def fingerprints(spec: DatasetSpec, engine: str | None = None) -> dict[str, str]:
    """Hash of everything the structures and exit-wave stages' outputs depend on (device excluded: it
    changes speed, not physics)."""
    sim = simulation_settings(spec, engine).model_dump(mode="json", exclude={"device"})
    s = spec_hash({"seed": spec.seed, "structures": spec.structures.model_dump(mode="json")})
    w = spec_hash({"structures": s, "simulation": sim})
    return {"structures": s, "waves": w}


def images_fingerprint_from(spec: DatasetSpec, waves: str) -> str:
    """Fingerprint of the images stage given the fingerprint of its exit waves: + the imaging, label, kind,
    shard and split settings (shard membership and row splits)."""
    return spec_hash({"waves": waves, "kind": spec.kind, "shard_size": spec.shard_size,
                      "splits": spec.splits.model_dump(mode="json"),
                      "imaging": spec.imaging.model_dump(mode="json"), "labels": spec.labels.model_dump(mode="json")})


def waves_fingerprint_on_disk(spec: DatasetSpec, root=None) -> str:
    """The fingerprint of the exit waves actually on disk (whatever engine made them)."""
    f = config_dir(spec, root) / "waves" / "_fingerprint.json"
    if not f.exists():
        raise InputError(f"{f.parent}: no exit waves yet (run the exit_waves stage first)")
    return json.loads(f.read_text())["fingerprint"]


def images_fingerprint(spec: DatasetSpec, root=None) -> str:
    """Fingerprint of the images stage of the workspace: over the exit waves on disk."""
    return images_fingerprint_from(spec, waves_fingerprint_on_disk(spec, root))


def dataset_fingerprint_from(spec: DatasetSpec, images: str) -> str:
    """What the dataset folder depends on: its images and the dataset's identity and splits."""
    return spec_hash({"images": images, "splits": spec.splits.model_dump(mode="json"), "name": spec.name,
                      "version": spec.version, "config": spec.config_name})


def model_fingerprint_from(spec: DatasetSpec, images: str) -> str:
    """What a trained model depends on: the training data (imaged samples + split sizes), the model
    hyper-parameters (not ``min_f1``, ``threshold`` and ``min_particle_area``: a check floor and the operating
    point, not trained) and the seed."""
    model = spec.model.model_dump(mode="json", exclude={"min_f1", *OPERATING_POINT}) if spec.model else None
    return spec_hash({"images": images, "splits": spec.splits.model_dump(mode="json"),
                      "config": spec.config_name, "model": model, "seed": spec.seed})


def model_fingerprint(spec: DatasetSpec, root=None) -> str:
    return model_fingerprint_from(spec, images_fingerprint(spec, root))


def stage_fingerprints(spec: DatasetSpec, engine: str | None = None) -> dict[str, str]:
    """Fingerprint of every stage from the spec alone (the exit waves made by ``engine``, default the
    spec's): ``structures``, ``waves``, ``images``, ``dataset``, ``model``."""
    fp = fingerprints(spec, engine)
    images = images_fingerprint_from(spec, fp["waves"])
    return {**fp, "images": images, "dataset": dataset_fingerprint_from(spec, images),
            "model": model_fingerprint_from(spec, images)}


def code_versions(spec: DatasetSpec, depends_on: dict[str, str]) -> dict[str, str]:
    """Code version (package version + fingerprint) of each stage name in ``depends_on`` (stage name ->
    the :func:`stage_fingerprints` key it depends on)."""
    fp = stage_fingerprints(spec)
    return {name: f"{__version__}+{fp[key]}" for name, key in depends_on.items()}


# --------------------------------------------------------------------------------------------------
# Stage folders: one writer per shard, one fingerprint per folder
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def file_lock(path: Path):
    """An OS file lock (``filelock``): a second process waits until the first releases it or ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


def one_writer(stage: str):
    """Decorator of a per-shard stage function ``fn(spec, shard, root, ...)``: one writer per shard of a
    workspace stage folder (``<config_dir>/<stage>/.shard-NNNNN.lock``); a second process building the same
    shard waits, then finds the finished files and reuses them. Different shards still run in parallel."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(spec: DatasetSpec, shard: int, root=None, *args, **kw):
            shard_indices(spec, shard)  # a bad shard index fails before any lock file is made
            with file_lock(config_dir(spec, root) / stage / f".shard-{int(shard):05d}.lock"):
                return fn(spec, shard, root, *args, **kw)
        return wrapper
    return deco


def claim_stage_dir(spec: DatasetSpec, stage: str, fingerprint: str, root) -> Path:
    """Create ``<config_dir>/<stage>`` with its fingerprint, or check the fingerprint of an existing one
    (under the stage folder's lock, so two writers never claim it with different fingerprints at once).

    A folder built from a different spec raises :class:`InputError` naming it (bump the version or delete
    it); a folder holding nothing but its fingerprint (a first attempt that failed before writing any
    artifact) is re-claimed by the new spec instead of locking the workspace."""
    with file_lock(config_dir(spec, root) / f".{stage}.lock"):
        d = config_dir(spec, root) / stage
        f = d / "_fingerprint.json"
        payload = {"stage": stage, "fingerprint": fingerprint, "dataset": spec.name, "version": spec.version,
                   "config_name": spec.config_name}
        if f.exists():
            old = json.loads(f.read_text()).get("fingerprint")
            unused = all(p.name == f.name or p.name.startswith(".") for p in d.iterdir())
            if old != fingerprint and unused:
                atomic_write_text(f, json.dumps(payload, sort_keys=True) + "\n")
            elif old != fingerprint:
                raise InputError(f"{d}: built from a different spec ({stage} fingerprint {old} != {fingerprint}); "
                                 f"bump the dataset version or delete that folder")
        else:
            atomic_write_text(f, json.dumps(payload, sort_keys=True) + "\n")
    return d


def stage_fingerprint_on_disk(spec: DatasetSpec, stage: str, root=None) -> str | None:
    """The fingerprint recorded in ``<config_dir>/<stage>/_fingerprint.json`` (None: no such folder)."""
    f = config_dir(spec, root) / stage / "_fingerprint.json"
    return json.loads(f.read_text()).get("fingerprint") if f.exists() else None


def images_shard_current(spec: DatasetSpec, shard: int, root=None) -> bool:
    """The imaged file of ``shard`` exists and its stage folder was built from the current spec (a shard
    that a resumed run need not image again)."""
    try:
        return (images_path(spec, shard, root).exists()
                and stage_fingerprint_on_disk(spec, "images", root) == images_fingerprint(spec, root))
    except (OSError, KeyError, ValueError, InputError):
        return False
