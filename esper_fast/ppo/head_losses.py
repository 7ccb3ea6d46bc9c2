"""esper HEAD's PPO pieces that differ from 0872525b, as standalone, sync-free functions.

Our own implementation of what esper-lite HEAD (2016337e) does, read from ``simic/agent/ppo_update.py``,
``simic/agent/ppo_agent.py``, ``simic/agent/rollout_buffer.py`` and ``simic/control/normalization.py``
(line citations in ``docs/esper-head-ppo.md``). They are the building blocks of the ``--preset
esper-head`` update (:mod:`esper_fast.ppo.head_update`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from esper_fast.constants import HEAD_NAMES

__all__ = [
    "ADVANTAGE_STD_FLOOR",
    "FORCED_VALUE_WEIGHT",
    "ValueNormalizer",
    "contribution_aux_loss",
    "entropy_floor_penalty",
    "entropy_loss_head",
    "entropy_penalty_schedule",
    "forced_weights",
    "head_policy_loss",
    "joint_ratio_metrics",
    "normalize_advantages_floored",
    "total_loss_head",
    "value_coef_at",
    "weighted_value_loss",
]

ADVANTAGE_STD_FLOOR = 0.1  # leyline ADVANTAGE_STD_FLOOR at HEAD
FORCED_VALUE_WEIGHT = 0.2  # value / q_aux weight of a forced (WAIT-only) step; actor weight 0
LOG_RATIO_CLAMP, JOINT_LOG_RATIO_CLAMP = 20.0, 30.0


class ValueNormalizer:
    """HEAD's return-scale normaliser for the critic target (no mean subtraction).

    ``update`` merges batch statistics exactly (Welford) until ``min_samples`` returns were seen, then by
    EMA (``momentum``; the variance gets the between-means term ``m (1 - m) delta^2``); ``normalize(x) =
    x / sqrt(var + eps)`` and ``denormalize(v) = v * sqrt(var + eps)`` once ``min_samples`` were seen,
    identity before. State stays on the tensors' device; ``update`` never syncs.
    """

    def __init__(
        self,
        epsilon: float = 1e-4,
        momentum: float | None = 0.99,
        min_samples: int = 32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.mean = torch.zeros((), device=device)
        self.var = torch.ones((), device=device)
        self.count = torch.zeros((), device=device)
        self.epsilon, self.momentum, self.min_samples = epsilon, momentum, min_samples
        self.seen = 0  # host-side count: the warm-up gate without a sync

    @property
    def ready(self) -> bool:
        return self.seen >= self.min_samples

    @property
    def std(self) -> Tensor:
        return torch.sqrt(self.var + self.epsilon)

    @torch.no_grad()
    def update(self, returns: Tensor) -> None:
        flat = returns.detach().flatten().float()
        n = flat.numel()
        if n == 0:
            return
        b_mean, b_var = flat.mean(), flat.var(correction=0)
        delta = b_mean - self.mean
        if self.momentum is not None and self.ready:
            m = self.momentum
            self.mean = m * self.mean + (1 - m) * b_mean
            self.var = m * self.var + (1 - m) * b_var + m * (1 - m) * delta**2
        else:
            total = self.count + n
            m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
            self.mean = self.mean + delta * n / total
            self.var = m2 / total.clamp(min=1)
        self.count = self.count + n
        self.seen += n

    def normalize(self, returns: Tensor) -> Tensor:
        return returns / self.std if self.ready else returns

    def denormalize(self, values: Tensor) -> Tensor:
        return values * self.std if self.ready else values


def value_coef_at(
    train_steps: int, value_coef: float = 1.0, warmup_steps: int = 0, start: float | None = None
) -> float:
    """HEAD's value-coefficient warm-up: linear from ``start`` (default 0.1 x value_coef) to ``value_coef``
    over ``warmup_steps`` real updates; ``warmup_steps == 0``: constant."""
    if warmup_steps == 0:
        return value_coef
    start = 0.1 * value_coef if start is None else start
    return start + (value_coef - start) * min(1.0, train_steps / warmup_steps)


def entropy_penalty_schedule(progress: float) -> float:
    """Scale of the entropy-floor penalty by training progress: 1.5 before 25%, 1.0 to 75%, then down to 0.5."""
    progress = min(1.0, max(0.0, progress))
    if progress < 0.25:
        return 1.5
    if progress < 0.75:
        return 1.0
    return 1.0 - 0.5 * (progress - 0.75) / 0.25


def normalize_advantages_floored(advantages: Tensor, floor: float = ADVANTAGE_STD_FLOOR) -> tuple[Tensor, Tensor]:
    """``(A - mean) / (max(std, floor) + 1e-8)`` over all entries (population std); returns
    (normalised, ``std < floor`` as a 0-dim bool tensor). No host sync."""
    mean, std = advantages.mean(), advantages.std(correction=0)
    return (advantages - mean) / (std.clamp(min=floor) + 1e-8), std < floor


def forced_weights(forced: Tensor) -> tuple[Tensor, Tensor]:
    """(actor weight: 0 on forced steps else 1, value weight: 0.2 on forced steps else 1)."""
    return (~forced).float(), torch.where(forced, FORCED_VALUE_WEIGHT, 1.0)


@torch.no_grad()
def joint_ratio_metrics(
    new_log_probs: dict[str, Tensor], old_log_probs: dict[str, Tensor], causal: dict[str, Tensor], clip: float
) -> dict[str, Tensor]:
    """HEAD's ratio telemetry: joint ratio ``exp(clamp(sum_h clamp(log r_h, +-20), +-30))`` stats, joint and
    per-head clip fractions, and the causal-weighted k3 KL on the clamped log-ratios."""
    logr = {h: (new_log_probs[h] - old_log_probs[h]).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP) for h in HEAD_NAMES}
    joint = torch.exp(
        torch.stack([logr[h] for h in HEAD_NAMES]).sum(0).clamp(-JOINT_LOG_RATIO_CLAMP, JOINT_LOG_RATIO_CLAMP)
    )
    out = {
        "joint_ratio_mean": joint.mean(),
        "joint_ratio_max": joint.max(),
        "joint_ratio_min": joint.min(),
        "joint_ratio_std": joint.std() if joint.numel() > 1 else torch.zeros(()),
        "joint_clip_fraction": ((joint - 1).abs() > clip).float().mean(),
        "joint_clip_fraction_pos": (joint > 1 + clip).float().mean(),
        "joint_clip_fraction_neg": (joint < 1 - clip).float().mean(),
    }
    kl_sum, w_sum = torch.zeros(()), torch.zeros(())
    for h in HEAD_NAMES:
        m = causal[h].float()
        n = m.sum()
        r = torch.exp(logr[h])
        out[f"clip_fraction/{h}"] = (((r - 1).abs() > clip).float() * m).sum() / n.clamp(min=1)
        kl_h = ((r - 1 - logr[h]) * m).sum() / n.clamp(min=1)
        w = m.mean()
        kl_sum, w_sum = kl_sum + w * kl_h, w_sum + w
    out["approx_kl"] = kl_sum / w_sum.clamp(min=1e-8)
    return out


def head_policy_loss(
    ratios: dict[str, Tensor],
    advantages: Tensor,
    causal: dict[str, Tensor],
    clip: float,
    actor_weight: Tensor | None = None,
) -> Tensor:
    """``sum_h -sum(min(r A_h, clip(r) A_h) m_h w) / max(sum(m_h w), 1)``, ``A_h = A * m_h`` (op: A)."""
    total = advantages.new_zeros(())
    for h in HEAD_NAMES:
        adv = advantages if h == "op" else advantages * causal[h]
        surr = torch.min(ratios[h] * adv, ratios[h].clamp(1 - clip, 1 + clip) * adv)
        mask = causal[h].float() if actor_weight is None else causal[h].float() * actor_weight
        total = total - (surr * mask).sum() / mask.sum().clamp(min=1)
    return total


def weighted_value_loss(values: Tensor, targets: Tensor, value_weight: Tensor | None = None) -> Tensor:
    """``0.5 * weighted mean((v - target)^2)`` (HEAD's value loss and its q_head auxiliary)."""
    err = (values - targets) ** 2
    if value_weight is None:
        return 0.5 * err.mean()
    return 0.5 * (err * value_weight).sum() / value_weight.sum().clamp(min=1)


def entropy_loss_head(
    entropy: dict[str, Tensor],
    causal: dict[str, Tensor],
    coef_per_head: dict[str, float],
    actor_weight: Tensor | None = None,
) -> Tensor:
    """``-sum_h coef_h * mean of entropy_h over causal & unforced steps``."""
    total = next(iter(entropy.values())).new_zeros(())
    for h, ent in entropy.items():
        mask = causal[h].float() if actor_weight is None else causal[h].float() * actor_weight
        total = total - coef_per_head.get(h, 1.0) * (ent * mask).sum() / mask.sum().clamp(min=1)
    return total


def entropy_floor_penalty(
    entropy: dict[str, Tensor],
    available: dict[str, Tensor],
    floors: dict[str, float],
    coefs: dict[str, float],
    actor_weight: Tensor | None = None,
) -> Tensor:
    """``sum_h coef_h * max(0, floor_h - mean entropy_h)^2``, the mean over the steps where head h was
    AVAILABLE (and unforced); heads never available are skipped (one host sync per head for that test)."""
    terms = []
    for h, floor in floors.items():
        if h not in entropy:
            continue
        mask = available[h].float() if actor_weight is None else available[h].float() * actor_weight
        n = mask.sum()
        if bool(n < 1):
            continue
        mean = (entropy[h] * mask).sum() / n
        terms.append(coefs[h] * torch.clamp(floor - mean, min=0.0) ** 2)
    return torch.stack(terms).sum() if terms else next(iter(entropy.values())).new_zeros(())


def contribution_aux_loss(
    pred: Tensor, target: Tensor, active: Tensor, fresh: Tensor, clip: float | None = 10.0
) -> Tensor:
    """MSE of the contribution predictor over active slots at steps with a fresh target (targets clipped)."""
    if clip is not None:
        target = target.clamp(-clip, clip)
    mask = (active & fresh.unsqueeze(-1)).float()
    return ((pred - target) ** 2 * mask).sum() / mask.sum().clamp(min=1)


def aux_coef_at(aux_steps: int, coef: float = 0.05, warmup_steps: int = 1000) -> float:
    """HEAD's contribution-loss coefficient: ``coef * min(1, aux_steps / max(1, warmup_steps))``, ``aux_steps``
    counted like train_steps (updates that stepped the optimiser; ppo_agent.py:1301-1304, 1589-1595)."""
    return coef * min(1.0, aux_steps / max(1, warmup_steps))


def total_loss_head(
    policy: Tensor,
    value: Tensor,
    entropy: Tensor,
    floor_penalty: Tensor,
    q_aux: Tensor,
    value_coef: float,
    entropy_coef: float,
) -> Tensor:
    """``policy + value_coef * value + entropy_coef * entropy + floor_penalty + 0.5 value_coef * q_aux``."""
    return policy + value_coef * value + entropy_coef * entropy + floor_penalty + 0.5 * value_coef * q_aux
