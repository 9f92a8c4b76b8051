"""Publish a dataset or model folder to the Hugging Face Hub: create_repo, upload_folder, create_tag.

The folder is uploaded as it is (it is already laid out as a Hub repo); hidden files and directories
(``.git``, staging directories, ``*.tmp`` temporaries of atomic writes) are never uploaded. The repo type
is detected from the folder (``data/`` with parquet shards -> dataset; ``config.json``/``*.safetensors``
-> model). The version tag is ``--revision`` or ``v<version>`` (a dataset's specs, a model's
``hrtem.json``), so ``load_dataset(repo, config, revision="v0.1.0")`` loads exactly that version. The
card's load snippets (``<org>/NAME`` until then) are written with the real repo id.

The token comes from the ``token`` argument, ``$HF_TOKEN`` or the login cache (``hf auth login``); it is
passed to ``huggingface_hub`` only and never printed, logged or written (error messages are scrubbed).
Offline (``HF_HUB_OFFLINE=1``) or without a token, publishing stops with an :class:`InputError` before
any network call. A dry run needs neither: it lists exactly the files that would be uploaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..settings import get_settings
from .card import hub_tag, read_configs

IGNORE_PATTERNS = [".*", "*/.*", "*.tmp", "checkpoints/*", "*.pt"]  # never training checkpoints (pickles)
"""Never uploaded: hidden files/directories at any depth and temporaries (fnmatch, ``*`` crosses ``/``)."""

_MODEL_MARKERS = ("config.json", "model.safetensors", "pytorch_model.bin", "model_index.json")


@dataclass
class PublishResult:
    repo_id: str
    repo_type: str
    files: list[str]
    tag: str | None
    dry_run: bool
    num_bytes: int = 0
    url: str | None = None
    commit: str | None = None
    notes: list[str] = field(default_factory=list)
    card: str | None = None  # README.md as uploaded: load snippets name repo_id


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, now or at import of the hub."""
    from huggingface_hub import constants

    return get_settings().offline or bool(constants.HF_HUB_OFFLINE)


def upload_files(folder: str | Path) -> list[str]:
    """Sorted repo paths of the files of ``folder`` that ``upload_folder`` would upload."""
    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder)
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    try:
        from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS
    except ImportError:  # pragma: no cover
        DEFAULT_IGNORE_PATTERNS = []  # noqa: N806
    return list(filter_repo_objects(paths, ignore_patterns=IGNORE_PATTERNS + list(DEFAULT_IGNORE_PATTERNS)))


def detect_repo_type(folder: str | Path) -> str:
    """``"dataset"`` for a dataset folder (``data/**.parquet``), ``"model"`` for a model folder."""
    folder = Path(folder)
    is_dataset = (folder / "data").is_dir() and any((folder / "data").rglob("*.parquet"))
    is_model = any((folder / m).is_file() for m in _MODEL_MARKERS) or any(folder.glob("*.safetensors"))
    if is_dataset == is_model:
        what = "both dataset shards and model files" if is_dataset else "neither data/*.parquet nor model files"
        raise InputError(f"{folder}: cannot tell dataset from model folder ({what})")
    return "dataset" if is_dataset else "model"


def folder_version(folder: str | Path, repo_type: str) -> str | None:
    """Semantic version of a folder: its dataset specs, or ``version`` in a model's config.json."""

    folder = Path(folder)
    if repo_type == "dataset":
        versions = {spec.version for spec, _ in read_configs(folder)}
        if len(versions) > 1:
            raise InputError(f"{folder}: configurations of several versions {sorted(versions)}")
        return versions.pop() if versions else None
    for cfg in (folder / "hrtem.json", folder / "config.json"):  # hrtem.json: this package's model metadata
        if cfg.is_file():
            try:
                data = json.loads(cfg.read_text())
            except ValueError:
                raise InputError(f"{cfg}: malformed JSON") from None
            for key in ("version", "model_version"):
                if isinstance(data, dict) and isinstance(data.get(key), str):
                    return data[key]
    return None


_REPO_PLACEHOLDER = re.compile(r"<org>/([A-Za-z0-9][A-Za-z0-9._-]*)")


