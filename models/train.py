"""Training and transfer learning of the U-Net baselines.

Protocol (Rangel DaCosta et al. 2024): U-Net/ResNet-18, Adam (lr 1e-3), batch 16, per-image
standardisation, dihedral augmentation, cross-entropy (+ Dice) loss. Here:

- Optimiser Adam with a OneCycle (default), cosine or constant learning-rate schedule over the total
  number of steps (``steps``, or ``epochs`` × steps per epoch).
- Loss = cross-entropy + ``dice_weight`` × multi-class soft Dice (smp ``DiceLoss``).
- Mixed precision (``torch.autocast`` + ``GradScaler``) when training on CUDA; CPU runs in float32.
- Deterministic: model init, batch order, crops, augmentations and on-the-fly imaging noise derive from
  ``seed`` with :func:`hrtem_dataset.seeding.derive_seed`; on CUDA cuDNN is put in deterministic mode.
- Checkpoints ``OUT/checkpoints/last.pt`` (model, optimiser, schedule, scaler, step, history), written
  atomically at the end and every ``checkpoint_every`` epochs or ``checkpoint_interval_s`` seconds; a
  run with the same settings and output folder resumes from it and produces the same weights as an
  uninterrupted run.
- Per-epoch metrics: training loss, pixel IoU/F1 of the training batches, validation IoU/F1/precision/
  recall; the final model is evaluated on the validation split (with per-particle detection) and saved
  with :func:`models.hub.save_pretrained` (safetensors + config.json + model card).
- Transfer learning: ``init_from`` (model folder, Hub id or ``.pt`` checkpoint), ``freeze="encoder"``
  (fine-tune decoder + head) or ``freeze="decoder"`` (fine-tune the encoder; decoder and segmentation
  head fixed). Frozen parts also keep their BatchNorm statistics (they stay in eval mode).

Size: over 400 lines because the training loop, its checkpoint/resume and fine-tuning share one state
(model, optimiser, scheduler, RNG); splitting them would pass that state across modules.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from hrtem_dataset.errors import InputError
from hrtem_dataset.io import atomic_path, atomic_write_text, check_output_file, check_output_folder
from hrtem_dataset.jsonsafe import finite
from hrtem_dataset.progress import bar as tqdm
from hrtem_dataset.seeding import check_seed, derive_seed
from hrtem_dataset.specs import (
    DEFAULT_MIN_PARTICLE_AREA,
    OPERATING_POINT,
    DatasetSpec,
    ImagingDistributionSpec,
    ModelTrainingSpec,
    load_spec,
    param_bounds,
)

from .build import (
    DEFAULT_ENCODER,
    ModelConfig,
    build_model,
    decoder_parameters,
    encoder_parameters,
    size_multiple,
)
from .data import (
    CropBatches,
    OnTheFlyImaging,
    Sample,
    WaveSample,
    choose_crop,
    dataset_pixel_size,
    load_samples,
    load_user_folder,
    open_split,
    rescale_samples,
)
from .device import resolve_device
from .hub import from_pretrained, save_pretrained
from .inference import predict_mask
from .metrics import SegmentationMetrics, confusion, scores_from_counts

CHECKPOINT = Path("checkpoints") / "last.pt"
SCHEDULES = ("onecycle", "cosine", "constant")


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (stored in the checkpoint, config.json and the model card)."""

    encoder: str = DEFAULT_ENCODER
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] | None = None
    epochs: int = 5
    steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "onecycle"
    dice_weight: float = 1.0
    image_size: int | None = None
    samples_per_epoch: int | None = None
    freeze: str | None = None
    init_from: str | None = None
    seed: int = 0
    amp: bool = True
    augment: str = "dihedral"
    threshold: float = 0.5
    min_particle_area: float = DEFAULT_MIN_PARTICLE_AREA

    def check(self) -> TrainConfig:
        """The hyper-parameters :class:`~hrtem_dataset.specs.ModelTrainingSpec` has are validated by it (one
        place for their bounds; the error names the CLI option); the run-only ones here."""
        shared = {k: getattr(self, k) for k in ModelTrainingSpec.model_fields if hasattr(self, k)}
        try:
            ModelTrainingSpec.model_validate(shared)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = str(err["loc"][0]) if err.get("loc") else "training"
            msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
            raise InputError(f"--{name.replace('_', '-')}: {msg}, got {shared.get(name)!r}") from None
        if self.freeze not in (None, "encoder", "decoder"):
            raise InputError(f"--freeze: must be 'encoder' or 'decoder', got {self.freeze!r}")
        check_seed(self.seed)
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["decoder_channels"] is not None:
            d["decoder_channels"] = list(d["decoder_channels"])
        return d


