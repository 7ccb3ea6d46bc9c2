"""``Trainer``: recurrent PPO on :class:`~esper_fast.envs.SeedLifecycleEnv`, esper's algorithm.

One update = ROLLOUT (every env runs ``rollout_steps`` steps; the policy picks each op once) ->
GAE (esper's truncation rule) -> UPDATE (esper's per-head clipped loss over whole env sequences).
``Trainer.train`` reads in that order. Nothing in the rollout syncs with the host on an accelerator:
metrics are accumulated as tensors and read once per update.

Run it from Python::

    from esper_fast.ppo import Trainer, make_config
    Trainer(make_config("smoke"), run_dir="runs/try").train()

or ``esper-fast train`` (the CLI), or ``torchrun --nproc_per_node N -m esper_fast.cli train`` for
data-parallel training (see :mod:`esper_fast.ppo.distributed`).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from esper_fast.constants import NUM_OPS, LifecycleOp
from esper_fast.envs import SeedLifecycleEnv
from esper_fast.ppo.agent import (
    act,
    architecture,
    build_policy,
    cpu_threads,
    effective_masks,
    env_config,
    validation_off,
)
from esper_fast.ppo.buffer import RolloutBuffer
from esper_fast.ppo.checkpoint import CHECKPOINT_VERSION, check_architecture, load_network_state, save_checkpoint
from esper_fast.ppo.config import PPOConfig
from esper_fast.ppo.distributed import DistContext
from esper_fast.ppo.evaluate import compare_with_baselines, evaluation_markdown
from esper_fast.ppo.gae import compute_gae, explained_variance, normalize_advantages
from esper_fast.ppo.head_losses import ValueNormalizer, normalize_advantages_floored
from esper_fast.ppo.head_update import ppo_update_head
from esper_fast.ppo.metrics import MetricsWriter, plot_learning_curve
from esper_fast.ppo.normalize import ObsNormalizer, RewardNormalizer
from esper_fast.ppo.runlock import RunLock
from esper_fast.ppo.update import ppo_update

__all__ = ["Trainer", "check_env", "check_policy", "rank_seed"]

OP_NAMES = [op.name.lower() for op in LifecycleOp]


def rank_seed(seed: int, rank: int) -> int:
    """Per-process seed for envs and samplers (rank 0 keeps ``seed``)."""
    return seed + 104_729 * rank


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:<current>`` are the same device."""
    norm = lambda d: torch.empty(0, device=d).device  # noqa: E731
    return norm(a) == norm(b)


def _policy_kind(policy: torch.nn.Module) -> str:
    from esper_fast.policy_v2 import FactoredPolicyV2Mixin

    return "esper HEAD's FactoredPolicyV2" if isinstance(policy, FactoredPolicyV2Mixin) else type(policy).__name__


def check_policy(policy: torch.nn.Module, config: PPOConfig, device: torch.device) -> None:
    """ValueError (TypeError for a non-Module) unless ``policy`` is what a :class:`Trainer` with ``config`` on
    ``device`` can train.

    Checked: the kind (``ppo_variant="head"``: esper HEAD's FactoredPolicyV2; otherwise a FactoredNetwork
    whose ``value_mode`` is ``config.value_mode``, ``legacy=True`` for "legacy"), the shapes of
    :func:`~esper_fast.ppo.agent.architecture` (state_dim, feature_dim, lstm_hidden_dim, lstm_layers)
    and the head sizes of ``config.num_slots``, and that every parameter is on ``device``.
    """
    from esper_fast.constants import get_action_head_sizes
    from esper_fast.network import FactoredNetwork
    from esper_fast.policy_v2 import FactoredPolicyV2Mixin

    if not isinstance(policy, torch.nn.Module):
        raise TypeError(f"policy: expected a torch.nn.Module, got {type(policy).__name__}")
    if config.ppo_variant == "head":
        if not isinstance(policy, FactoredPolicyV2Mixin):
            raise ValueError(
                f"policy: ppo_variant 'head' trains esper HEAD's network (esper_fast.FactoredPolicyV2), "
                f"got {type(policy).__name__}"
            )
    else:
        if isinstance(policy, FactoredPolicyV2Mixin) or not isinstance(policy, FactoredNetwork):
            raise ValueError(
                f"policy: ppo_variant {config.ppo_variant!r} trains a FactoredNetwork (FactoredPolicy or "
                f"ReferencePolicy), got {_policy_kind(policy)}"
            )
        legacy = bool(getattr(policy, "legacy", False))
        mode = "legacy" if legacy else getattr(policy, "value_mode", None)
        if mode != config.value_mode:
            raise ValueError(
                f"policy: its value mode is {mode!r} (value_mode={getattr(policy, 'value_mode', None)!r}, "
                f"legacy={legacy}), config.value_mode is {config.value_mode!r}"
            )
    arch = architecture(config)
    first = getattr(getattr(policy, "feature_net", None), "__getitem__", None)
    have = {
        "state_dim": getattr(policy, "state_dim", None),
        "feature_dim": getattr(first(0), "out_features", None) if first is not None else None,
        "lstm_hidden_dim": getattr(policy, "lstm_hidden_dim", None),
        "lstm_layers": getattr(policy, "lstm_layers", None),
        "head_sizes": dict(getattr(policy, "head_sizes", {}) or {}),
    }
    want = {k: arch[k] for k in ("state_dim", "feature_dim", "lstm_hidden_dim", "lstm_layers")}
    want["head_sizes"] = get_action_head_sizes(config.num_slots)
    bad = [f"{k} {have[k]} (config: {want[k]})" for k in want if have[k] != want[k]]
    if bad:
        raise ValueError(f"policy: its architecture does not match the config: {'; '.join(bad)}")
    for name, param in policy.named_parameters():
        if not _same_device(param.device, device):
            raise ValueError(
                f"policy: parameter {name!r} is on {param.device}, the trainer runs on {device} "
                "(move the policy there first)"
            )


