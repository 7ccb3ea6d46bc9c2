"""The one thread-count context manager (floor 2): torch's intra-op threads or the cpu backend's OpenMP.

torch (``torch.set_num_threads``) and the C++ ``cpu`` backend (``esper_fast._C``, its own OpenMP
runtime, which ``torch.set_num_threads`` does not reach) keep separate thread counts; :func:`cpu_threads`
sets either for a block and restores the old count (and the ``cpu`` backend's parallel threshold) in a
``finally``, so an exception inside cannot leave the process on another count.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from esper_fast.errors import BackendUnavailableError
from esper_fast.ops._native import load_module

__all__ = ["RUNTIMES", "cpu_threads"]

RUNTIMES = ("torch", "native")


@contextmanager
def cpu_threads(
    n: int, device: torch.device | str = "cpu", *, runtime: str = "torch", parallel_threshold: int | None = None
) -> Iterator[None]:
    """``n`` CPU threads while inside (when ``n > 0`` and ``device`` is a CPU); the old count afterwards.

    Args:
        n: thread count; ``n <= 0`` (or a non-CPU ``device``) leaves the count alone.
        device: the device the block computes on (threads matter only on the CPU).
        runtime: ``"torch"`` (``torch.set_num_threads``; small recurrent nets run fastest on one thread,
            and on a busy machine spin-waiting OpenMP threads make every op slower) or ``"native"`` (the
            ``cpu`` backend's OpenMP threads, ``esper_fast._C.set_num_threads``).
        parallel_threshold: ``"native"`` only: the element count above which the cpu backend splits
            rows over threads (``0``: always), restored afterwards; None leaves it alone.

    Raises:
        ValueError: unknown ``runtime``, or ``parallel_threshold`` with the torch runtime.
        BackendUnavailableError: ``runtime="native"`` when ``esper_fast._C`` is not built.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime: expected one of {RUNTIMES}, got {runtime!r}")
    if runtime == "torch":
        if parallel_threshold is not None:
            raise ValueError("parallel_threshold applies to runtime='native' (the cpu backend) only")
        get, put, native = torch.get_num_threads, torch.set_num_threads, None
    else:
        native, why = load_module("_C")
        if native is None:
            raise BackendUnavailableError(f"cpu_threads(runtime='native'): {why}")
        get, put = native.get_num_threads, native.set_num_threads
    old = get()
    old_threshold = native.parallel_threshold() if native is not None and parallel_threshold is not None else None
    try:
        if n > 0 and torch.device(device).type == "cpu":
            put(n)
        if old_threshold is not None:
            native.set_parallel_threshold(parallel_threshold)
        yield
    finally:
        put(old)
        if old_threshold is not None:
            native.set_parallel_threshold(old_threshold)