def _device(device: str | None):

    return resolve_device(device)


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Models to start from
# --------------------------------------------------------------------------------------------------


def load_checkpoint(path: str | Path, map_location="cpu", what: str = "checkpoint") -> dict:
    """A training checkpoint, loaded safely: ``torch.load(weights_only=True)`` only rebuilds tensors and
    plain Python containers/scalars, never arbitrary objects, so a crafted file cannot run code. Anything
    else (a pickle of other objects, a corrupt or foreign file) raises :class:`InputError` naming the file."""
    p = Path(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(f"{what} {p}: refused to load: it holds objects other than tensors and plain data "
                         "(only checkpoints written by hrtem train are accepted)") from None
    except Exception as exc:  # not a zip/pickle at all, truncated, unreadable ...
        raise InputError(f"{what} {p}: cannot read the checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict):
        raise InputError(f"{what} {p}: not a training checkpoint (a {type(ckpt).__name__}, not a dict)")
    return ckpt


def load_initial_model(init_from: str | Path):
    """A model to fine-tune: a model folder / Hub id (:func:`models.hub.from_pretrained`), a training
    output folder, or a ``.pt`` checkpoint written by :func:`train` (loaded with :func:`load_checkpoint`:
    tensors and plain data only)."""
    p = Path(init_from)
    if p.is_dir() and not (p / "model.safetensors").is_file() and (p / CHECKPOINT).is_file():
        p = p / CHECKPOINT
    if p.is_file():
        ckpt = load_checkpoint(p, "cpu", "--init-from")
        try:
            config = ModelConfig.from_dict(ckpt["model_config"])
            state = ckpt["model"]
        except Exception as exc:
            raise InputError(f"--init-from {p}: not a training checkpoint ({type(exc).__name__})") from None
        model = build_model(config=config)
        try:
            model.load_state_dict(state)
        except Exception as exc:
            raise InputError(f"--init-from {p}: weights do not match the model config ({type(exc).__name__})") \
                from None
        return model

    return from_pretrained(init_from)


def apply_freeze(model, freeze: str | None) -> list:
    """Freeze ``encoder`` or ``decoder`` (decoder + segmentation head); returns the trainable parameters."""
    if freeze is None:
        return [p for p in model.parameters() if p.requires_grad]
    frozen = encoder_parameters(model) if freeze == "encoder" else decoder_parameters(model)
    ids = {id(p) for p in frozen}
    for p in model.parameters():
        p.requires_grad_(id(p) not in ids)
    return [p for p in model.parameters() if p.requires_grad]


def _train_mode(model, freeze: str | None) -> None:
    model.train()
    if freeze == "encoder":
        model.encoder.eval()
    elif freeze == "decoder":
        model.decoder.eval()
        model.segmentation_head.eval()


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def validate(model, samples: list[Sample], *, device=None, detection: bool = False, tile: int = 512,
             per_image: bool = False, tta: str = "none") -> dict:
    """Pixel metrics (and optionally particle detection) of ``model`` on labelled samples at their own
    pixel size (rescaled to the model's pixel size when they differ). Pixel scores are pooled over all
    images (``f1``); ``f1_image_mean`` averages the per-image F1; ``per_image`` adds a list of
    ``{name, pixel_size, f1, iou}``; ``tta``: the predictions' test-time augmentation
    (:func:`.inference.predict_proba`)."""

    acc = SegmentationMetrics()
    rows = []
    for s in samples:
        pred = predict_mask(model, s.image, s.pixel_size, tile=tile, device=str(device) if device else None, tta=tta)
        acc.update(pred, s.mask, s.pixel_size, detection=detection)
        if per_image:
            sc = scores_from_counts(*confusion(pred, s.mask)[:3])
            rows.append({"name": s.name, "pixel_size": s.pixel_size, "f1": sc["f1"], "iou": sc["iou"]})
    out = acc.compute()
    if per_image:
        out["per_image"] = rows
    return out


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def _make_schedule(opt, cfg: TrainConfig, total_steps: int):
    if cfg.schedule == "onecycle" and total_steps >= 3:
        # warm-up over 25 % of the steps (at least 1.5 steps, which OneCycleLR needs to be well defined)
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps,
                                                   pct_start=max(0.25, 1.5 / total_steps))
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1), eta_min=cfg.lr * 0.01)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _lineage(dataset, config, split_sizes: dict) -> dict:
    out: dict[str, Any] = {"id": str(dataset), "config": config, **split_sizes}
    p = Path(str(dataset))
    out["hub"] = not p.exists()
    try:
        ds = open_split(dataset, config, "train")
        cols = set(ds.column_names)
        row = ds.select_columns([c for c in ("dataset_version", "spec_hash", "config_name") if c in cols])[0] \
            if cols & {"dataset_version", "spec_hash", "config_name"} else {}
        for k, v in row.items():
            out["version" if k == "dataset_version" else k] = v
    except InputError:
        pass
    if not out["hub"] and (p / "README.md").is_file():  # a local folder: name it by its dataset card
        try:
            from huggingface_hub import DatasetCard

            out["name"] = DatasetCard.load(p / "README.md").data.get("pretty_name")
        except Exception:  # a card without YAML metadata is fine
            pass
    return out