def card_with_repo_id(text: str, repo_id: str) -> str:
    """A card's text with the load snippets' placeholder repo (``<org>/NAME``) replaced by ``repo_id``."""
    return _REPO_PLACEHOLDER.sub(repo_id, text)


def resolve_token(token: str | None = None) -> str | None:
    """``token``, else ``$HF_TOKEN``, else the login cache (``huggingface_hub.get_token``)."""
    if token:
        return token
    if get_settings().hf_token:
        return get_settings().hf_token
    from huggingface_hub import get_token

    return get_token()


def _scrub(message: str, token: str | None) -> str:
    if token:
        message = message.replace(token, "***")
    return " ".join(message.split())


def publish(folder: str | Path, repo_id: str, revision: str | None = None, dry_run: bool = False,
            token: str | None = None, private: bool | None = None) -> PublishResult:
    """Upload ``folder`` to the Hub repo ``repo_id`` and tag it with ``revision`` (default: the version).

    Returns a :class:`PublishResult`; with ``dry_run`` nothing is contacted and ``files`` lists exactly
    what would be uploaded. Bad input, offline mode, a missing token or a Hub failure raise
    :class:`InputError` with a one-line message (never containing the token).
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id


    folder = Path(folder)
    if revision is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}", revision):
        raise InputError(f"--revision: a tag is letters, digits and . _ + - (no '/' or '..'), got {revision!r}")
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise InputError(f"--repo-id: expected ORG/NAME, got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise InputError(f"--repo-id: {exc}") from None
    repo_type = detect_repo_type(folder)
    if repo_type == "dataset" and not (folder / "README.md").is_file():
        raise InputError(f"{folder}: no README.md (dataset card); run `hrtem dataset card {folder}`")
    files = upload_files(folder)
    if not files:
        raise InputError(f"{folder}: nothing to upload")
    version = folder_version(folder, repo_type)
    tag = revision or (hub_tag(version) if version else None)
    result = PublishResult(repo_id=repo_id, repo_type=repo_type, files=files, tag=tag, dry_run=dry_run,
                           num_bytes=sum((folder / f).stat().st_size for f in files))
    if tag is None:
        result.notes.append("no version found in the folder: not tagging (pass --revision to tag)")
    card_path = folder / "README.md"
    if card_path.is_file():
        result.card = card_with_repo_id(card_path.read_text(encoding="utf-8"), repo_id)
    if dry_run:
        return result

    if hub_offline():
        raise InputError("cannot publish: Hugging Face Hub offline mode is on (HF_HUB_OFFLINE=1); unset it to upload")
    token = resolve_token(token)
    if not token:
        raise InputError("cannot publish: no Hugging Face token (set HF_TOKEN or run `hf auth login`)")

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    step = "create_repo"
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, exist_ok=True, private=private)
        result.url = str(url)
        step = "upload_folder"
        name = f"{folder_version(folder, repo_type) or ''}".strip()
        from huggingface_hub import CommitOperationAdd

        # one commit of exactly `files`; the card goes up with the real repo id (the folder is left as it is)
        ops = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=(
            result.card.encode("utf-8") if f == "README.md" and result.card is not None else str(folder / f)))
            for f in files]
        commit = api.create_commit(repo_id=repo_id, repo_type=repo_type, operations=ops,
                                   commit_message=f"Upload {repo_type} {name}".strip())
        result.commit = getattr(commit, "oid", None)
        if tag:
            step = "create_tag"
            api.create_tag(repo_id, tag=tag, repo_type=repo_type, revision=result.commit,
                           tag_message=f"{repo_type} version {tag}")
    except Exception as exc:  # noqa: BLE001 - network boundary: every failure becomes one line, token scrubbed
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = ""
        if step == "create_tag" and status == 409:
            hint = f" (tag {tag!r} exists: bump the version in the spec or pass another --revision)"
        elif status in (401, 403):
            hint = " (token rejected or without write access)"
        msg = str(exc).splitlines()[0] if str(exc) else ""
        raise InputError(_scrub(f"publishing to {repo_id} failed at {step}: {type(exc).__name__}: {msg}{hint}",
                                token)) from None
    return result
