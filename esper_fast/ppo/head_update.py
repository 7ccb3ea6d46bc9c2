"""The ``esper-head`` PPO update: esper HEAD (2016337e)'s loss on :class:`esper_fast.FactoredPolicyV2`.

Used by the trainer when ``config.ppo_variant == "head"`` (``--preset esper-head``); the other presets
keep :func:`esper_fast.ppo.update.ppo_update`. Built from the tested pieces of
:mod:`esper_fast.ppo.head_losses` (what each is, with HEAD's file:line, in ``docs/esper-head-ppo.md``):

* critic: V(s) (``state_value_head``) against the *normalised* returns (``returns_norm``, the trainer's
  :class:`~esper_fast.ppo.head_losses.ValueNormalizer`), ``0.5 * weighted mean``; no value clipping;
* q_head auxiliary: Q(s, stored op) against the same targets, coefficient ``0.5 * value_coef``;
* value coefficient: :func:`~esper_fast.ppo.head_losses.value_coef_at` (warm-up over HEAD's train_steps);
* forced steps (only WAIT valid): actor weight 0, value and q_aux weight 0.2, entropy excluded;
* causal masks from the EFFECTIVE op (the op the env executed), not the sampled one;
* probability floors (``PROBABILITY_FLOOR_PER_HEAD``) in ``evaluate_actions`` as in the rollout;
* entropy floor penalty over the steps where a head was AVAILABLE (some op that uses it was valid:
  :func:`availability_masks`, HEAD's ``leyline/causal_masks.py:66-117``), scaled by training progress;
* a finiteness gate: an epoch whose new/old log-probs, V or Q are not finite takes no optimiser step;
* HEAD's joint-ratio telemetry (its KL drives the ``target_kl`` early stop);
* the anchored reference pass: the ratios' old log-probs are one no_grad ``evaluate_actions`` replay of
  the whole buffer at the pre-update weights (HEAD ``ppo_agent.py:921-979,1200-1209``), not the rollout's
  stored ones, so the first epoch's ratio is exactly 1 and every epoch of ``update_epochs`` is anchored
  there (HEAD's ``recurrent_n_epochs``, default 1);
* the contribution auxiliary loss: :func:`~esper_fast.ppo.head_losses.contribution_aux_loss` of the
  predictor (trunk detached) against the rollout's per-slot counterfactual targets, coefficient
  :func:`~esper_fast.ppo.head_losses.aux_coef_at` (ramped over HEAD's train_steps).

The epoch / minibatch loop (shuffle, KL early stop, gradient step, metric sums) is
:func:`esper_fast.ppo.epochs.run_epochs`, shared with :func:`esper_fast.ppo.update.ppo_update`; this module
gives it HEAD's per-minibatch loss (``minibatch_loss`` inside :func:`ppo_update_head`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from esper_fast.constants import CAUSAL_HEAD_OPS, HEAD_NAMES, LifecycleOp
from esper_fast.constants_v2 import ENTROPY_FLOOR_PENALTY_COEF, ENTROPY_FLOOR_PER_HEAD, PROBABILITY_FLOOR_PER_HEAD
from esper_fast.ppo.buffer import RolloutBuffer
from esper_fast.ppo.config import PPOConfig
from esper_fast.ppo.epochs import MinibatchLoss, run_config_epochs
from esper_fast.ppo.head_losses import (
    aux_coef_at,
    contribution_aux_loss,
    entropy_floor_penalty,
    entropy_loss_head,
    entropy_penalty_schedule,
    forced_weights,
    head_policy_loss,
    joint_ratio_metrics,
    total_loss_head,
    value_coef_at,
    weighted_value_loss,
)
from esper_fast.ppo.losses import head_ratios, masked_mean
from esper_fast.ppo.replay import cat_pieces, replay_pieces
from esper_fast.rules import causal_masks
from esper_fast.types import Hidden

__all__ = [
    "anchored_reference_log_probs",
    "availability_masks",
    "evaluate_sequences_v2",
    "forced_steps",
    "ppo_update_head",
]


def forced_steps(op_mask: Tensor) -> Tensor:
    """``[..., num_ops]`` bool -> ``[...]``: True where WAIT is the only valid op (HEAD's forced step)."""
    return (op_mask.sum(-1) == 1) & op_mask[..., int(LifecycleOp.WAIT)]


def availability_masks(op_mask: Tensor) -> dict[str, Tensor]:
    """``[..., num_ops]`` bool -> head -> ``[...]`` bool: could the head have mattered (one of the ops that
    use it was valid; the op head always). HEAD uses these, not the causal masks, for the entropy floor."""
    out = {}
    for head in HEAD_NAMES:
        ops = CAUSAL_HEAD_OPS[head]
        out[head] = torch.ones_like(op_mask[..., 0]) if ops is None else op_mask[..., list(ops)].any(-1)
    return out


def evaluate_sequences_v2(
    policy: torch.nn.Module,
    mb: RolloutBuffer,
    floors: dict[str, float] | None,
) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor], Tensor, Tensor]:
    """Replay ``mb``'s sequences through HEAD's ``evaluate_actions``: ``(log_probs, V(s), entropy, Q(s, op),
    predicted contributions)``, each ``[B, T]`` (contributions ``[B, T, S]``). The LSTM starts from
    ``mb.initial_hidden`` and is zeroed at every episode start inside the rollout
    (:func:`esper_fast.ppo.replay.replay_pieces`, as in :func:`esper_fast.ppo.update.evaluate_sequences`)."""

    def run(span: slice, hidden: Hidden) -> tuple[tuple, Hidden]:
        log_probs, value, entropy, hidden, contrib, q = policy.evaluate_actions(
            mb.obs[:, span],
            mb.blueprint_indices[:, span],
            {h: a[:, span] for h, a in mb.actions.items()},
            **{f"{h}_mask": m[:, span] for h, m in mb.masks.items()},
            hidden=hidden,
            probability_floor=floors,
        )
        return (log_probs, value, entropy, q, contrib), hidden

    return cat_pieces(replay_pieces(mb, run))


