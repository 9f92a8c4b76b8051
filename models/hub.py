"""Hugging Face Hub model folders: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``.

A model folder (= a Hub model repo) holds
- ``model.safetensors`` — the weights (state dict, float32),
- ``config.json`` — segmentation-models-pytorch's own config (``_model_class`` and the ``smp.Unet``
  arguments, ``encoder_weights: null``), so ``segmentation_models_pytorch.from_pretrained(DIR)`` loads the
  same model without this package and without downloading anything,
- ``hrtem.json`` — this package's metadata: the :class:`~models.build.ModelConfig` (expected pixel size,
  normalisation, threshold, class names), training parameters, the training dataset (name, config,
  version — never a local path), the metrics shown in the card and the model ``version``,
- ``README.md`` — a model card (``library_name: segmentation-models-pytorch``) with a ``model-index``
  (the same metrics as ``hrtem.json``), training parameters, the pixel size it expects, intended use and
  limitations.

Folders written before ``hrtem.json`` existed (everything in ``config.json``) still load; any update
(:func:`set_threshold`, :func:`card_with_evaluation`) rewrites them in the new layout.

``from_pretrained`` loads offline from a local folder; anything else is treated as a Hub repo id and goes
through ``huggingface_hub.snapshot_download`` (which fails cleanly with HF_HUB_OFFLINE=1 or no network).
``push_to_hub`` uploads a folder with ``HfApi.upload_folder``; the token comes from the argument or
``HF_TOKEN``/the huggingface_hub login and is never printed or written anywhere.

Size: over 400 lines because it holds the whole Hub model-repo format (config.json for smp, hrtem.json,
the model card, save/load and push) — one on-disk format, read and written in one place.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

from hrtem_dataset.dataset.card import hub_tag
from hrtem_dataset.dataset.publish import card_with_repo_id, folder_version, hub_offline
from hrtem_dataset.errors import InputError
from hrtem_dataset.io import atomic_path, atomic_write_text
from hrtem_dataset.jsonsafe import finite
from hrtem_dataset.settings import get_settings

from .build import ModelConfig, build_model, count_parameters

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"  # segmentation-models-pytorch's config (only smp's own keys)
METADATA_NAME = "hrtem.json"  # this package's metadata (pixel size, threshold, training data, metrics)
CARD_NAME = "README.md"
LIBRARY_NAME = "segmentation-models-pytorch"  # the card's library_name: the library that loads the weights
PACKAGE_NAME = "hrtem-dataset"
REPO_PLACEHOLDER = "<org>/{name}"  # load snippets before publishing; `hrtem publish` writes the real repo id


REAL_EVALUATION_NAME = "real_evaluation.json"


def _real_section(real: dict | None) -> str:
    """Markdown of recorded evaluations on folders of labelled real micrographs (``hrtem evaluate --record``)."""
    if not real:
        return ""
    out = ["## Evaluation on real micrographs",
           "Pixel F1 pooled over all images of a folder, the mean of the per-image F1, and particle detection F1;",
           "each image is resampled from its own pixel size to the model's.", "",
           "| data | images | pixel sizes (Å) | pooled F1 | mean per-image F1 | detection F1 |", "|---|---|---|---|---|---|"]
    per_lines = []
    for name, r in sorted(real.items()):
        px = [p["pixel_size"] for p in r.get("per_image", []) if p.get("pixel_size")]
        rng = f"{min(px):.3g}–{max(px):.3g}" if px else "n/a"
        f = lambda v: f"{v:.3f}" if isinstance(v, int | float) and math.isfinite(v) else "n/a"  # noqa: E731
        out.append(f"| `{name}` | {r.get('n_images', 'n/a')} | {rng} | {f(r.get('f1'))} | "
                   f"{f(r.get('f1_image_mean'))} | {f(r.get('detection_f1'))} |")
        per_lines += [f"| `{name}` | {p['name']} | {p.get('pixel_size') or 'n/a'} | {f(p.get('f1'))} |"
                      for p in r.get("per_image", [])]
    if per_lines:
        out += ["", "| data | image | pixel size (Å) | F1 |", "|---|---|---|---|", *per_lines]
    return "\n".join(out) + "\n"


def read_real_evaluations(model_dir: str | Path) -> dict:
    p = Path(model_dir) / REAL_EVALUATION_NAME
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except (OSError, ValueError):
        raise InputError(f"{p}: not valid JSON") from None


def record_real_evaluation(model_dir: str | Path, name: str, result: dict) -> Path:
    """Store an evaluation on a folder of real micrographs in ``MODEL/real_evaluation.json`` and re-render
    the model card with it (the simulated metrics of ``config.json`` stay as they are)."""
    d = Path(model_dir)
    meta = read_metadata(d)
    real = read_real_evaluations(d)
    keep = ("f1", "iou", "precision", "recall", "f1_image_mean", "detection_f1", "n_images", "per_image")
    real[str(name)] = finite({k: result.get(k) for k in keep} | ({"tta": result["tta"]} if "tta" in result else {}))
    atomic_write_text(d / REAL_EVALUATION_NAME, json.dumps(real, indent=1, sort_keys=True) + "\n")
    return _write_card(d, meta, real=real)


def model_card(config: ModelConfig, *, n_parameters: int | None = None, metrics: dict | None = None,
               dataset: dict | None = None, training: dict | None = None, model_name: str | None = None,
               real: dict | None = None, repo_id: str | None = None) -> str:
    """Model card text (YAML metadata with model-index + markdown) built with huggingface_hub.ModelCard.
    ``real``: recorded evaluations on folders of real micrographs (:func:`record_real_evaluation`);
    ``repo_id``: the Hub repo of the load snippets (default ``<org>/<model name>``, replaced on publishing)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    dataset = dataset or {}
    training = training or {}
    metrics = {k: v for k, v in (metrics or {}).items() if isinstance(v, int | float) and math.isfinite(v)}
    ds_is_hub = bool(dataset.get("hub"))
    ds_id = dataset_label(dataset)
    split = dataset.get("eval_split", "validation")
    name = model_name or f"hrtem-unet-{config.encoder.removeprefix('tu-')}"
    repo = repo_id or REPO_PLACEHOLDER.format(name=name)
    eval_results = [
        EvalResult(task_type="image-segmentation", task_name="Nanoparticle segmentation",
                   dataset_type=ds_id if ds_is_hub else "hrtem-simulated",
                   dataset_name=str(dataset.get("name") or ds_id),
                   dataset_config=dataset.get("config"), dataset_split=split,
                   metric_type=key, metric_name=label, metric_value=round(float(metrics[key]), 4))
        for key, label in (("iou", "IoU (particle)"), ("f1", "F1 (particle)"), ("precision", "Precision"),
                           ("recall", "Recall"), ("detection_f1", "Particle detection F1"))
        if key in metrics
    ]
    data = ModelCardData(
        model_name=name, library_name=LIBRARY_NAME, license="mit", pipeline_tag="image-segmentation",
        tags=["hrtem", "electron-microscopy", "nanoparticles", "semantic-segmentation", "u-net",
              "segmentation-models-pytorch", "timm", config.encoder],
        datasets=[ds_id] if ds_is_hub else None, metrics=["iou", "f1", "precision", "recall"],
        eval_results=eval_results or None)
    px = f"{config.pixel_size:.4g} Å" if config.pixel_size else "unknown (not recorded)"
    rec = dataset.get("recorded_pixel_size")
    if rec:
        px += (f"; trained on images recorded at {min(rec):.3g}–{max(rec):.3g} Å/px and resampled to it, so "
               f"micrographs in that range are in its training distribution")
    params = "\n".join(f"| {k} | {v} |" for k, v in training.items() if not isinstance(v, dict | list))
    metric_rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
    content = f"""---
{data.to_yaml()}
---

# {name}

U-Net (segmentation-models-pytorch) with a `{config.encoder}` encoder (timm), {config.in_channels} input
channel, {config.classes} classes ({", ".join(config.class_names)}){f", {n_parameters:,} parameters" if n_parameters else ""}.
It segments crystalline nanoparticles in high-resolution TEM (HRTEM) images. Trained on simulated HRTEM
images built by the `hrtem-dataset` pipeline (multislice exit waves, partial coherence, detector MTF, dose
noise; labels from the particles' exit-wave phase) following Rangel DaCosta et al., *npj Comput. Mater.*
10 (2024), arXiv:2309.06122.

## Expected input
- **Pixel size: {px}.** `hrtem segment` and `models.segment` resample micrographs to it from `--pixel-size`
  or the file's calibration (dm3/dm4/emd/ser/mrc/tif).
- One intensity channel; {config.normalization} (zero mean, unit standard deviation per image) is applied
  by the inference code.
- Output: class indices per pixel (0 = background/substrate, 1 = particle): particle where
  P(particle) > {config.threshold:g}{_min_area_text(config)} (the operating point stored in `hrtem.json`; 0.5 is the arg-max).

## Training data
- Dataset: `{ds_id}`{f" (config `{dataset.get('config')}`)" if dataset.get("config") else ""}{f", version {dataset['version']}" if dataset.get("version") else ""}{f", spec hash `{dataset['spec_hash']}`" if dataset.get("spec_hash") else ""}
- Training images: {dataset.get("n_train", "n/a")}; evaluation split: `{split}` ({dataset.get("n_eval", "n/a")} images)

## Training parameters
| parameter | value |
|---|---|
{params}

## Evaluation (`{split}` split)
| metric | value |
|---|---|
{metric_rows}

{_real_section(real)}
## Usage
With segmentation-models-pytorch alone (the weights and `config.json` are a plain `smp.Unet`):
```python
import segmentation_models_pytorch as smp
import torch

model = smp.from_pretrained("{repo}").eval()   # or a local folder
x = torch.randn(1, {config.in_channels}, 256, 256)                  # standardised image, H and W multiples of {2 ** config.encoder_depth}
with torch.no_grad():
    p = model(x).softmax(1)[:, 1]                # P(particle); particle where p > {config.threshold:g}
```
With `hrtem-dataset` (resampling to the pixel size above, tiling, per-particle table; `hrtem.json` holds the
pixel size, threshold, training data and metrics):
```python
from hrtem_dataset.models import from_pretrained, segment
model = from_pretrained("{repo}")
result = segment("micrograph.dm4", model, out="mask.png")   # also writes mask.csv
```
```bash
hrtem segment micrograph.dm4 --model {repo} --out mask.png [--pixel-size 0.2]
```

## Intended use
Segmentation of nanoparticles (e.g. Au on amorphous carbon) in HRTEM images recorded near the pixel size
above, as a baseline for simulation-trained models and a starting point for fine-tuning on a lab's own
labelled micrographs (`hrtem train --init-from MODEL --freeze encoder --user-data FOLDER`).

## Limitations
- Trained on simulated images only: real micrographs differ (detector response, drift, contamination,
  beam damage, thickness), so expect a domain gap; fine-tune on a few labelled real images.
- Materials, particle sizes, defocus/aberration ranges and doses outside the training distribution are not
  covered; the pixel size must be known (calibrated files or `--pixel-size`).
- Binary particle/background segmentation: touching particles merge into one connected component in the
  per-particle table.
"""
    return ModelCard(content).content


