"""``hrtem study run SPEC.yaml --out DIR`` and ``hrtem study report DIR``: studies of training-set variants."""

from __future__ import annotations

from pathlib import Path

import typer

from .options import Engine, device_override_option, engine_override_option, quiet_option, workspace_option

study_app = typer.Typer(help="Studies: models trained on variants of a dataset, evaluated on identical sets.",
                        no_args_is_help=True)


@study_app.command("run")
def run_command(
    spec: Path = typer.Argument(..., help="study YAML (configs/studies/*.yaml)"),
    out: Path = typer.Option(..., "--out", help="output folder: DIR/study/ (report), DIR/.dagster, DIR/.hrtem"),
    workspace: Path | None = workspace_option(),
    engine: Engine | None = engine_override_option("configs'"),
    device: str | None = device_override_option("configs'"),
    quiet: bool = quiet_option(),
) -> None:
    """Materialize the study's assets in process (resumable: finished datasets, models and evaluations are
    reused) and write DIR/study/: study.json, README.md (study card) and plots/*.png."""
    from hrtem_dataset import progress

    from .materialize import check_out_folder, run_graph

    progress.set_enabled(not quiet)
    check_out_folder(out)
    from dagster_project.study_run import run_study, validate_study

    validate_study(spec)  # bad spec or k too large for the real folder: exit 2, nothing written
    summary = run_graph(run_study, spec, out, workspace=workspace, engine=engine.value if engine else None,
                        device=device)
    typer.echo(f"report: {summary['report']}")
    typer.echo(f"time:   {summary['seconds']:.1f} s ({summary['runs']} runs)")


@study_app.command("report")
def report_command(folder: Path = typer.Argument(..., help="a study folder (with study.json) or a --out DIR"),
                   quiet: bool = quiet_option()) -> None:  # noqa: ARG001 - nothing on stderr but errors
    """Re-render README.md and plots/*.png of a study folder from its study.json."""
    from hrtem_dataset.studies import render_report

    res = render_report(folder)
    typer.echo(f"report: {res['path']} ({len(res['files'])} files)")


def register(app: typer.Typer) -> None:
    app.add_typer(study_app, name="study")