def anchored_reference_log_probs(
    policy: torch.nn.Module, buffer: RolloutBuffer, floors: dict[str, float] | None
) -> dict[str, Tensor]:
    """HEAD's anchored reference pass (``ppo_agent.py:921-979``): the stored actions' log-probs under the
    CURRENT (pre-update) weights, one no_grad replay of the whole buffer; head -> ``[E, T]``. Every epoch's
    importance ratio is taken against these (``ppo_agent.py:1200-1209``), so epoch 0's is exactly 1."""
    with torch.no_grad():
        return {h: lp.detach() for h, lp in evaluate_sequences_v2(policy, buffer, floors)[0].items()}


def ppo_update_head(
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    buffer: RolloutBuffer,
    effective_op: Tensor,
    advantages: Tensor,
    returns_norm: Tensor,
    config: PPOConfig,
    entropy_coef: float,
    *,
    train_steps: int,
    progress: float,
    generator: torch.Generator | None = None,
    all_reduce_mean: Callable[[Tensor], Tensor] | None = None,
    all_reduce_grads: Callable[[list[Tensor]], None] | None = None,
    contributions: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Tensor]:
    """One HEAD-style update on ``buffer``; ``effective_op``, ``advantages`` (already normalised with the
    std floor), ``returns_norm`` (critic targets on the normalised scale) are ``[E, T]``.

    ``train_steps``: HEAD's counter (updates that stepped the optimiser) for the value-coef warm-up;
    ``progress`` in [0, 1]: the run's progress for the entropy-floor schedule. Returns metric tensors
    (the trainer's names, plus ``head/...``: q_aux_loss, entropy_floor_penalty, value_coef,
    nonfinite_epochs, joint-ratio statistics, contribution_aux_loss / contribution_aux_coef).
    ``contributions``: ``(targets [E, T, S], active [E, T, S] bool)`` for the contribution auxiliary loss
    (None: no such loss; a step is fresh where any slot is active); its coefficient ramps over ``train_steps``.
    """
    floors = dict(PROBABILITY_FLOOR_PER_HEAD) if config.probability_floors else None
    value_coef = value_coef_at(train_steps, config.value_coef, config.value_warmup_steps, config.value_coef_start)
    floor_scale = entropy_penalty_schedule(progress)
    floor_coefs = {h: c * floor_scale for h, c in ENTROPY_FLOOR_PENALTY_COEF.items()}

    aux_coef = aux_coef_at(train_steps, config.aux_contribution_coef, config.aux_warmup_steps)
    ref_log_probs = anchored_reference_log_probs(policy, buffer, floors)  # HEAD's anchor at theta0

    def minibatch_loss(mb_envs: Tensor) -> MinibatchLoss | None:
        mb = buffer.env_slice(mb_envs)
        new_log_probs, new_v, entropy, new_q, new_contrib = evaluate_sequences_v2(policy, mb, floors)
        old_log_probs = {h: ref[mb_envs] for h, ref in ref_log_probs.items()}  # anchored, not the rollout's
        # ---- finiteness gate: one fused check; a non-finite epoch takes no step (HEAD: `continue`)
        checks = [torch.isfinite(t).all() for t in (*new_log_probs.values(), *old_log_probs.values(), new_v, new_q)]
        if not bool(torch.stack(checks).all()):
            return None
        causal = causal_masks(effective_op[mb_envs])
        forced = forced_steps(mb.masks["op"])
        actor_w, value_w = forced_weights(forced)
        ratios = head_ratios(new_log_probs, old_log_probs)
        joint = joint_ratio_metrics(new_log_probs, old_log_probs, causal, config.clip_ratio)
        loss_pi = head_policy_loss(ratios, advantages[mb_envs], causal, config.clip_ratio, actor_w)
        loss_v = weighted_value_loss(new_v.float(), returns_norm[mb_envs], value_w)
        loss_q = weighted_value_loss(new_q.float(), returns_norm[mb_envs], value_w)
        loss_ent = entropy_loss_head(entropy, causal, config.entropy_coef_per_head, actor_w)
        if config.entropy_floor:
            available = availability_masks(mb.masks["op"])
            penalty = entropy_floor_penalty(entropy, available, ENTROPY_FLOOR_PER_HEAD, floor_coefs, actor_w)
        else:
            penalty = loss_ent.new_zeros(())
        loss = total_loss_head(loss_pi, loss_v, loss_ent, penalty, loss_q, value_coef, entropy_coef)
        extra: dict[str, Tensor] = {}
        if contributions is not None:  # HEAD's contribution auxiliary (ppo_agent.py:1293-1307)
            target, active = contributions[0][mb_envs], contributions[1][mb_envs]
            loss_c = contribution_aux_loss(
                new_contrib.float(), target, active, active.any(-1), config.contribution_loss_clip
            )
            loss = loss + aux_coef * loss_c
            extra["head/contribution_aux_loss"] = loss_c
        clip_frac = torch.stack([joint[f"clip_fraction/{h}"] for h in HEAD_NAMES]).mean()
        return MinibatchLoss(
            loss=loss,
            kl=joint["approx_kl"],
            metrics={
                "policy_loss": loss_pi,
                "value_loss": loss_v,
                "entropy_loss": loss_ent,
                "clip_fraction": clip_frac,
                "head/q_aux_loss": loss_q,
                "head/entropy_floor_penalty": penalty,
                **extra,
                **{f"head/{k}": v for k, v in joint.items() if k.startswith("joint_")},
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
        metric_names=(
            "policy_loss",
            "value_loss",
            "entropy_loss",
            "clip_fraction",
            "head/q_aux_loss",
            "head/entropy_floor_penalty",
        ),
    )
    metrics["head/nonfinite_epochs"] = metrics.pop("skipped")
    metrics["head/value_coef"] = torch.tensor(float(value_coef))
    if contributions is not None:
        metrics.setdefault("head/contribution_aux_loss", torch.tensor(float("nan")))
        metrics["head/contribution_aux_coef"] = torch.tensor(float(aux_coef))
    return metrics
