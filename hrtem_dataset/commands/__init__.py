"""CLI command groups; each module exposes ``register(app: typer.Typer)``.

The commands import what they run (the library, :mod:`models`, :mod:`dagster_project`, torch) inside the
command function: ``hrtem --help`` and a bad argument answer without loading torch or Dagster. These
function-level imports dodge no cycle (the CLI is the top layer, ``tests/test_architecture.py``)."""
