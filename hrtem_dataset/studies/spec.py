"""Study specs (``configs/studies/*.yaml``): what varies between the training sets of a set of models.

A study is one base dataset configuration (a :class:`~hrtem_dataset.specs.DatasetSpec` YAML) and one axis:

- ``variants``: named overrides of the base (dotted keys → values; a value replaces the whole field),
  e.g. ``{simulation.phonons: 0}``, ``{imaging.defocus: {min: -50, max: 50}}``;
- ``quantity``: training-set sizes (structures), nested subsets of one build of the base;
- ``transfer``: k real labelled images to fine-tune a simulation-trained model on (frozen encoder, full
  fine-tuning) versus training from scratch on the same k images, with fold rotation over a folder.

Every variant is trained ``seeds`` times with the one ``training`` spec and evaluated on the same
``evaluation`` sets: the test split of a simulated configuration and zero or more folders of labelled real
micrographs (``images/`` + ``masks/`` + ``MANIFEST.csv``). Unknown keys and unknown override keys fail
validation with one line naming the key (:class:`~hrtem_dataset.errors.InputError`).

:func:`load_study` resolves the paths and validates every variant's dataset spec, returning a
:class:`Study` (plain data, no Dagster).
"""

from __future__ import annotations

import copy
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from ..errors import InputError
from ..seeding import spec_hash
from ..specs import DatasetSpec, ModelTrainingSpec, SemVer, Strict, load_spec, read_yaml, validate_spec

NAME = r"^[a-z0-9][a-z0-9._-]*$"
REPO = Path(__file__).resolve().parents[2]
TRANSFER_MODES = ("frozen", "full", "scratch")


class EvaluationSetsSpec(Strict):
    """The evaluation sets, identical for every model of the study."""

    simulated: str = Field(description="dataset YAML whose test split every model is evaluated on")
    real: list[str] = Field(default_factory=list, description="folders of labelled real micrographs "
                            "(images/ + masks/ + MANIFEST.csv); missing folders are skipped with a warning")


