"""The policy as the trainer and the evaluator use it: construction, one decision, an env controller.

* :func:`build_policy` - ``FactoredPolicy(value_mode=...)`` for "q_op" / "expected" (``ReferencePolicy`` with the
  same initial weights when ``config.fused`` is False), esper's buggy
  ``ReferencePolicy(legacy=True)`` for "legacy" (same parameters, so checkpoints are interchangeable).
* :func:`act` - one ``get_action`` call on an :class:`~esper_fast.envs.EnvObs`, plus the slot mask the
  slot was actually sampled under (the buffer stores it so the update scores the same distribution).
* :class:`PolicyActor` - a stateful ``EnvObs -> actions`` controller for
  :func:`esper_fast.envs.evaluate_policy`: normalises, keeps the LSTM state, zeroes it where the caller
  says an episode starts (``episode_start``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from esper_fast.constants import HEAD_NAMES, get_feature_size
from esper_fast.envs import EnvConfig, EnvObs
from esper_fast.network import FactoredNetwork
from esper_fast.ops.threads import cpu_threads  # re-exported: the one thread-count manager
from esper_fast.policy import FactoredPolicy
from esper_fast.ppo.config import PPOConfig
from esper_fast.ppo.normalize import ObsNormalizer
from esper_fast.reference_policy import ReferencePolicy
from esper_fast.rules import op_dependent_masks, slot_for_op
from esper_fast.types import GetActionResult, Hidden

__all__ = [
    "build_policy",
    "env_config",
    "architecture",
    "act",
    "effective_masks",
    "PolicyActor",
    "validation_off",
    "cpu_threads",
]


def architecture(config: PPOConfig) -> dict[str, object]:
    """Constructor arguments that fix the parameter shapes (saved in checkpoints, esper-style)."""
    return {
        "state_dim": get_feature_size(config.num_slots),
        "num_slots": config.num_slots,
        "slot_ids": [f"r0c{i}" for i in range(config.num_slots)],
        "feature_dim": config.feature_dim,
        "lstm_hidden_dim": config.lstm_hidden_dim,
        "lstm_layers": config.lstm_layers,
    }


def build_policy(config: PPOConfig) -> FactoredNetwork:
    """The network for ``config.value_mode`` (init uses the current torch RNG), on ``config.device``."""
    arch = architecture(config)
    if config.ppo_variant == "head":  # esper HEAD's network; the env's observation fed unchanged (README)
        from esper_fast.policy_v2 import FactoredPolicyV2

        return FactoredPolicyV2(
            arch["state_dim"],
            config.feature_dim,
            config.lstm_hidden_dim,
            config.lstm_layers,
            arch["num_slots"],
            backend=config.backend,
        ).to(config.device)
    args = (arch["state_dim"], arch["num_slots"])
    kw = dict(feature_dim=config.feature_dim, lstm_hidden_dim=config.lstm_hidden_dim, lstm_layers=config.lstm_layers)
    if config.value_mode == "legacy":
        policy = ReferencePolicy(*args, **kw, value_mode="q_op", legacy=True)
    else:
        policy = FactoredPolicy(*args, **kw, value_mode=config.value_mode, backend=config.backend)
        if not config.fused:  # same initial weights, esper's torch ops everywhere (config.fused docs)
            fused = policy
            policy = ReferencePolicy(*args, **kw, value_mode=config.value_mode)
            policy.load_state_dict(fused.state_dict())
            policy.fused_evaluate = False
    return policy.to(config.device)


def env_config(config: PPOConfig, validate_actions: bool = False) -> EnvConfig:
    """The env of a run: EnvConfig's dynamics, with the run's layout fields."""
    return EnvConfig(
        num_slots=config.num_slots,
        episode_length=config.episode_length,
        topology=config.topology,
        max_seeds=config.max_seeds,
        validate_actions=validate_actions,
    )


@contextmanager
def validation_off(*targets: object) -> Iterator[None]:
    """Turn ``validate`` off (no host syncs) on each target, a policy instance or a policy class
    (``FactoredPolicy``: the class flag its instances without their own setting follow); afterwards
    each target gets back exactly what it had (its own setting, or none: it follows its class again)."""
    saved = [(t, "validate" in vars(t), vars(t).get("validate")) for t in targets]
    for t in targets:
        t.validate = False
    try:
        yield
    finally:
        for t, had_own, old in reversed(saved):
            if had_own:
                t.validate = old
            else:
                delattr(t, "validate")


def act(
    policy: FactoredNetwork,
    obs: Tensor,
    env_obs: EnvObs,
    hidden: Hidden | None,
    *,
    deterministic: bool,
    op_conditioned_slot: bool,
    generator: torch.Generator | None = None,
    probability_floor: dict[str, float] | None = None,
) -> GetActionResult:
    """One decision for every env: ``obs [E, D]`` is the (normalised) observation the policy sees.

    A :class:`~esper_fast.policy_v2.FactoredPolicyV2Mixin` policy (esper HEAD) gets HEAD's keywords, the
    env's ``slot_by_op`` always (HEAD conditions the slot on the op) and HEAD's probability floors unless
    ``probability_floor={}``.
    """
    from esper_fast.policy_v2 import FactoredPolicyV2Mixin

    if isinstance(policy, FactoredPolicyV2Mixin):
        from esper_fast.constants_v2 import PROBABILITY_FLOOR_PER_HEAD

        floors = dict(PROBABILITY_FLOOR_PER_HEAD) if probability_floor is None else probability_floor
        return policy.get_action(
            obs,
            env_obs.blueprint_indices,
            hidden,
            slot_by_op_mask=env_obs.slot_by_op,
            deterministic=deterministic,
            probability_floor=floors or None,
            generator=generator,
            **{f"{h}_mask": env_obs.masks[h] for h in HEAD_NAMES},
        )
    masks = [env_obs.masks[h] for h in HEAD_NAMES]
    kw = {"slot_by_op": env_obs.slot_by_op} if op_conditioned_slot else {}
    return policy.get_action(
        obs, env_obs.blueprint_indices, hidden, *masks, deterministic=deterministic, generator=generator, **kw
    )


def effective_masks(env_obs: EnvObs, op: Tensor, op_conditioned_slot: bool, head: bool = False) -> dict[str, Tensor]:
    """The env masks with the slot mask the slot was sampled under (``slot & slot_by_op[op]``; with
    ``head`` (esper HEAD's get_action) ``slot_by_op[op]`` itself, which replaces the slot mask there)."""
    if head:
        return {**env_obs.masks, "slot": slot_for_op(env_obs.slot_by_op, op)}
    if not op_conditioned_slot:
        return dict(env_obs.masks)
    _, slot = op_dependent_masks(
        op,
        env_obs.masks["style"],
        env_obs.masks["slot"],
        env_obs.slot_by_op,
        env_obs.masks["style"].shape[-1],
        env_obs.masks["slot"].shape[-1],
    )
    return {**env_obs.masks, "slot": slot}


class PolicyActor:
    """``EnvObs -> actions`` controller around a trained policy (for ``evaluate_policy``).

    Keeps one LSTM state per env row. ``episode_start`` ``(E,)`` bool (True where the observation is
    an episode's first, e.g. after an auto-reset) zeroes those rows' state; the first call (or a
    change of batch size) starts from the initial state everywhere. Without ``episode_start`` every
    row continues its episode: the caller, who sees ``terminated | truncated``, says where one starts
    (:func:`esper_fast.envs.evaluate_policy` does).
    """

    def __init__(
        self,
        policy: FactoredNetwork,
        obs_normalizer: ObsNormalizer,
        *,
        deterministic: bool = False,
        op_conditioned_slot: bool = True,
        seed: int = 0,
    ) -> None:
        self.policy, self.obs_normalizer = policy, obs_normalizer
        self.deterministic, self.op_conditioned_slot = deterministic, op_conditioned_slot
        device = next(policy.parameters()).device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.hidden: Hidden | None = None

    def __call__(self, env_obs: EnvObs, episode_start: Tensor | None = None) -> dict[str, Tensor]:
        E = env_obs.obs.shape[0]
        if self.hidden is None or self.hidden[0].shape[1] != E:
            self.hidden = self.policy.get_initial_hidden(E, env_obs.obs.device)
        hidden = self.hidden
        if episode_start is not None:
            keep = (~episode_start.to(env_obs.obs.device, torch.bool)).to(hidden[0].dtype).view(1, E, 1)
            hidden = (hidden[0] * keep, hidden[1] * keep)
        with validation_off(self.policy), torch.no_grad():
            result = act(
                self.policy,
                self.obs_normalizer.normalize(env_obs.obs),
                env_obs,
                hidden,
                deterministic=self.deterministic,
                op_conditioned_slot=self.op_conditioned_slot,
                generator=self.generator,
            )
        self.hidden = result.hidden
        return result.actions
