"""Gymnasium adapters for :class:`SeedLifecycleEnv` and :class:`ExactMDP` (needs ``pip install esper_fast[gym]``).

Two faces over the same batched torch env, numbers unchanged (float32 observations, the env's own
rewards, terminations and truncations):

* ``SeedLifecycleVectorEnv`` / ``ExactMDPVectorEnv`` - a :class:`gymnasium.vector.VectorEnv` over
  all ``num_envs`` rows at once (no Python loop over envs);
* ``SeedLifecycleGymEnv`` / ``ExactMDPGymEnv`` - a single :class:`gymnasium.Env` (one row), which
  passes :func:`gymnasium.utils.env_checker.check_env`.

Spaces: observation ``Box(-inf, inf, (obs_dim,), float32)`` (esper's 24 + 30 * slots features;
114 for three slots; :class:`ExactMDP` is shown through esper's eight heads and 114 features by
:class:`~esper_fast.envs.exact_mdp.ExactMDPEsperEnv`); action ``MultiDiscrete`` over the eight heads
in esper's order (:data:`esper_fast.HEAD_NAMES`: slot, blueprint, style, tempo, alpha_target,
alpha_speed, alpha_curve, op; sizes 3, 13, 4, 3, 3, 4, 5, 6 for three slots). An action a mask forbids acts as
WAIT (esper's rule); ``info["effective_op"]``
says what ran.

Masks: ``info["action_mask"]`` holds one boolean array per head (True = valid), ``action_masks()``
returns them concatenated in head order (the flat layout of sb3-contrib's MaskablePPO for a
MultiDiscrete space), and ``info["slot_by_op"]`` ``(NUM_OPS, slots)`` is esper's op-conditioned slot
validity (which slots each op can act on; a per-head mask cannot say that). ``info["blueprint_indices"]``
``(slots,)`` is the blueprint of each live seed (-1 elsewhere), the policy's second input.

Autoreset: the batched env starts a new episode in a row in the same step that ends one, so the
vector envs use Gymnasium's ``AutoresetMode.SAME_STEP``: the step that ends an episode returns the
new episode's first observation, and the last one in ``info["final_obs"]`` (an object array, None
for rows that did not end) with ``info["final_info"]`` (its masks), each with its ``_key`` mask. The
single env returns the last observation itself; call ``reset()`` to start the next episode.

Seeding: ``reset(seed=s)`` reseeds the torch env with ``s`` (same seed, same episodes as
``SeedLifecycleEnv(num_envs, seed=s)`` stepped directly); ``reset()`` without a seed draws the next
env seed from ``self.np_random``, so seeded-then-unseeded resets are reproducible too.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from torch import Tensor

from esper_fast.constants import HEAD_NAMES
from esper_fast.envs.exact_mdp import ExactMDPConfig, ExactMDPEsperEnv
from esper_fast.envs.seed_lifecycle import (
    EnvConfig,
    EnvObs,
    SeedLifecycleEnv,
    StepResult,
)

__all__ = [
    "SeedLifecycleVectorEnv",
    "SeedLifecycleGymEnv",
    "ExactMDPVectorEnv",
    "ExactMDPGymEnv",
    "action_space_for",
    "observation_space_for",
]

_SEED_BOUND = 2**31 - 1


def observation_space_for(obs_dim: int) -> spaces.Box:
    """One row's observation space: ``Box(-inf, inf, (obs_dim,), float32)`` (the features are unbounded)."""
    return spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float32)


def action_space_for(head_sizes: dict[str, int]) -> spaces.MultiDiscrete:
    """One row's action space: ``MultiDiscrete`` of the head sizes in :data:`HEAD_NAMES` order."""
    return spaces.MultiDiscrete(np.array([head_sizes[h] for h in HEAD_NAMES], dtype=np.int64))


def _np(t: Tensor) -> np.ndarray:
    """A fresh numpy copy (never a view of env memory: callers keep what they are given)."""
    return t.detach().cpu().numpy().copy()


def _infos(env_obs: EnvObs) -> dict[str, Any]:
    """Batched info arrays of an observation: per-head masks, slot_by_op, blueprint indices."""
    return {
        "action_mask": {h: _np(env_obs.masks[h]) for h in HEAD_NAMES},
        "slot_by_op": _np(env_obs.slot_by_op),
        "blueprint_indices": _np(env_obs.blueprint_indices),
    }


def _flat_masks(env_obs: EnvObs) -> np.ndarray:
    """``(E, sum(head sizes))`` bool, heads concatenated in HEAD_NAMES order."""
    return _np(torch.cat([env_obs.masks[h] for h in HEAD_NAMES], dim=1))


