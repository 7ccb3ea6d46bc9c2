"""``torch.library`` registrations of the kernels, so ``torch.compile(fullgraph=True)`` traces them.

Eager calls skip the dispatcher (it costs microseconds per call); ``select_op`` / ``select_actions``
route through these ops only while ``torch.compiler.is_compiling()``. Each op has a fake (meta)
implementation that gives output shapes without running a kernel.

The schemas are written out rather than inferred from the annotations: schema inference of
``list[Optional[Tensor]]`` and friends differs between torch releases (torch 2.6 rejects
``list[Tensor]`` annotations here), while a schema string means the same to every release that
has ``torch.library.custom_op``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from esper_fast.constants import HEAD_NAMES
from esper_fast.ops.backends import resolve_backend
from esper_fast.ops.layout import ACTION_ROWS, FLOAT_ROWS
from esper_fast.types import OpSelection

__all__ = ["select_op_op", "select_actions_op"]


SELECT_OP_SCHEMA = (
    "(Tensor logits, Tensor? q, Tensor? mask, Tensor? noise, Tensor? key, bool deterministic, "
    "str backend) -> (Tensor, Tensor)"
)
SELECT_ACTIONS_SCHEMA = (
    "(Tensor[] logits, Tensor?[] masks, Tensor?[] noise, Tensor q, Tensor? slot_by_op, "
    "Tensor? key, bool deterministic, str backend) -> (Tensor, Tensor)"
)


@torch.library.custom_op("esper_fast::select_op", mutates_args=(), schema=SELECT_OP_SCHEMA)
def select_op_op(
    logits: Tensor,
    q: Tensor | None,
    mask: Tensor | None,
    noise: Tensor | None,
    key: Tensor | None,
    deterministic: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """(op ``[N]`` int64, floats ``[4, N]``: log_prob, entropy, q_op, value)."""
    n = logits.shape[0]
    op = torch.empty(n, dtype=torch.int64, device=logits.device)
    f = torch.empty(4, n, dtype=torch.float32, device=logits.device)
    resolve_backend(backend, logits.device, tuple(logits.shape)).run(
        logits, q, mask, noise, key, deterministic, OpSelection(op, *f)
    )
    return op, f


@select_op_op.register_fake
def _select_op_fake(logits, q, mask, noise, key, deterministic, backend):
    n = logits.shape[0]
    return logits.new_empty(n, dtype=torch.int64), logits.new_empty(4, n, dtype=torch.float32)


@torch.library.custom_op("esper_fast::select_actions", mutates_args=(), schema=SELECT_ACTIONS_SCHEMA)
def select_actions_op(
    logits: list[Tensor],
    masks: list[Tensor | None],
    noise: list[Tensor | None],
    q: Tensor,
    slot_by_op: Tensor | None,
    key: Tensor | None,
    deterministic: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """(actions ``[ACTION_ROWS, N]`` int64, floats ``[FLOAT_ROWS, N]``; :mod:`esper_fast.ops.layout`)."""
    n = q.shape[0]
    out = (
        torch.empty(ACTION_ROWS, n, dtype=torch.int64, device=q.device),
        torch.empty(FLOAT_ROWS, n, dtype=torch.float32, device=q.device),
    )
    as_dict = lambda ts: {h: t for h, t in zip(HEAD_NAMES, ts) if t is not None}  # noqa: E731
    resolve_backend(backend, q.device).run_actions(
        dict(zip(HEAD_NAMES, logits)), as_dict(masks), q, as_dict(noise), slot_by_op, key, deterministic, out
    )
    return out


@select_actions_op.register_fake
def _select_actions_fake(logits, masks, noise, q, slot_by_op, key, deterministic, backend):
    n = q.shape[0]
    return q.new_empty(ACTION_ROWS, n, dtype=torch.int64), q.new_empty(FLOAT_ROWS, n, dtype=torch.float32)