def dataset_label(dataset: dict) -> str:
    """How a model names its training data: the Hub repo id, else the dataset's name (never a local path)."""
    dataset = dataset or {}
    if dataset.get("hub") and dataset.get("id"):
        return str(dataset["id"])
    for key in ("name", "config", "id"):
        v = dataset.get(key)
        if v:
            return Path(str(v)).name if key == "id" else str(v)
    return "local dataset"


def public_lineage(dataset: dict | None) -> dict:
    """Training-data lineage without local paths: a local dataset folder or fine-tuning folder is named by
    its folder name (``id`` of a Hub dataset stays the repo id)."""
    out = dict(finite(dataset or {}))
    if not out.get("hub") and out.get("id"):
        out["id"] = Path(str(out["id"])).name
    for key in ("fine_tune_data",):
        if out.get(key):
            out[key] = Path(str(out[key])).name
    return out


def smp_config(model) -> dict:
    """``config.json`` of segmentation-models-pytorch for ``model``: the ``smp.Unet`` arguments it was built
    with and ``_model_class``, with ``encoder_weights`` None (the weights are in ``model.safetensors``)."""
    cfg = dict(getattr(model, "config", None) or {}) if isinstance(getattr(model, "config", None), dict) else {}
    if not cfg:  # built outside smp's hub mixin: from our ModelConfig
        c: ModelConfig = model.hrtem_config
        cfg = {"encoder_name": c.encoder, "encoder_depth": c.encoder_depth, "decoder_channels": list(c.decoder_channels),
               "in_channels": c.in_channels, "classes": c.classes}
    cfg = {k: v for k, v in finite(cfg).items() if not k.startswith("_")}
    cfg["encoder_weights"] = None
    cfg["_model_class"] = type(model).__name__
    return cfg


