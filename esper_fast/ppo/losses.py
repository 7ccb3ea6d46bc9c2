"""esper's PPO loss terms (``simic/agent/ppo.py::update`` at 0872525b), one function each.

Every function takes flat or ``[B, T]`` tensors of the same shape and returns 0-dim tensors (no host
sync). Heads are never combined into a joint ratio: each head has its own clipped surrogate,
averaged over the steps where the head mattered (esper's causal relevance masks,
``leyline/causal_masks.py``: :func:`esper_fast.rules.causal_masks`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from esper_fast.constants import HEAD_NAMES

__all__ = [
    "RATIO_LOG_CLAMP",
    "masked_mean",
    "head_ratios",
    "approx_kl",
    "clip_fraction",
    "policy_loss",
    "value_loss",
    "entropy_loss",
]

RATIO_LOG_CLAMP = 20.0  # r_h = exp(clamp(logp_new - logp_old, -20, 20))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """``sum(x * mask) / max(sum(mask), 1)``."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def head_ratios(new_log_probs: dict[str, Tensor], old_log_probs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-head probability ratios ``exp(clamp(new - old, -20, 20))``."""
    return {
        h: torch.exp((new_log_probs[h] - old_log_probs[h]).clamp(-RATIO_LOG_CLAMP, RATIO_LOG_CLAMP)) for h in HEAD_NAMES
    }


@torch.no_grad()
def approx_kl(new_log_probs: dict[str, Tensor], old_log_probs: dict[str, Tensor], causal: dict[str, Tensor]) -> Tensor:
    """Causal-weighted k3 estimator: ``sum_h w_h KL_h / sum_h w_h``.

    ``KL_h`` = masked mean of ``(r - 1) - log r`` (unclamped ``log r``) over the steps where head h
    is relevant; ``w_h`` = fraction of steps where it is (op: always, so ``sum w >= 1``).
    """
    kls, weights = [], []
    for h in HEAD_NAMES:
        log_ratio = new_log_probs[h] - old_log_probs[h]
        mask = causal[h]
        kls.append(masked_mean(torch.expm1(log_ratio) - log_ratio, mask))
        weights.append(mask.float().mean())
    kl, w = torch.stack(kls), torch.stack(weights)
    return (kl * w).sum() / w.sum()


@torch.no_grad()
def clip_fraction(ratios: dict[str, Tensor], causal: dict[str, Tensor], clip: float) -> Tensor:
    """Fraction of relevant (head, step) pairs whose ratio left ``[1 - clip, 1 + clip]``."""
    clipped = sum(((ratios[h] - 1.0).abs() > clip).float().mul(causal[h]).sum() for h in HEAD_NAMES)
    total = sum(causal[h].float().sum() for h in HEAD_NAMES)
    return clipped / total.clamp(min=1.0)


def policy_loss(ratios: dict[str, Tensor], advantages: Tensor, causal: dict[str, Tensor], clip: float) -> Tensor:
    """``sum_h -masked_mean(min(r_h A_h, clip(r_h) A_h), m_h)`` with ``A_h = A * m_h`` (op: ``A``)."""
    total = advantages.new_zeros(())
    for h in HEAD_NAMES:
        adv = advantages if h == "op" else advantages * causal[h]
        surr = torch.min(ratios[h] * adv, ratios[h].clamp(1.0 - clip, 1.0 + clip) * adv)
        total = total - masked_mean(surr, causal[h])
    return total


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip_value: bool, value_clip: float) -> Tensor:
    """Clipped: ``0.5 * mean(max((v - R)^2, (v_old + clamp(v - v_old, -c, c) - R)^2))``; else ``mse(v, R)``."""
    if not clip_value:
        return F.mse_loss(values, returns)  # esper: no 0.5 on this path
    clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
    return 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2).mean()


def entropy_loss(entropy: dict[str, Tensor], causal: dict[str, Tensor], coef_per_head: dict[str, float]) -> Tensor:
    """``-sum_h coef_h * masked_mean(normalised entropy_h, m_h)`` (to be scaled by the entropy coef)."""
    total = next(iter(entropy.values())).new_zeros(())
    for h in HEAD_NAMES:
        total = total - coef_per_head.get(h, 1.0) * masked_mean(entropy[h], causal[h])
    return total
