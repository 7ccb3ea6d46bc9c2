"""Glue between torch tensors and the pybind11 modules (raw pointers, strides, dtype codes)."""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import Tensor

from esper_fast.types import OpSelection

__all__ = ["DTYPE_CODES", "load_module", "run_native", "unit_cols"]

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def load_module(name: str) -> tuple[ModuleType | None, str | None]:
    """Imports ``esper_fast.<name>``; returns (module, None) or (None, why it is unavailable)."""
    try:
        return importlib.import_module(f"esper_fast.{name}"), None
    except ImportError as exc:  # not built, or built for another Python
        return None, f"esper_fast.{name} is not built ({exc}); reinstall with `pip install -e .`"


def unit_cols(t: Tensor) -> Tensor:
    """``t`` if its last dimension is unit-stride (row strides are passed through), else a copy."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _ptr_stride(t: Tensor | None) -> tuple[int, int]:
    return (0, 0) if t is None else (t.data_ptr(), t.stride(0))


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def run_native(
    module: ModuleType,
    logits: Tensor,
    q: Tensor | None,
    mask: Tensor | None,
    noise: Tensor | None,
    key: Tensor | None,
    deterministic: bool,
    out: OpSelection,
    stream: int | None = None,
) -> int | None:
    """Launches ``module.select_op`` writing into ``out``; returns the CPU bad-row count or None."""
    n, a = logits.shape
    logits = unit_cols(logits)
    q = None if q is None else unit_cols(q)
    mask = None if mask is None else unit_cols(mask)
    if noise is not None:
        noise = unit_cols(noise.float())
    args = (
        logits.data_ptr(), DTYPE_CODES[logits.dtype], logits.stride(0),
        *_ptr_stride(q)[:1], 0 if q is None else DTYPE_CODES[q.dtype], *_ptr_stride(q)[1:],
        *_ptr_stride(mask), *_ptr_stride(noise),
        0 if key is None else key.data_ptr(), n, a, deterministic,
        *[t.data_ptr() for t in out],
    )  # fmt: skip
    if stream is None:
        return module.select_op(*args)
    module.select_op(*args, stream)
    return None


def run_native_actions(
    module: ModuleType,
    logits: list[Tensor],
    masks: list[Tensor | None],
    noise: list[Tensor | None],
    q: Tensor,
    slot_by_op: Tensor | None,
    key: Tensor | None,
    deterministic: bool,
    out: tuple[Tensor, Tensor],
    stream: int | None = None,
) -> int | None:
    """Launches ``module.select_actions`` (heads in HEAD_NAMES order) writing into ``out``."""
    logits = [unit_cols(t) for t in logits]
    masks = [None if m is None else unit_cols(m) for m in masks]
    noise = [None if g is None else unit_cols(g.float()) for g in noise]
    q = unit_cols(q)
    slot_by_op = None if slot_by_op is None else slot_by_op.contiguous()
    args = (
        [t.data_ptr() for t in logits], [DTYPE_CODES[t.dtype] for t in logits],
        [t.stride(0) for t in logits],
        [_ptr(m) for m in masks], [0 if m is None else m.stride(0) for m in masks],
        [_ptr(g) for g in noise], [0 if g is None else g.stride(0) for g in noise],
        [t.shape[1] for t in logits],
        q.data_ptr(), DTYPE_CODES[q.dtype], q.stride(0),
        _ptr(slot_by_op), 0 if slot_by_op is None else slot_by_op.stride(0),
        _ptr(key), logits[0].shape[0], deterministic, out[0].data_ptr(), out[1].data_ptr(),
    )  # fmt: skip
    if stream is None:
        return module.select_actions(*args)
    module.select_actions(*args, stream)
    return None