def check_env(env: Any, config: PPOConfig, policy: torch.nn.Module, device: torch.device) -> None:
    """ValueError unless ``env`` fits a :class:`Trainer` with ``config`` training ``policy`` on ``device``:
    ``config.num_envs`` envs, ``env.head_sizes`` equal to the policy's, an ``observe()`` whose ``obs`` is
    ``[num_envs, state_dim]`` and ``blueprint_indices`` ``[num_envs, num_slots]`` on ``device``, and no
    end-of-run evaluation (``config.eval_episodes == 0``) unless it is a SeedLifecycleEnv."""
    missing = [a for a in ("num_envs", "head_sizes", "observe", "step") if not hasattr(env, a)]
    if missing:
        raise ValueError(
            f"env: {type(env).__name__} lacks {', '.join(missing)} (SeedLifecycleEnv's interface: "
            "num_envs, head_sizes, observe(), step(actions))"
        )
    if int(env.num_envs) != config.num_envs:
        raise ValueError(f"env: has {env.num_envs} envs, config.num_envs is {config.num_envs}")
    sizes, want = dict(env.head_sizes), dict(policy.head_sizes)
    if sizes != want:
        diff = ", ".join(
            f"{h} {sizes.get(h)} (policy: {want.get(h)})"
            for h in dict.fromkeys([*want, *sizes])
            if sizes.get(h) != want.get(h)
        )
        raise ValueError(f"env: its action head sizes do not match the policy's: {diff}")
    obs = env.observe()
    state_dim, num_slots = architecture(config)["state_dim"], config.num_slots
    for name, tensor, shape in (
        ("obs", obs.obs, (config.num_envs, state_dim)),
        ("blueprint_indices", obs.blueprint_indices, (config.num_envs, num_slots)),
    ):
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"env: observe().{name} has shape {list(tensor.shape)}, the config needs {list(shape)} "
                f"(num_envs {config.num_envs}, state_dim {state_dim} = get_feature_size({num_slots}))"
            )
        if not _same_device(tensor.device, device):
            raise ValueError(f"env: observe().{name} is on {tensor.device}, the trainer runs on {device}")
    if config.eval_episodes and not isinstance(env, SeedLifecycleEnv):
        raise ValueError(
            f"env: the end-of-run evaluation plays SeedLifecycleEnv, not {type(env).__name__}: "
            "set eval_episodes=0 (and evaluate on your env yourself)"
        )


