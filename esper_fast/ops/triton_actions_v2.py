"""Triton kernel of the schema-v2 fused selection (``select_actions_v2``; semantics in
:mod:`esper_fast.reference.actions_v2`).

One program owns a block of rows; each head is a ``[BLOCK_N, BLOCK_A]`` tile. The op tile is chosen
first (floored, with Q and the expected value), then the seven other heads with esper HEAD's
canonicalisation and their floors. Reuses ``_load_tile``, ``_choose`` and ``_store_head`` of
:mod:`esper_fast.ops.triton_select` and its launch argument lists (same Philox streams as csrc/, so seeded calls
agree across
backends). Runs on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from esper_fast.ops import layout
from esper_fast.ops._native import ActionInputs
from esper_fast.ops.triton_select import (
    _Q_OP_ROW,
    _VALUE_ROW,
    _choose,
    _load_tile,
    _store_head,
    fused_block_n,
    head_args,
    head_flags,
    optional_arg,
)

_STATE_VALUE_ROW_V2 = tl.constexpr(layout.STATE_VALUE_ROW_V2)

__all__ = ["select_actions_v2_triton"]


@triton.jit
def _floor_tile(l, valid, floor):
    """esper HEAD's floor-preserving renormalisation on a tile -> floored logits (NaN kept for bad rows)."""
    raw_bad = tl.sum((valid & ((l - l) != 0.0)).to(tl.int32), axis=1) > 0
    masked = tl.where(valid, l, float("-inf"))
    m = tl.max(masked, axis=1)
    e = tl.where(valid, tl.exp(tl.where(valid, l - m[:, None], 0.0)), 0.0)
    s = tl.sum(e, axis=1)
    s = tl.where(s > 0.0, s, 1.0)
    p = e / s[:, None]
    count = tl.sum(valid.to(tl.float32), axis=1)
    cap = (1.0 / tl.maximum(count, 1.0)) * 0.99
    eff = tl.minimum(cap * 0.0 + floor, cap)[:, None]
    under = valid & (p < eff)
    over = valid & (p >= eff)
    remaining = tl.maximum(1.0 - tl.sum(under.to(tl.float32), axis=1)[:, None] * eff, 1e-8)
    over_total = tl.maximum(tl.sum(tl.where(over, p, 0.0), axis=1)[:, None], 1e-8)
    fp = tl.where(under, eff, p * (remaining / over_total))
    fl = tl.log(tl.maximum(fp, 1e-8))
    return tl.where(raw_bad[:, None], float("nan"), fl)


@triton.jit
def _normalize(ent, valid):
    count = tl.sum(valid.to(tl.int32), axis=1)
    norm = ent / tl.log(tl.maximum(count, 2).to(tl.float32))
    return tl.where((count == 1) & (ent == ent), 0.0, norm)  # noqa: PLR0124 (ent == ent: not NaN)


@triton.jit
def _head_v2(
    l_ptr,
    stride_l,
    m_ptr,
    stride_m,
    g_ptr,
    stride_g,
    key_ptr,
    rows,
    N,
    op,
    floor,
    sbo_ptr,
    stride_sbo,
    act_ptr,
    f_ptr,
    H: tl.constexpr,
    SIZE: tl.constexpr,
    BLOCK_A: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    HAS_FLOOR: tl.constexpr,
    HAS_SBO: tl.constexpr,
    CANON: tl.constexpr,
    RELEVANT: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
):
    """One non-op head: H its HEAD_NAMES index; RELEVANT a bitmask of ops for which it is free
    (ignored for slot, H == 0), CANON its canonical action. With HAS_SBO the slot head's mask flag is
    off (the launcher clears it): slot_by_op[row, op] replaces the mask."""
    cols, inb, l, _, valid, g = _load_tile(
        l_ptr,
        stride_l,
        l_ptr,
        0,
        m_ptr,
        stride_m,
        g_ptr,
        stride_g,
        key_ptr,
        rows,
        N,
        SIZE,
        BLOCK_A,
        False,
        HAS_MASK,
        HAS_NOISE,
        H + 1,
        DETERMINISTIC,
    )
    if H == 0:
        if HAS_SBO:
            opc = tl.maximum(op, 0)[:, None]
            valid = inb & (tl.load(sbo_ptr + rows * stride_sbo + opc * SIZE + cols, mask=inb, other=0) != 0)
        first = tl.min(tl.where(valid, cols, BLOCK_A), axis=1)
        first = tl.where(first == BLOCK_A, 0, first)
        valid = tl.where((op == 0)[:, None], inb & (cols == first[:, None]), valid)
    else:
        opc = tl.minimum(tl.maximum(op, 0), 31)
        relevant = ((RELEVANT >> opc) & 1) != 0
        valid = tl.where(relevant[:, None], valid, inb & (cols == CANON))
    valid = valid & (op >= 0)[:, None]
    if HAS_FLOOR:
        l = _floor_tile(l, valid, floor)
    act, logp, ent, _, _ = _choose(l, l * 0.0, valid, g, cols, DETERMINISTIC)
    _store_head(act_ptr, f_ptr, tl.reshape(rows, [rows.shape[0]]), N, act, logp, _normalize(ent, valid), H)


