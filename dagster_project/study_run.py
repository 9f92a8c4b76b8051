"""Run a study's asset graph in process (``hrtem study run SPEC.yaml --out DIR``), like
:func:`dagster_project.run.materialize_config` for a dataset configuration.

Order of runs: ``evaluation_sets``; ``variant_datasets``; one run per ``trained_models`` partition
(``variant|seed``); ``evaluation_matrix``; ``study_report``. The SQLite instance lives in ``DIR/.dagster``,
intermediate artifacts in ``$HRTEM_HOME`` (else ``DIR/.hrtem``) and the report in ``DIR/study/``.
Resuming after a kill: finished datasets, models (fingerprinted) and evaluations (cached per model and
set) are reused; an interrupted training resumes from its checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from hrtem_dataset.errors import InputError
from hrtem_dataset.settings import get_settings
from hrtem_dataset.studies.build import check_transfer

from .resources import PublishTarget, SimulationEngine, Workspace
from .run import QUIET_LOGS, _unwrap
from .studies import build_study_assets, load_study_source


def validate_study(spec_path: str | Path) -> None:
    """Every check that needs no computation: the spec, its datasets and the transfer folder (k vs its
    images). Raises a one-line InputError; writes nothing."""
    src = load_study_source(spec_path)
    check_transfer(src.study)


def run_study(spec_path: str | Path, out_dir: str | Path, *, workspace: str | Path | None = None,
              engine: str | None = None, device: str | None = None,
              echo: Callable[[str], None] = print) -> dict:
    src = load_study_source(spec_path)
    study = src.study
    check_transfer(study)  # k larger than the real folder allows: one line, before anything is written
    out = Path(out_dir).resolve()
    root = get_settings().workspace(workspace, default=out / ".hrtem")
    assets = build_study_assets(src)
    resources = {"workspace": Workspace(root=str(root)), "simulation": SimulationEngine(engine=engine, device=device),
                 "publish_target": PublishTarget(local_dir=str(out))}
    g = src.group
    out.mkdir(parents=True, exist_ok=True)
    home = out / ".dagster"
    home.mkdir(exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    t_start = time.perf_counter()
    summary = {"study": study.name, "group": g, "spec": str(src.path), "workspace": str(root),
               "dagster_home": str(home), "report": str(out / "study"), "runs": 0}
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as instance:

        def run(name: str, partition: str | None = None) -> dg.ExecuteInProcessResult:
            label = name + (f" [{partition}]" if partition else "")
            t0 = time.perf_counter()
            try:
                res = dg.materialize(assets, selection=[dg.AssetKey([g, name])], partition_key=partition,
                                     instance=instance, resources=resources, run_config=QUIET_LOGS,
                                     tags={"hrtem/study": g, "hrtem/source": "hrtem study run"})
            except Exception as exc:  # noqa: BLE001 - the user error as is, else one RuntimeError
                inner = _unwrap(exc)
                if isinstance(inner, InputError):
                    raise inner from None
                raise RuntimeError(f"{label}: {type(inner).__name__}: {inner} (full logs: DAGSTER_HOME={home} "
                                   f"dagster dev -m dagster_project)") from exc
            summary["runs"] += 1
            echo(f"  {label}: done in {time.perf_counter() - t0:.1f} s (run {res.run_id[:8]})")
            return res

        echo(f"study {study.name}: {len(study.variants)} variants × {study.spec.seeds} seeds, "
             f"{len(study.datasets)} datasets (group {g})")
        run("evaluation_sets")
        run("variant_datasets")
        for part in study.partition_keys():
            run("trained_models", part)
        run("evaluation_matrix")
        run("study_report")
    summary["seconds"] = time.perf_counter() - t_start
    return summary
