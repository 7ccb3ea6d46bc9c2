"""The ground truth of ``select_op`` in plain torch ops (the "torch" backend)."""

from __future__ import annotations

import torch
from torch import Tensor

from esper_fast.reference.philox import gumbel_from_uniform, philox_uniform
from esper_fast.types import OpSelection

__all__ = ["select_op_reference", "reference_gumbel"]


def reference_gumbel(key: Tensor, n: int, a: int, device: torch.device | str, stream: int = 0) -> Tensor:
    """The ``[n, a]`` Gumbel noise every backend derives from ``key``.

    Stream 0 is :func:`select_op`'s; the fused whole-action kernel uses stream ``h + 1`` for the
    head at index h of ``HEAD_NAMES``.
    """
    rows = torch.arange(n, dtype=torch.int64, device=device)[:, None]
    cols = torch.arange(a, dtype=torch.int64, device=device)[None, :]
    return gumbel_from_uniform(philox_uniform(key.to(device), rows, cols, stream))


def select_op_reference(
    logits: Tensor,
    q: Tensor | None,
    mask: Tensor | None,
    *,
    deterministic: bool,
    noise: Tensor | None = None,
    key: Tensor | None = None,
) -> OpSelection:
    """Masked categorical selection with the critic read at the chosen op, in torch ops.

    Args:
        logits: ``[N, A]`` float; q: ``[N, A]`` float or None (zeros); mask: ``[N, A]`` bool (True = valid) or None.
        deterministic: argmax of the valid logits (ties to the lowest index).
        noise: ``[N, A]`` Gumbel noise for sampling; if None, derived from ``key`` by Philox.
        key: int64 tensor with one element (needed when sampling without ``noise``).

    Returns:
        :class:`OpSelection`; rows with no valid entry or a non-finite valid logit get op -1 and NaN.
    """
    lf = logits.float()
    qf = torch.zeros_like(lf) if q is None else q.float()
    valid = torch.ones_like(lf, dtype=torch.bool) if mask is None else mask
    bad = (valid.sum(-1) == 0) | (valid & ~torch.isfinite(lf)).any(-1)
    masked = lf.masked_fill(~valid, float("-inf"))
    logp = torch.log_softmax(masked, dim=-1)  # [N, A]; -inf at masked entries
    p = logp.exp()
    entropy = -torch.where(valid & (p > 0), p * logp, 0.0).sum(-1)  # p = 0, logp = -inf: 0, not NaN
    value = torch.where(valid, p * qf, 0.0).sum(-1)
    if deterministic:
        score = masked
    else:
        if noise is None:
            if key is None:
                raise ValueError("select_op_reference: sampling needs `noise` or `key`")
            noise = reference_gumbel(key, lf.shape[0], lf.shape[1], lf.device)
        score = masked + noise.float()
    op = score.argmax(-1, keepdim=True)  # first maximum on ties
    log_prob = logp.gather(-1, op).squeeze(-1)
    q_op = qf.gather(-1, op).squeeze(-1)
    op = op.squeeze(-1)
    nan = torch.tensor(float("nan"), device=lf.device)
    return OpSelection(
        op=torch.where(bad, -1, op),
        log_prob=torch.where(bad, nan, log_prob),
        entropy=torch.where(bad, nan, entropy),
        q_op=torch.where(bad, nan, q_op),
        value=torch.where(bad, nan, value),
    )
