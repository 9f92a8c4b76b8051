"""``hrtem materialize CONFIG.yaml [--out DIR]``: the whole Dagster asset graph of one configuration."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from .options import Engine, device_override_option, engine_override_option, quiet_option, workspace_option


def run_graph(run, *args, **kw) -> dict:
    """Run an in-process Dagster graph (``run(*args, echo=..., **kw)``) with progress on stderr (a rich display
    of stages, shards and training steps, with the stage log above it; nothing with --quiet); a failed
    step or blocking check (RuntimeError) becomes one ``error:`` line and exit code 1 (user errors, an
    InputError, propagate: exit 2)."""
    from hrtem_dataset import progress

    try:
        with progress.display():
            return run(*args, echo=progress.note, **kw)
    except RuntimeError as exc:
        typer.echo(f"error: {' '.join(str(exc).split())[:2000]}", err=True)
        raise typer.Exit(1) from None


def check_out_folder(out: Path) -> None:
    """``--out`` of an in-process graph run: a folder (new or existing, a previous run's to resume) that can be
    written; else :class:`InputError`, before Dagster is imported or anything is written."""
    from hrtem_dataset.errors import InputError
    from hrtem_dataset.io import check_output_file

    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {out} exists and is not a folder")
    check_output_file(out / ".write-check", "--out")  # inside a file or unwritable (the name is never created)


def materialize_command(
    config: Path = typer.Argument(..., help="dataset configuration YAML (a DatasetSpec, e.g. configs/demo.yaml)"),
    out: Path = typer.Option(Path("build"), "--out", help="output folder: DIR/dataset, DIR/model"),
    workspace: Path | None = workspace_option(),
    engine: Engine | None = engine_override_option("config's"),
    device: str | None = device_override_option("config's"),
    quiet: bool = quiet_option(),
) -> None:
    """Materialize every asset of CONFIG in process with a local Dagster instance (SQLite in DIR/.dagster).

    Writes DIR/dataset/ (a Hub dataset repo: README.md + data/<config>/*.parquet) and, when the spec has
    a `model` section, DIR/model/ (a Hub model repo). Rerunning resumes: finished shards are skipped.
    """
    from hrtem_dataset import progress
    from hrtem_dataset.specs import DatasetSpec, load_spec

    progress.set_enabled(not quiet)
    load_spec(config, DatasetSpec)  # bad config: exit 2 with one line, before anything is written
    check_out_folder(out)
    from dagster_project.run import materialize_config

    summary = run_graph(materialize_config, config, out, workspace=workspace,
                        engine=engine.value if engine else None, device=device)

    cfg = Path(summary["config"])
    env = (f"DAGSTER_HOME={shlex.quote(summary['dagster_home'])} HRTEM_HOME={shlex.quote(summary['workspace'])} "
           f"HRTEM_CONFIGS={shlex.quote(str(cfg))} HRTEM_PUBLISH_DIR={shlex.quote(str(out.resolve()))}")
    typer.echo(f"dataset: {summary['dataset']}")
    if summary.get("model"):
        typer.echo(f"model:   {summary['model']}")
    typer.echo(f"time:    {summary['seconds']:.1f} s ({len(summary['shards_run'])} shards run, "
               f"{len(summary['shards_skipped'])} reused)")
    typer.echo(f"load it: datasets.load_dataset({summary['dataset']!r}, {summary['config_name']!r})")
    typer.echo(f"browse the runs, metadata and previews: {env} {dev_command()} "
               f"(then open http://127.0.0.1:3000, asset group {summary['group']!r})")


def dev_command() -> str:
    """The command that starts the Dagster UI on this project: ``dg dev`` (what Dagster recommends, no
    deprecation warning) with the project folder and its virtual environment; ``dagster dev -m
    dagster_project`` when the package is installed without its project folder (no pyproject.toml)."""
    import dagster_project

    root = Path(dagster_project.__file__).resolve().parents[1]
    bindir = Path(sys.executable).parent
    if (root / "pyproject.toml").is_file() and (bindir / "dg").exists():
        venv = bindir.parent
        return f"VIRTUAL_ENV={shlex.quote(str(venv))} {shlex.quote(str(bindir / 'dg'))} dev --target-path " \
               f"{shlex.quote(str(root))}"
    return f"{shlex.quote(str(bindir / 'dagster'))} dev -m dagster_project"


def register(app: typer.Typer) -> None:
    app.command("materialize")(materialize_command)
