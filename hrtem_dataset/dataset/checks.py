"""Read-side checks of a written dataset folder: which parquet files a configuration has
(:func:`split_files`) and whether any structure appears in two splits (:func:`check_no_leakage`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .features import SPLITS

# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


@dataclass
class LeakageReport:
    """Outcome of :func:`check_no_leakage`: ``passed`` is False when a structure is in two splits."""

    passed: bool
    structures: dict[str, int]
    shared: dict[str, list[str]]

    @property
    def description(self) -> str:
        if self.passed:
            counts = ", ".join(f"{s}: {n}" for s, n in self.structures.items())
            return f"no structure in two splits ({counts} structures)"
        pairs = "; ".join(f"{k}: {', '.join(v[:5])}" for k, v in self.shared.items())
        return f"structures shared between splits: {pairs}"


def split_files(folder: str | Path, config: str) -> dict[str, list[Path]]:
    """Parquet shards of each split of ``config`` in a dataset folder."""
    data = Path(folder) / "data" / config
    if not data.is_dir():
        raise InputError(f"{data}: no such configuration directory")
    out = {}
    for split in SPLITS:
        files = sorted(data.glob(f"{split}-*-of-*.parquet"))
        if files:
            out[split] = files
    return out


def check_no_leakage(folder: str | Path, config: str) -> LeakageReport:
    """Read ``structure_id`` of every split of ``config`` and report structures found in two splits."""
    import pyarrow.parquet as pq

    ids: dict[str, set[str]] = {}
    for split, files in split_files(folder, config).items():
        ids[split] = set()
        for f in files:
            try:
                table = pq.read_table(f, columns=["structure_id"])
            except (OSError, ValueError, KeyError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise InputError(f"{f}: not a readable parquet file with a structure_id column "
                                 f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
            ids[split].update(table.column("structure_id").to_pylist())
    shared = {}
    names = list(ids)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = sorted(ids[a] & ids[b])
            if common:
                shared[f"{a}/{b}"] = common
    return LeakageReport(passed=not shared, structures={s: len(v) for s, v in ids.items()}, shared=shared)
