"""Public ``select_actions_v2``: esper HEAD's (schema v2) whole action in ONE kernel launch.

Same contract as :func:`esper_fast.ops.actions.select_actions` (the op chosen exactly once, every
other head in the same pass), plus what esper HEAD's ``get_action`` does: the network's own V(s) is
an input (passed through as ``values``), per-head probability floors are applied in the kernel,
heads the op makes irrelevant are canonicalised (their canonical action forced), the slot mask comes
from ``slot_by_op[n, op]`` when given, and entropies are normalised (entropy / log #valid). ``Q(s, op)``
from the q_head values and ``sum_a pi(a|s) Q(s, a)`` come back alongside. Semantics:
:mod:`esper_fast.reference.actions_v2`. Nothing here syncs with the host unless ``validate=True``.

Backends: torch (the reference), cpu (csrc/select_actions_v2_cpu.cpp), cuda
(csrc/select_actions_v2_cuda.cu), triton (esper_fast/ops/triton_actions_v2.py); chosen by
:func:`esper_fast.ops.backends.resolve_backend` exactly as for ``select_actions``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from esper_fast.constants import HEAD_NAMES
from esper_fast.ops._native import prepare_actions, run_native_actions
from esper_fast.ops.actions import _check, raise_for_bad_rows
from esper_fast.ops.backends import (
    _cpu_module,
    _cuda_module,
    device_guard,
    resolve_backend,
)
from esper_fast.ops.layout import (
    ACTION_ROWS,
    ENTROPY_ROW,
    FLOAT_ROWS_V2,
    LOG_PROB_ROW,
    Q_OP_ROW,
    STATE_VALUE_ROW_V2,
    VALUE_ROW,
    write_selection,
)
from esper_fast.ops.select import FLOAT_DTYPES, draw_key
from esper_fast.reference.actions_v2 import select_actions_v2_reference
from esper_fast.rules import AFTER_OP
from esper_fast.types import ActionSelectionV2

__all__ = ["ActionSelectionV2", "empty_action_outputs_v2", "select_actions_v2", "unpack_action_outputs_v2"]

_ORDER = ("op",) + AFTER_OP
N_FLOAT_ROWS = FLOAT_ROWS_V2  # log_prob x8, entropy x8, q_op, expected value, value (ops/layout.py)


def empty_action_outputs_v2(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(actions ``[ACTION_ROWS, n]`` int64, floats ``[FLOAT_ROWS_V2, n]`` float32: log_prob x8, entropy x8,
    q_op, expected, value; :mod:`esper_fast.ops.layout`)."""
    return (
        torch.empty(ACTION_ROWS, n, dtype=torch.int64, device=device),
        torch.empty(N_FLOAT_ROWS, n, dtype=torch.float32, device=device),
    )


def unpack_action_outputs_v2(actions: Tensor, floats: Tensor) -> ActionSelectionV2:
    """Views of the fused kernel's outputs (rows in HEAD_NAMES order) as an ActionSelectionV2."""
    idx = {h: i for i, h in enumerate(HEAD_NAMES)}
    return ActionSelectionV2(
        {h: actions[idx[h]] for h in _ORDER},
        {h: floats[LOG_PROB_ROW + idx[h]] for h in _ORDER},
        {h: floats[ENTROPY_ROW + idx[h]] for h in _ORDER},
        floats[Q_OP_ROW],
        floats[VALUE_ROW],
        floats[STATE_VALUE_ROW_V2],
    )


def floor_list(floors: dict[str, float] | None) -> list[float]:
    """Per-head floors in HEAD_NAMES order (0.0 = none); rejects unknown heads and bad values."""
    floors = dict(floors or {})
    unknown = sorted(set(floors) - set(HEAD_NAMES))
    if unknown:
        raise ValueError(f"probability floors name unknown heads {unknown}; heads are {HEAD_NAMES}")
    out = []
    for h in HEAD_NAMES:
        f = floors.get(h)
        f = 0.0 if f is None else float(f)
        if not (0.0 <= f < 1.0):
            raise ValueError(f"probability floor of head {h!r} must be in [0, 1), got {f}")
        out.append(f)
    return out


# ---- per-backend launchers: (logits, masks, q, value, floors, noise, slot_by_op, key, det, out) ------------
def _run_torch(logits, masks, q, value, floors, noise, slot_by_op, key, deterministic, out) -> None:
    with torch.no_grad():  # inputs that require grad: outputs are plain values on every backend (as v1)
        _run_torch_nograd(logits, masks, q, value, floors, noise, slot_by_op, key, deterministic, out)


def _run_torch_nograd(logits, masks, q, value, floors, noise, slot_by_op, key, deterministic, out) -> None:
    sel = select_actions_v2_reference(
        logits,
        masks,
        q,
        value,
        floors=dict(zip(HEAD_NAMES, floors)),
        deterministic=deterministic,
        noise=noise,
        key=key,
        slot_by_op=slot_by_op,
    )
    write_selection(sel, out)
    out[1][STATE_VALUE_ROW_V2].copy_(sel.values)


