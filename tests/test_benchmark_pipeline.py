"""benchmarks/pipeline.py on the tiny configuration: one capped structure, no Dagster (no timing assertions)."""

from __future__ import annotations

import importlib.util
import math
import statistics
from pathlib import Path

import torch
from dagster_helpers import isolated_hf_datasets_cache, tiny_spec_dict, write_tiny_config  # noqa: F401 (autouse fixture)

from hrtem_dataset import pipeline as pl
from hrtem_dataset.specs import DatasetSpec
from hrtem_dataset.workspace import structure_specs_path

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "pipeline.py"
_spec = importlib.util.spec_from_file_location("benchmark_pipeline", _path)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_cap_keeps_the_first_structures_seeds_and_splits(tmp_path):
    spec = DatasetSpec.model_validate(tiny_spec_dict(model=False, train=1, validation=1, test=1, shard_size=3))
    capped = bench.cap_structures(spec, 2)
    assert list(capped.shard_indices(0)) == [0, 1] and capped.n_structures == 2
    pl.plan_structures(spec, tmp_path / "full")
    pl.plan_structures(capped, tmp_path / "capped")
    full_lines = structure_specs_path(spec, tmp_path / "full").read_text().splitlines()
    assert structure_specs_path(capped, tmp_path / "capped").read_text().splitlines() == full_lines[:2]
    assert bench.cap_structures(spec, 99).shard_size == 3  # never more than shard 0


def test_main_reports_rate_stages_and_memory(tmp_path):
    config = write_tiny_config(tmp_path, model=False)
    out = bench.main([str(config), "--structures", "1", "--no-dagster"])
    assert out["structures_cap"] == 1 and out["shard_structures"] == 1
    assert out["dagster_resumed_partition_run_s"] is None and out["dagster_resumed_partition_warm_s"] is None
    assert out["labelled_rows"] == 1 and out["labelled_rows_are"] == "images"
    stage_s = out["structures_s"] + out["exit_waves_s"] + out["imaging_s"]
    assert math.isclose(out["labelled_stages_s"], stage_s, abs_tol=2e-3)
    # labelled_stages_s is printed rounded to 1 ms: its relative error is up to 0.5 ms / the (sub-second) total
    assert math.isclose(out["labelled_images_per_hour"], out["labelled_rows"] / out["labelled_stages_s"] * 3600,
                        rel_tol=1e-3 + 5e-4 / out["labelled_stages_s"], abs_tol=0.1)
    assert set(out["peak_rss_mib"]) == set(bench.STAGES)
    # the shares the targets are stated in (calibration within the images stage, exit waves in the shard)
    assert 0 < out["zero_defocus_calibration_share_of_imaging"] < 1 and out["images_workers"] == 1  # 1 structure
    # both seconds are printed rounded to 1 ms (h) and the share to 1e-3, so the printed share lies within
    # [(n - h) / (d + h), (n + h) / (d - h)] ± 0.5e-3 — a wide interval for this tiny config's sub-second stages
    h = 5e-4
    for share, num, den in (("zero_defocus_calibration_share_of_imaging", "zero_defocus_calibration_s", "imaging_work_s"),
                            ("exit_waves_share_of_labelled_stages", "exit_waves_s", "labelled_stages_s")):
        n, d = out[num], out[den]
        assert (n - h) / (d + h) - h - 1e-9 <= out[share] <= (n + h) / (d - h) + h + 1e-9, (share, n, d)
    assert all(out["peak_rss_mib"][k] >= out["import_rss_mib"][k] > 0 for k in bench.STAGES)
    assert out["all_stages_under_4gb"] is True
    # the shared particle transform is timed apart from the calibration (both parts of the stage's work)
    assert 0 < out["particle_spectrum_s"] and out["particle_spectrum_s"] + out["zero_defocus_calibration_s"] <= \
        out["imaging_work_s"] + 1e-3
    for key in ("config", "device", "engine", "structures_atoms_per_s", "exit_waves_per_s", "simulation_atoms_per_s",
                "images_per_s", "zero_defocus_calibration_s", "shard_total_s", "peak_rss_method", "load_average_before"):
        assert key in out
    assert out["images_workers_ab"] is None  # only with --images-workers-ab


