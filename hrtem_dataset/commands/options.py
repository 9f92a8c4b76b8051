"""Options shared by the commands: ``--device`` (default ``auto`` everywhere, checked before any work),
``--engine`` (a choice shown in ``--help``) and ``--quiet`` (no progress on stderr); ``--workspace``,
``--engine`` and ``--device`` overrides of the in-process graph runs (``hrtem materialize``, ``hrtem study run``).
Each is a factory returning a fresh ``typer.Option`` for a parameter default."""

from __future__ import annotations

import re
from enum import StrEnum

import typer

from ..errors import InputError

DEVICE_METAVAR = "[auto|cpu|cuda|cuda:N]"
SIM_DEVICE_METAVAR = "[auto|cpu|cuda]"


class Engine(StrEnum):
    """Multislice engines."""

    torch = "torch"
    abtem = "abtem"
    prismatic = "prismatic"


def check_device(value: str | None, option: str = "--device", *, indexed: bool = True) -> str | None:
    """``value`` when it names a usable device (``auto``, ``cpu``, ``cuda``, ``cuda:N``; see
    :func:`models.device.resolve_device`), else :class:`InputError` (one line, exit 2). ``indexed=False``:
    the simulation takes ``auto``, ``cpu`` or ``cuda`` only. None (no override) passes."""
    if value is None:
        return None
    v = str(value).strip().lower()
    if not indexed and v not in ("auto", "cpu", "cuda"):
        raise InputError(f"{option}: unknown device {value!r} (use auto, cpu or cuda)")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v):
        raise InputError(f"{option}: unknown device {value!r} (use auto, cpu, cuda or cuda:N)")
    if v != "auto":
        from models.device import resolve_device

        resolve_device(v, option)
    return v


def _device_callback(value):
    return check_device(value)


def _sim_device_callback(value):
    return check_device(value, indexed=False)


def device_option(default: str | None = "auto", *, simulation: bool = False, help: str | None = None):  # noqa: A002
    """``--device`` with the default ``auto`` (CUDA when available, else the CPU), validated up front."""
    text = help or ("auto = CUDA when available, else the CPU")
    return typer.Option(default, "--device", metavar=SIM_DEVICE_METAVAR if simulation else DEVICE_METAVAR,
                        help=text, callback=_sim_device_callback if simulation else _device_callback)


def quiet_option():
    return typer.Option(False, "--quiet", "-q", help="No progress display or notes on stderr (errors still are).")


def workspace_option():
    """``--workspace`` of an in-process graph run (the intermediate artifacts)."""
    return typer.Option(None, "--workspace", help="intermediate artifacts (default $HRTEM_HOME, else DIR/.hrtem)")


def engine_override_option(source: str):
    """``--engine`` overriding the multislice engine of ``source`` (e.g. ``"config's"``)."""
    return typer.Option(None, "--engine", help=f"override the {source} multislice engine")


def device_override_option(source: str):
    """``--device`` overriding the device of ``source`` (simulation devices; no override by default)."""
    return device_option(None, simulation=True, help=f"override the {source} device (the shipped configs say "
                         "auto = CUDA when available, else the CPU)")
