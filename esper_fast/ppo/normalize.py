"""Observation and reward normalisers, esper's rules (``simic/control/normalization.py``), on tensors.

Both keep their statistics as tensors on the training device and never sync with the host.

* :class:`ObsNormalizer` - esper's ``RunningMeanStd(momentum=0.99)``: mean 0 / var 1 at start, EMA
  update from batch moments (with the between-group variance term), ``normalize(x) =
  clamp((x - mean) / sqrt(var + 1e-4), -clip, clip)``. The trainer freezes it during a rollout and
  updates it with the rollout's raw observations before the PPO update.
* :class:`RewardNormalizer` - esper's ``RewardNormalizer(clip=10)``: Welford running variance of the
  raw rewards, ``r / max(std, 1e-8)`` with no mean shift, clipped; the first reward passes raw
  (clipped). esper updates it one reward at a time; here a step's ``[E]`` rewards are merged at once
  (Chan's parallel update), then all ``E`` are divided by the updated std.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ObsNormalizer", "RewardNormalizer"]


class ObsNormalizer:
    """EMA running mean / variance of ``[..., D]`` observations (esper's RunningMeanStd)."""

    def __init__(
        self,
        dim: int,
        momentum: float = 0.99,
        epsilon: float = 1e-4,
        clip: float = 10.0,
        device: torch.device | str = "cpu",
        enabled: bool = True,
    ) -> None:
        self.momentum, self.epsilon, self.clip, self.enabled = momentum, epsilon, clip, enabled
        self.mean = torch.zeros(dim, device=device)
        self.var = torch.ones(dim, device=device)
        self.count = torch.tensor(epsilon, device=device)

    def normalize(self, x: Tensor) -> Tensor:
        """``clamp((x - mean) / sqrt(var + eps), -clip, clip)``; identity when disabled."""
        if not self.enabled:
            return x
        return torch.clamp((x - self.mean) / torch.sqrt(self.var + self.epsilon), -self.clip, self.clip)

    @staticmethod
    def moments(x: Tensor) -> tuple[Tensor, Tensor, int]:
        """Batch ``(mean [D], biased var [D], count)`` of ``x`` flattened to ``[N, D]``."""
        flat = x.reshape(-1, x.shape[-1])
        return flat.mean(0), flat.var(0, unbiased=False), flat.shape[0]

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """EMA update from the raw observations ``x [..., D]``."""
        self.update_from_moments(*self.moments(x))

    @torch.no_grad()
    def update_from_moments(self, batch_mean: Tensor, batch_var: Tensor, batch_count: int) -> None:
        if not self.enabled:
            return
        m = self.momentum
        delta = batch_mean - self.mean  # before the mean moves (law of total variance)
        self.mean = m * self.mean + (1 - m) * batch_mean
        self.var = m * self.var + (1 - m) * batch_var + m * (1 - m) * delta**2
        self.count = self.count + batch_count

    def state_dict(self) -> dict[str, Tensor]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        dev = self.mean.device
        if tuple(state["mean"].shape) != tuple(self.mean.shape):
            raise ValueError(
                f"obs normaliser: expected mean of shape {tuple(self.mean.shape)}, got {tuple(state['mean'].shape)}"
            )
        self.mean, self.var, self.count = (state[k].to(dev) for k in ("mean", "var", "count"))


class RewardNormalizer:
    """Divide rewards by their running std (Welford over every raw reward seen), clip to +-clip."""

    def __init__(
        self, clip: float = 10.0, epsilon: float = 1e-8, device: torch.device | str = "cpu", enabled: bool = True
    ) -> None:
        self.clip, self.epsilon, self.enabled = clip, epsilon, enabled
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.mean = torch.zeros((), dtype=torch.float64, device=device)
        self.m2 = torch.zeros((), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update_and_normalize(self, reward: Tensor) -> Tensor:
        """Merge ``reward [E]`` into the statistics, then return ``clamp(reward / std, -clip, clip)``."""
        if not self.enabled:
            return reward
        r = reward.double()
        n = float(r.numel())
        batch_mean = r.mean()
        batch_m2 = ((r - batch_mean) ** 2).sum()
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta**2 * (self.count * n / total)
        self.count = total
        std = torch.sqrt(self.m2 / (self.count - 1).clamp(min=1.0)).clamp(min=self.epsilon)
        scaled = torch.where(self.count < 2, r, r / std)
        return scaled.clamp(-self.clip, self.clip).to(reward.dtype)

    def state_dict(self) -> dict[str, Tensor]:
        return {"count": self.count.clone(), "mean": self.mean.clone(), "m2": self.m2.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        dev = self.mean.device
        self.count, self.mean, self.m2 = (state[k].to(dev) for k in ("count", "mean", "m2"))
