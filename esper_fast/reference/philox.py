"""Philox4x32-10 in plain torch integer ops: the same uniforms as csrc/philox.h and Triton.

uint32 values travel in int64 tensors; 32x32-bit products are split into 16-bit halves so nothing
overflows int64. Slow but exact; it is the ground truth for the kernels' internal RNG.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["philox_uniform", "gumbel_from_uniform", "UNIFORM_MAX"]

# Largest fp32 below 1 (1 - 2^-24): the top of the open-interval uniform map (csrc/philox.h).
UNIFORM_MAX = 1.0 - 2.0**-24

_M32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57


def _mul_hi_lo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product of the constant ``a`` and uint32 tensor ``b``."""
    p_lo = a * (b & 0xFFFF)  # < 2^48
    t = a * (b >> 16) + (p_lo >> 16)  # < 2^49
    return t >> 16, ((t & 0xFFFF) << 16) | (p_lo & 0xFFFF)


def philox_uniform(key: Tensor, rows: Tensor, cols: Tensor, stream: int = 0) -> Tensor:
    """Open-interval uniforms ``u[row, col]`` for a 64-bit ``key`` (int64 tensor, one element).

    Counter = (col, row lo, row hi, stream); key = (key lo, key hi); the first Philox output x maps to
    ``min(((x >> 8) + 0.5) * 2^-24, 1 - 2^-24)`` in fp32 (the clamp only catches x >> 8 == 2^24 - 1,
    which fp32 would round to exactly 1.0). ``rows`` and ``cols`` broadcast (int64 tensors).
    """
    key = key.reshape(()).to(torch.int64)
    k0, k1 = key & _M32, (key >> 32) & _M32
    c0 = (cols & _M32) + torch.zeros_like(rows)
    c1 = (rows & _M32) + torch.zeros_like(cols)
    c2 = ((rows >> 32) & _M32) + torch.zeros_like(cols)
    c3 = torch.full_like(c0, stream & _M32)
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    u = ((c0 >> 8).to(torch.float32) + 0.5) * 2.0**-24
    return u.clamp_max(UNIFORM_MAX)


def gumbel_from_uniform(u: Tensor) -> Tensor:
    """Standard Gumbel noise ``-log(-log(u))`` (finite for u in (0, 1))."""
    return -torch.log(-torch.log(u))
