"""The one place that knows which select_op backends exist, whether each can run, and why not.

========  ==================================  ===============================================
name      runs on                             implementation
========  ==================================  ===============================================
torch     any device                          esper_fast.reference (plain torch ops)
cpu       CPU tensors                         csrc/select_op_cpu.cpp via esper_fast._C
cuda      CUDA tensors                        csrc/select_cuda.cu via esper_fast._C_cuda
triton    CUDA tensors (CPU tensors only      esper_fast/ops/triton_select.py
          under TRITON_INTERPRET=1)
========  ==================================  ===============================================

``backend="auto"`` (or the ``ESPER_FAST_BACKEND`` environment variable, read once at import and again
by :func:`reload_env`) picks ``cpu`` for CPU tensors
and, for CUDA tensors, by size (:func:`prefer_triton`, from the crossover measured on an H100 in
benchmarks/results/): ``triton`` for wide, large inputs, ``cuda`` otherwise (its C++ launch costs a
fraction of Triton's Python launch, which decides every small call). ``torch`` is used only when
nothing else can run. An explicitly named backend that cannot run raises
:class:`BackendUnavailableError` with the reason - never a silent fallback.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from esper_fast.constants import HEAD_NAMES
from esper_fast.errors import BackendUnavailableError
from esper_fast.ops._native import load_module, prepare_actions, run_native, run_native_actions
from esper_fast.ops.layout import write_selection
from esper_fast.reference.actions import select_actions_reference
from esper_fast.reference.select import select_op_reference
from esper_fast.types import OpSelection

__all__ = [
    "BACKEND_NAMES",
    "available_backends",
    "lean_select_actions",
    "lean_select_op",
    "reload_env",
    "resolve_backend",
    "Backend",
]

BACKEND_NAMES = ("torch", "cpu", "cuda", "triton")
ENV_VAR = "ESPER_FAST_BACKEND"

# run(logits, q, mask, noise, key, deterministic, out) -> bad-row count if known for free, else None
RunFn = Callable[[Tensor, Tensor, "Tensor | None", "Tensor | None", "Tensor | None", bool, OpSelection], "int | None"]
# run_actions(logits dict, masks dict, q, noise dict, slot_by_op, key, deterministic, (actions, floats)): ops/layout.py
RunActionsFn = Callable[..., "int | None"]


@dataclass(frozen=True)
class Backend:
    """A select_op implementation and the test of whether it can run on a device."""

    name: str
    run: RunFn
    run_actions: RunActionsFn
    why_not: Callable[[torch.device], str | None]
    # The lean call path (cpu): run_lean(logits, q, mask, noise, key, deterministic, op [N], floats
    # [4, N]) and run_actions_lean(..., (actions, floats) as in ops/layout.py) take the tensors straight
    # into one C++ entry. None: select_op / select_actions use run / run_actions.
    run_lean: Callable[..., int | None] | None = None
    run_actions_lean: Callable[..., int | None] | None = None


# ---- torch (reference) --------------------------------------------------------------------------
def _run_torch(logits, q, mask, noise, key, deterministic, out) -> None:
    with torch.no_grad():  # inputs that require grad: outputs are plain values on every backend
        res = select_op_reference(logits, q, mask, deterministic=deterministic, noise=noise, key=key)
        for dst, src in zip(out, res):
            dst.copy_(src)


def _run_actions_torch(logits, masks, q, noise, slot_by_op, key, deterministic, out) -> None:
    with torch.no_grad():
        _run_actions_torch_nograd(logits, masks, q, noise, slot_by_op, key, deterministic, out)


def _run_actions_torch_nograd(logits, masks, q, noise, slot_by_op, key, deterministic, out) -> None:
    sel = select_actions_reference(
        logits, masks, q, deterministic=deterministic, noise=noise, key=key, slot_by_op=slot_by_op
    )
    write_selection(sel, out)


# ---- cpu (esper_fast._C) --------------------------------------------------------------------------
@functools.cache
def _cpu_module():
    mod, why = load_module("_C")
    if mod is not None:
        mod.register_dtypes(torch.float32, torch.float16, torch.bfloat16)  # for the lean entries
        mod.register_lean(Tensor, torch.empty, torch.bool, torch.int64, OpSelection, 2**63 - 1, torch.device("cpu"))
    return mod, why


def _run_cpu(logits, q, mask, noise, key, deterministic, out) -> int:
    return run_native(_cpu_module()[0], logits, q, mask, noise, key, deterministic, out)


def _run_actions_cpu(logits, masks, q, noise, slot_by_op, key, deterministic, out) -> int:
    return run_native_actions(
        _cpu_module()[0], prepare_actions(logits, masks, noise, q, slot_by_op), key, deterministic, out
    )


def _run_cpu_lean(logits, q, mask, noise, key, deterministic, op, f) -> int:
    mod = _cpu_module()[0]
    bad = mod.select_op_tensors(logits, q, mask, noise, key, deterministic, op, f)
    if bad < 0:  # columns not unit-stride (or noise not fp32): the copying pointer path
        bad = run_native(mod, logits, q, mask, noise, key, deterministic, OpSelection(op, *f.unbind(0)))
    return bad


def _run_actions_cpu_lean(logits, masks, q, noise, slot_by_op, key, deterministic, out) -> int:
    mod = _cpu_module()[0]
    bad = mod.select_actions_tensors(
        [logits[h] for h in HEAD_NAMES],
        [masks.get(h) for h in HEAD_NAMES],
        [noise.get(h) for h in HEAD_NAMES],
        q,
        slot_by_op,
        key,
        deterministic,
        out[0],
        out[1],
    )
    if bad < 0:
        bad = _run_actions_cpu(logits, masks, q, noise, slot_by_op, key, deterministic, out)
    return bad


def _cpu_why_not(device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"the cpu backend takes CPU tensors, got {device}"
    return _cpu_module()[1]


# ---- cuda (esper_fast._C_cuda) --------------------------------------------------------------------
@functools.cache
def _cuda_module():
    mod, why = load_module("_C_cuda")
    if mod is None:
        return None, why + " (it is built only where nvcc is found and ESPER_FAST_CUDA != 0)"
    return mod, None


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """Makes ``device`` the current CUDA device for a launch (a no-op when it already is)."""
    if device.type != "cuda" or device.index is None or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


# Largest row width of the cuda select_op kernel (csrc/select_cuda.cu kMaxCudaActions).
CUDA_MAX_ACTIONS = 1024


def _shape_why_not(name: str, shape: tuple[int, int] | None) -> str | None:
    """Why backend ``name`` cannot take a ``[rows, width]`` select_op, or None."""
    if name == "cuda" and shape is not None and shape[1] > CUDA_MAX_ACTIONS:
        return f"the cuda kernel takes rows of at most {CUDA_MAX_ACTIONS} actions, got A = {shape[1]}"
    return None


def _run_cuda(logits, q, mask, noise, key, deterministic, out) -> None:
    with device_guard(logits.device):
        stream = torch.cuda.current_stream(logits.device).cuda_stream
        run_native(_cuda_module()[0], logits, q, mask, noise, key, deterministic, out, stream=stream)


def _run_actions_cuda(logits, masks, q, noise, slot_by_op, key, deterministic, out) -> None:
    with device_guard(q.device):
        stream = torch.cuda.current_stream(q.device).cuda_stream
        run_native_actions(
            _cuda_module()[0],
            prepare_actions(logits, masks, noise, q, slot_by_op),
            key,
            deterministic,
            out,
            stream=stream,
        )


def _cuda_why_not(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"the cuda backend takes CUDA tensors, got {device}"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return _cuda_module()[1]


# ---- triton ---------------------------------------------------------------------------------------
@functools.cache
def _triton_module():
    try:
        from esper_fast.ops import triton_select
    except ImportError as exc:
        return None, f"triton is not importable ({exc}); pip install triton"
    return triton_select, None


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _run_triton(logits, q, mask, noise, key, deterministic, out) -> None:
    with device_guard(logits.device):
        _triton_module()[0].select_op_triton(logits, q, mask, noise, key, deterministic, out)


def _run_actions_triton(logits, masks, q, noise, slot_by_op, key, deterministic, out) -> None:
    with device_guard(q.device):
        _triton_module()[0].select_actions_triton(
            prepare_actions(logits, masks, noise, q, slot_by_op), key, deterministic, out
        )


def _triton_why_not(device: torch.device) -> str | None:
    if device.type == "cpu" and not _triton_interpreting():
        return "triton runs CPU tensors only under TRITON_INTERPRET=1"
    if device.type not in ("cpu", "cuda"):
        return f"triton does not run on {device}"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return _triton_module()[1]


_BACKENDS = {
    "torch": Backend("torch", _run_torch, _run_actions_torch, lambda device: None),
    "cpu": Backend("cpu", _run_cpu, _run_actions_cpu, _cpu_why_not, _run_cpu_lean, _run_actions_cpu_lean),
    "cuda": Backend("cuda", _run_cuda, _run_actions_cuda, _cuda_why_not),
    "triton": Backend("triton", _run_triton, _run_actions_triton, _triton_why_not),
}
_AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}


# Measured crossover (H100, benchmarks/results/bench_select_gpu_*): Triton's tiles win once rows are
# at least 16 wide (padded) and the input holds >= 4M padded elements; below that the cuda backend's
# lower launch overhead (or, for A <= 8, its lane-per-element layout) wins.
TRITON_MIN_WIDTH = 16
TRITON_MIN_ELEMENTS = 1 << 22


def prefer_triton(n: int, a: int) -> bool:
    """Whether ``auto`` should take triton over cuda for an ``[n, a]`` select_op."""
    width = 1 << max(a - 1, 0).bit_length()
    return width >= TRITON_MIN_WIDTH and n * width >= TRITON_MIN_ELEMENTS


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends that can run on ``device`` (default: on CPU, plus CUDA when a GPU is visible)."""
    if device is None:
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(device)]
    return [n for n in BACKEND_NAMES if any(_BACKENDS[n].why_not(d) is None for d in devices)]


