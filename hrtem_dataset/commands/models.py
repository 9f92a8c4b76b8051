"""``hrtem train``, ``hrtem evaluate`` and ``hrtem segment`` (segmentation models, :mod:`models`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from ..errors import InputError
from .options import device_option, quiet_option


def _check_pixel_size(value: float | None, flag: str) -> None:
    """A pixel size given on the command line is a positive, finite number of Å (even where it is unused)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise InputError(f"{flag}: must be a positive number of Å, got {value}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("evaluate")(evaluate_cmd)
    app.command("segment")(segment_cmd)


def train_cmd(
    out: Path = typer.Option(..., "--out", help="Output model folder (Hub model repo layout + checkpoints/)."),
    dataset: str = typer.Option(None, "--dataset", help="Built dataset folder or Hub dataset id."),
    config: str = typer.Option(None, "--config", help="Dataset configuration name."),
    encoder: str = typer.Option("tu-resnet18", "--encoder", help="Encoder: tu-<timm model> or an smp name."),
    encoder_depth: int = typer.Option(5, "--encoder-depth", help="U-Net depth (1-5)."),
    decoder_channels: str = typer.Option(None, "--decoder-channels", help="Comma-separated, e.g. 256,128,64,32,16."),
    epochs: int = typer.Option(5, "--epochs"),
    steps: int = typer.Option(None, "--steps", help="Total optimiser steps (overrides --epochs)."),
    batch_size: int = typer.Option(8, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr", help="(Peak) learning rate of Adam."),
    schedule: str = typer.Option("onecycle", "--schedule", help="onecycle | cosine | constant"),
    image_size: int = typer.Option(None, "--image-size", help="Random crop size (default: whole images)."),
    init_from: str = typer.Option(None, "--init-from", help="Model folder, Hub id or checkpoint to start from."),
    freeze: str = typer.Option(None, "--freeze", help="encoder | decoder (transfer learning)."),
    augment: str = typer.Option("dihedral", "--augment", help="dihedral | realistic (adds the degradations "
                                "of real recording and processing: median filter, blur, gain, clipping, 8-bit)."),
    user_data: Path = typer.Option(None, "--user-data", help="Folder of labelled micrographs to train on."),
    user_pixel_size: float = typer.Option(None, "--user-pixel-size", help="Pixel size (Å) of --user-data images."),
    seed: int = typer.Option(0, "--seed"),
    val_every: int = typer.Option(1, "--val-every", help="Validate every N epochs (and after the last)."),
    device: str = device_option(),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Resume from OUT/checkpoints/last.pt."),
    progress: bool = typer.Option(True, "--progress/--quiet", " /-q",
                                  help="Training progress (steps, loss, epochs) on stderr, or none."),
) -> None:
    """Train or fine-tune a U-Net segmentation model; prints the final metrics as one JSON line."""
    from hrtem_dataset import progress as _progress
    from models.evaluate import json_safe
    from models.train import train

    channels = None
    if decoder_channels:
        try:
            channels = tuple(int(c) for c in decoder_channels.split(","))
        except ValueError:
            raise InputError(f"--decoder-channels: expected integers like 64,32,16, got {decoder_channels!r}") from None
        if not all(1 <= c <= 4096 for c in channels):
            raise InputError(f"--decoder-channels: each must be in 1..4096, got {decoder_channels!r}")
    if dataset is None and user_data is None:
        raise InputError("--dataset or --user-data: training needs data")
    _check_pixel_size(user_pixel_size, "--user-pixel-size")
    _progress.set_enabled(progress)
    res = train(dataset, out, config=config, user_data=user_data, user_pixel_size=user_pixel_size,
                device=device, resume=resume, progress=progress, val_every=val_every, encoder=encoder, encoder_depth=encoder_depth,
                decoder_channels=channels, epochs=epochs, steps=steps, batch_size=batch_size, lr=lr,
                schedule=schedule, image_size=image_size, init_from=init_from, freeze=freeze, seed=seed,
                augment=augment)
    typer.echo(json.dumps(json_safe({**res["metrics"], "steps": res["steps"], "time_s": res["time_s"],
                                     "model_dir": res["model_dir"]})))


def evaluate_cmd(
    model: str = typer.Option(..., "--model", help="Model folder or Hub model id."),
    dataset: str = typer.Option(..., "--dataset", help="Dataset folder/Hub id, or a folder of labelled micrographs."),
    config: str = typer.Option(None, "--config", help="Dataset configuration name."),
    split: str = typer.Option("test", "--split"),
    pixel_size: float = typer.Option(None, "--pixel-size", help="Pixel size (Å) of micrograph-folder images."),
    device: str = device_option(),
    quiet: bool = quiet_option(),
    record: bool = typer.Option(False, "--record", help="Folder of real micrographs: store the result in "
                                "MODEL/real_evaluation.json and show it in the model card."),
    tta: str = typer.Option("none", "--tta", help="Test-time augmentation of the predictions (none, flips, d4; "
                            "see hrtem segment --tta)."),
) -> None:
    """Evaluate a model; prints ONE JSON line (iou, f1, precision, recall, detection statistics; for a folder
    of labelled micrographs pooled and per-image F1)."""
    from hrtem_dataset import progress
    from models.data import _is_user_folder
    from models.evaluate import evaluate, json_safe

    progress.set_enabled(not quiet)

    _check_pixel_size(pixel_size, "--pixel-size")
    if record and not (Path(model).is_dir() and _is_user_folder(Path(dataset))):
        raise InputError("--record: needs a local model folder and a folder of labelled micrographs")
    res = evaluate(model, dataset, config, split, pixel_size=pixel_size, device=device, tta=tta)
    if record:
        from models.hub import record_real_evaluation

        name = Path(dataset).resolve().name
        record_real_evaluation(model, name if tta == "none" else f"{name} (tta {tta})", res)
    typer.echo(json.dumps(json_safe(res)))


def segment_cmd(
    image: Path = typer.Argument(..., help="Micrograph (dm3, dm4, emd, ser, mrc, tif incl. FEI/Thermo, png, ...; see models.imageio), or a folder of them."),
    model: str = typer.Option(..., "--model", help="Model folder or Hub model id."),
    out: Path = typer.Option(..., "--out", help="Mask PNG (class indices 0/1; the CSV goes next to it); for a "
                             "folder: a new or empty output folder (NAME.png + NAME.csv + summary.csv)."),
    pixel_size: float = typer.Option(None, "--pixel-size", help="Pixel size in Å (overrides the file's calibration)."),
    pixel_sizes: Path = typer.Option(None, "--pixel-sizes", help="Folder mode: CSV name,pixel_size_angstrom "
                                     "(default: FOLDER/MANIFEST.csv when present, else each file's calibration)."),
    csv_path: Path = typer.Option(None, "--csv", help="Per-particle CSV (default: OUT with suffix .csv)."),
    tile: int = typer.Option(512, "--tile", help="Tile size for large images (pixels at the model's pixel size)."),
    overlap: int = typer.Option(64, "--overlap"),
    min_area: float = typer.Option(None, "--min-area", help="Drop predicted particles smaller than this many Å² "
                                   "(default: the model's min_particle_area; 0 keeps all)."),
    tta: str = typer.Option("none", "--tta", help="Test-time augmentation: none, flips (the mean over the "
                            "image's mirror images and 180° turn, 4 passes) or d4 (its 8 symmetries, 8 passes)."),
    device: str = device_option(),
    progress: bool = typer.Option(True, "--progress/--quiet", " /-q", help="Progress bar on stderr (folder mode)."),
) -> None:
    """Segment a micrograph or a folder of micrographs: mask PNG + per-particle CSV each; prints one JSON line."""
    from models.inference import check_tta, segment, segment_folder

    check_tta(tta)
    if not 16 <= tile <= 16384:
        raise InputError(f"--tile: must be in 16..16384 pixels, got {tile}")
    if not 0 <= overlap <= tile // 2:
        raise InputError(f"--overlap: must be in 0..{tile // 2} pixels (half of --tile), got {overlap}")
    if image.is_dir():
        if csv_path is not None:
            raise InputError("--csv: not used for a folder (each image gets OUT/NAME.csv)")
        res = segment_folder(image, model, out, pixel_size=pixel_size, pixel_sizes=pixel_sizes, tile=tile,
                             overlap=overlap, device=device, progress=progress, min_area=min_area,
                             tta=tta)
        typer.echo(json.dumps(res))
        return
    if pixel_sizes is not None:
        raise InputError("--pixel-sizes: only for a folder of micrographs (use --pixel-size for one image)")
    if out.suffix.lower() != ".png":
        raise InputError(f"--out {out}: the mask is written as PNG, use a .png name")
    res = segment(image, model, out=out, csv_path=csv_path, pixel_size=pixel_size, tile=tile, overlap=overlap,
                  device=device, min_area=min_area, tta=tta)
    typer.echo(json.dumps({"mask": res["mask_path"], "csv": res["csv_path"], "shape": list(res["mask"].shape),
                           "particles": len(res["particles"]), "pixel_size": res["pixel_size"],
                           "pixel_size_source": res["pixel_size_source"]}))
