"""Triton kernels: ``select_op`` and the fused whole-action ``select_actions``.

Each program owns a block of rows; each head is a ``[BLOCK_N, BLOCK_A]`` tile with A padded to a
power of two. Same semantics and the same Philox stream as csrc/ (counter = (col, row lo, row hi,
stream), key = the 64-bit key), so a seeded call picks the same actions as the CPU and CUDA kernels.
Runs on CPU tensors under ``TRITON_INTERPRET=1`` (keep N small there: ~10 ms per program).
"""

from __future__ import annotations

import os

import triton
import triton.language as tl
from torch import Tensor

from esper_fast.ops import layout
from esper_fast.ops._native import ActionInputs, prepare_op
from esper_fast.types import OpSelection

__all__ = [
    "select_op_triton",
    "select_actions_triton",
    "block_sizes",
    "head_args",
    "head_flags",
    "fused_block_n",
    "optional_arg",
]

# The fused output layout (esper_fast/ops/layout.py) as compile-time constants of the kernels.
_LOG_PROB_ROW = tl.constexpr(layout.LOG_PROB_ROW)
_ENTROPY_ROW = tl.constexpr(layout.ENTROPY_ROW)
_Q_OP_ROW = tl.constexpr(layout.Q_OP_ROW)
_VALUE_ROW = tl.constexpr(layout.VALUE_ROW)


