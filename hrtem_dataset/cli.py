"""The ``hrtem`` command (typer + rich).

Each command group lives in ``hrtem_dataset/commands/<group>.py`` and registers itself on the root app
through ``register(app)``; heavy libraries (torch, dagster, datasets) are imported inside the commands so
that ``hrtem --help`` stays fast. Bad input raises :class:`~hrtem_dataset.errors.InputError`, printed
as one line ``error: ...`` on stderr with exit code 2.

Shared options (:mod:`hrtem_dataset.commands.options`): ``--device`` (default ``auto``, checked before any
work), ``--engine`` (choices), ``--quiet``/``-q`` on every command (progress goes to stderr, never to the
JSON on stdout; see :mod:`hrtem_dataset.progress`).
"""

from __future__ import annotations

import importlib
import sys

import typer

from . import __version__
from .errors import InputError

app = typer.Typer(
    name="hrtem",
    help="Simulated HRTEM datasets: structures, exit waves, imaging, labels, datasets, models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_COMMAND_MODULES = ["structures", "simulate", "dataset", "models", "materialize", "study", "validate"]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", is_eager=True, callback=_print_version,
                                       help="Print the package version and exit.")) -> None:
    """Simulated HRTEM datasets: structures, exit waves, imaging, labels, datasets, models."""


for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"hrtem_dataset.commands.{_name}")
    except ModuleNotFoundError as _exc:  # a command group not written yet
        if _exc.name != f"hrtem_dataset.commands.{_name}":
            raise
        continue
    _mod.register(app)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit (used by commands for non-exception failures)."""
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    raise typer.Exit(code)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: runs the app, mapping InputError to exit code 2."""
    try:
        rc = app(args=argv, standalone_mode=False)
    except InputError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except OSError as exc:  # unwritable/missing output paths, a directory given for a file, ...
        where = exc.filename if exc.filename is not None else ""
        typer.echo(f"error: {where}: {exc.strerror or exc}" if where else f"error: {exc}", err=True)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:  # click usage errors in standalone_mode=False surface as exceptions below
        return int(exc.code or 0)
    except Exception as exc:  # click usage errors (typer may vendor its own click)
        if type(exc).__name__ == "NoArgsIsHelpError" and hasattr(exc, "show"):  # `hrtem` alone: the help
            exc.show()
            return int(exc.exit_code or 2)
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            # usage errors (bad number on a flag, missing option, unknown option): one line like the rest
            ctx = getattr(exc, "ctx", None)
            where = f" (see: hrtem {' '.join(ctx.command_path.split()[1:])} --help)".replace("  ", " ") if ctx else ""
            typer.echo(f"error: {' '.join(exc.format_message().split())}{where}", err=True)
            return 2 if exc.exit_code in (None, 0, 1) and "Usage" in type(exc).__name__ else int(exc.exit_code or 2)
        if type(exc).__name__ == "Abort":
            typer.echo("aborted", err=True)
            return 1
        raise
    return int(rc or 0) if isinstance(rc, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
