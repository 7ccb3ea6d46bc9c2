"""The Triton kernel of ``select_op``: each program owns a [BLOCK_N, BLOCK_A] tile of rows.

Same semantics and the same Philox stream as csrc/ (counter = (col, row lo, row hi, 0), key = the
64-bit key), so a seeded call picks the same ops as the CPU and CUDA kernels. Runs on CPU tensors
under ``TRITON_INTERPRET=1`` (keep N small there: ~10 ms per program).
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from esper_fast.ops._native import unit_cols as _unit_cols
from esper_fast.types import OpSelection

__all__ = ["select_op_triton", "block_sizes"]


@triton.jit
def _philox_gumbel(key_ptr, rows, cols):
    """Gumbel noise for (row, col) tiles; rows [BN, 1] int64, cols [1, BA] int32."""
    key = tl.load(key_ptr).to(tl.uint64)
    k0 = (key & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((key >> 32) & 0xFFFFFFFF).to(tl.uint32)
    zero = (rows * 0 + cols * 0).to(tl.uint32)
    c0 = cols.to(tl.uint32) + zero
    c1 = (rows & 0xFFFFFFFF).to(tl.uint32) + zero
    c2 = ((rows >> 32) & 0xFFFFFFFF).to(tl.uint32) + zero
    x, _, _, _ = tl.random.philox_impl(c0, c1, c2, zero, k0, k1, 10)
    u = ((x >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08
    return -tl.log(-tl.log(u))


@triton.jit
def _select_op_kernel(
    logits_ptr, q_ptr, mask_ptr, noise_ptr, key_ptr,
    op_ptr, logp_ptr, ent_ptr, qop_ptr, val_ptr,
    N, A, stride_l, stride_q, stride_m, stride_n,
    HAS_Q: tl.constexpr, HAS_MASK: tl.constexpr, HAS_NOISE: tl.constexpr, DETERMINISTIC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_A: tl.constexpr,
):  # fmt: skip
    rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)[:, None]  # [BN, 1]
    cols = tl.arange(0, BLOCK_A)[None, :]  # [1, BA]
    inb = (rows < N) & (cols < A)
    l = tl.load(logits_ptr + rows * stride_l + cols, mask=inb, other=0.0).to(tl.float32)
    if HAS_Q:
        q = tl.load(q_ptr + rows * stride_q + cols, mask=inb, other=0.0).to(tl.float32)
    else:
        q = tl.zeros([BLOCK_N, BLOCK_A], dtype=tl.float32)
    valid = inb
    if HAS_MASK:
        valid = valid & (tl.load(mask_ptr + rows * stride_m + cols, mask=inb, other=0) != 0)
    count = tl.sum(valid.to(tl.int32), axis=1)
    bad = tl.sum((valid & ((l - l) != 0.0)).to(tl.int32), axis=1) > 0  # non-finite valid logit
    masked = tl.where(valid, l, float("-inf"))
    m = tl.max(masked, axis=1)  # [BN]
    if DETERMINISTIC:
        score = masked
    else:
        if HAS_NOISE:
            g = tl.load(noise_ptr + rows * stride_n + cols, mask=inb, other=0.0).to(tl.float32)
        else:
            g = _philox_gumbel(key_ptr, rows, cols)
        score = tl.where(valid, l + g, float("-inf"))
    op = tl.argmax(score, axis=1, tie_break_left=True)  # [BN]
    d = tl.where(valid, l - m[:, None], 0.0)
    e = tl.where(valid, tl.exp(d), 0.0)
    s = tl.sum(e, axis=1)
    sl = tl.sum(e * d, axis=1)
    sq = tl.sum(e * tl.where(valid, q, 0.0), axis=1)
    sel = cols == op[:, None]
    l_op = tl.sum(tl.where(sel, l, 0.0), axis=1)
    q_op = tl.sum(tl.where(sel, q, 0.0), axis=1)
    ok = (count > 0) & (bad == 0)
    s = tl.where(ok, s, 1.0)  # padding / bad rows: keep the math finite, results are replaced
    log_s = tl.log(s)
    nan = float("nan")
    r = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    live = r < N
    tl.store(op_ptr + r, tl.where(ok, op, -1).to(tl.int64), mask=live)
    tl.store(logp_ptr + r, tl.where(ok, (l_op - m) - log_s, nan), mask=live)
    tl.store(ent_ptr + r, tl.where(ok, log_s - sl / s, nan), mask=live)
    tl.store(qop_ptr + r, tl.where(ok, q_op, nan), mask=live)
    tl.store(val_ptr + r, tl.where(ok, sq / s, nan), mask=live)


def block_sizes(n: int, a: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_A): A padded to a power of two, about 4K elements per program."""
    block_a = triton.next_power_of_2(max(a, 1))
    block_n = max(1, min(triton.next_power_of_2(max(n, 1)), 4096 // block_a))
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
    """Launches the kernel writing into ``out`` (all [N] and contiguous)."""
    n, a = logits.shape
    if n == 0:
        return
    logits = _unit_cols(logits)
    q = None if q is None else _unit_cols(q)
    mask = None if mask is None else _unit_cols(mask)
    noise = None if noise is None else _unit_cols(noise)
    block_n, block_a = block_sizes(n, a)
    dummy = logits  # any pointer for absent optional inputs (never read)
    _select_op_kernel[(triton.cdiv(n, block_n),)](
        logits, dummy if q is None else q,
        dummy if mask is None else mask,
        dummy if noise is None else noise,
        dummy if key is None else key,
        out.op, out.log_prob, out.entropy, out.q_op, out.value,
        n, a, logits.stride(0), 0 if q is None else q.stride(0),
        0 if mask is None else mask.stride(0), 0 if noise is None else noise.stride(0),
        HAS_Q=q is not None, HAS_MASK=mask is not None, HAS_NOISE=noise is not None, DETERMINISTIC=deterministic,
        BLOCK_N=block_n, BLOCK_A=block_a,
        num_warps=4 if block_n * block_a >= 1024 else 1,
    )  # fmt: skip
