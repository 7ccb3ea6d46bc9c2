"""The PPO update: replay whole env sequences through ``evaluate_actions`` and step on esper's loss.

``update_epochs`` passes over the rollout; each pass shuffles the env rows and splits them into
``num_minibatches`` sets of whole sequences (CleanRL ``ppo_atari_lstm``), each replayed from its
stored step-0 LSTM state. esper's update is the special case of one pass over one full batch.
Before each optimiser step the causal-weighted KL is checked; above ``1.5 * target_kl`` the update
stops *without* taking that step (esper). Gradients are averaged over processes (if any) before the
global-norm clip, so every process takes the same step. A step whose gradient norm is NaN/inf is
skipped (counted in ``nonfinite_steps``), so a bad batch never writes a NaN network. The loop itself is
:func:`esper_fast.ppo.epochs.run_epochs` (shared with the esper-HEAD update); this module gives it the loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from esper_fast.constants import HEAD_NAMES
from esper_fast.network import FactoredNetwork
from esper_fast.ppo.buffer import RolloutBuffer
from esper_fast.ppo.config import PPOConfig
from esper_fast.ppo.epochs import MinibatchLoss, run_config_epochs
from esper_fast.ppo.losses import (
    approx_kl,
    clip_fraction,
    entropy_loss,
    head_ratios,
    masked_mean,
    policy_loss,
    value_loss,
)
from esper_fast.ppo.replay import cat_pieces, replay_pieces
from esper_fast.rules import causal_masks
from esper_fast.types import Hidden

__all__ = ["compiled_score_fn", "evaluate_sequences", "ppo_update"]


def evaluate_sequences(
    policy: FactoredNetwork,
    mb: RolloutBuffer,
    score_fn: Callable | None = None,
) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]:
    """Replay ``mb``'s sequences: ``(log_probs head -> [B, T], Q(s, stored op) [B, T], entropy head -> [B, T])``.

    The LSTM starts from ``mb.initial_hidden`` and is zeroed before the first step of every episode
    that starts inside the rollout, exactly as in the rollout. The sequence is cut at those steps and
    each piece goes through esper's ``evaluate_actions`` with the carried (and reset) hidden state
    (:func:`esper_fast.ppo.replay.replay_pieces`).
    On the fused path (``policy.fused_evaluate``) only the trunk runs per piece and the heads run once,
    through ``score_fn`` (default :func:`esper_fast.fused_evaluate.score_lstm_out`; the compiled one
    with ``config.compile``).
    """
    if getattr(policy, "fused_evaluate", False):
        return _evaluate_sequences_fused(policy, mb, score_fn)

    def run(span: slice, hidden: Hidden) -> tuple[tuple, Hidden]:
        log_probs, value, entropy, hidden = policy.evaluate_actions(
            mb.obs[:, span],
            mb.blueprint_indices[:, span],
            {h: a[:, span] for h, a in mb.actions.items()},
            **{f"{h}_mask": m[:, span] for h, m in mb.masks.items()},
            hidden=hidden,
        )
        return (log_probs, value, entropy), hidden

    return cat_pieces(replay_pieces(mb, run))


def _evaluate_sequences_fused(policy: FactoredNetwork, mb: RolloutBuffer, score_fn: Callable | None):
    """The fused path: only the trunk runs piece by piece (the LSTM resets); heads, Q(s, stored op)
    and the fused scoring op run once over the whole ``[B, T]`` minibatch
    (:func:`esper_fast.fused_evaluate.score_lstm_out`, the math of ``evaluate_actions``)."""
    from esper_fast.fused_evaluate import score_lstm_out

    def run(span: slice, hidden: Hidden) -> tuple[tuple[Tensor], Hidden]:
        lstm_out, hidden = policy.trunk(mb.obs[:, span], mb.blueprint_indices[:, span], hidden)
        return (lstm_out,), hidden

    (lstm_out,) = cat_pieces(replay_pieces(mb, run))
    return (score_fn or score_lstm_out)(policy, lstm_out, mb.actions, dict(mb.masks))


def compiled_score_fn(policy: FactoredNetwork, backend: str = "inductor") -> Callable:
    """``score_lstm_out`` compiled once per policy and backend (heads, Q at the stored op, fused scoring)."""
    from esper_fast.fused_evaluate import score_lstm_out

    if not getattr(policy, "fused_evaluate", False):
        raise ValueError("compile: the compiled update step needs the fused update path (policy.fused_evaluate)")
    cache = policy.__dict__.setdefault("_compiled_score", {})
    if backend not in cache:
        cache[backend] = torch.compile(score_lstm_out, backend=backend, fullgraph=True, dynamic=False)
    return cache[backend]


def ppo_update(
    policy: FactoredNetwork,
    optimizer: torch.optim.Optimizer,
    buffer: RolloutBuffer,
    advantages: Tensor,
    returns: Tensor,
    config: PPOConfig,
    entropy_coef: float,
    *,
    generator: torch.Generator | None = None,
    all_reduce_mean: Callable[[Tensor], Tensor] | None = None,
    all_reduce_grads: Callable[[list[Tensor]], None] | None = None,
) -> dict[str, Tensor]:
    """Run one PPO update on ``buffer`` (advantages/returns ``[E, T]``); returns metric tensors.

    ``all_reduce_mean`` averages a tensor over processes (identity when None); ``all_reduce_grads``
    averages the gradients in place. Two host syncs per minibatch (the KL early-stop decision, the finite-gradient
    check).
    """
    score_fn = compiled_score_fn(policy, config.compile_backend) if config.compile else None

    def minibatch_loss(mb_envs: Tensor) -> MinibatchLoss:
        mb = buffer.env_slice(mb_envs)
        with torch.autocast(buffer.obs.device.type, dtype=torch.bfloat16, enabled=config.amp):
            new_log_probs, new_q, entropy = evaluate_sequences(policy, mb, score_fn)
        new_q = new_q.float()
        causal = causal_masks(mb.actions["op"])
        ratios = head_ratios(new_log_probs, mb.log_probs)
        loss_pi = policy_loss(ratios, advantages[mb_envs], causal, config.clip_ratio)
        loss_v = value_loss(new_q, mb.old_q, returns[mb_envs], config.clip_value, config.value_clip)
        loss_ent = entropy_loss(entropy, causal, config.entropy_coef_per_head)
        return MinibatchLoss(
            loss=loss_pi + config.value_coef * loss_v + entropy_coef * loss_ent,
            kl=approx_kl(new_log_probs, mb.log_probs, causal),
            metrics={
                "policy_loss": loss_pi,
                "value_loss": loss_v,
                "entropy_loss": loss_ent,
                "clip_fraction": clip_fraction(ratios, causal, config.clip_ratio),
            },
            first=lambda: {f"entropy/{h}": masked_mean(entropy[h].detach(), causal[h]) for h in HEAD_NAMES},
        )

    metrics = run_config_epochs(
        minibatch_loss,
        buffer,
        policy,
        optimizer,
        config,
        generator=generator,
        all_reduce_mean=all_reduce_mean,
        all_reduce_grads=all_reduce_grads,
        metric_names=("policy_loss", "value_loss", "entropy_loss", "clip_fraction"),
    )
    del metrics["skipped"]  # (the callback never skips)
    return metrics