def _config_from_smp(cfg: dict) -> ModelConfig:
    """A :class:`ModelConfig` for a plain smp ``Unet`` folder (no ``hrtem.json``): no pixel size recorded."""
    if cfg.get("_model_class", "Unet") != "Unet":
        raise InputError(f"{CONFIG_NAME}: model class {cfg.get('_model_class')!r} is not a U-Net")
    kw = {"encoder": cfg.get("encoder_name", "resnet34"), "encoder_depth": int(cfg.get("encoder_depth", 5)),
          "in_channels": int(cfg.get("in_channels", 3)), "classes": int(cfg.get("classes", 1))}
    if cfg.get("decoder_channels"):
        kw["decoder_channels"] = tuple(int(c) for c in cfg["decoder_channels"])
    if kw["classes"] != 2:
        raise InputError(f"{CONFIG_NAME}: {kw['classes']} classes; hrtem models have 2 (background, particle)")
    return ModelConfig(**kw)


def _read_json(p: Path):
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: malformed JSON ({exc})") from None


def read_metadata(model_dir: str | Path) -> dict:
    """This package's metadata of a model folder: ``hrtem.json``; for folders written before it existed,
    ``config.json`` (which then held everything); for a plain smp U-Net folder, defaults from its
    ``config.json``. Always has a ``model`` section (:class:`ModelConfig` as a dict)."""
    d = Path(model_dir)
    p = d / METADATA_NAME
    if p.is_file():
        meta = _read_json(p)
    else:
        p = d / CONFIG_NAME
        if not p.is_file():
            raise InputError(f"model {model_dir}: no {CONFIG_NAME}")
        meta = _read_json(p)
        if isinstance(meta, dict) and "_model_class" in meta and "model" not in meta:
            meta = {"model": _config_from_smp(meta).to_dict(), "library": LIBRARY_NAME}
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise InputError(f"{p}: not an hrtem-dataset model config (no 'model' section)")
    return meta