class _Batched:
    """What both faces share: the torch env, action conversion, seeding from ``np_random``."""

    env: SeedLifecycleEnv | ExactMDPEsperEnv
    _last: EnvObs

    def _torch_actions(self, actions: Any, rows: int | None) -> dict[str, Tensor]:
        """``(rows, 8)`` head indices (``rows=None``: one ``(8,)`` action) -> the env's action dict."""
        a = torch.as_tensor(np.asarray(actions), device=self.env.device)
        shape = (len(HEAD_NAMES),) if rows is None else (rows, len(HEAD_NAMES))
        if a.shape != shape:
            raise ValueError(
                f"actions: expected shape {shape} (one index per head, {list(HEAD_NAMES)}), got {tuple(a.shape)}"
            )
        if a.dtype.is_floating_point or a.dtype == torch.bool:
            raise ValueError(f"actions: expected integer head indices, got dtype {a.dtype}")
        a = a.long().reshape(-1, len(HEAD_NAMES))
        sizes = torch.tensor([self.env.head_sizes[h] for h in HEAD_NAMES], device=a.device)
        bad = (a < 0) | (a >= sizes)
        if bool(bad.any()):
            row, col = (int(x) for x in bad.nonzero()[0])
            raise ValueError(
                f"actions: head {HEAD_NAMES[col]!r} must be in [0, {int(sizes[col])}), "
                f"got {int(a[row, col])} (row {row})"
            )
        return {h: a[:, i] for i, h in enumerate(HEAD_NAMES)}

    def _env_seed(self, seed: int | None) -> int:
        """The torch env's seed: ``seed`` itself, else the next draw of ``np_random``."""
        return int(seed) if seed is not None else int(self.np_random.integers(0, _SEED_BOUND))

    def action_masks(self) -> np.ndarray:
        """Masks of the current observation, heads concatenated in :data:`HEAD_NAMES` order."""
        return _flat_masks(self._last)


