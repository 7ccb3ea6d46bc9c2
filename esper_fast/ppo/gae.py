"""GAE(gamma, lambda) with esper's truncation rule, vectorised over envs.

esper (``TamiyoRolloutBuffer.compute_advantages_and_returns``) walks each env's episode backwards:
a *truncated* step bootstraps from ``bootstrap_values[t]`` (the value of the state reached at the
time limit), a *terminal* step (governor rollback) does not (``next_v * 0``) and restarts the trace.
esper's buffer holds one episode per env, so episode ends only happen at its last step. Here a
rollout may hold several episodes per env (auto-reset) and end mid-episode, so the rule is applied
at every episode end, and the rollout's last step bootstraps like a truncation:

    next_v[t] = bootstrap_values[t]   if dones[t] or t == T - 1
              = values[t + 1]         otherwise
    nnt[t]    = 0 if terminal[t] else 1                (terminal = done and not truncated)
    delta[t]  = rewards[t] + gamma * next_v[t] * nnt[t] - values[t]
    gae[t]    = delta[t] + gamma * lambda * (0 if dones[t] else 1) * gae[t + 1]

On esper-shaped data (one episode per env, ending at the last step) this is esper's recursion, op
for op. ``bootstrap_values`` must be finite everywhere (zeros where unused).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["compute_gae", "normalize_advantages", "explained_variance"]


def compute_gae(
    rewards: Tensor,
    values: Tensor,
    dones: Tensor,
    truncated: Tensor,
    bootstrap_values: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Advantages and returns (= advantages + values), both ``[E, T]``.

    Args:
        rewards, values, bootstrap_values: ``[E, T]`` float.
        dones, truncated: ``[E, T]`` bool; ``truncated`` implies ``dones``.
    """
    E, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])
    nonterminal = (~(dones & ~truncated)).to(rewards.dtype)  # 0 where the episode died
    cont = (~dones).to(rewards.dtype)  # 0 where the episode ended: the trace does not cross it
    for t in reversed(range(T)):
        if t == T - 1:
            next_v = bootstrap_values[:, t]
        else:
            next_v = torch.where(dones[:, t], bootstrap_values[:, t], values[:, t + 1])
        delta = rewards[:, t] + gamma * next_v * nonterminal[:, t] - values[:, t]
        last_gae = delta + gamma * gae_lambda * cont[:, t] * last_gae
        advantages[:, t] = last_gae
    return advantages, advantages + values


def normalize_advantages(advantages: Tensor, eps: float = 1e-8) -> Tensor:
    """esper's global normalisation: ``(a - mean) / (std(correction=0) + eps)`` over every step."""
    return (advantages - advantages.mean()) / (advantages.std(correction=0) + eps)


def explained_variance(values: Tensor, returns: Tensor) -> Tensor:
    """``1 - Var(returns - values) / Var(returns)`` (0-dim tensor; 0 when Var(returns) <= 1e-8)."""
    var_ret = returns.var(correction=0)
    ev = 1.0 - (returns - values).var(correction=0) / var_ret.clamp(min=1e-8)
    return torch.where(var_ret > 1e-8, ev, torch.zeros_like(ev))