def _dataset_imaging(dataset, config: str | None, pixel_size: float):
    """Imaging distribution for on-the-fly imaging of an ``exit_waves`` configuration: the one in the
    dataset folder's ``specs/<config>.yaml`` (the DatasetSpec that built it), else noise-free defaults."""

    path = Path(str(dataset)) / "specs" / f"{config}.yaml" if dataset is not None and config else None
    if path is not None and path.is_file():
        spec = load_spec(path, DatasetSpec).imaging
        return spec.model_copy(update={"pixel_size": float(pixel_size)})
    return ImagingDistributionSpec(pixel_size=float(pixel_size))


TRAIN_OUTPUTS = ("config.json", "model.safetensors", "hrtem.json", "README.md", "history.json",
                 "real_evaluation.json", "evaluation.json", "checkpoints", ".*")
"""What a training output folder holds (hidden names: temporary files, study bookkeeping)."""


def check_train_out(out_dir: str | Path) -> Path:
    """``--out`` must be a new folder, an empty one or a previous training output (nothing else in it):
    refused up front, before any training, so that no unrelated file is overwritten."""

    out = check_output_folder(out_dir, TRAIN_OUTPUTS, "--out", "folder holds files that are not a model's")
    check_output_file(out / "config.json", "--out")  # e.g. not a folder named config.json
    return out


