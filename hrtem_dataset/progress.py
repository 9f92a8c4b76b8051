"""Progress on stderr (rich) for long commands: stages, shards, training steps; silent with ``--quiet``.

Progress never goes to stdout, so the commands' JSON outputs stay one clean line each. One live display is
active at a time (:func:`display`); bars opened inside it (:func:`bar`, e.g. training steps in the last
stage of ``hrtem materialize``) join it as extra rows, bars opened outside it get their own display. Off
by default for library use (``dagster dev``, tests): the CLI turns it on unless ``--quiet`` is given.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

_state: dict[str, Any] = {"enabled": False, "progress": None}

QUIET_HELP = "No progress display or notes on stderr (errors are still printed)."


def set_enabled(flag: bool) -> None:
    """Turn progress (and stderr notes sent through :func:`note`) on or off for this process."""
    _state["enabled"] = bool(flag)


def enabled() -> bool:
    return bool(_state["enabled"])


def _console():
    from rich.console import Console

    return Console(file=sys.stderr)  # the stderr of the moment (tests redirect it)


def _new_progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    console=_console(), transient=False, redirect_stdout=False, redirect_stderr=False)


@contextlib.contextmanager
def display() -> Iterator[None]:
    """One live progress display for the block (no-op when progress is off or one is already live)."""
    if not enabled() or _state["progress"] is not None:
        yield
        return
    prog = _new_progress()
    _state["progress"] = prog
    try:
        with prog:
            try:
                yield
                if not prog.tasks:  # only stage rows, all done: no empty frame (a blank line) left behind
                    prog.live.transient = True
                    prog.console.quiet = True
            except BaseException:
                prog.live.transient = True  # on an error the display leaves no rows (one `error:` line)
                prog.console.quiet = True
                raise
    finally:
        _state["progress"] = None


def note(message: str) -> None:
    """A line on stderr above the live bars (nothing when progress is off)."""
    if not enabled():
        return
    prog = _state["progress"]
    if prog is not None:
        prog.console.print(message, markup=False, highlight=False, soft_wrap=True)
    else:
        print(message, file=sys.stderr, flush=True)


class Bar:
    """A row of the live display: ``update(n)``, ``set_postfix(**kw)``, ``write(msg)``, ``close()`` (the
    subset of the tqdm interface the training loop uses)."""

    def __init__(self, total: float | None, description: str, initial: float = 0, disable: bool = False,
                 transient: bool = False, log: bool = False):
        self._transient, self._log, self._description, self._t0 = transient, log, description, time.perf_counter()
        self._own = None
        self._prog = None
        self._task = None
        if disable:
            return
        self._prog = _state["progress"]
        if self._prog is None:  # no live display: this bar gets its own
            self._own = self._prog = _new_progress()
            _state["progress"] = self._own
            self._own.start()
        self._task = self._prog.add_task(description, total=total, completed=initial, info="")

    def update(self, n: float = 1) -> None:
        if self._task is not None:
            self._prog.advance(self._task, n)

    def set_postfix(self, **kw) -> None:
        if self._task is not None:
            self._prog.update(self._task, info=" ".join(f"{k}={v}" for k, v in kw.items()))

    def set_description(self, description: str) -> None:
        if self._task is not None:
            self._prog.update(self._task, description=description)

    def write(self, message: str, file=None) -> None:  # noqa: ARG002 - tqdm signature
        note(message)

    def close(self) -> None:
        if self._task is not None:
            task = next((t for t in self._prog.tasks if t.id == self._task), None)
            if task is not None and task.total is None:  # a finished stage shows as complete
                self._prog.update(self._task, total=1, completed=1)
            self._prog.stop_task(self._task)
            if self._transient and self._own is None:
                self._prog.remove_task(self._task)
        if self._own is not None:
            self._own.stop()
            _state["progress"] = None
            self._own = None
        if self._task is not None and self._log:
            note(f"{self._description}: done in {time.perf_counter() - self._t0:.1f} s")
        self._task = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(total: float | None = None, desc: str = "", initial: float = 0, disable: bool = False, **_: Any) -> Bar:
    """A progress row (tqdm-like signature: ``total``, ``desc``, ``initial``, ``disable``; other tqdm
    keywords are accepted and ignored). Shown unless ``disable``: library callers decide (``train(progress=)``)."""
    return Bar(total, desc, initial=initial, disable=disable)


@contextlib.contextmanager
def stage(description: str, log: bool = True) -> Iterator[Bar]:
    """A spinner row with the elapsed time while the block runs (a stage without a known length), then
    (``log``) a line ``DESCRIPTION: done in T s``; shown when progress is on (:func:`set_enabled`)."""
    b = Bar(None, description, disable=not enabled(), transient=True, log=log)
    try:
        yield b
    except BaseException:
        b._log = False  # a stage that failed is not "done": the error line is the only output
        raise
    finally:
        b.close()
