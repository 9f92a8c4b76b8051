"""What every stage is: a :class:`Stage` object that the CLI, the studies and Dagster drive alike.

A stage module (:mod:`hrtem_dataset.stages.structures`, ``exit_waves``, ``images``, ``dataset``, and
:mod:`models.stage`) owns, in one file: its ``run`` function (one shard, or the whole configuration), its
on-disk format (writer and reader), its summary (the quality numbers of what it wrote) and its checks with
their tolerances. Its :class:`Stage` object ties them together for orchestrators: :meth:`Stage.materialize`
runs the stage and returns a :class:`StageResult` of plain Python values (stats, metadata, preview PNG files,
:class:`CheckOutcome` s); the Dagster assets are a loop over these objects that only translate the result
into Dagster types.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..device import single_threaded_torch, torch_threads
from ..specs import DatasetSpec


class StageFailure(RuntimeError):
    """A stage refuses to run on inputs that failed a blocking check (Dagster: ``Failure``)."""


@dataclass(frozen=True)
class CheckSpec:
    """A quality check of a stage: name, what it asserts (tolerances included) and whether a failure
    blocks the downstream stages (``blocking``) or only warns."""

    name: str
    description: str
    blocking: bool = True


@dataclass(frozen=True)
class CheckOutcome:
    """The result of one check: ``values`` are numbers (or JSON-able lists/dicts) shown with it."""

    name: str
    passed: bool
    description: str
    values: dict[str, Any] = field(default_factory=dict)
    warn: bool = False


@dataclass(frozen=True)
class PublishOptions:
    """Where the publishing stages write: a local folder holding ``dataset/`` and ``model/`` (None: the
    workspace's ``published/``), optional Hub repos (the token comes from the settings, never run config)."""

    dest: Path | None = None
    dataset_repo_id: str | None = None
    model_repo_id: str | None = None
    token: str | None = None
    private: bool = False


@dataclass(frozen=True)
class RunContext:
    """Per-run settings of a stage: workspace root, shard (partitioned stages), overrides."""

    root: Path
    shard: int | None = None
    force: bool = False
    engine: str | None = None
    device: str | None = None
    progress: bool = False
    publish: PublishOptions = PublishOptions()


@dataclass
class StageResult:
    """What a materialization reports: ``stats`` of the run (counts, timings, throughput), extra
    ``metadata``, the artifact ``path``, a ``row_count``, a ``url``, ``previews`` (title -> PNG file) and
    the outcome of every check of the stage."""

    stats: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    row_count: int | None = None
    url: str | None = None
    previews: dict[str, Path] = field(default_factory=dict)
    checks: list[CheckOutcome] = field(default_factory=list)


class Stage:
    """One step of the pipeline, for orchestrators. Subclasses set the class attributes and implement
    :meth:`materialize`.

    ``name``: asset name; ``fingerprint``: the key of :func:`~hrtem_dataset.workspace.stage_fingerprints`
    its code version is; ``deps``: the stages it reads; ``partitioned``: one run per shard;
    ``kinds``: tags shown in the UI; ``checks``: its :class:`CheckSpec` s; ``simulation``: uses the
    simulation engine/device (and the GPU concurrency pool)."""

    name: ClassVar[str]
    fingerprint: ClassVar[str]
    deps: ClassVar[tuple[str, ...]] = ()
    partitioned: ClassVar[bool] = False
    kinds: ClassVar[frozenset[str]] = frozenset({"python"})
    checks: ClassVar[tuple[CheckSpec, ...]] = ()
    simulation: ClassVar[bool] = False

    def applies(self, spec: DatasetSpec) -> bool:
        """Whether the configuration has this stage (the model stages need a ``model`` section)."""
        return True

    def description(self, spec: DatasetSpec) -> str:
        return (type(self).__doc__ or self.name).strip().splitlines()[0]

    def materialize(self, spec: DatasetSpec, ctx: RunContext) -> StageResult:  # pragma: no cover - abstract
        raise NotImplementedError


def rate(n: float, seconds: float) -> float:
    """Throughput ``n / seconds`` (0 for a zero duration)."""
    return float(n / seconds) if seconds > 0 else 0.0


def outcome(check: CheckSpec, passed: bool, description: str, **values) -> CheckOutcome:
    """A :class:`CheckOutcome` of ``check`` (a non-blocking check reports a failure as a warning)."""
    return CheckOutcome(check.name, bool(passed), description, values, warn=not check.blocking)


def in_order(pool, fn, items: list, ahead: int):
    """``fn(x)`` of each item, computed ``ahead`` at a time in ``pool`` and yielded in order; on an error the
    items not started are cancelled (those running finish with the pool, their results unused)."""
    pending: deque = deque(pool.submit(fn, x) for x in items[:ahead])
    rest = iter(items[ahead:])
    try:
        while pending:
            result = pending.popleft().result()
            for x in rest:
                pending.append(pool.submit(fn, x))
                break
            yield result
    finally:
        for f in pending:
            f.cancel()


@contextlib.contextmanager
def in_order_threads(fn, items: list, workers: int, name: str, initializer=None) -> Iterator:
    """:func:`in_order` in a pool of ``workers`` threads (``name``, ``initializer`` as ``ThreadPoolExecutor``'s),
    ``2 × workers`` items ahead, for the block: leaving it — an error in the caller's loop too — cancels the items not
    started, then waits for the running ones."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name, initializer=initializer) as pool:
        results = in_order(pool, fn, items, 2 * workers)
        try:
            yield results
        finally:
            results.close()


@contextlib.contextmanager
def in_order_torch_streams(fn, items: list, workers: int, name: str) -> Iterator:
    """:func:`in_order_threads` whose threads each run a single-threaded torch stream: torch's intra-op threads set to
    1 for the block and in every pool thread (both are needed: see :func:`..device.single_threaded_torch`)."""
    with torch_threads(1), in_order_threads(fn, items, workers, name, single_threaded_torch) as results:
        yield results