@triton.jit
def _select_actions_v2_kernel(
    l0,
    l1,
    l2,
    l3,
    l4,
    l5,
    l6,
    l7,
    sl0,
    sl1,
    sl2,
    sl3,
    sl4,
    sl5,
    sl6,
    sl7,
    m0,
    m1,
    m2,
    m3,
    m4,
    m5,
    m6,
    m7,
    sm0,
    sm1,
    sm2,
    sm3,
    sm4,
    sm5,
    sm6,
    sm7,
    g0,
    g1,
    g2,
    g3,
    g4,
    g5,
    g6,
    g7,
    sg0,
    sg1,
    sg2,
    sg3,
    sg4,
    sg5,
    sg6,
    sg7,
    f0,
    f1,
    f2,
    f3,
    f4,
    f5,
    f6,
    f7,
    q_ptr,
    stride_q,
    v_ptr,
    stride_v,
    sbo_ptr,
    stride_sbo,
    key_ptr,
    act_ptr,
    f_ptr,
    N,
    S0: tl.constexpr,
    S1: tl.constexpr,
    S2: tl.constexpr,
    S3: tl.constexpr,
    S4: tl.constexpr,
    S5: tl.constexpr,
    S6: tl.constexpr,
    S7: tl.constexpr,
    B0: tl.constexpr,
    B1: tl.constexpr,
    B2: tl.constexpr,
    B3: tl.constexpr,
    B4: tl.constexpr,
    B5: tl.constexpr,
    B6: tl.constexpr,
    B7: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    HAS_FLOOR: tl.constexpr,
    HAS_SBO: tl.constexpr,
    HAS_VALUE: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Heads in HEAD_NAMES order (0 slot ... 7 op); HAS_MASK / HAS_NOISE / HAS_FLOOR are 8-bit flags."""
    r = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = r.to(tl.int64)[:, None]
    # ---- op (head 7): chosen once, floored, with the q_head values
    cols, _, l, q, valid, g = _load_tile(
        l7,
        sl7,
        q_ptr,
        stride_q,
        m7,
        sm7,
        g7,
        sg7,
        key_ptr,
        rows,
        N,
        S7,
        B7,
        True,
        (HAS_MASK >> 7) & 1,
        (HAS_NOISE >> 7) & 1,
        8,
        DETERMINISTIC,
    )
    if (HAS_FLOOR >> 7) & 1:
        l = _floor_tile(l, valid, f7)
    op, logp, ent, q_op, expected = _choose(l, q, valid, g, cols, DETERMINISTIC)
    _store_head(act_ptr, f_ptr, r, N, op, logp, _normalize(ent, valid), 7)
    live = r < N
    tl.store(f_ptr + _Q_OP_ROW * N + r, q_op, mask=live)
    tl.store(f_ptr + _VALUE_ROW * N + r, expected, mask=live)
    value = expected
    if HAS_VALUE:
        v = tl.load(v_ptr + r.to(tl.int64) * stride_v, mask=live, other=0.0).to(tl.float32)
        value = tl.where(op >= 0, v, float("nan"))
    tl.store(f_ptr + _STATE_VALUE_ROW_V2 * N + r, value, mask=live)
    op = op.to(tl.int32)
    # ---- the other heads in esper's order, canonicalised by the op (RELEVANT: bit o = free for op o)
    _head_v2(
        l2,
        sl2,
        m2,
        sm2,
        g2,
        sg2,
        key_ptr,
        rows,
        N,
        op,
        f2,
        sbo_ptr,
        stride_sbo,
        act_ptr,
        f_ptr,
        2,
        S2,
        B2,
        (HAS_MASK >> 2) & 1,
        (HAS_NOISE >> 2) & 1,
        (HAS_FLOOR >> 2) & 1,
        HAS_SBO,
        2,
        6,
        DETERMINISTIC,
    )
    _head_v2(
        l0,
        sl0,
        m0,
        sm0,
        g0,
        sg0,
        key_ptr,
        rows,
        N,
        op,
        f0,
        sbo_ptr,
        stride_sbo,
        act_ptr,
        f_ptr,
        0,
        S0,
        B0,
        HAS_MASK & 1,
        HAS_NOISE & 1,
        HAS_FLOOR & 1,
        HAS_SBO,
        0,
        0,
        DETERMINISTIC,
    )
    _head_v2(
        l1,
        sl1,
        m1,
        sm1,
        g1,
        sg1,
        key_ptr,
        rows,
        N,
        op,
        f1,
        sbo_ptr,
        stride_sbo,
        act_ptr,
        f_ptr,
        1,
        S1,
        B1,
        (HAS_MASK >> 1) & 1,
        (HAS_NOISE >> 1) & 1,
        (HAS_FLOOR >> 1) & 1,
        HAS_SBO,
        0,
        2,
        DETERMINISTIC,
    )
    _head_v2(
        l3,
        sl3,
        m3,
        sm3,
        g3,
        sg3,
        key_ptr,
        rows,
        N,
        op,
        f3,
        sbo_ptr,
        stride_sbo,
        act_ptr,
        f_ptr,
        3,
        S3,
        B3,
        (HAS_MASK >> 3) & 1,
        (HAS_NOISE >> 3) & 1,
        (HAS_FLOOR >> 3) & 1,
        HAS_SBO,
        1,
        2,
        DETERMINISTIC,
    )
    _head_v2(
        l4,
        sl4,
        m4,
        sm4,
        g4,
        sg4,
        key_ptr,
        rows,
        N,
        op,
        f4,
        sbo_ptr,
        stride_sbo,
        act_ptr,
        f_ptr,
        4,
        S4,
        B4,
        (HAS_MASK >> 4) & 1,
        (HAS_NOISE >> 4) & 1,
        (HAS_FLOOR >> 4) & 1,
        HAS_SBO,
        2,
        6,
        DETERMINISTIC,
    )
    _head_v2(
        l5,
        sl5,
        m5,
        sm5,
        g5,
        sg5,
        key_ptr,
        rows,
        N,
        op,
        f5,
        sbo_ptr,
        stride_sbo,
        act_ptr,
        f_ptr,
        5,
        S5,
        B5,
        (HAS_MASK >> 5) & 1,
        (HAS_NOISE >> 5) & 1,
        (HAS_FLOOR >> 5) & 1,
        HAS_SBO,
        0,
        12,
        DETERMINISTIC,
    )
    _head_v2(
        l6,
        sl6,
        m6,
        sm6,
        g6,
        sg6,
        key_ptr,
        rows,
        N,
        op,
        f6,
        sbo_ptr,
        stride_sbo,
        act_ptr,
        f_ptr,
        6,
        S6,
        B6,
        (HAS_MASK >> 6) & 1,
        (HAS_NOISE >> 6) & 1,
        (HAS_FLOOR >> 6) & 1,
        HAS_SBO,
        0,
        12,
        DETERMINISTIC,
    )


def select_actions_v2_triton(
    inp: ActionInputs,
    value: Tensor | None,
    floors: list[float],
    key: Tensor | None,
    deterministic: bool,
    out: tuple[Tensor, Tensor],
) -> None:
    """Launches the v2 kernel on :func:`esper_fast.ops._native.prepare_actions`' inputs (heads in HEAD_NAMES
    order) writing ``out = (actions [8, N], floats [19, N])``."""
    n = inp.q.shape[0]
    if n == 0:
        return
    block_n = fused_block_n(inp)
    mask_flags = head_flags(inp.masks) & ~(1 if inp.slot_by_op is not None else 0)  # slot_by_op replaces slot's mask
    _select_actions_v2_kernel[(triton.cdiv(n, block_n),)](
        *head_args(inp),
        *[float(f) for f in floors],
        inp.q,
        inp.q.stride(0),
        *optional_arg(value, inp.q),
        *optional_arg(inp.slot_by_op, inp.q),
        inp.q if key is None else key,
        out[0],
        out[1],
        n,
        *inp.sizes,
        *[triton.next_power_of_2(s) for s in inp.sizes],
        HAS_MASK=mask_flags,
        HAS_NOISE=head_flags(inp.noise),
        HAS_FLOOR=head_flags([f if f > 0 else None for f in floors]),
        HAS_SBO=inp.slot_by_op is not None,
        HAS_VALUE=value is not None,
        DETERMINISTIC=deterministic,
        BLOCK_N=block_n,
        num_warps=4,
    )