@triton.jit
def _philox_gumbel(key_ptr, rows, cols, STREAM: tl.constexpr):
    """Gumbel noise for (row, col) tiles; rows [BN, 1] int64, cols [1, BA] int32."""
    key = tl.load(key_ptr).to(tl.uint64)
    k0 = (key & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((key >> 32) & 0xFFFFFFFF).to(tl.uint32)
    zero = (rows * 0 + cols * 0).to(tl.uint32)
    c0 = cols.to(tl.uint32) + zero
    c1 = (rows & 0xFFFFFFFF).to(tl.uint32) + zero
    c2 = ((rows >> 32) & 0xFFFFFFFF).to(tl.uint32) + zero
    x, _, _, _ = tl.random.philox_impl(c0, c1, c2, zero + STREAM, k0, k1, 10)
    u = ((x >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08
    u = tl.minimum(u, 0.99999994039535522461)  # 1 - 2^-24: keeps u < 1 (csrc/philox.h)
    return -tl.log(-tl.log(u))


@triton.jit
def _choose(l, q, valid, g, cols, DETERMINISTIC: tl.constexpr):
    """Per-row masked categorical choice on a tile -> (action, log_prob, entropy, q_sel, value)."""
    count = tl.sum(valid.to(tl.int32), axis=1)
    bad = tl.sum((valid & ((l - l) != 0.0)).to(tl.int32), axis=1) > 0  # non-finite valid logit
    masked = tl.where(valid, l, float("-inf"))
    m = tl.max(masked, axis=1)
    if DETERMINISTIC:
        score = masked
    else:
        score = tl.where(valid, l + g, float("-inf"))
    act = tl.argmax(score, axis=1, tie_break_left=True)
    d = tl.where(valid, l - m[:, None], 0.0)
    e = tl.where(valid, tl.exp(d), 0.0)
    ok = (count > 0) & (bad == 0)
    s = tl.where(ok, tl.sum(e, axis=1), 1.0)  # bad / padded rows: keep the math finite
    sl = tl.sum(tl.where(e > 0.0, e * d, 0.0), axis=1)  # 0 * -inf where l - m overflows (csrc)
    sq = tl.sum(e * tl.where(valid, q, 0.0), axis=1)
    sel = cols == act[:, None]
    l_act = tl.sum(tl.where(sel, l, 0.0), axis=1)
    q_act = tl.sum(tl.where(sel, q, 0.0), axis=1)
    log_s = tl.log(s)
    nan = float("nan")
    return (
        tl.where(ok, act, -1).to(tl.int64),
        tl.where(ok, (l_act - m) - log_s, nan),
        tl.where(ok, log_s - sl / s, nan),
        tl.where(ok, q_act, nan),
        tl.where(ok, sq / s, nan),
    )


@triton.jit
def _load_tile(
    l_ptr,
    stride_l,
    q_ptr,
    stride_q,
    m_ptr,
    stride_m,
    g_ptr,
    stride_g,
    key_ptr,
    rows,
    N,
    A,
    BLOCK_A: tl.constexpr,
    HAS_Q: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    STREAM: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
):
    """One head's ``[BN, BLOCK_A]`` tile for rows ``[BN, 1]`` (every kernel's loads, written once) ->
    (cols, in-bounds, logits fp32, q fp32 (0 without HAS_Q), valid, Gumbel noise (0 when DETERMINISTIC);
    the noise is explicit (HAS_NOISE) or Philox stream STREAM)."""
    cols = tl.arange(0, BLOCK_A)[None, :]
    inb = (rows < N) & (cols < A)
    l = tl.load(l_ptr + rows * stride_l + cols, mask=inb, other=0.0).to(tl.float32)
    q = tl.zeros([rows.shape[0], BLOCK_A], dtype=tl.float32)
    if HAS_Q:
        q = tl.load(q_ptr + rows * stride_q + cols, mask=inb, other=0.0).to(tl.float32)
    valid = inb
    if HAS_MASK:
        valid = valid & (tl.load(m_ptr + rows * stride_m + cols, mask=inb, other=0) != 0)
    g = tl.zeros([rows.shape[0], BLOCK_A], dtype=tl.float32)
    if not DETERMINISTIC:
        if HAS_NOISE:
            g = tl.load(g_ptr + rows * stride_g + cols, mask=inb, other=0.0).to(tl.float32)
        else:
            g = _philox_gumbel(key_ptr, rows, cols, STREAM)
    return cols, inb, l, q, valid, g


@triton.jit
def _store_head(act_ptr, f_ptr, r, N, act, logp, ent, H: tl.constexpr):
    """Head H's action, log-prob and entropy into the fused outputs (ops/layout.py rows)."""
    live = r < N
    tl.store(act_ptr + H * N + r, act, mask=live)
    tl.store(f_ptr + (_LOG_PROB_ROW + H) * N + r, logp, mask=live)
    tl.store(f_ptr + (_ENTROPY_ROW + H) * N + r, ent, mask=live)


@triton.jit
def _select_op_kernel(
    logits_ptr,
    q_ptr,
    mask_ptr,
    noise_ptr,
    key_ptr,
    op_ptr,
    logp_ptr,
    ent_ptr,
    qop_ptr,
    val_ptr,
    N,
    A,
    stride_l,
    stride_q,
    stride_m,
    stride_n,
    HAS_Q: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_A: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = r.to(tl.int64)[:, None]  # [BN, 1]
    cols, _, l, q, valid, g = _load_tile(
        logits_ptr,
        stride_l,
        q_ptr,
        stride_q,
        mask_ptr,
        stride_m,
        noise_ptr,
        stride_n,
        key_ptr,
        rows,
        N,
        A,
        BLOCK_A,
        HAS_Q,
        HAS_MASK,
        HAS_NOISE,
        0,
        DETERMINISTIC,
    )
    act, logp, ent, q_sel, val = _choose(l, q, valid, g, cols, DETERMINISTIC)
    live = r < N
    tl.store(op_ptr + r, act, mask=live)
    tl.store(logp_ptr + r, logp, mask=live)
    tl.store(ent_ptr + r, ent, mask=live)
    tl.store(qop_ptr + r, q_sel, mask=live)
    tl.store(val_ptr + r, val, mask=live)


@triton.jit
def _head(
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
    sbo_ptr,
    stride_sbo,
    act_ptr,
    f_ptr,
    H: tl.constexpr,
    SIZE: tl.constexpr,
    BLOCK_A: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    RULE: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
):
    """One non-op head of the fused kernel. RULE: 0 none, 1 style (forced unless op in {1, 2}),
    2 slot restricted by slot_by_op[row, op]."""
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
    if RULE == 1:
        free = (op == 1) | (op == 2)
        valid = tl.where(free[:, None], valid, inb & (cols == 2))
    if RULE == 2:  # rules.slot_for_op: a bad row's op (-1) restricts nothing
        opc = tl.maximum(op, 0)[:, None]
        sb_ok = inb & (op >= 0)[:, None]
        valid = valid & (tl.load(sbo_ptr + rows * stride_sbo + opc * SIZE + cols, mask=sb_ok, other=1) != 0)
    act, logp, ent, _, _ = _choose(l, l * 0.0, valid, g, cols, DETERMINISTIC)
    _store_head(act_ptr, f_ptr, tl.reshape(rows, [rows.shape[0]]), N, act, logp, ent, H)


@triton.jit
def _select_actions_kernel(
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
    q_ptr,
    stride_q,
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
    HAS_SBO: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Heads in HEAD_NAMES order (0 slot ... 7 op); HAS_MASK / HAS_NOISE are 8-bit flags."""
    r = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = r.to(tl.int64)[:, None]
    # ---- op (head 7): chosen once, with the critic
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
    op, logp, ent, q_op, value = _choose(l, q, valid, g, cols, DETERMINISTIC)
    _store_head(act_ptr, f_ptr, r, N, op, logp, ent, 7)
    live = r < N
    tl.store(f_ptr + _Q_OP_ROW * N + r, q_op, mask=live)
    tl.store(f_ptr + _VALUE_ROW * N + r, value, mask=live)
    # ---- the other heads, with esper's op-dependent rules
    _head(
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
        sbo_ptr,
        stride_sbo,
        act_ptr,
        f_ptr,
        2,
        S2,
        B2,
        (HAS_MASK >> 2) & 1,
        (HAS_NOISE >> 2) & 1,
        1,
        DETERMINISTIC,
    )
    _head(
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
        sbo_ptr,
        stride_sbo,
        act_ptr,
        f_ptr,
        0,
        S0,
        B0,
        HAS_MASK & 1,
        HAS_NOISE & 1,
        HAS_SBO * 2,
        DETERMINISTIC,
    )
    _head(
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
        sbo_ptr,
        stride_sbo,
        act_ptr,
        f_ptr,
        1,
        S1,
        B1,
        (HAS_MASK >> 1) & 1,
        (HAS_NOISE >> 1) & 1,
        0,
        DETERMINISTIC,
    )
    _head(
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
        sbo_ptr,
        stride_sbo,
        act_ptr,
        f_ptr,
        3,
        S3,
        B3,
        (HAS_MASK >> 3) & 1,
        (HAS_NOISE >> 3) & 1,
        0,
        DETERMINISTIC,
    )
    _head(
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
        sbo_ptr,
        stride_sbo,
        act_ptr,
        f_ptr,
        4,
        S4,
        B4,
        (HAS_MASK >> 4) & 1,
        (HAS_NOISE >> 4) & 1,
        0,
        DETERMINISTIC,
    )
    _head(
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
        sbo_ptr,
        stride_sbo,
        act_ptr,
        f_ptr,
        5,
        S5,
        B5,
        (HAS_MASK >> 5) & 1,
        (HAS_NOISE >> 5) & 1,
        0,
        DETERMINISTIC,
    )
    _head(
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
        sbo_ptr,
        stride_sbo,
        act_ptr,
        f_ptr,
        6,
        S6,
        B6,
        (HAS_MASK >> 6) & 1,
        (HAS_NOISE >> 6) & 1,
        0,
        DETERMINISTIC,
    )


# Elements per program: ~4K suits the GPU; the CPU interpreter pays per program, so it takes more.
_TILE = 65536 if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") else 4096


def block_sizes(n: int, a: int, tile: int = _TILE) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_A): A padded to a power of two, about ``tile`` elements per program."""
    block_a = triton.next_power_of_2(max(a, 1))
    block_n = max(1, min(triton.next_power_of_2(max(n, 1)), tile // block_a))
    return block_n, block_a


def select_op_triton(
    logits: Tensor,
    q: Tensor | None,
    mask: Tensor | None,
    noise: Tensor | None,
    key: Tensor | None,
    deterministic: bool,
    out: OpSelection,
) -> None:
    """Launches the select_op kernel writing into ``out`` (all [N] and contiguous)."""
    n, a = logits.shape
    if n == 0:
        return
    logits, q, mask, noise = prepare_op(logits, q, mask, noise)  # the native backends' preparation
    block_n, block_a = block_sizes(n, a)
    dummy = logits  # any pointer for absent optional inputs (never read)
    _select_op_kernel[(triton.cdiv(n, block_n),)](
        logits,
        dummy if q is None else q,
        dummy if mask is None else mask,
        dummy if noise is None else noise,
        dummy if key is None else key,
        out.op,
        out.log_prob,
        out.entropy,
        out.q_op,
        out.value,
        n,
        a,
        logits.stride(0),
        0 if q is None else q.stride(0),
        0 if mask is None else mask.stride(0),
        0 if noise is None else noise.stride(0),
        HAS_Q=q is not None,
        HAS_MASK=mask is not None,
        HAS_NOISE=noise is not None,
        DETERMINISTIC=deterministic,
        BLOCK_N=block_n,
        BLOCK_A=block_a,
        num_warps=4 if block_n * block_a >= 1024 else 1,
    )


def select_actions_triton(
    inp: ActionInputs,
    key: Tensor | None,
    deterministic: bool,
    out: tuple[Tensor, Tensor],
) -> None:
    """Launches the fused kernel on :func:`esper_fast.ops._native.prepare_actions`' inputs (heads in HEAD_NAMES
    order) writing ``out = (actions, floats)`` (ops/layout.py)."""
    n = inp.q.shape[0]
    if n == 0:
        return
    block_n = fused_block_n(inp)
    _select_actions_kernel[(triton.cdiv(n, block_n),)](
        *head_args(inp),
        inp.q,
        inp.q.stride(0),
        *optional_arg(inp.slot_by_op, inp.q),
        inp.q if key is None else key,
        out[0],
        out[1],
        n,
        *inp.sizes,
        *[triton.next_power_of_2(s) for s in inp.sizes],
        HAS_MASK=head_flags(inp.masks),
        HAS_NOISE=head_flags(inp.noise),
        HAS_SBO=inp.slot_by_op is not None,
        DETERMINISTIC=deterministic,
        BLOCK_N=block_n,
        num_warps=4,
    )


# ---- the fused launchers' shared argument lists (select_actions and select_actions_v2) -----------------------
def optional_arg(t: Tensor | None, dummy: Tensor) -> tuple[Tensor, int]:
    """(tensor, row stride) of an optional input; absent: any pointer (never read) and 0."""
    return (dummy, 0) if t is None else (t, t.stride(0))


def head_args(inp: ActionInputs) -> list:
    """The per-head pointer and stride parameters of the fused kernels: l0..l7, sl0..sl7, m0..m7, sm0..sm7,
    g0..g7, sg0..sg7 (absent masks / noise: a dummy pointer and stride 0)."""
    masks = [optional_arg(m, inp.q) for m in inp.masks]
    noise = [optional_arg(g, inp.q) for g in inp.noise]
    return [
        *inp.logits,
        *[t.stride(0) for t in inp.logits],
        *[m for m, _ in masks],
        *[s for _, s in masks],
        *[g for g, _ in noise],
        *[s for _, s in noise],
    ]


def head_flags(ts: list) -> int:
    """Bit h set where head h's optional input is given."""
    return sum(1 << i for i, t in enumerate(ts) if t is not None)


def fused_block_n(inp: ActionInputs) -> int:
    """Rows per program of the fused kernels (about half the select_op tile)."""
    return block_sizes(inp.q.shape[0], max(inp.sizes), _TILE // 2)[0]
