"""Device selection, one rule for the simulation, the imaging and the models: :func:`resolve_device`; and
:func:`torch_threads` for thread pools of single-threaded torch streams, :func:`background_thread` for a pool's
low-priority helper."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

import torch

from .errors import InputError

CHOICES = "auto, cpu, cuda or cuda:N"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else the machine's count), ≥ 1."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def resolve_device(device=None, option: str = "device") -> torch.device:
    """``torch.device`` for ``device``: None/"auto" -> CUDA when available, else the CPU.

    Anything else must name a usable device: "cpu", "cuda" or "cuda:N" with CUDA available and N a present
    GPU (and "mps" where available). Otherwise :class:`InputError` naming ``option`` is raised, before any
    model or data is loaded.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "auto")):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(str(device).strip())
        except (RuntimeError, ValueError, TypeError):
            raise InputError(f"{option}: unknown device {device!r} (use {CHOICES})") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{option}: {device} requested but CUDA is not available (use cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"{option}: {device} requested but only {torch.cuda.device_count()} CUDA "
                             "device(s) are present")
        return dev
    if dev.type == "mps" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return dev
    raise InputError(f"{option}: unsupported device {device!r} (use {CHOICES})")


def single_threaded_torch() -> None:
    """Thread-pool initializer: this thread's torch ops single-threaded. ``torch.set_num_threads`` in one thread
    does not reach threads started later: their OpenMP regions (MKL's real FFTs among them) start with the
    default team (every core), so two pool threads each running a 640² rfft2 on 2 cores took 8.1 ms per
    transform instead of 0.75 ms (oversubscribed; the complex FFTs ran single-threaded either way)."""
    torch.set_num_threads(1)


def background_thread() -> None:
    """Thread-pool initializer: this thread yields the CPU to the others (nice +10, Linux only, where a thread has
    its own priority): for work that may use an idle core but should not slow the threads computing beside it."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block, then restored. Process-wide: for a thread pool whose
    workers each run a single-threaded torch stream (one per core beats threaded ops on few cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

