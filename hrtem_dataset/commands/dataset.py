"""``hrtem publish`` and ``hrtem dataset card|check``: Hub publishing and dataset-folder maintenance."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .options import quiet_option

dataset_app = typer.Typer(help="Dataset folders laid out as Hugging Face dataset repos.", no_args_is_help=True)


def publish_command(
    folder: Path = typer.Argument(..., help="dataset or model folder (laid out as a Hub repo)"),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub repo, ORG/NAME"),
    revision: str | None = typer.Option(None, "--revision", help="tag to create (default: v<version>)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the files that would be uploaded, upload nothing"),
    private: bool | None = typer.Option(None, "--private/--public", help="visibility when the repo is created"),
    quiet: bool = quiet_option(),
) -> None:
    """Upload a built dataset or model folder to the Hub (create_repo, upload_folder, create_tag).

    The token comes from $HF_TOKEN or the login cache and is never printed. --dry-run prints exactly the
    files that would be uploaded, one per line, on stdout (a summary and the card's load snippets, with the
    real repo id, go to stderr).
    """
    from ..dataset.publish import publish

    result = publish(folder, repo_id, revision=revision, dry_run=dry_run, private=private)
    if dry_run:
        for f in result.files:
            typer.echo(f)
        if quiet:
            return
        typer.echo(f"dry run: would upload {len(result.files)} files ({result.num_bytes} bytes) to "
                   f"{result.repo_type} repo {result.repo_id}" + (f", tag {result.tag}" if result.tag else ""),
                   err=True)
        for line in (result.card or "").splitlines():  # the card's load snippets, with the real repo id
            if result.repo_id in line:
                typer.echo(f"card: {line.strip()}", err=True)
    else:
        typer.echo(f"uploaded {len(result.files)} files to {result.repo_type} repo {result.repo_id}"
                   + (f" (commit {result.commit})" if result.commit else "")
                   + (f", tagged {result.tag}" if result.tag else ""))
    for note in [] if quiet else result.notes:
        typer.echo(f"note: {note}", err=True)


@dataset_app.command("card")
def card_command(folder: Path = typer.Argument(..., help="dataset folder"),
                 quiet: bool = quiet_option()) -> None:  # noqa: ARG001 - nothing on stderr but errors
    """Regenerate README.md (dataset card) from every configuration in the folder."""
    from ..dataset.card import write_dataset_card

    typer.echo(str(write_dataset_card(folder)))


@dataset_app.command("check")
def check_command(
    folder: Path = typer.Argument(..., help="dataset folder"),
    config: list[str] = typer.Option(None, "--config", help="configuration(s) to check (default: all)"),
    quiet: bool = quiet_option(),  # noqa: ARG001 - nothing on stderr but errors
) -> None:
    """Check that no structure id appears in two splits; one JSON line per configuration, exit 2 on a leak."""
    from ..dataset.card import read_configs
    from ..dataset.checks import check_no_leakage
    from ..errors import InputError

    known = [spec.config_name for spec, _ in read_configs(folder)]
    names = config or known
    if not names:
        raise InputError(f"{folder}: no dataset configuration found")
    for name in names:  # a name, never a path: nothing outside the dataset folder is read
        if name not in known:
            raise InputError(f"--config {name!r}: not a configuration of {folder} "
                             f"(has: {', '.join(known) or 'none'})")
    failed = []
    for name in names:
        report = check_no_leakage(folder, name)
        if not report.passed:
            failed.append(name)
        typer.echo(json.dumps({"config": name, "passed": report.passed, "structures": report.structures,
                               "shared": report.shared}))
    if failed:
        raise InputError(f"{folder}: structures shared between splits in configuration(s) {', '.join(failed)}")


def register(app: typer.Typer) -> None:
    app.command("publish")(publish_command)
    app.add_typer(dataset_app, name="dataset")