read_config = read_metadata  # the former name


def _write_card(d: Path, meta: dict, *, real: dict | None = None, repo_id: str | None = None) -> Path:
    return atomic_write_text(d / CARD_NAME, model_card(
        ModelConfig.from_dict(meta["model"]), n_parameters=meta.get("n_parameters"), metrics=meta.get("metrics") or {},
        dataset=meta.get("dataset") or {}, training=meta.get("training") or {}, model_name=meta.get("name"),
        real=read_real_evaluations(d) if real is None else real, repo_id=repo_id))


def write_smp_config(model_dir: str | Path, model) -> Path:
    """Write segmentation-models-pytorch's ``config.json`` (:func:`smp_config`) atomically."""
    return atomic_write_text(Path(model_dir) / CONFIG_NAME, json.dumps(smp_config(model), indent=2, sort_keys=True) + "\n")


def write_metadata(model_dir: str | Path, meta: dict) -> Path:
    """Write ``hrtem.json`` atomically; an old-layout ``config.json`` (everything in it) is rewritten as
    smp's own config so the folder loads with ``segmentation_models_pytorch.from_pretrained``."""
    d = Path(model_dir)
    cfg_path = d / CONFIG_NAME
    old = _read_json(cfg_path) if cfg_path.is_file() else None
    out = atomic_write_text(d / METADATA_NAME, json.dumps(finite(meta), indent=2, sort_keys=True) + "\n")
    if isinstance(old, dict) and "model" in old and "_model_class" not in old:
        model = build_model(config=ModelConfig.from_dict(meta["model"]))
        write_smp_config(d, model)
    return out