def resolve_backend(requested: str, device: torch.device, shape: tuple[int, int] | None = None) -> Backend:
    """The backend to run for ``requested`` ("auto" or a name) on ``device``; raises if it can't.

    ``shape`` (rows, width) lets ``auto`` pick by size on CUDA (see :func:`prefer_triton`).
    """
    env = _ENV_BACKEND
    if device == _CPU and requested in _CPU_CACHED:  # depends only on (requested, env): cached
        return _resolve_cpu(requested, env)
    return _resolve(requested, env, device, shape)


_ENV_BACKEND = os.environ.get(ENV_VAR)
"""``$ESPER_FAST_BACKEND`` as read at import (and by :func:`reload_env`): not re-read on every call."""


def reload_env() -> None:
    """Re-reads ``$ESPER_FAST_BACKEND`` (read once at import; call this after changing it in-process)."""
    global _ENV_BACKEND
    _ENV_BACKEND = os.environ.get(ENV_VAR)
    _LEAN_SELECT_OP.clear()
    _LEAN_SELECT_ACTIONS.clear()


_LEAN_SELECT_OP: dict[str, Callable | None] = {}
_LEAN_SELECT_ACTIONS: dict[str, Callable | None] = {}


def _lean(requested: str, cache: dict, entry: str) -> Callable | None:
    try:
        return cache[requested]
    except (KeyError, TypeError):  # TypeError: an unhashable backend, left to the regular path
        pass
    try:
        lean = getattr(_cpu_module()[0], entry) if resolve_backend(requested, _CPU).name == "cpu" else None
    except (ValueError, TypeError):
        return None
    cache[requested] = lean
    return lean


