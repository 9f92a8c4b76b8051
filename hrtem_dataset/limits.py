"""Up-front memory limit: refuse a computation whose estimated working memory is too large.

A multislice grid (``ceil(cell / sampling)``², one complex64 per point and wave) or a micrograph resampled to
a model's pixel size grows quadratically with the input; a typo (a 2000 Å cell, ``--pixel-size 200``) would
otherwise try to allocate hundreds of GiB and get the process killed, or the machine into swap.
:func:`check_memory` compares an estimate with a limit and raises :class:`~hrtem_dataset.errors.InputError`
(``error: ...``, exit code 2 in the CLI) *before* anything is allocated.

The limit is ``HRTEM_MAX_MEMORY_GB`` (GiB, 2**30 bytes; a positive number) when set, else 80 % of the
physical memory. It is one limit for host and device memory (waves computed on a GPU come back to the
host too).
"""

from __future__ import annotations

import math
import os

from .errors import InputError
from .settings import get_settings

ENV_VAR = "HRTEM_MAX_MEMORY_GB"
DEFAULT_FRACTION = 0.8  # of the physical memory
GIB = 1 << 30


def physical_memory() -> int | None:
    """Physical memory in bytes (``os.sysconf``), None when the platform does not tell."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # pragma: no cover - non-POSIX
        return None
    if pages <= 0 or page_size <= 0:  # pragma: no cover
        return None
    return int(pages) * int(page_size)


def memory_limit() -> int | None:
    """The limit in bytes: ``HRTEM_MAX_MEMORY_GB`` GiB, else 80 % of the physical memory (None: unknown)."""
    raw = get_settings().max_memory_gb
    if raw is not None and raw.strip():
        try:
            gb = float(raw)
        except ValueError:
            gb = float("nan")
        if not (math.isfinite(gb) and gb > 0):
            raise InputError(f"{ENV_VAR}: expected a positive number of GiB, got {raw!r}")
        return int(gb * GIB)
    total = physical_memory()
    return int(total * DEFAULT_FRACTION) if total else None


def _gib(nbytes: float) -> str:
    g = nbytes / GIB
    return f"{g:.3g}" if g < 100 else f"{g:,.0f}"


def check_memory(what: str, nbytes: int | float, detail: str | None = None) -> None:
    """Raise :class:`InputError` when ``nbytes`` (an estimate of the working memory of ``what``) exceeds
    :func:`memory_limit`. ``detail`` (e.g. ``"grid 4096 x 4096, 2 waves"``) goes into the message."""
    limit = memory_limit()
    if limit is None or nbytes <= limit:
        return
    extra = f" ({detail})" if detail else ""
    raise InputError(f"{what}: needs ~{_gib(nbytes)} GiB{extra}, over the limit of {_gib(limit)} GiB "
                     f"(set {ENV_VAR} to change it)")


__all__ = ["ENV_VAR", "check_memory", "memory_limit", "physical_memory"]
