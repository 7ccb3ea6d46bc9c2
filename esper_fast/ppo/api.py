"""``PPO``: a Stable-Baselines3-style face of the trainer - ``learn`` / ``save`` / ``load`` / ``predict``.

::

    from esper_fast.ppo import PPO

    model = PPO("smoke", run_dir="runs/api")         # a preset name or a PPOConfig, plus field overrides
    model.learn()                                     # config.total_timesteps (or learn(total_timesteps=...))
    model.save("policy.pt")
    model = PPO.load("policy.pt")                     # or a run directory (checkpoints/latest.pt)
    print(format_table(model.evaluate(episodes=1024)))
    actions, state = model.predict(obs, state, episode_start, deterministic=True, info=info)

``predict`` takes either an :class:`~esper_fast.envs.EnvObs` (``SeedLifecycleEnv`` stepped directly;
actions come back as esper's dict of ``(E,)`` tensors) or a Gymnasium observation with its ``info``
(:mod:`esper_fast.envs.gym`; actions come back as a numpy ``(E, 8)`` / ``(8,)`` array in
:data:`~esper_fast.HEAD_NAMES` order, what the adapter's ``step`` takes). ``state`` is the LSTM
``(h, c)`` pair it returned last time (None: the initial state); ``episode_start`` ``(E,)`` says
which rows begin an episode (their state is zeroed) - the caller knows this from the previous
step's ``terminated | truncated``; nothing is guessed from the observation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from esper_fast.constants import HEAD_NAMES
from esper_fast.envs import EnvObs
from esper_fast.network import FactoredNetwork
from esper_fast.ppo.agent import act, cpu_threads, validation_off
from esper_fast.ppo.checkpoint import load_policy, save_checkpoint
from esper_fast.ppo.config import PPOConfig, make_config
from esper_fast.ppo.evaluate import compare_with_baselines
from esper_fast.ppo.normalize import ObsNormalizer
from esper_fast.ppo.trainer import Trainer
from esper_fast.types import Hidden

__all__ = ["PPO"]


class PPO:
    """Recurrent PPO on :class:`~esper_fast.envs.SeedLifecycleEnv` with :class:`~esper_fast.FactoredPolicy`.

    Args:
        config: a preset name (``"default"``, ``"smoke"``, ``"esper"``) or a :class:`PPOConfig`.
        run_dir: where ``learn`` writes metrics, TensorBoard events, checkpoints and the plot (None: nothing).
        tensorboard: write TensorBoard events when the package is installed.
        verbose: print the trainer's messages.
        **overrides: :class:`PPOConfig` fields (``lstm_hidden_dim=64``, ``device="cuda"``).
    """

    def __init__(
        self,
        config: PPOConfig | str = "default",
        run_dir: str | os.PathLike | None = None,
        *,
        tensorboard: bool = True,
        verbose: bool = False,
        **overrides: Any,
    ) -> None:
        if isinstance(config, str):
            self.config = make_config(config, **overrides)
        else:
            self.config = config.replace(**overrides) if overrides else config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.tensorboard, self.verbose = tensorboard, verbose
        self.trainer: Trainer | None = None
        self._policy: FactoredNetwork | None = None
        self._obs_normalizer: ObsNormalizer | None = None
        self._checkpoint: dict[str, Any] | None = None  # what load() read, until learn() takes over
        self.last_summary: dict[str, Any] = {}
        self._generator = torch.Generator(device=self.config.device).manual_seed(self.config.seed)

    # ------------------------------------------------------------------ training
    def learn(
        self, total_timesteps: int | None = None, on_update: Callable[[dict[str, Any]], None] | None = None
    ) -> PPO:
        """Train for ``total_timesteps`` env steps (default ``config.total_timesteps``); returns ``self``.

        A second call (or a call after :meth:`load`) continues the same run - weights, optimiser,
        normalisers, envs and RNGs - for ``total_timesteps`` more steps. ``on_update(row)`` gets
        every update's metrics. The final evaluation (``config.eval_episodes``) lands in
        ``self.last_summary["evaluation"]``.
        """
        log = print if self.verbose else (lambda _m: None)
        if self.trainer is None:
            steps = self.config.total_timesteps if total_timesteps is None else int(total_timesteps)
            resume = self._checkpoint
            done = int(resume["global_step"]) if resume is not None else 0
            self.config = self.config.replace(total_timesteps=done + steps)
            self.trainer = Trainer(self.config, self.run_dir, resume=resume, log=log, tensorboard=self.tensorboard)
        else:
            steps = self.config.total_timesteps if total_timesteps is None else int(total_timesteps)
            self.trainer.num_updates = self.trainer.train_steps + max(1, math.ceil(steps / self.config.batch_size))
        self.last_summary = self.trainer.train(on_update=on_update, handle_signals=False)
        self._policy, self._obs_normalizer = self.trainer.policy, self.trainer.obs_normalizer
        self._checkpoint = None
        return self

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write a checkpoint (the trainer's full state: :meth:`load` and ``esper-fast evaluate`` read it)."""
        if self.trainer is not None:
            payload = self.trainer.state_dict()
        elif self._checkpoint is not None:
            payload = {k: v for k, v in self._checkpoint.items() if k != "path"}
        else:
            raise RuntimeError("save: nothing to save yet (call learn() or load() first)")
        return save_checkpoint(path, payload)

    @classmethod
    def load(
        cls, path: str | os.PathLike, device: str = "cpu", run_dir: str | os.PathLike | None = None, **kwargs: Any
    ) -> PPO:
        """A model from a checkpoint file or a run directory (its ``checkpoints/latest.pt``), on ``device``."""
        policy, obs_norm, config, ckpt = load_policy(path, device=device)
        model = cls(config, run_dir=run_dir, **kwargs)
        model._policy, model._obs_normalizer, model._checkpoint = policy, obs_norm, ckpt
        return model

    # ------------------------------------------------------------------ acting
    @property
    def policy(self) -> FactoredNetwork:
        """The network (:class:`~esper_fast.FactoredPolicy`; esper's state_dict keys)."""
        if self._policy is None:
            raise RuntimeError("policy: the model has no trained policy yet (call learn() or load() first)")
        return self._policy

    def initial_state(self, num_envs: int) -> Hidden:
        """The LSTM state of a fresh episode for ``num_envs`` rows."""
        return self.policy.get_initial_hidden(num_envs, torch.device(self.config.device))

    def predict(
        self,
        observation: EnvObs | Any,
        state: Hidden | None = None,
        episode_start: Any = None,
        deterministic: bool = False,
        info: dict[str, Any] | None = None,
    ) -> tuple[Any, Hidden]:
        """``(actions, state)`` for one step of every row (see the module docstring for the two input forms)."""
        env_obs, numpy_out, single = self._as_env_obs(observation, info)
        E = env_obs.obs.shape[0]
        policy = self.policy
        if state is None:
            state = self.initial_state(E)
        elif state[0].shape[1] != E:
            raise ValueError(f"state: expected LSTM state for {E} rows, got {tuple(state[0].shape)}")
        if episode_start is not None:
            start = torch.as_tensor(episode_start, dtype=torch.bool, device=env_obs.obs.device).reshape(-1)
            if start.numel() == 1 and E > 1:
                start = start.expand(E)
            if start.shape != (E,):
                raise ValueError(f"episode_start: expected {E} booleans, got shape {tuple(start.shape)}")
            keep = (~start).to(state[0].dtype).view(1, E, 1)
            state = (state[0] * keep, state[1] * keep)
        policy.eval()
        with validation_off(policy), torch.no_grad(), cpu_threads(self.config.torch_threads, self.config.device):
            result = act(
                policy,
                self._obs_normalizer.normalize(env_obs.obs),
                env_obs,
                state,
                deterministic=deterministic,
                op_conditioned_slot=self.config.op_conditioned_slot,
                generator=self._generator,
            )
        actions: Any = result.actions
        if numpy_out:
            actions = torch.stack([result.actions[h] for h in HEAD_NAMES], dim=1).cpu().numpy()
            if single:
                actions = actions[0]
        return actions, result.hidden

    def _as_env_obs(self, observation: Any, info: dict[str, Any] | None) -> tuple[EnvObs, bool, bool]:
        if isinstance(observation, EnvObs):
            return observation, False, False
        if info is None or "action_mask" not in info:
            raise ValueError(
                "info: a raw observation needs the Gymnasium adapter's info (action_mask, "
                "blueprint_indices, slot_by_op); or pass an EnvObs"
            )
        dev = torch.device(self.config.device)
        obs = torch.as_tensor(observation, dtype=torch.float32, device=dev)
        single = obs.dim() == 1

        def batch(x: Any, dtype: torch.dtype) -> Tensor:
            t = torch.as_tensor(x, dtype=dtype, device=dev)
            return t.unsqueeze(0) if single else t

        masks = {h: batch(info["action_mask"][h], torch.bool) for h in HEAD_NAMES}
        env_obs = EnvObs(
            batch(observation, torch.float32),
            batch(info["blueprint_indices"], torch.long),
            masks,
            batch(info["slot_by_op"], torch.bool),
        )
        return env_obs, True, single

    # ------------------------------------------------------------------ scoring
    def evaluate(
        self, episodes: int = 1024, seed: int = 12345, modes: tuple[str, ...] = ("sampled", "greedy")
    ) -> dict[str, dict[str, Any]]:
        """The policy against the heuristic and random baselines on the same ``episodes`` episodes
        (:func:`~esper_fast.ppo.evaluate.compare_with_baselines`; print it with ``format_table``)."""
        with validation_off(self.policy):
            self.policy.eval()
            return compare_with_baselines(
                self.policy, self._obs_normalizer, self.config, episodes, seed, self.config.device, modes
            )