def test_images_workers_ab_reruns_the_images_stage_alternately(tmp_path):
    config = write_tiny_config(tmp_path, model=False)
    out = bench.main([str(config), "--structures", "2", "--no-dagster", "--images-workers-ab"])
    ab = out["images_workers_ab"]
    assert ab["workers"] == out["images_workers"] == min(2, torch.get_num_threads())  # 2 structures, ≤ 1 per thread
    assert len(ab["default_s"]) == len(ab["one_worker_s"]) == 2 and min(ab["default_s"] + ab["one_worker_s"]) > 0
    assert math.isclose(ab["speedup"], statistics.median(ab["one_worker_s"]) / statistics.median(ab["default_s"]),
                        rel_tol=1e-2)


def test_fft_floor_counts_the_multislice_transforms(tmp_path):
    """The exit-wave stage's FFTs are counted by the engine and run on their own: every transmission function is
    one irfft2 (the potential; used as it is, the default scheme: no band-limiting pair), every propagation one
    fft2/ifft2 pair (a wave's last propagation, after its last non-empty slice, one more)."""
    config = write_tiny_config(tmp_path, model=False)
    out = bench.main([str(config), "--structures", "1", "--no-dagster"])
    floor = out["exit_waves_fft_floor"]
    count = floor["count"]
    assert count["irfft2"] > 0 and count["rfft2"] >= count["irfft2"] // 2
    assert 2 * count["irfft2"] <= count["fft2_or_ifft2"] < 4 * count["irfft2"] and count["fft2_or_ifft2"] % 2 == 0
    assert floor["threads"] == torch.get_num_threads() and len(floor["runs_s"]) == 2
    assert floor["wall_s"] == min(floor["runs_s"]) > 0
    # both seconds are printed rounded to 1 ms (h) and the ratio to 0.01: the printed ratio lies in
    # [(n - h) / (d + h), (n + h) / (d - h)] ± 0.005 (a wide interval for this tiny config's milliseconds)
    h, n, d = 5e-4, out["exit_waves_s"], floor["wall_s"]
    assert (n - h) / (d + h) - 0.005 - 1e-9 <= out["exit_waves_over_fft_floor"] <= (n + h) / (d - h) + 0.005 + 1e-9
    assert math.isclose(out["labelled_images_per_hour_fft_bound"], out["labelled_rows"] / floor["wall_s"] * 3600,
                        rel_tol=1e-3 + 5e-4 / floor["wall_s"], abs_tol=0.1)  # wall_s printed to 1 ms


def test_workspace_reuses_structures_built_elsewhere(tmp_path, monkeypatch):
    """--structures-only builds the structures into --workspace; a later run there keeps the plan and the
    structures (a GPU image without pymatgen cannot plan them) and computes the other stages."""
    import pytest

    config = write_tiny_config(tmp_path, model=False)
    ws = tmp_path / "ws"
    with pytest.raises(SystemExit) as e:
        bench.main([str(config), "--structures-only"])
    assert e.value.code == 2
    built = bench.main([str(config), "--structures", "1", "--workspace", str(ws), "--structures-only"])
    assert built["stats"]["computed"] == 1
    plan = next(ws.rglob("structure_specs.jsonl"))
    before = plan.stat().st_mtime_ns
    monkeypatch.setattr(pl, "plan_structures", lambda *a, **k: (_ for _ in ()).throw(AssertionError("planned")))
    out = bench.main([str(config), "--structures", "1", "--workspace", str(ws), "--no-dagster"])
    assert (out["structures_reused"], out["exit_waves_reused"], out["images_reused"]) == (1, 0, 0)
    assert plan.stat().st_mtime_ns == before and out["labelled_rows"] == 1
    again = bench.main([str(config), "--structures", "1", "--workspace", str(ws), "--no-dagster"])
    assert (again["structures_reused"], again["exit_waves_reused"], again["images_reused"]) == (1, 1, 1)
