"""``RolloutBuffer``: one rollout of ``num_envs`` env sequences of ``rollout_steps`` steps each.

Env-major (``[E, T, ...]``), so an env's steps form one sequence that ``evaluate_actions`` replays
as ``[B, T]`` and a minibatch is a set of env rows. The buffer stores exactly what the policy saw
and did at every step: the normalised observation (not the raw one: esper's 0872525b stored raw
obs and re-evaluated on them, fixed upstream in c183555b), blueprint indices, every head's mask (the
slot mask after op-conditioning, i.e. the one the slot was sampled from), every head's action and
log-prob, and the values. ``initial_hidden`` is the LSTM state before step 0 of every env, so the
update can replay the recurrence; ``dones[:, t]`` says the episode ended at step t (the LSTM state
is zeroed before step t + 1).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from esper_fast.constants import HEAD_NAMES
from esper_fast.types import Hidden

__all__ = ["RolloutBuffer"]


@dataclass
class RolloutBuffer:
    """Preallocated rollout storage; every tensor is ``[E, T, ...]`` on one device."""

    obs: Tensor  # (E, T, D) float32, normalised obs the policy saw
    raw_obs: Tensor  # (E, T, D) float32, raw obs (for the normaliser update)
    blueprint_indices: Tensor  # (E, T, S) int64
    masks: dict[str, Tensor]  # head -> (E, T, n_head) bool, the masks the heads were sampled under
    actions: dict[str, Tensor]  # head -> (E, T) int64
    log_probs: dict[str, Tensor]  # head -> (E, T) float32
    values: Tensor  # (E, T) value_mode's baseline, used by GAE
    old_q: Tensor  # (E, T) Q(s, stored op) at rollout time, the value-clip anchor
    rewards: Tensor  # (E, T) float32, normalised reward (GAE input)
    raw_rewards: Tensor  # (E, T) float32
    dones: Tensor  # (E, T) bool, episode ended at this step (terminated or truncated)
    truncated: Tensor  # (E, T) bool, time limit (bootstraps)
    bootstrap_values: Tensor  # (E, T) V(s_{t+1}) where truncated[t] or t is the last step
    op_agree: Tensor  # (E, T) bool, sampled_op (the op the value was read at) == action's op
    initial_hidden: Hidden  # (h, c), each (L, E, H): LSTM state before step 0

    @classmethod
    def allocate(
        cls,
        num_envs: int,
        steps: int,
        obs_dim: int,
        head_sizes: dict[str, int],
        lstm_layers: int,
        hidden_dim: int,
        device: torch.device | str,
    ) -> RolloutBuffer:
        E, T, S = num_envs, steps, head_sizes["slot"]
        f32 = lambda *shape: torch.zeros(E, T, *shape, device=device)  # noqa: E731
        flag = lambda: torch.zeros(E, T, dtype=torch.bool, device=device)  # noqa: E731
        hid = torch.zeros(lstm_layers, E, hidden_dim, device=device)
        return cls(
            obs=f32(obs_dim),
            raw_obs=f32(obs_dim),
            blueprint_indices=torch.zeros(E, T, S, dtype=torch.long, device=device),
            masks={h: torch.zeros(E, T, n, dtype=torch.bool, device=device) for h, n in head_sizes.items()},
            actions={h: torch.zeros(E, T, dtype=torch.long, device=device) for h in HEAD_NAMES},
            log_probs={h: f32() for h in HEAD_NAMES},
            values=f32(),
            old_q=f32(),
            rewards=f32(),
            raw_rewards=f32(),
            dones=flag(),
            truncated=flag(),
            bootstrap_values=f32(),
            op_agree=flag(),
            initial_hidden=(hid, hid.clone()),
        )

    @property
    def num_envs(self) -> int:
        return self.obs.shape[0]

    @property
    def steps(self) -> int:
        return self.obs.shape[1]

    def store_step(
        self,
        t: int,
        *,
        obs: Tensor,
        raw_obs: Tensor,
        blueprint_indices: Tensor,
        masks: dict[str, Tensor],
        actions: dict[str, Tensor],
        log_probs: dict[str, Tensor],
        values: Tensor,
        old_q: Tensor,
        op_agree: Tensor,
    ) -> None:
        """Write what the policy saw and chose at step ``t`` (all ``[E, ...]``)."""
        self.obs[:, t] = obs
        self.raw_obs[:, t] = raw_obs
        self.blueprint_indices[:, t] = blueprint_indices
        for h in HEAD_NAMES:
            self.masks[h][:, t] = masks[h]
            self.actions[h][:, t] = actions[h]
            self.log_probs[h][:, t] = log_probs[h]
        self.values[:, t] = values
        self.old_q[:, t] = old_q
        self.op_agree[:, t] = op_agree

    def store_outcome(
        self, t: int, *, reward: Tensor, raw_reward: Tensor, done: Tensor, truncated: Tensor, bootstrap_value: Tensor
    ) -> None:
        """Write the env's answer to step ``t`` (all ``[E]``)."""
        self.rewards[:, t] = reward
        self.raw_rewards[:, t] = raw_reward
        self.dones[:, t] = done
        self.truncated[:, t] = truncated
        self.bootstrap_values[:, t] = bootstrap_value

    def env_slice(self, env_ids: Tensor) -> RolloutBuffer:
        """The rows ``env_ids`` (a minibatch of whole sequences); hidden sliced on its batch dim."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "initial_hidden":
                out[f.name] = (value[0][:, env_ids], value[1][:, env_ids])
            elif isinstance(value, dict):
                out[f.name] = {k: v[env_ids] for k, v in value.items()}
            else:
                out[f.name] = value[env_ids]
        return RolloutBuffer(**out)