def save_pretrained(model, out_dir: str | Path, *, metrics: dict | None = None, dataset: dict | None = None,
                    training: dict | None = None, model_name: str | None = None, version: str | None = None) -> Path:
    """Write ``model.safetensors``, ``config.json`` (smp's), ``hrtem.json`` and ``README.md`` into ``out_dir``
    (each atomically).

    ``dataset``: lineage of the training data (``id``, ``hub``, ``name``, ``config``, ``version``,
    ``spec_hash``, ``n_train``, ``eval_split``, ``n_eval``; local paths are reduced to folder names);
    ``training``: hyper-parameters; ``metrics``: evaluation scores on ``dataset['eval_split']``;
    ``version``: the model version, tagged on publishing (default: the training dataset's version).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config: ModelConfig = model.hrtem_config
    dataset = public_lineage(dataset)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    meta = {"model": config.to_dict(), "library": LIBRARY_NAME, "package": PACKAGE_NAME,
            "n_parameters": count_parameters(model), "training": finite(training or {}), "dataset": dataset,
            "metrics": finite(metrics or {})}
    version = version or (dataset.get("version") if isinstance(dataset.get("version"), str) else None)
    if version:
        meta["version"] = version
    if model_name:
        meta["name"] = model_name
    write_smp_config(out, model)
    write_metadata(out, meta)
    _write_card(out, meta)
    return out


def card_with_evaluation(model_dir: str | Path, metrics: dict, split: str) -> Path:
    """Make ``metrics`` measured on ``split`` (e.g. the held-out test split after ``hrtem evaluate``) the
    metrics of a saved model folder: in ``hrtem.json`` (the previous ones are kept as
    ``<previous split>_metrics``) and in the card's model-index, so both report the same set."""
    d = Path(model_dir)
    meta = read_metadata(d)
    dataset = dict(meta.get("dataset") or {})
    prev_split = dataset.get("eval_split") or "validation"
    if meta.get("metrics") and prev_split != split:
        meta[f"{str(prev_split).replace(' ', '_')}_metrics"] = meta["metrics"]
    dataset.update(eval_split=split, n_eval=metrics.get("n_images", "n/a"))
    meta["dataset"] = dataset
    meta["metrics"] = {k: v for k, v in finite(metrics).items() if isinstance(v, int | float) and not isinstance(v, bool)}
    write_metadata(d, meta)
    return _write_card(d, meta)


def resolve_model_dir(model_id_or_dir: str | Path, revision: str | None = None) -> Path:
    """Local folder as is; otherwise ``snapshot_download`` of a Hub repo id (InputError when impossible)."""
    p = Path(model_id_or_dir)
    if p.is_dir():
        return p
    s = str(model_id_or_dir)
    if p.exists() or s.startswith((".", "/", "~")) or s.count("/") != 1:
        raise InputError(f"model {s}: not a model folder (expected {WEIGHTS_NAME} + {CONFIG_NAME}) "
                         "or a Hub repo id 'org/name'")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(s, revision=revision, allow_patterns=[WEIGHTS_NAME, CONFIG_NAME, METADATA_NAME,
                                                                           CARD_NAME, REAL_EVALUATION_NAME]))
    except Exception as exc:  # offline mode, network, 404, auth ...
        msg = " ".join(str(exc).split())[:160]
        raise InputError(f"model {s}: not a local folder and the Hub download failed ({type(exc).__name__}: {msg})") from None


