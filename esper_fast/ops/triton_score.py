"""Triton kernels of ``score_actions`` (the PPO update's scoring op): forward and backward.

Each program owns ``BLOCK_N`` rows of the packed ``[N, A]`` logits as one ``[BLOCK_N, BLOCK_A]`` tile
(A padded to a power of two); the eight heads are column groups of that tile, told apart by two small
per-column tables (head id, column within the head). Same formulas as ``csrc/score_row.h`` (esper's
-1e4 masking, normalised entropy, the style override and the optional ``slot_by_op`` mask), computed
in fp32. Runs on CPU tensors under ``TRITON_INTERPRET=1`` (keep N small there: ~10 ms per program).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from esper_fast.ops._native import unit_cols

__all__ = ["score_forward_triton", "score_backward_triton"]

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_BLOCK_N = 128 if _INTERPRET else 32


@triton.jit
def _score_kernel(
    logits_ptr,
    l_stride,
    mask_ptr,
    m_stride,
    act_ptr,
    a_stride,
    sbo_ptr,
    sbo_stride,
    col_head_ptr,
    col_local_ptr,
    out_lp_ptr,
    out_ent_ptr,
    g_lp_ptr,
    g_ent_ptr,
    grad_ptr,
    N,
    A_TOTAL: tl.constexpr,
    NUM_OPS: tl.constexpr,
    NUM_SLOTS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_SBO: tl.constexpr,
    BACKWARD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_A: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_A)
    rmask = rows < N
    cmask = cols < A_TOTAL
    r64 = rows.to(tl.int64)
    tile = rmask[:, None] & cmask[None, :]
    l = tl.load(logits_ptr + r64[:, None] * l_stride + cols[None, :], mask=tile, other=0.0).to(tl.float32)
    if HAS_MASK:
        mk = tile & (tl.load(mask_ptr + r64[:, None] * m_stride + cols[None, :], mask=tile, other=0) != 0)
    else:
        mk = tile
    col_head = tl.load(col_head_ptr + cols, mask=cmask, other=-1)
    col_local = tl.load(col_local_ptr + cols, mask=cmask, other=0)
    op = tl.load(act_ptr + r64 * a_stride + 7, mask=rmask, other=0)
    grad = tl.zeros([BLOCK_N, BLOCK_A], dtype=tl.float32)
    for h in tl.static_range(8):
        head_cols = col_head == h
        in_h = head_cols[None, :] & tile
        size_h = tl.sum(head_cols.to(tl.int32), axis=0)
        a_h = tl.load(act_ptr + r64 * a_stride + h, mask=rmask, other=0)
        if h == 2:  # style: SIGMOID_ADD only unless GERMINATE / SET_ALPHA_TARGET (the mask is replaced)
            free = (op == 1) | (op == 2)
            valid = in_h & tl.where(free[:, None], mk, (col_local == 2)[None, :])
        elif h == 0 and HAS_SBO:  # slot: & slot_by_op[row, op] when the op is in range
            op_ok = (op >= 0) & (op < NUM_OPS)
            sb_ptr = sbo_ptr + r64[:, None] * sbo_stride + op[:, None].to(tl.int64) * NUM_SLOTS + col_local[None, :]
            sb = tl.load(sb_ptr, mask=in_h & op_ok[:, None], other=1) != 0
            valid = in_h & mk & sb
        else:
            valid = in_h & mk
        x = tl.where(valid, l, -1e4)
        m = tl.max(tl.where(in_h, x, float("-inf")), axis=1)
        m = tl.where(rmask, m, 0.0)
        e = tl.where(in_h, tl.exp(x - m[:, None]), 0.0)
        log_s = tl.log(tl.where(rmask, tl.sum(e, axis=1), 1.0))
        logp = (x - m[:, None]) - log_s[:, None]
        p = tl.where(in_h, tl.exp(logp), 0.0)
        is_a = in_h & (col_local[None, :] == a_h[:, None])
        a_ok = (a_h >= 0) & (a_h < size_h)
        s1 = tl.sum(tl.where(valid, p * logp, 0.0), axis=1)
        pv = tl.sum(tl.where(valid, p, 0.0), axis=1)
        n = tl.sum(valid.to(tl.int32), axis=1)
        div = tl.maximum(tl.log(tl.maximum(n, 1).to(tl.float32)), 1e-8)
        if BACKWARD:
            gl = tl.load(g_lp_ptr + h * N + r64, mask=rmask, other=0.0).to(tl.float32)
            ge = tl.load(g_ent_ptr + h * N + r64, mask=rmask, other=0.0).to(tl.float32)
            ge = tl.where(n > 1, ge / div, 0.0)
            d_lp = tl.where(a_ok[:, None], is_a.to(tl.float32) - p, float("nan"))
            d_raw = -p * (logp + 1.0 - s1[:, None] - pv[:, None])
            grad += tl.where(valid, gl[:, None] * d_lp + ge[:, None] * d_raw, 0.0)
        else:
            lp = tl.where(a_ok, tl.sum(tl.where(is_a, logp, 0.0), axis=1), float("nan"))
            ent = tl.where(n > 1, -s1 / div, 0.0)
            tl.store(out_lp_ptr + h * N + r64, lp, mask=rmask)
            tl.store(out_ent_ptr + h * N + r64, ent, mask=rmask)
    if BACKWARD:
        tl.store(grad_ptr + r64[:, None] * A_TOTAL + cols[None, :], grad, mask=tile)


_TABLES: dict[tuple, tuple[Tensor, Tensor]] = {}


def _column_tables(offsets: list[int], sizes: list[int], width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(head id, column within the head) per packed column, int32 ``[width]`` (-1 / 0 in gaps); cached."""
    key = (tuple(offsets), tuple(sizes), width, str(device))
    if key not in _TABLES:
        head = torch.full((width,), -1, dtype=torch.int32)
        local = torch.zeros(width, dtype=torch.int32)
        for h, (o, s) in enumerate(zip(offsets, sizes)):
            head[o : o + s] = h
            local[o : o + s] = torch.arange(s, dtype=torch.int32)
        _TABLES[key] = (head.to(device), local.to(device))
    return _TABLES[key]


