"""Segmentation-model throughput: U-Net/ResNet-18 (paper size, ~14 M parameters) training steps/s at
batch 8 × 256² crops (AMP on CUDA), the on-the-fly imaging's training batches/s beside them (key
``on_the_fly_imaging``, ``over_training_steps`` > 1: training need not wait on imaging) and tiled inference
megapixels/s on a 2048² micrograph; optionally a
baseline training run on a built dataset with its test-split metrics.

Prints one JSON object. Runs on CPU always (few steps) and on CUDA when available.
Usage: python benchmarks/segmentation.py [--steps 3] [--crop 256] [--batch 8]
       python benchmarks/segmentation.py --dataset DIR --config NAME --train-steps 500 --out /tmp/unet
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch


def train_throughput(device: torch.device, steps: int, crop: int, batch: int) -> dict:
    import segmentation_models_pytorch as smp

    from models import build_model

    model = build_model("tu-resnet18").to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ce, dice = torch.nn.CrossEntropyLoss(), smp.losses.DiceLoss("multiclass")
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, crop, crop, generator=g).to(device)
    y = (torch.rand(batch, crop, crop, generator=g) > 0.7).long().to(device)

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            logits = model(x)
            loss = ce(logits.float(), y) + dice(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    return {"params": int(sum(p.numel() for p in model.parameters())), "steps_per_s": steps / dt,
            "images_per_s": steps * batch / dt, "crop": crop, "batch": batch, "amp": amp}


def inference_throughput(device: torch.device, size: int) -> dict:
    from models import build_model
    from models.inference import predict_proba

    model = build_model("tu-resnet18")
    model.hrtem_config.pixel_size = 0.2
    img = np.random.default_rng(0).poisson(50, (size, size)).astype(np.float32)
    predict_proba(model, img[:256, :256], device=str(device))  # warm-up
    t = time.perf_counter()
    predict_proba(model, img, tile=512, overlap=64, batch_size=8, device=str(device))
    dt = time.perf_counter() - t
    return {"image": size, "tile": 512, "overlap": 64, "megapixels_per_s": size * size / 1e6 / dt, "seconds": dt}


def on_the_fly_throughput(device: torch.device, batches: int, crop: int, batch: int) -> dict:
    """Training batches/s of :class:`models.data.OnTheFlyImaging` (the ``exit_waves`` training path): 32 samples of
    8 phonon configurations at 640² (0.1 Å), imaged at 0.2 Å with a random defocus and dose 1000 e/Å², batch
    ``batch`` × ``crop``² crops (one batch of warm-up, which also moves the waves to an accelerator)."""
    from hrtem_dataset.specs import ImagingDistributionSpec
    from models.data import OnTheFlyImaging, WaveSample

    rng = np.random.default_rng(0)
    mask = np.zeros((320, 320), np.uint8)
    mask[100:200, 100:200] = 1
    samples = [WaveSample(np.exp(0.3j * rng.standard_normal((8, 640, 640))).astype(np.complex64), 0.1, 300e3, mask,
                          0.2, name=f"s{i}") for i in range(32)]
    spec = ImagingDistributionSpec(pixel_size=0.2, defocus={"min": -80.0, "max": 80.0}, dose=1000.0)
    stream = OnTheFlyImaging(samples, spec, crop=crop, batch_size=batch, seed=0, device=str(device),
                             samples_per_epoch=batch * (batches + 1))
    it = stream.epoch(0)
    next(it)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    n = sum(1 for _ in it)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    return {"batches_per_s": n / dt, "images_per_s": n * batch / dt, "batch": batch, "crop": crop,
            "waves": "8 x 640x640 complex64 per sample"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--infer-size", type=int, default=2048)
    ap.add_argument("--dataset", default=None, help="built dataset: also train a baseline and evaluate on test")
    ap.add_argument("--config", default=None)
    ap.add_argument("--train-steps", type=int, default=500)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--out", default="benchmark-unet")
    args = ap.parse_args()
    out: dict = {"benchmark": "models", "torch": torch.__version__, "machine": platform.machine(),
                 "threads": torch.get_num_threads()}
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devices:
        steps = args.steps if dev.type == "cpu" else max(args.steps, 20)
        out[dev.type] = {"train": train_throughput(dev, steps, args.crop, args.batch),
                         "inference": inference_throughput(dev, args.infer_size if dev.type == "cuda"
                                                           else min(args.infer_size, 1024))}
        otf = on_the_fly_throughput(dev, 2 if dev.type == "cpu" else 40, args.crop, args.batch)
        # > 1: the imaging makes batches faster than the model trains on them (on the same device, one after the
        # other, so the training step's real wait is 1 / this ratio of a step)
        otf["over_training_steps"] = otf["batches_per_s"] / out[dev.type]["train"]["steps_per_s"]
        out[dev.type]["on_the_fly_imaging"] = otf
        if dev.type == "cuda":
            out[dev.type]["name"] = torch.cuda.get_device_name()
    if args.dataset:
        from models import evaluate, train

        t = time.perf_counter()
        res = train(args.dataset, args.out, config=args.config, steps=args.train_steps, batch_size=16,
                    image_size=args.image_size, lr=1e-3, progress=False)
        ev = evaluate(args.out, args.dataset, args.config, "test")
        out["baseline"] = {"train_seconds": time.perf_counter() - t, "steps": res["steps"],
                           "validation": {k: res["metrics"].get(k) for k in ("iou", "f1", "precision", "recall")},
                           "test": {k: ev.get(k) for k in ("iou", "f1", "precision", "recall", "detection_f1",
                                                           "n_images")}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