def from_pretrained(model_id_or_dir: str | Path, *, revision: str | None = None, device: str = "cpu"):
    """Load a model saved with :func:`save_pretrained` (local folder, offline) or from a Hub repo id.

    Returns the ``torch.nn.Module`` (an ``smp.Unet``) in eval mode with ``hrtem_config`` set and the
    folder's metadata (``hrtem.json``) as ``model.hrtem_metadata``. Same weights and outputs as
    ``segmentation_models_pytorch.from_pretrained(DIR)``; old folders (everything in ``config.json``) load too.
    """
    from safetensors.torch import load_file

    d = resolve_model_dir(model_id_or_dir, revision)
    meta = read_metadata(d)
    config = ModelConfig.from_dict(meta["model"])
    model = build_model(config=config)
    w = d / WEIGHTS_NAME
    if not w.is_file():
        raise InputError(f"model {model_id_or_dir}: no {WEIGHTS_NAME}")
    try:
        state = load_file(str(w), device=device)
    except Exception as exc:
        raise InputError(f"{w}: cannot read weights ({type(exc).__name__})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(f"{w}: weights do not match the config (missing {len(missing)}, unexpected {len(unexpected)})")
    model.hrtem_metadata = meta
    return model.to(device).eval()


def push_to_hub(folder_or_model, repo_id: str, *, token: str | None = None, revision: str | None = None,
                private: bool | None = None, commit_message: str | None = None, tag: str | None = None) -> str:
    """Upload a model folder (or a model, saved to a temporary folder first) to the Hub repo ``repo_id``.

    The card's load snippets get ``repo_id``; the upload is tagged ``tag``, by default ``v<version>`` of
    ``hrtem.json`` (as ``hrtem publish`` tags it). Checkpoints (``checkpoints/``) are not uploaded. The token
    comes from ``token`` or the environment (``HF_TOKEN``) and is never printed. With ``HF_HUB_OFFLINE=1``
    this raises :class:`InputError`. Returns the commit URL.
    """
    from huggingface_hub import HfApi

    if hub_offline():
        raise InputError(f"push to {repo_id}: the Hub is offline (HF_HUB_OFFLINE is set); "
                         "unset it and provide HF_TOKEN to upload")
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise InputError(f"--repo-id: expected 'org/name', got {repo_id!r}")
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(folder_or_model, str | Path):
            src = Path(folder_or_model)
            if not (src / WEIGHTS_NAME).is_file() or not (src / CONFIG_NAME).is_file():
                raise InputError(f"{src}: not a model folder ({WEIGHTS_NAME} + {CONFIG_NAME} needed)")
            folder = Path(tmp) / "model"
            shutil.copytree(src, folder, ignore=shutil.ignore_patterns("checkpoints", ".*", "*.tmp"))
        else:
            folder = save_pretrained(folder_or_model, Path(tmp) / "model")
        if (folder / CARD_NAME).is_file():
            (folder / CARD_NAME).write_text(card_with_repo_id((folder / CARD_NAME).read_text(), repo_id))
        if tag is None:
            version = folder_version(folder, "model")
            tag = hub_tag(version) if version else None
        api = HfApi(token=token or get_settings().hf_token)
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            if revision:
                api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                     revision=revision, ignore_patterns=["checkpoints/*", "*.tmp", ".*"],
                                     commit_message=commit_message or "Upload hrtem-dataset segmentation model")
            if tag:
                api.create_tag(repo_id, tag=tag, repo_type="model", revision=getattr(info, "oid", None) or revision,
                               exist_ok=True)
        except Exception as exc:  # HTTP errors, auth, network; the message never contains the token
            raise InputError(f"push to {repo_id}: upload failed ({type(exc).__name__})") from None
    return str(getattr(info, "commit_url", info))


def _min_area_text(config) -> str:
    area = float(getattr(config, "min_particle_area", 0.0) or 0.0)
    return f", predicted particles (8-connected) smaller than {area:g} Å² dropped" if area > 0 else ""


def check_min_particle_area(value: float, name: str = "min_particle_area") -> float:
    """``value`` [Å²] as a float when it is finite and ≥ 0, else :class:`InputError` naming ``name``."""
    if not (math.isfinite(float(value)) and float(value) >= 0):
        raise InputError(f"{name}: must be a number of Å² >= 0, got {value}")
    return float(value)


def set_operating_point(model_dir: str | Path, threshold: float | None = None,
                        min_particle_area: float | None = None) -> bool:
    """Change the operating point stored with a saved model — ``threshold`` (P(particle) above it) and
    ``min_particle_area`` (Å², smaller predicted particles dropped) in ``hrtem.json`` ``model`` and the card —
    without retraining; ``None`` keeps a value. Returns True when anything changed. The ``metrics`` recorded
    at training time keep the point they were measured at (``training.metrics_threshold``,
    ``training.metrics_min_particle_area``)."""
    d = Path(model_dir)
    meta = read_metadata(d)
    if threshold is not None and not 0.0 < float(threshold) < 1.0:
        raise InputError(f"threshold: must be in (0, 1), got {threshold}")
    if min_particle_area is not None:
        check_min_particle_area(min_particle_area)
    changed = False
    training = meta.setdefault("training", {})
    for key, value, default in (("threshold", threshold, 0.5), ("min_particle_area", min_particle_area, 0.0)):
        old = float(meta["model"].get(key, default))
        if value is None or old == float(value):
            continue
        meta["model"][key] = float(value)
        training.setdefault(f"metrics_{key}", old)
        changed = True
    if changed:
        write_metadata(d, meta)
        _write_card(d, meta)
    return changed


def set_threshold(model_dir: str | Path, threshold: float) -> bool:
    """:func:`set_operating_point` of the threshold alone."""
    return set_operating_point(model_dir, threshold=threshold)