# =================================================================================================
# vector envs
# =================================================================================================
class _BatchedVectorEnv(_Batched, gymnasium.vector.VectorEnv):
    """:class:`gymnasium.vector.VectorEnv` over every row of a batched esper_fast env (SAME_STEP autoreset)."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, env: SeedLifecycleEnv | ExactMDPEsperEnv) -> None:
        self.env = env
        self.num_envs = env.num_envs
        self.single_observation_space = observation_space_for(env.obs_dim)
        self.single_action_space = action_space_for(env.head_sizes)
        self.observation_space = gymnasium.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gymnasium.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self._last = env.observe()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """New episodes in every row; ``seed`` (an int: every row has its own stream from it) as in the env."""
        if isinstance(seed, (list, tuple)):
            raise ValueError("seed: expected one int for the whole batch (each row derives its own stream), got a list")
        super().reset(seed=seed)
        self._last = self.env.reset(self._env_seed(seed))
        return _np(self._last.obs), self._batched_info(self._last)

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """``actions`` ``(num_envs, 8)`` head indices; rows that end restart in the same step (SAME_STEP)."""
        step: StepResult = self.env.step(self._torch_actions(actions, self.num_envs))
        self._last = step.next
        info = self._batched_info(step.next)
        info["effective_op"], info["_effective_op"] = _np(step.effective_op), np.ones(self.num_envs, dtype=bool)
        done = _np(step.terminated | step.truncated)
        if done.any():
            final_obs = np.full(self.num_envs, None, dtype=object)
            obs_rows = _np(step.final.obs)
            for i in np.flatnonzero(done):
                final_obs[i] = obs_rows[i]
            final_info = self._batched_info(step.final, present=done)
            final_info["episode"] = {
                "r": _np(step.episode_return),
                "l": _np(step.episode_length),
                "_r": done.copy(),
                "_l": done.copy(),
            }
            final_info["_episode"] = done.copy()
            info.update(final_obs=final_obs, _final_obs=done.copy(), final_info=final_info, _final_info=done.copy())
        return (_np(step.next.obs), _np(step.reward), _np(step.terminated), _np(step.truncated), info)

    def _batched_info(self, env_obs: EnvObs, present: np.ndarray | None = None) -> dict[str, Any]:
        """Gymnasium's vector info layout: each key with its ``_key`` row mask (dicts recursively)."""
        rows = np.ones(self.num_envs, dtype=bool) if present is None else present

        def with_masks(d: dict[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for key, value in d.items():
                out[key] = with_masks(value) if isinstance(value, dict) else value
                out[f"_{key}"] = rows.copy()
            return out

        return with_masks(_infos(env_obs))


class SeedLifecycleVectorEnv(_BatchedVectorEnv):
    """``gymnasium.make_vec("esper_fast/SeedLifecycle-v0", num_envs)``: :class:`SeedLifecycleEnv` as a VectorEnv.

    Args:
        num_envs: rows stepped together.
        config: :class:`EnvConfig` (default: esper's layout, 3 slots, 150-epoch episodes).
        device: where the torch env runs ("cpu" or "cuda"); observations come back as numpy.
        seed: the torch env's seed until the first ``reset()`` (which reseeds it: with its ``seed``, else from
            ``np_random``).
    """

    def __init__(
        self,
        num_envs: int = 1,
        config: EnvConfig | None = None,
        device: str | torch.device = "cpu",
        seed: int | None = 0,
    ) -> None:
        super().__init__(SeedLifecycleEnv(num_envs, config, device=device, seed=seed))


class ExactMDPVectorEnv(_BatchedVectorEnv):
    """``gymnasium.make_vec("esper_fast/ExactMDP-v0", num_envs)``: :class:`ExactMDP` through esper's eight heads."""

    def __init__(
        self, num_envs: int = 1, config: ExactMDPConfig | None = None, device: str | torch.device = "cpu", seed: int = 0
    ) -> None:
        super().__init__(ExactMDPEsperEnv(num_envs, config, device=device, seed=seed))


# =================================================================================================
# single envs
# =================================================================================================
class _BatchedSingleEnv(_Batched, gymnasium.Env):
    """:class:`gymnasium.Env` over a one-row batched env; the episode's last observation is returned as is."""

    metadata = {"render_modes": []}

    def __init__(self, env: SeedLifecycleEnv | ExactMDPEsperEnv) -> None:
        if env.num_envs != 1:
            raise ValueError(f"env: expected a one-row env, got num_envs={env.num_envs} (use the vector env)")
        self.env = env
        self.observation_space = observation_space_for(env.obs_dim)
        self.action_space = action_space_for(env.head_sizes)
        self._last = env.observe()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._last = self.env.reset(self._env_seed(seed))
        return _np(self._last.obs[0]), self._info(self._last)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """``action`` ``(8,)`` head indices. At an episode's end the observation is the last one; then ``reset()``."""
        step: StepResult = self.env.step(self._torch_actions(action, None))
        terminated, truncated = bool(step.terminated[0]), bool(step.truncated[0])
        shown = step.final if (terminated or truncated) else step.next
        self._last = shown
        info = self._info(shown)
        info["effective_op"] = int(step.effective_op[0])
        if terminated or truncated:
            info["episode"] = {"r": float(step.episode_return[0]), "l": int(step.episode_length[0])}
        return _np(shown.obs[0]), float(step.reward[0]), terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        """``(sum(head sizes),)`` bool: the current observation's masks, heads in :data:`HEAD_NAMES` order."""
        return _flat_masks(self._last)[0]

    @staticmethod
    def _info(env_obs: EnvObs) -> dict[str, Any]:
        batched = _infos(env_obs)
        return {
            "action_mask": {h: m[0] for h, m in batched["action_mask"].items()},
            "slot_by_op": batched["slot_by_op"][0],
            "blueprint_indices": batched["blueprint_indices"][0],
        }


class SeedLifecycleGymEnv(_BatchedSingleEnv):
    """``gymnasium.make("esper_fast/SeedLifecycle-v0")``: one :class:`SeedLifecycleEnv` episode at a time.

    Args:
        config: :class:`EnvConfig` (default: esper's layout, 3 slots, 150-epoch episodes).
        device: where the torch env runs; observations come back as numpy.
        seed: the torch env's seed until the first ``reset()`` (which reseeds it: with its ``seed``, else from
            ``np_random``).
    """

    def __init__(
        self, config: EnvConfig | None = None, device: str | torch.device = "cpu", seed: int | None = 0
    ) -> None:
        super().__init__(SeedLifecycleEnv(1, config, device=device, seed=seed))


class ExactMDPGymEnv(_BatchedSingleEnv):
    """``gymnasium.make("esper_fast/ExactMDP-v0")``: one :class:`ExactMDP` episode through esper's eight heads."""

    def __init__(self, config: ExactMDPConfig | None = None, device: str | torch.device = "cpu", seed: int = 0) -> None:
        super().__init__(ExactMDPEsperEnv(1, config, device=device, seed=seed))
