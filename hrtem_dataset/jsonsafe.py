"""One JSON sanitiser for the whole project: numpy values to plain Python, optionally NaN/±inf to null.

Strict JSON has no NaN and viewers (the Hub, Dagster) reject it, so what leaves the program as a metric,
card field or row column goes through ``plain(obj, finite=True)``; lineage kept inside the workspace keeps
its floats as they are (``finite=False``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def plain(obj: Any, *, finite: bool = False) -> Any:
    """``obj`` with mappings as ``{str: ...}`` dicts, lists/tuples as lists, numpy arrays as (nested) lists,
    numpy scalars as Python numbers and paths as strings; with ``finite`` NaN/±inf floats become None."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v, finite=finite) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v, finite=finite) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist(), finite=finite)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if finite and isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def finite(obj: Any) -> Any:
    """:func:`plain` with NaN/±inf as None: a value that serialises as strict JSON."""
    return plain(obj, finite=True)