def train(dataset: str | Path | None = None, out_dir: str | Path = "model", *, config: str | None = None,
          user_data: str | Path | None = None, val_user_data: str | Path | None = None,
          train_split: str = "train", val_split: str = "validation", imaging=None,
          user_pixel_size: float | None = None, device: str | None = None, resume: bool = True,
          progress: bool = True, checkpoint_every: int | None = None, checkpoint_interval_s: float = 600.0,
          val_every: int = 1, stop_after_steps: int | None = None, max_samples: int | None = None,
          model_name: str | None = None, **hyper) -> dict:
    """Train (or fine-tune) a U-Net and save it as a Hub model folder in ``out_dir``.

    Data: ``dataset`` (folder or Hub id) + ``config`` give the ``train_split`` and ``val_split`` of a built
    dataset (an ``exit_waves`` configuration is imaged on the fly with the ``imaging``
    ImagingDistributionSpec). ``user_data`` (a folder of labelled micrographs) replaces the training split;
    its validation data come from ``val_user_data``, else from ``dataset``'s ``val_split``, else the last
    20 % of its images (when it has at least 5). Hyper-parameters: the fields of :class:`TrainConfig`
    (``encoder``, ``epochs``, ``steps``, ``batch_size``, ``lr``, ``schedule``, ``freeze``, ``init_from``,
    ``seed``, ...).

    Returns ``dict(metrics=<final validation metrics>, history=[per-epoch dicts], model_dir, steps,
    completed, time_s)``; ``completed`` is False when ``stop_after_steps`` ended the run early (the
    checkpoint then lets the next call resume).
    """
    unknown = set(hyper) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise TypeError(f"train() got unexpected keyword arguments {sorted(unknown)}")
    cfg = TrainConfig(**hyper).check()
    if int(val_every) < 1:
        raise InputError(f"--val-every: must be >= 1, got {val_every}")
    if dataset is None and user_data is None:
        raise InputError("--dataset or --user-data: training needs data")
    check_train_out(out_dir)
    dev = _device(device)
    t0 = time.time()

    # ---- model -----------------------------------------------------------------------------------
    torch.manual_seed(derive_seed(cfg.seed, "model-init") % (2**63))
    if cfg.init_from:
        model = load_initial_model(cfg.init_from)
    else:
        model = build_model(cfg.encoder, encoder_depth=cfg.encoder_depth, decoder_channels=cfg.decoder_channels)
    mcfg: ModelConfig = model.hrtem_config

    # ---- data (all validated before anything is written) --------------------------------------------
    val: list[Sample] = []
    if user_data is not None:
        train_samples: list = load_user_folder(user_data, pixel_size=user_pixel_size)
        if val_user_data is not None:
            val = load_user_folder(val_user_data, pixel_size=user_pixel_size)
        elif dataset is not None:
            val = load_samples(dataset, config, val_split, max_samples=max_samples)
        elif len(train_samples) >= 5:
            n_val = max(1, len(train_samples) // 5)
            train_samples, val = train_samples[:-n_val], train_samples[-n_val:]
    else:
        train_samples = load_samples(dataset, config, train_split, max_samples=max_samples)
        try:
            val = load_samples(dataset, config, val_split, max_samples=max_samples)
        except InputError as exc:
            if "cannot load" not in str(exc):  # a missing split is fine, a split without masks is not
                raise
            _log(f"note: no {val_split!r} split; training without validation", progress)
    waves = bool(train_samples) and isinstance(train_samples[0], WaveSample)
    if waves and imaging is None:
        imaging = _dataset_imaging(dataset, config, train_samples[0].pixel_size)
        _log(f"on-the-fly imaging conditions: {imaging.model_dump(mode='json', exclude_defaults=True)}", progress)
    if mcfg.pixel_size is None:
        px = train_samples[0].pixel_size if waves else dataset_pixel_size(train_samples)
        mcfg.pixel_size = float(f"{px:.6g}") if px else None  # float32 columns: 0.2 not 0.20000000298
    if not waves:  # e.g. a lab's micrographs or a model pre-trained at another pixel size: resample
        train_samples = rescale_samples(train_samples, mcfg.pixel_size)

    shapes = [tuple(s.mask.shape) for s in train_samples]
    crop = choose_crop(shapes, cfg.image_size, size_multiple(model))
    if waves:
        batches = OnTheFlyImaging(train_samples, imaging, crop, cfg.batch_size, cfg.seed, device=str(dev),
                                  samples_per_epoch=cfg.samples_per_epoch)
        if val and isinstance(val[0], WaveSample):  # a fixed validation set, imaged once
            val = batches.render_samples(val, "validation")
    else:
        if val and isinstance(val[0], WaveSample):
            raise InputError(f"{val_split}: an exit_waves split cannot validate a model trained on images")
        batches = CropBatches(train_samples, crop, cfg.batch_size, cfg.seed, cfg.samples_per_epoch,
                              augment="realistic" if cfg.augment == "realistic" else True)
    spe = batches.steps_per_epoch
    total_steps = int(cfg.steps) if cfg.steps else int(cfg.epochs) * spe
    n_epochs = math.ceil(total_steps / spe)

    # ---- optimiser ---------------------------------------------------------------------------------
    model = model.to(dev)
    params = apply_freeze(model, cfg.freeze)
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = _make_schedule(opt, cfg, total_steps)
    use_amp = bool(cfg.amp and dev.type == "cuda")
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    if dev.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    import segmentation_models_pytorch as smp

    ce = torch.nn.CrossEntropyLoss()
    dice = smp.losses.DiceLoss(mode="multiclass", from_logits=True)

    # ---- resume ------------------------------------------------------------------------------------
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT
    fingerprint = {"train": {k: v for k, v in cfg.to_dict().items() if k not in OPERATING_POINT}, "model": mcfg.to_dict(), "crop": crop, "total_steps": total_steps,
                   "dataset": str(dataset), "config": config, "user_data": str(user_data) if user_data else None}
    fingerprint = json.loads(json.dumps(fingerprint))
    step, start_epoch, history, skip_batches, epoch_acc = 0, 0, [], 0, None
    if resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path, dev, "resume checkpoint")
        if ckpt.get("fingerprint") != json.loads(json.dumps(fingerprint)):
            raise InputError(f"{ckpt_path}: checkpoint was made with different settings; "
                             "use another --out folder or delete the checkpoint")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        step, start_epoch, history = int(ckpt["step"]), int(ckpt["epoch"]), list(ckpt["history"])
        skip_batches, epoch_acc = int(ckpt.get("batch_in_epoch", 0)), ckpt.get("epoch_acc")
        _log(f"resuming from {ckpt_path} at step {step} (epoch {start_epoch})", progress)

    def save_checkpoint(epoch: int, batch_in_epoch: int = 0, acc=None) -> None:
        """``epoch``: the epoch to continue with; ``batch_in_epoch``: batches of it already done."""
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "scaler": scaler.state_dict(), "step": step, "epoch": epoch, "history": history,
                 "batch_in_epoch": batch_in_epoch, "epoch_acc": acc,
                 "fingerprint": fingerprint, "model_config": mcfg.to_dict()}
        buf = io.BytesIO()
        torch.save(state, buf)
        with atomic_path(ckpt_path) as tmp:
            tmp.write_bytes(buf.getvalue())

    # ---- loop --------------------------------------------------------------------------------------

    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    last_ckpt = time.time()
    stopped = False
    steps_this_run = 0
    for epoch in range(start_epoch, n_epochs):
        _train_mode(model, cfg.freeze)
        loss_sum, n_batches, tp = 0.0, 0, np.zeros(3, np.int64)  # tp, fp, fn
        skip = skip_batches if epoch == start_epoch else 0
        if skip and epoch_acc is not None:
            loss_sum, n_batches, tp = epoch_acc[0], epoch_acc[1], np.asarray(epoch_acc[2], np.int64)
        # The batch stream depends only on (seed, epoch): a resumed epoch regenerates and skips the
        # batches it already trained on, so resuming gives the same weights as an uninterrupted run.
        for bi, (x, y) in enumerate(batches.epoch(epoch)):
            if bi < skip:
                continue
            if step >= total_steps:
                break
            x = torch.as_tensor(x).to(dev, non_blocking=True)
            y = torch.as_tensor(y).to(dev, non_blocking=True)
            with torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=use_amp):
                logits = model(x)
                loss = ce(logits.float(), y) + cfg.dice_weight * dice(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            steps_this_run += 1
            with torch.no_grad():
                pred = logits.argmax(1) == 1
                t = y == 1
                tp += np.array([int((pred & t).sum()), int((pred & ~t).sum()), int((~pred & t).sum())])
            loss_sum += float(loss.detach())
            n_batches += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", epoch=epoch + 1)
            if stop_after_steps is not None and steps_this_run >= stop_after_steps and step < total_steps:
                stopped = True
                save_checkpoint(epoch, bi + 1, (loss_sum, n_batches, tp.tolist()))
                break
        if stopped:
            break
        train_scores = scores_from_counts(*tp.tolist())
        rec = {"epoch": epoch + 1, "step": step, "lr": float(sched.get_last_lr()[0]),
               "train_loss": loss_sum / max(n_batches, 1), "train_iou": train_scores["iou"],
               "train_f1": train_scores["f1"], "time_s": round(time.time() - t0, 2)}
        last = epoch + 1 == n_epochs or step >= total_steps
        if val and ((epoch + 1) % max(1, val_every) == 0 or last):
            vm = validate(model, val, device=dev)
            rec.update({f"val_{k}": vm[k] for k in ("iou", "f1", "precision", "recall")})
        history.append(rec)
        if progress:  # through tqdm so the line does not tear the progress bar
            bar.write("epoch {epoch}: ".format(**rec) + ", ".join(
                f"{k}={v:.4g}" for k, v in rec.items() if isinstance(v, float) and k != "time_s"), file=sys.stderr)
        if last or (checkpoint_every and (epoch + 1) % checkpoint_every == 0) or \
                time.time() - last_ckpt > checkpoint_interval_s:
            save_checkpoint(epoch + 1)
            last_ckpt = time.time()
        if step >= total_steps:
            break
    bar.close()
    result: dict[str, Any] = {"model_dir": str(out), "steps": step, "history": history, "completed": not stopped,
                              "time_s": round(time.time() - t0, 2), "metrics": {}}
    if stopped:
        return result

    # ---- final evaluation and model folder ---------------------------------------------------------
    model.eval()
    mcfg.threshold = float(cfg.threshold)  # the operating point the saved model (and its metrics) use
    mcfg.min_particle_area = float(cfg.min_particle_area)
    metrics = validate(model, val, device=dev, detection=True) if val else {}
    metrics = {k: v for k, v in metrics.items()}
    if history:
        metrics["train_loss"] = history[-1]["train_loss"]
    lineage = _lineage(dataset, config, {"n_train": len(train_samples), "eval_split": val_split if val else None,
                                         "n_eval": len(val)}) if dataset is not None else \
        {"id": str(user_data), "hub": False, "n_train": len(train_samples), "n_eval": len(val),
         "eval_split": "user validation" if val else None}
    if user_data is not None:
        lineage["fine_tune_data"] = str(user_data)
    if dataset is not None and mcfg.pixel_size:  # the detector pixel sizes the training images cover

        rec = getattr(_dataset_imaging(dataset, config, mcfg.pixel_size), "recorded_pixel_size", None)
        if rec is not None:
            lineage["recorded_pixel_size"] = list(param_bounds(rec))
    training = {**cfg.to_dict(), "steps_done": step, "crop": crop, "device": dev.type, "amp": use_amp,
                "loss": f"cross-entropy + {cfg.dice_weight} x Dice", "optimizer": "Adam",
                "augmentation": "per-image standardisation, random crop, 8 dihedral transforms" + (
                    ", realistic degradations (median filter, blur, noise, gain field, clipping, 8-bit)"
                    if cfg.augment == "realistic" else ""),
                "time_s": round(time.time() - t0, 1)}

    model.to("cpu")
    save_pretrained(model, out, metrics=metrics, dataset=lineage, training=training, model_name=model_name)
    atomic_write_text(out / "history.json", json.dumps(finite(history), indent=1) + "\n")
    result["metrics"] = metrics
    result["time_s"] = round(time.time() - t0, 2)
    return result


def fine_tune(init_from: str | Path, out_dir: str | Path, *, dataset: str | Path | None = None,
              user_data: str | Path | None = None, freeze: str | None = "encoder", lr: float = 1e-4,
              **kw) -> dict:
    """Transfer learning: start from ``init_from`` (model folder, Hub id or checkpoint), freeze the
    ``encoder`` (default) or the ``decoder``, and train on a dataset split or a user folder (see
    :func:`train` for the other arguments)."""
    return train(dataset, out_dir, user_data=user_data, init_from=str(init_from), freeze=freeze, lr=lr, **kw)