def _launch(logits, mask, actions, slot_by_op, offsets, sizes, out_lp, out_ent, g_lp, g_ent, grad, backward):
    if logits.dtype == torch.float64:
        raise TypeError(
            "score_actions (triton): logits must be float32/float16/bfloat16, got float64 (use backend='cpu')"
        )
    n, width = logits.shape
    logits, actions = unit_cols(logits), unit_cols(actions)
    mask = None if mask is None else unit_cols(mask)
    if slot_by_op is not None:
        slot_by_op = slot_by_op.contiguous()
    col_head, col_local = _column_tables(offsets, sizes, width, logits.device)
    dummy = out_lp if out_lp is not None else grad
    grid = (triton.cdiv(n, _BLOCK_N),)
    _score_kernel[grid](
        logits,
        logits.stride(0),
        mask if mask is not None else logits,
        0 if mask is None else mask.stride(0),
        actions,
        actions.stride(0),
        slot_by_op if slot_by_op is not None else logits,
        0 if slot_by_op is None else slot_by_op.stride(0),
        col_head,
        col_local,
        out_lp if out_lp is not None else dummy,
        out_ent if out_ent is not None else dummy,
        g_lp if g_lp is not None else dummy,
        g_ent if g_ent is not None else dummy,
        grad if grad is not None else dummy,
        n,
        A_TOTAL=width,
        NUM_OPS=sizes[7],
        NUM_SLOTS=sizes[0],
        HAS_MASK=mask is not None,
        HAS_SBO=slot_by_op is not None,
        BACKWARD=backward,
        BLOCK_N=_BLOCK_N,
        BLOCK_A=triton.next_power_of_2(width),
    )


def score_forward_triton(logits, mask, actions, slot_by_op, offsets, sizes, out_lp: Tensor, out_ent: Tensor) -> None:
    """Writes ``out_lp`` / ``out_ent`` ``[8, N]`` fp32 (inputs as :func:`esper_fast.ops.score.score_actions`)."""
    _launch(logits, mask, actions, slot_by_op, offsets, sizes, out_lp, out_ent, None, None, None, False)


def score_backward_triton(
    logits, mask, actions, slot_by_op, offsets, sizes, g_lp: Tensor, g_ent: Tensor, grad: Tensor
) -> None:
    """Writes ``grad [N, A]`` fp32 from the output grads ``g_lp`` / ``g_ent`` ``[8, N]`` fp32 (contiguous)."""
    _launch(
        logits, mask, actions, slot_by_op, offsets, sizes, None, None, g_lp.contiguous(), g_ent.contiguous(), grad, True
    )
