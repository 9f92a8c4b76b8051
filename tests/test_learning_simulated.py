"""Learning on simulated HRTEM data, end to end: `configs/demo.yaml` (the `make demo` configuration:
8 structures, 64 Å cells, 300 kV multislice with frozen phonons, random defocus/Cs/dose, phase labels)
is materialized by the real Dagster graph, a ResNet-18 U-Net is trained on it from scratch, and the
held-out metrics must show that it learned: the loss falls by more than half and the test F1 is ≥ 0.8
(measured 0.91; validation 0.81). The F1 ≥ 0.8 validation criterion on a larger synthetic set is in
tests/test_models.py."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from dagster_helpers import isolated_hf_datasets_cache  # noqa: F401 (autouse fixture)

from dagster_project.run import materialize_config

REPO = Path(__file__).resolve().parents[1]


def test_unet_learns_on_the_simulated_demo_dataset(tmp_path):
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data["model"]["steps"] = 80  # the demo's 40 steps, doubled for a margin over the F1 floor
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    summary = materialize_config(cfg, tmp_path / "out", workspace=tmp_path / "ws", echo=lambda s: None)
    model = Path(summary["model"])
    history = json.loads((model / "history.json").read_text())
    evaluation = json.loads((model / "evaluation.json").read_text())
    validation = json.loads((model / "hrtem.json").read_text())["metrics"]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert evaluation["split"] == "test" and evaluation["metrics"]["f1"] >= 0.8, evaluation
    # the validation split is 1 structure (2 images): measured 0.81 here, so the floor leaves CPU-to-CPU room
    assert validation["f1"] >= 0.75, validation
