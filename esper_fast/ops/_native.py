"""Glue between torch tensors and the kernels: ONE argument-preparation path for every backend.

:func:`prepare_op` / :func:`prepare_actions` turn checked tensors into what every kernel reads (unit-stride
columns, explicit noise as fp32, a row-contiguous ``slot_by_op``, heads as lists in ``HEAD_NAMES``
order); the native (cpu / cuda) and Triton launchers all start from them. :func:`op_fields` /
:func:`action_fields` name the pybind11 pointer entries' arguments (``csrc/bindings_common.h``: the
C++ argument structs' field names, keyword arguments only).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import NamedTuple

import torch
from torch import Tensor

from esper_fast.constants import HEAD_NAMES
from esper_fast.types import OpSelection

__all__ = [
    "DTYPE_CODES",
    "ActionInputs",
    "OpInputs",
    "action_fields",
    "load_module",
    "op_fields",
    "prepare_actions",
    "prepare_op",
    "run_native",
    "run_native_actions",
    "unit_cols",
]

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


def _opt(t: Tensor | None) -> Tensor | None:
    return None if t is None else unit_cols(t)


def _noise(g: Tensor | None) -> Tensor | None:
    return None if g is None else unit_cols(g.float())


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _stride(t: Tensor | None) -> int:
    return 0 if t is None else t.stride(0)


def _code(t: Tensor | None) -> int:
    return 0 if t is None else DTYPE_CODES[t.dtype]


class OpInputs(NamedTuple):
    """select_op's inputs as the kernels read them: ``[N, A]`` each, unit-stride columns, noise fp32."""

    logits: Tensor
    q: Tensor | None
    mask: Tensor | None
    noise: Tensor | None


def prepare_op(logits: Tensor, q: Tensor | None, mask: Tensor | None, noise: Tensor | None) -> OpInputs:
    """The checked select_op tensors as every kernel takes them (copies only where a column stride is not 1)."""
    return OpInputs(unit_cols(logits), _opt(q), _opt(mask), _noise(noise))


def op_fields(inp: OpInputs, key: Tensor | None, deterministic: bool, out: OpSelection) -> dict[str, object]:
    """The pointer entry ``select_op``'s keyword arguments (csrc/select_args.h ``SelectArgs`` fields)."""
    n, a = inp.logits.shape
    return dict(
        logits=inp.logits.data_ptr(),
        logits_dtype=DTYPE_CODES[inp.logits.dtype],
        logits_stride=inp.logits.stride(0),
        q=_ptr(inp.q),
        q_dtype=_code(inp.q),
        q_stride=_stride(inp.q),
        mask=_ptr(inp.mask),
        mask_stride=_stride(inp.mask),
        noise=_ptr(inp.noise),
        noise_stride=_stride(inp.noise),
        key=_ptr(key),
        n=n,
        a=a,
        deterministic=deterministic,
        out_op=out.op.data_ptr(),
        out_log_prob=out.log_prob.data_ptr(),
        out_entropy=out.entropy.data_ptr(),
        out_q_op=out.q_op.data_ptr(),
        out_value=out.value.data_ptr(),
    )


class ActionInputs(NamedTuple):
    """The fused ops' inputs as the kernels read them: per-head lists in ``HEAD_NAMES`` order."""

    logits: list[Tensor]  # [N, n_h], unit-stride columns
    masks: list[Tensor | None]
    noise: list[Tensor | None]  # fp32
    q: Tensor  # [N, num_ops]
    slot_by_op: Tensor | None  # [N, num_ops, num_slots], row-contiguous

    @property
    def sizes(self) -> list[int]:
        return [t.shape[1] for t in self.logits]


def prepare_actions(
    logits: Mapping[str, Tensor] | Sequence[Tensor],
    masks: Mapping[str, Tensor | None] | Sequence[Tensor | None],
    noise: Mapping[str, Tensor | None] | Sequence[Tensor | None] | None,
    q: Tensor,
    slot_by_op: Tensor | None,
) -> ActionInputs:
    """The checked fused-op tensors (dicts keyed by head, or lists in HEAD_NAMES order) as every kernel takes them."""

    def per_head(d) -> list:
        if d is None:
            return [None] * len(HEAD_NAMES)
        return [d.get(h) for h in HEAD_NAMES] if isinstance(d, Mapping) else list(d)

    return ActionInputs(
        [unit_cols(t) for t in per_head(logits)],
        [_opt(m) for m in per_head(masks)],
        [_noise(g) for g in per_head(noise)],
        unit_cols(q),
        None if slot_by_op is None else slot_by_op.contiguous(),
    )


def action_fields(
    inp: ActionInputs,
    key: Tensor | None,
    deterministic: bool,
    out: tuple[Tensor, Tensor],
    floors: Sequence[float] | None = None,
    value: Tensor | None = None,
) -> dict[str, object]:
    """The pointer entry ``select_actions``' keyword arguments (``ActionArgs`` fields, csrc/select_actions.h);
    with ``floors`` those of ``select_actions_v2`` (plus floor, value, value_dtype, value_stride)."""
    fields = dict(
        logits=[t.data_ptr() for t in inp.logits],
        logits_dtype=[DTYPE_CODES[t.dtype] for t in inp.logits],
        logits_stride=[t.stride(0) for t in inp.logits],
        mask=[_ptr(m) for m in inp.masks],
        mask_stride=[_stride(m) for m in inp.masks],
        noise=[_ptr(g) for g in inp.noise],
        noise_stride=[_stride(g) for g in inp.noise],
        size=inp.sizes,
        q=inp.q.data_ptr(),
        q_dtype=DTYPE_CODES[inp.q.dtype],
        q_stride=inp.q.stride(0),
        slot_by_op=_ptr(inp.slot_by_op),
        slot_by_op_stride=_stride(inp.slot_by_op),
        key=_ptr(key),
        n=inp.q.shape[0],
        deterministic=deterministic,
        out_actions=out[0].data_ptr(),
        out_f=out[1].data_ptr(),
    )
    if floors is not None:
        fields.update(
            floor=[float(f) for f in floors], value=_ptr(value), value_dtype=_code(value), value_stride=_stride(value)
        )
    return fields


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
    """Launches ``module.select_op`` writing into ``out``; returns the CPU bad-row count or None.

    CUDA (``stream`` given): the launch is asynchronous, but any copy made here is freed through torch's
    caching allocator on the same stream, so the kernel still reads it before it is reused."""
    inp = prepare_op(logits, q, mask, noise)  # held until the call returns (copies live in it)
    fields = op_fields(inp, key, deterministic, out)
    if stream is None:
        return module.select_op(**fields)
    module.select_op(**fields, stream=stream)
    return None


def run_native_actions(
    module: ModuleType,
    inp: ActionInputs,
    key: Tensor | None,
    deterministic: bool,
    out: tuple[Tensor, Tensor],
    stream: int | None = None,
    *,
    floors: Sequence[float] | None = None,
    value: Tensor | None = None,
) -> int | None:
    """Launches ``module.select_actions`` (or ``select_actions_v2`` when ``floors`` is given) writing into
    ``out``; returns the CPU bad-row count or None (CUDA: enqueued on ``stream``). ``inp``
    (:func:`prepare_actions`) holds the tensors whose pointers are passed."""
    fields = action_fields(inp, key, deterministic, out, floors, value)
    entry = module.select_actions if floors is None else module.select_actions_v2
    if stream is None:
        return entry(**fields)
    entry(**fields, stream=stream)
    return None
