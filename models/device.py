"""The ``--device`` option of ``hrtem train``, ``hrtem evaluate`` and ``hrtem segment``, checked up front:
:func:`hrtem_dataset.device.resolve_device` (one rule for the whole project) naming ``--device``."""

from __future__ import annotations

from hrtem_dataset.device import CHOICES
from hrtem_dataset.device import resolve_device as _resolve

__all__ = ["CHOICES", "resolve_device"]


def resolve_device(device=None, option: str = "--device"):
    """:func:`hrtem_dataset.device.resolve_device` with messages naming the CLI option."""
    return _resolve(device, option)
