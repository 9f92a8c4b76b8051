"""``hrtem materialize CONFIG.yaml [--out DIR]``: the whole Dagster asset graph of one configuration."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer


def run_graph(run, *args, **kw) -> dict:
    """Run an in-process Dagster graph (``run(*args, echo=..., **kw)``) with progress on stderr; a failed
    step or blocking check (RuntimeError) becomes one ``error:`` line and exit code 1 (user errors, an
    InputError, propagate: exit 2)."""
    try:
        return run(*args, echo=lambda s: typer.echo(s, err=True), **kw)
    except RuntimeError as exc:
        typer.echo(f"error: {' '.join(str(exc).split())[:2000]}", err=True)
        raise typer.Exit(1) from None


def materialize_command(
    config: Path = typer.Argument(..., help="dataset configuration YAML (a DatasetSpec, e.g. configs/demo.yaml)"),
    out: Path = typer.Option(Path("build"), "--out", help="output folder: DIR/dataset, DIR/model"),
    workspace: Path | None = typer.Option(None, "--workspace",
                                          help="intermediate artifacts (default $HRTEM_HOME, else DIR/.hrtem)"),
    engine: str | None = typer.Option(None, "--engine", help="override the multislice engine (torch|abtem|prismatic)"),
    device: str | None = typer.Option(None, "--device", help="override the device (auto|cpu|cuda)"),
) -> None:
    """Materialize every asset of CONFIG in process with a local Dagster instance (SQLite in DIR/.dagster).

    Writes DIR/dataset/ (a Hub dataset repo: README.md + data/<config>/*.parquet) and, when the spec has
    a `model` section, DIR/model/ (a Hub model repo). Rerunning resumes: finished shards are skipped.
    """
    from hrtem_dataset.errors import InputError
    from hrtem_dataset.specs import DatasetSpec, load_spec

    load_spec(config, DatasetSpec)  # bad config: exit 2 with one line, before anything is written
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {out} exists and is not a folder")

    from dagster_project.run import materialize_config

    summary = run_graph(materialize_config, config, out, workspace=workspace, engine=engine, device=device)

    cfg = Path(summary["config"])
    env = (f"DAGSTER_HOME={shlex.quote(summary['dagster_home'])} HRTEM_HOME={shlex.quote(summary['workspace'])} "
           f"HRTEM_CONFIGS={shlex.quote(str(cfg))} HRTEM_PUBLISH_DIR={shlex.quote(str(out.resolve()))}")
    dagster = Path(sys.executable).with_name("dagster")
    typer.echo(f"dataset: {summary['dataset']}")
    if summary.get("model"):
        typer.echo(f"model:   {summary['model']}")
    typer.echo(f"time:    {summary['seconds']:.1f} s ({len(summary['shards_run'])} shards run, "
               f"{len(summary['shards_skipped'])} reused)")
    typer.echo(f"load it: datasets.load_dataset({summary['dataset']!r}, {summary['config_name']!r})")
    typer.echo(f"browse the runs, metadata and previews: {env} {dagster} dev -m dagster_project "
               f"(then open http://127.0.0.1:3000, asset group {summary['group']!r})")


def register(app: typer.Typer) -> None:
    app.command("materialize")(materialize_command)
