"""Sim-to-real: how well a model trained on simulated data segments REAL labelled micrographs.

Evaluates a model folder (or Hub id) on a folder of labelled micrographs in the lab layout
(``images/`` + ``masks/`` + ``MANIFEST.csv`` with ``name,pixel_size_angstrom``), by default the shared
development set ``../shared/real-dev`` next to the repository, and prints ONE JSON object: pooled pixel
F1/IoU/precision/recall over all images, the mean per-image F1, particle detection F1 and the per-image
F1 with each image's pixel size. The folder's images are read only; nothing derived from them is written.

Usage: python benchmarks/real_dev.py --model build/au-generalist-cpu/model [--folder DIR] [--device cpu]
[--tta none|flips|d4]   (test-time augmentation of the predictions, see models.inference.predict_proba)
When the folder is absent it prints {"skipped": "..."} and exits 0.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "shared" / "real-dev"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model folder or Hub id")
    ap.add_argument("--folder", default=str(DEFAULT_FOLDER), help="labelled micrographs (images/ + masks/)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tta", default="none", choices=("none", "flips", "d4"), help="test-time augmentation")
    args = ap.parse_args()
    folder = Path(args.folder)
    if not (folder / "images").is_dir():
        print(json.dumps({"benchmark": "real_dev", "skipped": f"{folder} not found"}))
        return
    import torch

    from models.evaluate import evaluate, json_safe

    t0 = time.perf_counter()
    res = evaluate(args.model, user_data=folder, device=args.device, tta=args.tta)
    keys = ("f1", "iou", "precision", "recall", "f1_image_mean", "detection_f1", "n_images",
            "n_true_particles", "n_pred_particles", "n_matched_particles")
    out = {"benchmark": "real_dev", "model": str(args.model), "folder": str(folder), "tta": args.tta,
           **{f"pooled_{k}" if k in ("f1", "iou", "precision", "recall") else k: res[k] for k in keys},
           "per_image": res["per_image"], "seconds": round(time.perf_counter() - t0, 2),
           "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}}
    print(json.dumps(json_safe(out)))


if __name__ == "__main__":
    main()