class Trainer:
    """Owns the policy, optimiser, envs, normalisers and RNGs of one process of a PPO run.

    Args:
        config: the run's :class:`PPOConfig`.
        run_dir: where rank 0 writes config.json, metrics.csv/.jsonl, TensorBoard events,
            checkpoints/ and learning_curve.png. None (the default) writes no file at all: the run lives
            in memory (``train`` still returns the summary, ``state_dict`` still gives the checkpoint
            payload; ``save`` writes nothing and returns None).
        env: this process's env, trained on as it is (not reset; the trainer starts from
            ``env.observe()``). Anything with SeedLifecycleEnv's interface: ``num_envs``, ``head_sizes``,
            ``observe() -> EnvObs``, ``step(actions) -> StepResult`` (e.g.
            :class:`~esper_fast.envs.exact_mdp.ExactMDPEsperEnv`). It must have ``config.num_envs`` envs,
            observations of the config's size (``architecture(config)["state_dim"]``) on the trainer's
            device and the policy's action head sizes (ValueError naming the mismatch otherwise). The
            end-of-run evaluation plays SeedLifecycleEnv, so an env of another kind needs
            ``config.eval_episodes == 0``. Default: ``SeedLifecycleEnv(config.num_envs, env_config(config),
            seed=rank_seed(config.seed, rank))``.
        policy: the network to train, on the trainer's device; the optimiser is built over its
            parameters. It must have the config's architecture (:func:`~esper_fast.ppo.agent.architecture`:
            state_dim, feature_dim, lstm_hidden_dim, lstm_layers, head sizes), be the kind the config
            trains (a :class:`~esper_fast.network.FactoredNetwork` whose ``value_mode`` is
            ``config.value_mode``, or with ``legacy=True`` for "legacy"; an esper-HEAD
            ``FactoredPolicyV2`` for ``ppo_variant="head"``); ValueError naming the mismatch otherwise.
            With several processes it is broadcast from rank 0 like a built one. Default:
            :func:`~esper_fast.ppo.agent.build_policy` after ``torch.manual_seed(config.seed)``.
        dist: the process's :class:`DistContext` (default: single process on ``config.device``).
        resume: a loaded checkpoint dict (:func:`~esper_fast.ppo.checkpoint.load_checkpoint`) to continue.
        log: where progress messages go (rank 0 only).
        tensorboard: write TensorBoard events if the package is installed.
    """

    def __init__(
        self,
        config: PPOConfig,
        run_dir: str | Path | None = None,
        *,
        env: Any | None = None,
        policy: torch.nn.Module | None = None,
        dist: DistContext | None = None,
        resume: dict[str, Any] | None = None,
        log: Callable[[str], None] = print,
        tensorboard: bool = True,
    ) -> None:
        self.config, self.ctx = config, dist or DistContext(device=torch.device(config.device))
        self.device = self.ctx.device
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.log = log if self.ctx.is_main else (lambda _msg: None)
        self.num_updates = config.updates_for(self.ctx.world_size)

        # ---- seeding: same init on every rank (then broadcast), own env/sampler streams per rank
        seed = rank_seed(config.seed, self.ctx.rank)
        torch.manual_seed(config.seed)
        if policy is None:
            policy = build_policy(config.replace(device=str(self.device)))
        else:
            check_policy(policy, config, self.device)
        self.policy = policy
        self.ctx.broadcast_module(self.policy)
        fused = config.fused_adam if config.fused_adam is not None else self.device.type == "cuda"
        self.optimizer = torch.optim.Adam(
            self.policy.parameters(), lr=config.learning_rate, eps=config.adam_eps, **({"fused": True} if fused else {})
        )
        if env is None:
            env = SeedLifecycleEnv(config.num_envs, env_config(config), device=self.device, seed=seed)
        else:
            check_env(env, config, self.policy, self.device)
        self.env = env
        self.action_generator = torch.Generator(device=self.device).manual_seed(seed)
        self.update_generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        arch = architecture(config)
        self.obs_normalizer = ObsNormalizer(
            arch["state_dim"],
            config.obs_norm_momentum,
            clip=config.obs_clip,
            device=self.device,
            enabled=config.normalize_obs,
        )
        self.reward_normalizer = RewardNormalizer(
            config.reward_clip, device=self.device, enabled=config.normalize_rewards
        )
        self.buffer = RolloutBuffer.allocate(
            config.num_envs,
            config.rollout_steps,
            arch["state_dim"],
            self.env.head_sizes,
            config.lstm_layers,
            config.lstm_hidden_dim,
            self.device,
        )
        self.obs = self.env.observe()
        self.hidden = self.policy.get_initial_hidden(config.num_envs, self.device)
        self.head = config.ppo_variant == "head"
        # esper HEAD only: the critic's return scale, the executed op per step, HEAD's train_steps
        self.value_normalizer = ValueNormalizer(device=self.device) if self.head else None
        self.effective_op = torch.zeros(config.num_envs, config.rollout_steps, dtype=torch.int64, device=self.device)
        # esper HEAD only: the contribution predictor's targets per step (the env's true counterfactuals)
        S = config.num_slots
        self.contrib_target = torch.zeros(config.num_envs, config.rollout_steps, S, device=self.device)
        self.contrib_active = torch.zeros(
            config.num_envs, config.rollout_steps, S, dtype=torch.bool, device=self.device
        )
        self.head_train_steps = 0
        self.train_steps, self.global_step = 0, 0
        self.last_row: dict[str, Any] = {}
        self._stop_requested = False
        self._last_save = time.monotonic()
        self._lock: RunLock | None = None
        if self.run_dir is not None and self.ctx.is_main:  # one run per directory (RunDirInUseError)
            self._lock = RunLock(self.run_dir)
        if resume is not None:
            self.load_state(resume)

        self.writer: MetricsWriter | None = None
        if self.run_dir is not None and self.ctx.is_main:
            self.writer = MetricsWriter(self.run_dir, tensorboard=tensorboard)
            if self.writer.tensorboard_note:
                self.log(self.writer.tensorboard_note)
            if resume is not None:  # rows written after the checkpoint by a killed run: exactly one per update
                dropped = self.writer.drop_rows_after(self.train_steps)
                if dropped:
                    self.log(f"resume: dropped {dropped} metrics row(s) written after update {self.train_steps}")
            self._write_config()

    # =============================================================================================
    # The loop
    # =============================================================================================
    def train(
        self, on_update: Callable[[dict[str, Any]], None] | None = None, handle_signals: bool = True
    ) -> dict[str, Any]:
        """Run the remaining updates; returns the summary (last metrics, evaluation, paths).

        ``on_update(row)`` is called on rank 0 after every update. With ``handle_signals`` the first
        Ctrl-C (SIGINT/SIGTERM) finishes the current update, saves a checkpoint and stops; a second
        Ctrl-C aborts at once.
        """
        cfg = self.config
        start_time, start_step = time.perf_counter(), self.global_step
        interrupted = False
        with cpu_threads(cfg.torch_threads, self.device), validation_off(self.policy):
            with self._signals(handle_signals):
                while self.train_steps < self.num_updates:
                    # ---- ROLLOUT: every env runs rollout_steps steps, LSTM state carried per env ----
                    rollout_stats = self.rollout()

                    # ---- GAE -> OBS STATS -> UPDATE (esper's or HEAD's loss) -------------------------
                    update_stats, b_explained_var, lr, entropy_coef = self.update()

                    # ---- METRICS: one host sync per update ------------------------------------------
                    row = self._metrics_row(
                        rollout_stats,
                        update_stats,
                        b_explained_var,
                        lr,
                        entropy_coef,
                        sps=(self.global_step - start_step) / (time.perf_counter() - start_time),
                    )
                    self.last_row = row
                    if self.writer is not None:
                        self.writer.write(row)
                    if on_update is not None and self.ctx.is_main:
                        on_update(row)
                    skipped = int(row.get("losses/nonfinite_steps") or 0)
                    if skipped:
                        self.log(
                            f"update {self.train_steps}: skipped {skipped} optimizer step(s) with non-finite "
                            "loss or gradients (the network was left as it was)"
                        )
                    if cfg.checkpoint_every and self.train_steps % cfg.checkpoint_every == 0:
                        self.save(f"update_{self.train_steps:06d}.pt")
                    elif cfg.checkpoint_interval_s and self.ctx.any_flag(
                        time.monotonic() - self._last_save >= cfg.checkpoint_interval_s
                    ):
                        self.save("latest.pt")
                    if self.ctx.any_flag(self._stop_requested):
                        interrupted = True
                        break
            return self.finish(interrupted=interrupted)

    # =============================================================================================
    # Update
    # =============================================================================================
    def update(self) -> tuple[dict[str, Tensor], Tensor, float, float]:
        """One update from the rollout in ``self.buffer``: GAE (esper's truncation rule), the obs
        statistics, the learning-rate / entropy schedules, one PPO update (``ppo_variant``'s loss:
        :func:`~esper_fast.ppo.update.ppo_update` or :func:`~esper_fast.ppo.head_update.ppo_update_head`);
        advances ``train_steps`` and ``global_step``. What :meth:`train` does after each :meth:`rollout`.

        Returns ``(update metric tensors, explained variance, learning rate, entropy coef)``.
        Collective with several processes (call it on every rank). :meth:`train` runs it inside
        ``cpu_threads(config.torch_threads)`` and ``validation_off(policy)``; a caller on its own should too.
        """
        cfg = self.config
        # ---- GAE: truncated episodes bootstrap, terminal ones do not --------------------
        b = self.buffer
        b_advantages, b_returns = compute_gae(
            b.rewards, b.values, b.dones, b.truncated, b.bootstrap_values, cfg.gamma, cfg.gae_lambda
        )
        b_explained_var = explained_variance(b.values, b_returns)  # (HEAD: de-normalised scale)
        if self.head:  # critic targets on the normalised scale; advantages with HEAD's std floor
            self.value_normalizer.update(b_returns)
            b_targets = self.value_normalizer.normalize(b_returns)
            if cfg.normalize_advantages:
                b_advantages = normalize_advantages_floored(b_advantages)[0]
        elif cfg.normalize_advantages:
            b_advantages = normalize_advantages(b_advantages)

        # ---- OBS STATS: esper updates them with the batch's raw obs before the update ---
        self._update_obs_normalizer(b.raw_obs)

        # ---- UPDATE: per-head clipped PPO over whole env sequences -----------------------
        lr = cfg.learning_rate_at(self.train_steps, self.num_updates)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        entropy_coef = cfg.entropy_coef_at(self.train_steps)
        self.policy.train()
        if self.head:
            update_stats = ppo_update_head(
                self.policy,
                self.optimizer,
                b,
                self.effective_op,
                b_advantages,
                b_targets,
                cfg,
                entropy_coef,
                train_steps=self.head_train_steps,
                progress=self.train_steps / self.num_updates,
                generator=self.update_generator,
                all_reduce_mean=self.ctx.all_reduce_mean,
                all_reduce_grads=self.ctx.all_reduce_grads,
                contributions=(self.contrib_target, self.contrib_active) if self._contribution_targets() else None,
            )
            # HEAD counts train_steps only after a real optimiser step (ppo_agent.py:1589-1595)
            self.head_train_steps += int(update_stats["optimizer_steps"].item() > 0)
        else:
            update_stats = ppo_update(
                self.policy,
                self.optimizer,
                b,
                b_advantages,
                b_returns,
                cfg,
                entropy_coef,
                generator=self.update_generator,
                all_reduce_mean=self.ctx.all_reduce_mean,
                all_reduce_grads=self.ctx.all_reduce_grads,
            )
        self.train_steps += 1
        self.global_step += cfg.batch_size * self.ctx.world_size
        return update_stats, b_explained_var, lr, entropy_coef

    # =============================================================================================
    # Rollout
    # =============================================================================================
    @torch.no_grad()
    def rollout(self) -> dict[str, Tensor]:
        """Fill ``self.buffer`` with ``rollout_steps`` steps of every env; returns summed episode stats."""
        cfg, env, b, policy = self.config, self.env, self.buffer, self.policy
        policy.eval()
        E, T, dev = cfg.num_envs, cfg.rollout_steps, self.device
        legacy, op_slot = cfg.value_mode == "legacy", cfg.op_conditioned_slot
        head = self.head
        floors = None if not head or cfg.probability_floors else {}  # None: HEAD's floors (act)
        stats = {
            name: torch.zeros((), device=dev)
            for name in ("return_sum", "length_sum", "episodes", "terminated", "agree", "invalid")
        }
        stats["op_counts"] = torch.zeros(NUM_OPS, device=dev)
        ones = torch.ones(E, device=dev)
        b.initial_hidden = (self.hidden[0].clone(), self.hidden[1].clone())
        for t in range(T):
            env_obs = self.obs
            obs = self.obs_normalizer.normalize(env_obs.obs)  # frozen statistics during the rollout
            result = act(
                policy,
                obs,
                env_obs,
                self.hidden,
                deterministic=False,
                op_conditioned_slot=op_slot,
                generator=self.action_generator,
                probability_floor=floors,
            )
            actions = result.actions
            # charts/op_agreement: sampled_op is the op the value was read at (esper's second draw in legacy
            # mode; policy.value_read_op, q_op checked against q[n, op], on the fused paths), not actions["op"]
            agree = result.sampled_op == actions["op"]
            # HEAD: V(s) comes out on the normalised return scale; GAE works on the de-normalised one
            values = self.value_normalizer.denormalize(self._head_value(result)) if head else result.values
            b.store_step(
                t,
                obs=obs,
                raw_obs=env_obs.obs,
                blueprint_indices=env_obs.blueprint_indices,
                masks=effective_masks(env_obs, actions["op"], op_slot, head=head),
                actions=actions,
                log_probs=result.log_probs,
                values=values,
                old_q=result.values if legacy else result.q_op,
                op_agree=agree,
            )

            if head and self._contribution_targets():  # the state env_obs shows (HEAD: targets stored with step t)
                self.contrib_target[:, t], self.contrib_active[:, t] = env.counterfactual_contributions()
            step = env.step(actions)
            if head:
                self.effective_op[:, t] = step.effective_op
            done = step.terminated | step.truncated

            # Bootstrap V(s') for truncated envs (and for every live env at the rollout's end) from the
            # hidden state reached at this step, with value_mode's rule (deterministic op). On CPU a
            # data-dependent branch is free; on an accelerator always compute it (no sync).
            last = t == T - 1
            bootstrap = torch.zeros(E, device=dev)
            if last or dev.type != "cpu" or bool(step.truncated.any()):
                boot = act(
                    policy,
                    self.obs_normalizer.normalize(step.final.obs),
                    step.final,
                    result.hidden,
                    deterministic=True,
                    op_conditioned_slot=op_slot,
                    generator=self.action_generator,
                    probability_floor=floors,
                )
                boot_values = self.value_normalizer.denormalize(self._head_value(boot)) if head else boot.values
                use = (step.truncated | ~done) if last else step.truncated
                bootstrap = torch.where(use, boot_values, bootstrap)
            reward = self.reward_normalizer.update_and_normalize(step.reward)
            b.store_outcome(
                t, reward=reward, raw_reward=step.reward, done=done, truncated=step.truncated, bootstrap_value=bootstrap
            )

            stats["return_sum"] += step.episode_return.sum()
            stats["length_sum"] += step.episode_length.sum()
            stats["episodes"] += done.sum()
            stats["terminated"] += step.terminated.sum()
            stats["agree"] += agree.sum()
            stats["invalid"] += (step.effective_op != actions["op"]).sum()
            stats["op_counts"].index_add_(0, actions["op"], ones)  # (bincount would sync on CUDA)

            keep = (~done).to(result.hidden[0].dtype).view(1, E, 1)  # new episode -> zero LSTM state
            self.hidden = (result.hidden[0] * keep, result.hidden[1] * keep)
            self.obs = step.next
        return stats

    def _contribution_targets(self) -> bool:
        """ppo_variant "head": whether the contribution loss runs (``contribution_aux`` and an env that has
        counterfactual contributions; another env, e.g. a study's ExactMDP, gets a one-time log line)."""
        if not self.config.contribution_aux:
            return False
        has = hasattr(self.env, "counterfactual_contributions")
        if not has and not getattr(self, "_said_no_contributions", False):
            self._said_no_contributions = True
            self.log(
                f"contribution_aux: {type(self.env).__name__} has no counterfactual_contributions(); "
                "the contribution auxiliary loss is off for this run (no targets)"
            )
        return has

    def _head_value(self, result: Any) -> Tensor:
        """ppo_variant "head": the baseline of ``head_baseline`` (V(s), or sum_a pi Q from the same pass)."""
        return result.expected_value if self.config.head_baseline == "expected_q" else result.values

    def _update_obs_normalizer(self, raw_obs: Tensor) -> None:
        """EMA update from this rollout's raw obs; moments averaged over ranks (same stats everywhere)."""
        mean, var, count = ObsNormalizer.moments(raw_obs)
        if self.ctx.enabled:  # combine ranks: E[x] and E[x^2] averaged (equal counts per rank)
            mean_sq = self.ctx.all_reduce_mean(var + mean**2)
            mean = self.ctx.all_reduce_mean(mean)
            var = (mean_sq - mean**2).clamp(min=0.0)
            count = count * self.ctx.world_size
        self.obs_normalizer.update_from_moments(mean, var, count)

    # =============================================================================================
    # Metrics
    # =============================================================================================
    def _metrics_row(
        self,
        rollout: dict[str, Tensor],
        update: dict[str, Tensor],
        explained_var: Tensor,
        lr: float,
        entropy_coef: float,
        sps: float,
    ) -> dict[str, Any]:
        """All scalars of one update, read from the device in one transfer (summed over ranks)."""
        sums = torch.cat(
            [
                torch.stack(
                    [rollout[k] for k in ("return_sum", "length_sum", "episodes", "terminated", "agree", "invalid")]
                ),
                rollout["op_counts"],
            ]
        )
        sums = self.ctx.all_reduce_sum(sums.float()).tolist()
        ret_sum, len_sum, episodes, terminated, agree, invalid = sums[:6]
        op_counts = sums[6:]
        keys = sorted(update)
        values = torch.stack(
            [update[k].float().to(self.device).reshape(()) for k in keys] + [explained_var.float().reshape(())]
        ).tolist()
        upd = dict(zip(keys + ["explained_variance"], values))
        decisions = self.config.batch_size * self.ctx.world_size
        row: dict[str, Any] = {"update": self.train_steps, "global_step": self.global_step}
        row["charts/episode_return"] = ret_sum / episodes if episodes else None
        row["charts/episode_length"] = len_sum / episodes if episodes else None
        row["charts/episodes"] = episodes
        row["charts/terminated_frac"] = terminated / episodes if episodes else None
        row["charts/op_agreement"] = agree / decisions
        row["charts/invalid_action_frac"] = invalid / decisions
        for name, count in zip(OP_NAMES, op_counts):
            row[f"charts/op_frac/{name}"] = count / decisions
        row["charts/learning_rate"], row["charts/entropy_coef"] = lr, entropy_coef
        for name in (
            "policy_loss",
            "value_loss",
            "entropy_loss",
            "approx_kl",
            "clip_fraction",
            "explained_variance",
            "grad_norm",
            "optimizer_steps",
            "early_stop",
            "nonfinite_steps",
        ):
            row[f"losses/{name}"] = upd[name]
        for key in keys:
            if key.startswith(("entropy/", "head/")):
                row[key] = upd[key]
        row["time/sps"] = sps
        return row

    # =============================================================================================
    # Checkpoints
    # =============================================================================================
    def _rank_state(self) -> dict[str, Any]:
        """This process's own state, on the CPU (gathered to rank 0 for the checkpoint)."""
        env_state = self._env_state()
        return {
            "env": env_state,
            "env_class": type(self.env).__qualname__,
            "num_envs": int(self.env.num_envs),
            "hidden": [self.hidden[0].cpu().clone(), self.hidden[1].cpu().clone()],
            "reward_normalizer": {k: v.cpu() for k, v in self.reward_normalizer.state_dict().items()},
            "action_generator": self.action_generator.get_state(),
            "update_generator": self.update_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def _env_state(self) -> dict[str, Any] | None:
        """The env's resumable state: a SeedLifecycleEnv's tensor attributes, another env's ``state_dict()``
        if it has one (with ``load_state_dict``), else None (such an env starts afresh on resume)."""
        if isinstance(self.env, SeedLifecycleEnv):
            return {k: v.cpu().clone() for k, v in vars(self.env).items() if isinstance(v, Tensor)}
        if callable(getattr(self.env, "state_dict", None)) and callable(getattr(self.env, "load_state_dict", None)):
            return self.env.state_dict()
        return None

    def _head_state(self) -> dict[str, Any]:
        """esper HEAD's extra trainer state (ppo_variant "head"): value normaliser, HEAD's train_steps."""
        vn = self.value_normalizer
        return {
            "value_normalizer": {"mean": vn.mean.cpu(), "var": vn.var.cpu(), "count": vn.count.cpu(), "seen": vn.seen},
            "head_train_steps": self.head_train_steps,
        }

    def state_dict(self) -> dict[str, Any] | None:
        """The checkpoint payload on rank 0 (None elsewhere). Collective: call it on every rank."""
        rank_states = self.ctx.gather_objects(self._rank_state())
        if not self.ctx.is_main:
            return None
        from esper_fast.version import __version__

        return {
            "checkpoint_version": CHECKPOINT_VERSION,
            "network_state_dict": self.policy.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "train_steps": self.train_steps,
            "config": self.config.to_dict(),
            "architecture": architecture(self.config),
            "global_step": self.global_step,
            "obs_normalizer": self.obs_normalizer.state_dict(),
            "world_size": self.ctx.world_size,
            "rank_states": rank_states,
            **({"esper_head": self._head_state()} if self.head else {}),
            "metadata": {
                "esper_fast_version": __version__,
                "torch_version": str(torch.__version__),
                "value_mode": self.config.value_mode,
            },
        }

    def save(self, name: str = "latest.pt") -> Path | None:
        """Write ``run_dir/checkpoints/<name>`` (and ``latest.pt``) on rank 0. Collective."""
        payload = self.state_dict()
        self._last_save = time.monotonic()
        if payload is None or self.run_dir is None:
            return None
        path = save_checkpoint(self.run_dir / "checkpoints" / name, payload)
        if name != "latest.pt":
            save_checkpoint(self.run_dir / "checkpoints" / "latest.pt", payload)
        return path

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Restore a checkpoint (same architecture; a different world size restarts the envs)."""
        check_architecture(ckpt, self.config)
        load_network_state(self.policy, ckpt["network_state_dict"], source=f"checkpoint {ckpt.get('path', '')}")
        self.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
        self.train_steps, self.global_step = int(ckpt["train_steps"]), int(ckpt.get("global_step", 0))
        if "obs_normalizer" in ckpt:
            self.obs_normalizer.load_state_dict(ckpt["obs_normalizer"])
        if self.head and "esper_head" in ckpt:
            vn, saved = self.value_normalizer, ckpt["esper_head"]["value_normalizer"]
            vn.mean, vn.var, vn.count = (saved[k].to(self.device) for k in ("mean", "var", "count"))
            vn.seen = int(saved["seen"])
            self.head_train_steps = int(ckpt["esper_head"]["head_train_steps"])
        states = ckpt.get("rank_states") or []
        if ckpt.get("world_size", 1) != self.ctx.world_size or self.ctx.rank >= len(states):
            self.log(
                f"resume: checkpoint was written by {ckpt.get('world_size', 1)} process(es), this run has "
                f"{self.ctx.world_size}: envs and samplers start afresh"
            )
            return
        state = states[self.ctx.rank]
        env_state = state["env"]
        # Any env whose state is its tensor attributes (SeedLifecycleEnv, ExactMDPEsperEnv, a user's env):
        # the checkpoint's env class and count must be this run's, else the envs start afresh.
        saved_class = state.get("env_class", "SeedLifecycleEnv")  # checkpoints before env_class: Seed only
        if env_state is None or saved_class != type(self.env).__qualname__:
            why = (
                "has no resumable state (no state_dict/load_state_dict)"
                if env_state is None
                else (f"is {saved_class}, this run's is {type(self.env).__qualname__}")
            )
            self.log(f"resume: the checkpoint's env {why}: envs start afresh (weights, optimizer, counters restored)")
            return
        saved_envs = int(state.get("num_envs", env_state["epoch"].shape[0] if "epoch" in env_state else -1))
        if saved_envs != self.config.num_envs:
            self.log(
                f"resume: checkpoint has {saved_envs} envs per process, config has "
                f"{self.config.num_envs}: envs start afresh"
            )
            return
        if isinstance(self.env, SeedLifecycleEnv):
            for name, value in env_state.items():
                setattr(self.env, name, value.to(self.device))
        else:
            self.env.load_state_dict(env_state)
        self.obs = self.env.observe()
        self.hidden = (state["hidden"][0].to(self.device), state["hidden"][1].to(self.device))
        self.reward_normalizer.load_state_dict(state["reward_normalizer"])
        self.action_generator.set_state(state["action_generator"])
        self.update_generator.set_state(state["update_generator"])
        torch.set_rng_state(state["torch_rng"])

    # =============================================================================================
    # End of a run
    # =============================================================================================
    def finish(self, interrupted: bool = False) -> dict[str, Any]:
        """Save the final checkpoint; on rank 0 evaluate against the baselines and plot. Collective."""
        ckpt_path = self.save("latest.pt")
        summary: dict[str, Any] = {
            "updates": self.train_steps,
            "global_step": self.global_step,
            "interrupted": interrupted,
            "last_metrics": self.last_row,
            "checkpoint": str(ckpt_path) if ckpt_path else None,
        }
        if not self.ctx.is_main:
            return summary
        if interrupted:
            self.log(f"interrupted: checkpoint saved to {ckpt_path}" if ckpt_path else "interrupted")
        if self.config.eval_episodes and not interrupted:
            summary["evaluation"] = self.evaluate()
        if self.run_dir is not None and self.writer is not None:
            if summary.get("evaluation"):
                self.writer.write_evaluation(
                    summary["evaluation"],
                    self.global_step,
                    evaluation_markdown(summary["evaluation"], self.config.eval_episodes, self.config.eval_seed),
                )
            self.writer.close()
            summary["plot"] = str(self._plot(summary.get("evaluation")))
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        self.release()
        return summary

    def evaluate(self, episodes: int | None = None, seed: int | None = None) -> dict[str, dict[str, Any]]:
        """The end-of-run evaluation: the policy (sampled and greedy, with the trainer's obs statistics)
        against the oracle, heuristic and random baselines on the same ``episodes`` SeedLifecycleEnv
        episodes (default ``config.eval_episodes``, env seed ``config.eval_seed``);
        :func:`~esper_fast.ppo.evaluate.compare_with_baselines`. Leaves the policy in eval mode."""
        with validation_off(self.policy):
            self.policy.eval()
            return compare_with_baselines(
                self.policy,
                self.obs_normalizer,
                self.config,
                self.config.eval_episodes if episodes is None else episodes,
                self.config.eval_seed if seed is None else seed,
                self.device,
            )

    def release(self) -> None:
        """Give up the run directory's lock (done by :meth:`finish`; also when the process ends)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _plot(self, evaluation: dict[str, Any] | None) -> Path | None:
        from esper_fast.plotting import NO_MATPLOTLIB, matplotlib_available
        from esper_fast.ppo.metrics import read_metrics_csv

        if not matplotlib_available():
            self.log(f"{NO_MATPLOTLIB}: learning_curve.png")
            return None
        rows = read_metrics_csv(self.writer.csv_path) if self.writer.csv_path.is_file() else []
        evaluation = evaluation or {}
        baselines = {k: v["mean_return"] for k, v in evaluation.items() if k in ("oracle", "heuristic", "random")}
        finals = {k: v["mean_return"] for k, v in evaluation.items() if k.startswith("ppo")}
        cfg = self.config
        title = f"PPO ({cfg.value_mode}, H={cfg.lstm_hidden_dim}, {cfg.num_envs} envs x {self.ctx.world_size})"
        return plot_learning_curve(
            rows,
            self.run_dir / "learning_curve.png",
            baselines,
            title=title,
            finals=finals,
            eval_note=f"{self.config.eval_episodes} eval episodes",
        )

    def _write_config(self) -> None:
        payload = {
            "config": self.config.to_dict(),
            "derived": self.config.derived(),
            "world_size": self.ctx.world_size,
            "num_updates": self.num_updates,
            "architecture": architecture(self.config),
        }
        (self.run_dir / "config.json").write_text(json.dumps(payload, indent=2))
        table = "\n".join(f"|{k}|{v}|" for k, v in {**payload["config"], **payload["derived"]}.items())
        self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)  # CleanRL-style

    @contextmanager
    def _signals(self, enabled: bool) -> Iterator[None]:
        """First SIGINT/SIGTERM: stop after this update and save; second: abort (KeyboardInterrupt)."""
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            self.log("\nstopping after this update and saving a checkpoint (Ctrl-C again to abort)")

        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, previous in old.items():
                signal.signal(sig, previous)

    def request_stop(self) -> None:
        """Ask the loop to stop after the current update (what the first Ctrl-C does)."""
        self._stop_requested = True