def lean_select_op(requested: str) -> Callable | None:
    """The cpu module's one-entry ``select_op_lean`` when ``requested`` resolves to the cpu backend for
    CPU tensors, else None (cached per name until :func:`reload_env`; resolution errors are left to
    the regular path, which raises them). The entry declines (returns None) anything but the plain
    case, so every check keeps its message."""
    return _lean(requested, _LEAN_SELECT_OP, "select_op_lean")


def lean_select_actions(requested: str) -> Callable | None:
    """``select_actions_lean`` of the cpu module, as :func:`lean_select_op`."""
    return _lean(requested, _LEAN_SELECT_ACTIONS, "select_actions_lean")


_CPU = torch.device("cpu")  # compared with ==: cheaper than device.type on the hot path
_CPU_CACHED = ("auto", "cpu", "torch")  # not triton: its availability on CPU follows TRITON_INTERPRET


@functools.lru_cache(maxsize=64)
def _resolve_cpu(requested: str, env: str | None) -> Backend:
    return _resolve(requested, env, torch.device("cpu"), None)


def _resolve(requested: str, env: str | None, device: torch.device, shape: tuple[int, int] | None) -> Backend:
    name = requested
    if name == "auto":
        name = (env or "auto").strip().lower() or "auto"
    if name == "auto":
        order = _AUTO_ORDER.get(device.type, ("torch",))
        if device.type == "cuda" and shape is not None and prefer_triton(*shape):
            order = ("triton", "cuda", "torch")
        for candidate in order:
            if _BACKENDS[candidate].why_not(device) is None and _shape_why_not(candidate, shape) is None:
                return _BACKENDS[candidate]
    if name not in _BACKENDS:
        source = f" (from ${ENV_VAR})" if requested == "auto" else ""
        raise ValueError(f"backend must be one of {('auto',) + BACKEND_NAMES}, got {name!r}{source}")
    why = _BACKENDS[name].why_not(device) or _shape_why_not(name, shape)
    if why is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot run here: {why}")
    return _BACKENDS[name]