class TransferSpec(Strict):
    """Fine-tune a simulation-trained model on k real images; compare with training from scratch."""

    folder: str = Field(description="labelled real micrographs (images/ + masks/ + MANIFEST.csv)")
    k: list[int] = Field(min_length=1, description="numbers of real training images (0 = simulation only)")
    modes: list[Literal["frozen", "full", "scratch"]] = Field(
        default_factory=lambda: list(TRANSFER_MODES),
        description="frozen encoder / full fine-tuning of the pre-trained model, or training from scratch")
    folds: int | None = Field(None, ge=1, description="fold rotations (default: every image starts a fold)")
    steps: int = Field(50, ge=1, description="optimiser steps of fine-tuning / training from scratch")
    lr: float = Field(1e-4, gt=0, description="learning rate of fine-tuning")
    scratch_lr: float | None = Field(None, gt=0, description="learning rate from scratch (default training.lr)")

    @field_validator("k")
    @classmethod
    def _k(cls, v: list[int]) -> list[int]:
        if any(x < 0 for x in v):
            raise ValueError("k must be >= 0")
        if len(set(v)) != len(v):
            raise ValueError("k values must be distinct")
        return sorted(v)

    @field_validator("modes")
    @classmethod
    def _modes(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError("modes must be a non-empty list of distinct modes")
        return v


class StudySpec(Strict):
    """One study YAML (see the module docstring)."""

    name: str = Field(pattern=NAME, description="study name (asset key prefix, report title)")
    version: SemVer = "0.1.0"
    description: str = ""
    license: str = Field("cc-by-4.0", pattern=r"^[a-z0-9][a-z0-9.+-]*$")
    seed: int = Field(0, ge=0, lt=2**63, description="root of the training seeds (derive_seed(seed, 'train', i))")
    base: str = Field(description="dataset YAML, relative to the study file or the repository")
    variants: dict[str, dict[str, Any]] | None = None
    quantity: list[int] | None = Field(None, description="training-set sizes in structures (nested subsets)")
    transfer: TransferSpec | None = None
    seeds: int = Field(3, ge=1, le=100, description="training seeds per variant (>= 3 for mean ± spread)")
    training: ModelTrainingSpec
    evaluation: EvaluationSetsSpec
    metric: Literal["f1", "iou", "detection_f1", "f1_image_mean", "precision", "recall"] = "f1"

    @field_validator("quantity")
    @classmethod
    def _sizes(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("needs at least one training-set size")
        if any(n < 1 for n in v) or len(set(v)) != len(v):
            raise ValueError("sizes must be distinct integers >= 1")
        return sorted(v)

    @model_validator(mode="after")
    def _one_axis(self) -> StudySpec:
        axes = [a for a in ("variants", "quantity", "transfer") if getattr(self, a) is not None]
        if len(axes) != 1:
            raise ValueError("give exactly one of variants, quantity, transfer"
                             + (f" (got {', '.join(axes)})" if axes else ""))
        if self.variants is not None:
            if not self.variants:
                raise ValueError("variants: needs at least one variant")
            for name, over in self.variants.items():
                if not re.match(NAME, str(name)):
                    raise ValueError(f"variants: name {name!r} must match {NAME}")
                if not isinstance(over, dict):
                    raise ValueError(f"variants.{name}: expected a mapping of dotted keys to values")
                for k in over:
                    check_override_key(str(k), where=f"variants.{name}")
        return self

    @property
    def axis(self) -> str:
        return "variants" if self.variants is not None else ("quantity" if self.quantity is not None else "transfer")


# --------------------------------------------------------------------------------------------------
# Override keys
# --------------------------------------------------------------------------------------------------

_FORBIDDEN = {"name", "config_name", "version", "model"}
"""Keys a variant may not override: the dataset identity (derived from the study) and the training spec
(shared by every variant: the study's ``training``)."""


def _model_class(annotation) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``X``, ``X | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for a in typing.get_args(annotation):
            if isinstance(a, type) and issubclass(a, BaseModel):
                return a
    return None


def _is_mapping(annotation) -> bool:
    return typing.get_origin(annotation) is dict or annotation is dict


def check_override_key(key: str, where: str = "variants") -> None:
    """ValueError (one line, naming the key) unless ``key`` is a dotted path of a DatasetSpec field."""
    parts = key.split(".")
    if parts[0] in _FORBIDDEN:
        raise ValueError(f"{where}: override key {key!r} is not allowed (dataset identity and the model "
                         "are set by the study)")
    cls: type[BaseModel] | None = DatasetSpec
    for i, part in enumerate(parts):
        if cls is None or part not in cls.model_fields:
            raise ValueError(f"{where}: unknown override key {key!r} (no field {'.'.join(parts[:i + 1])!r} "
                             "in DatasetSpec)")
        ann = cls.model_fields[part].annotation
        if _is_mapping(ann) and i < len(parts) - 1:
            if i != len(parts) - 2:
                raise ValueError(f"{where}: unknown override key {key!r} (too deep)")
            return  # e.g. imaging.aberrations.C12: the mapping's own validation checks the name
        cls = _model_class(ann)


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """A deep copy of ``data`` with every dotted key set to its value (a value replaces the field)."""
    out = copy.deepcopy(data)
    for key, value in overrides.items():
        node = out
        parts = str(key).split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = copy.deepcopy(value)
    return out


# --------------------------------------------------------------------------------------------------
# The resolved study
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One row of the study: a training set (a dataset + optional subset) or a transfer setting."""

    name: str
    dataset: str                     # key into Study.datasets
    overrides: dict = field(default_factory=dict)
    max_structures: int | None = None  # quantity: the first n training structures of the dataset
    k: int | None = None             # transfer: real training images (0 = the simulation-trained model)
    mode: str | None = None          # transfer: frozen | full | scratch (None for k = 0)


@dataclass(frozen=True)
class RealSet:
    id: str
    path: Path
    exists: bool


@dataclass
class Study:
    """A validated study with resolved paths and the dataset spec of every variant."""

    spec: StudySpec
    path: Path
    base_path: Path
    datasets: dict[str, DatasetSpec]
    variants: list[Variant]
    evaluation_path: Path
    evaluation: DatasetSpec
    real: list[RealSet]
    transfer_folder: RealSet | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise InputError(f"{self.path}: no variant {name!r}")

    def partition_keys(self) -> list[str]:
        """``"<variant>|<seed>"`` for every model of the study."""
        return [member_key(v.name, s) for v in self.variants for s in range(self.spec.seeds)]

    def hash(self) -> str:
        return spec_hash({"study": self.spec.model_dump(mode="json"),
                          "datasets": {k: d.hash() for k, d in self.datasets.items()},
                          "evaluation": self.evaluation.hash()})


def member_key(variant: str, seed: int) -> str:
    return f"{variant}|{int(seed)}"


def parse_member_key(key: str) -> tuple[str, int]:
    variant, _, seed = key.rpartition("|")
    if not variant or not seed.isdigit():
        raise InputError(f"partition key {key!r}: expected '<variant>|<seed>'")
    return variant, int(seed)


def resolve_path(p: str, study_dir: Path, *, must_exist: bool = True, what: str = "path") -> Path:
    """``p`` as given (absolute), else relative to the study file, the working directory or the repo.
    A path found nowhere raises (``must_exist``) or is returned relative to the repository."""
    q = Path(p).expanduser()
    if q.is_absolute():
        cands = [q]
    else:
        cands = [study_dir / q, Path.cwd() / q, REPO / q]
    for c in cands:
        if c.exists():
            return c.resolve()
    if must_exist:
        raise InputError(f"{what}: {p} not found (relative to {study_dir}, the working directory or {REPO})")
    return Path(cands[-1]).resolve() if not q.is_absolute() else q


def _dataset_data(path: Path) -> dict:
    data = read_yaml(path)
    validate_spec(data, DatasetSpec, str(path))  # the base itself must be valid
    return data


def _finish(data: dict, config_name: str, source: str) -> DatasetSpec:
    d = dict(data)
    d["config_name"] = config_name
    d["model"] = None
    return validate_spec(d, DatasetSpec, source)


def load_study(path: str | Path) -> Study:
    """Load, validate and resolve a study YAML; every error is one :class:`InputError` line."""
    path = Path(path)
    spec = validate_spec(read_yaml(path), StudySpec, str(path))
    d = path.resolve().parent
    base_path = resolve_path(spec.base, d, what=f"{path}: base")
    base = _dataset_data(base_path)
    datasets: dict[str, DatasetSpec] = {}
    variants: list[Variant] = []
    prefix = spec.name
    if spec.axis == "variants":
        by_hash: dict[str, str] = {}
        for name, over in spec.variants.items():
            ds = _finish(apply_overrides(base, over), f"{prefix}-{name}", f"{path}: variants.{name}")
            h = spec_hash({k: v for k, v in ds.model_dump(mode="json").items() if k != "config_name"})
            key = by_hash.setdefault(h, name)  # identical training sets are built once
            if key == name:
                datasets[name] = ds
            variants.append(Variant(name=name, dataset=key, overrides=dict(over)))
    elif spec.axis == "quantity":
        pool = dict(base)
        splits = dict(pool.get("splits") or {})
        splits["train"] = max(spec.quantity)
        pool["splits"] = splits
        datasets["pool"] = _finish(pool, f"{prefix}-pool", f"{path}: quantity")
        width = len(str(max(spec.quantity)))
        for n in spec.quantity:
            variants.append(Variant(name=f"n{n:0{width}d}", dataset="pool", max_structures=n))
    else:
        t = spec.transfer
        datasets["pretrain"] = _finish(base, f"{prefix}-pretrain", f"{path}: base")
        for k in t.k:
            if k == 0:
                variants.append(Variant(name="k0", dataset="pretrain", k=0))
                continue
            for mode in t.modes:
                variants.append(Variant(name=f"k{k}-{mode}", dataset="pretrain", k=k, mode=mode))
    eval_path = resolve_path(spec.evaluation.simulated, d, what=f"{path}: evaluation.simulated")
    ev = load_spec(eval_path, DatasetSpec)
    ev = ev.model_copy(update={"model": None})
    if ev.splits.test < 1:
        raise InputError(f"{eval_path}: evaluation.simulated needs a test split (splits.test >= 1)")
    real, seen = [], set()
    for p in spec.evaluation.real:
        rp = resolve_path(p, d, must_exist=False)
        rid = _unique(f"real:{rp.name}", seen)
        real.append(RealSet(rid, rp, rp.is_dir()))
    tf = None
    if spec.transfer is not None:
        rp = resolve_path(spec.transfer.folder, d, must_exist=False)
        tf = RealSet(_unique(f"real-heldout:{rp.name}", seen), rp, rp.is_dir())
        # the transfer folder is evaluated on its held-back images only (never on a model's training images)
        real = [r for r in real if r.path != rp]
    return Study(spec=spec, path=path.resolve(), base_path=base_path, datasets=datasets, variants=variants,
                 evaluation_path=eval_path, evaluation=ev, real=real, transfer_folder=tf)


def _unique(name: str, seen: set) -> str:
    out, i = name, 2
    while out in seen:
        out, i = f"{name}-{i}", i + 1
    seen.add(out)
    return out
