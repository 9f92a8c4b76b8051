"""How the per-shard stage functions run inside a process: :func:`stage_runtime`."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

from threadpoolctl import threadpool_limits

_LOCK = threading.Lock()
_STATE: dict = {"blocks": 0, "gc_was_enabled": False, "blas": None}


@contextlib.contextmanager
def stage_runtime() -> Iterator[None]:
    """The process settings a stage's work runs with, for the block (as a decorator, ``@stage_runtime()``, for
    every call); restored after it by the last of nested or concurrent blocks (OpenBLAS 0.3.31 ignores the
    restore when that block ends in another thread than the one that limited it: it then keeps one thread):

    - **one BLAS thread** (OpenBLAS, MKL; via threadpoolctl): the stages parallelise over structures and FFT
      planes themselves. After every multithreaded call OpenBLAS's worker thread spins, waiting for the next
      one: one 17,000 × 63 × 4 product per scene file read (its fixed-width parser, which now splits it into
      products below OpenBLAS's threading threshold) kept a core busy for ≈ 0.1 s per structure — a quarter of
      the images stage's CPU time on 2 cores (perf: ``blas_thread_server``), taken from the other worker — and
      the stage's summed work fell from 1.7 to 1.2–1.4 s without it;
    - **no full garbage collections**: the stages make few reference cycles (reference counting frees arrays,
      atoms and rows at once) but enough objects to set off full collections, each a walk over every object the
      imports made, during which the collecting thread holds the GIL and the other workers' torch streams wait.
      Two full collections took 206 ms of a 0.72 s au-baseline-cpu structures shard (0.46 s without them; an
      au-generalist shard 25.5 s instead of 34.0 s), one 100 ms of an images shard; 20–40 objects were left
      for the collector afterwards. Cycles made inside the block are collected by the first automatic
      collection after it.
    """
    with _LOCK:
        if _STATE["blocks"] == 0:
            _STATE["gc_was_enabled"] = gc.isenabled()
            gc.disable()
            _STATE["blas"] = threadpool_limits(limits=1, user_api="blas")
        _STATE["blocks"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _STATE["blocks"] -= 1
            if _STATE["blocks"] == 0:
                _STATE["blas"].restore_original_limits()
                _STATE["blas"] = None
                if _STATE["gc_was_enabled"]:
                    gc.enable()