def _run_cpu(logits, masks, q, value, floors, noise, slot_by_op, key, deterministic, out) -> int:
    inp = prepare_actions(logits, masks, noise, q, slot_by_op)
    return run_native_actions(_cpu_module()[0], inp, key, deterministic, out, floors=floors, value=value)


def _run_cuda(logits, masks, q, value, floors, noise, slot_by_op, key, deterministic, out) -> None:
    with device_guard(q.device):
        inp = prepare_actions(logits, masks, noise, q, slot_by_op)
        run_native_actions(
            _cuda_module()[0],
            inp,
            key,
            deterministic,
            out,
            torch.cuda.current_stream(q.device).cuda_stream,
            floors=floors,
            value=value,
        )


def _run_triton(logits, masks, q, value, floors, noise, slot_by_op, key, deterministic, out) -> None:
    from esper_fast.ops.triton_actions_v2 import select_actions_v2_triton

    with device_guard(q.device):
        select_actions_v2_triton(
            prepare_actions(logits, masks, noise, q, slot_by_op), value, floors, key, deterministic, out
        )


_RUNNERS = {"torch": _run_torch, "cpu": _run_cpu, "cuda": _run_cuda, "triton": _run_triton}


def select_actions_v2(
    logits: dict[str, Tensor],
    masks: dict[str, Tensor | None],
    q: Tensor,
    value: Tensor | None = None,
    *,
    floors: dict[str, float] | None = None,
    deterministic: bool = False,
    noise: dict[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    slot_by_op: Tensor | None = None,
    backend: str = "auto",
    validate: bool = False,
    out: tuple[Tensor, Tensor] | None = None,
) -> ActionSelectionV2:
    """Choose every head of an esper-HEAD action, the op exactly once, in one kernel launch.

    Args:
        logits: head -> ``[N, n_head]`` raw logits (any float dtype), every head of ``HEAD_NAMES``.
        masks: head -> ``[N, n_head]`` bool (True = valid) or None / absent (all valid).
        q: ``[N, num_ops]`` Q(s, a) for every op (the q_head; auxiliary, read at the chosen op).
        value: ``[N]`` the network's V(s) (returned as ``values``), or None: ``values`` is then
            sum_a pi(a|s) Q(s, a) from the same pass.
        floors: head -> probability floor (esper HEAD's ``probability_floor``); absent or 0: none.
        deterministic: argmax every head (ties to the lowest index) instead of Gumbel-max sampling.
        noise: optional head -> ``[N, n_head]`` Gumbel noise (exact tests); other heads draw Philox
            stream h + 1 from one key per call.
        generator: torch.Generator on the inputs' device for the Philox key.
        slot_by_op: optional ``[N, num_ops, num_slots]`` bool; ``slot_by_op[n, op]`` replaces the slot
            mask (esper HEAD's ``slot_by_op_mask``).
        backend: "auto", "torch", "cpu", "cuda" or "triton".
        validate: raise :class:`InvalidActionMaskError` / ``ValueError`` on bad rows (one sync).
        out: optional preallocated ``(actions [8, N] int64, floats [19, N] float32)``.

    Returns:
        :class:`ActionSelectionV2` (dicts in esper's order: op, style, slot, blueprint, tempo,
        alpha_target, alpha_speed, alpha_curve); bad rows get action -1 and NaN (a bad op: every head).
    """
    n, device = _check(logits, masks, q, noise, slot_by_op)
    if value is not None and (value.shape != (n,) or value.dtype not in FLOAT_DTYPES or value.device != device):
        raise ValueError(
            f"value must be a float [{n}] tensor on {device}, got {value.dtype} {list(value.shape)} on {value.device}"
        )
    floors_l = floor_list(floors)
    chosen = resolve_backend(backend, device)
    if out is None:
        out = empty_action_outputs_v2(n, device)
    elif (
        out[0].shape != (ACTION_ROWS, n)
        or out[0].dtype != torch.int64
        or out[1].shape != (N_FLOAT_ROWS, n)
        or out[1].dtype != torch.float32
        or not out[0].is_contiguous()
        or not out[1].is_contiguous()
    ):
        raise ValueError(f"out must be contiguous (int64 [8, {n}], float32 [{N_FLOAT_ROWS}, {n}]) tensors")
    if n > 0:
        needs_key = not deterministic and any((noise or {}).get(h) is None for h in HEAD_NAMES)
        key = draw_key(device, generator) if needs_key else None
        _RUNNERS[chosen.name](logits, masks, q, value, floors_l, noise or {}, slot_by_op, key, deterministic, out)
    sel = unpack_action_outputs_v2(*out)
    if validate:
        _raise_for_bad_rows_v2(sel, logits, masks)
    return sel


def _raise_for_bad_rows_v2(sel: ActionSelectionV2, logits, masks) -> None:
    """:func:`esper_fast.ops.actions.raise_for_bad_rows` with v2's rules: only the op's mask is checked
    as such (the other heads are canonicalised by the op), bad ops reported once, under the op."""
    raise_for_bad_rows(
        sel.actions, logits, masks, rules="canonicalisation / slot_by_op", mask_heads=("op",), skip_rows_of_bad_op=True
    )
