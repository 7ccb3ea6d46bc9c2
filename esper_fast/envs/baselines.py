"""Baseline controllers for :class:`SeedLifecycleEnv` and a helper to score any policy.

* :class:`RandomMaskedPolicy` samples every head uniformly over its valid entries (optionally
  choosing the slot among those where the sampled op is valid);
* :class:`HeuristicPolicy` is a scripted controller that reads only the observation and masks
  (never the hidden true contributions): germinate, advance when mature, fossilise seeds whose
  estimate looks positive, prune seeds whose estimate looks negative.
* :class:`OraclePolicy` is the privileged baseline: the heuristic's rules applied to the env's
  hidden true (style-scaled) contributions instead of the noisy estimate EMA, with no waiting to
  learn them. Not provably optimal, but it shows the headroom that perfect information buys.

A policy is any callable ``EnvObs -> dict[head, (E,) int64]``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from esper_fast.constants import (
    HEAD_NAMES,
    AlphaMode,
    AlphaSpeedAction,
    AlphaTargetAction,
    GerminationStyle,
    LifecycleOp,
    SeedStage,
    TempoAction,
)
from esper_fast.envs.masks import FULL_EVALUATION_AGE, MIN_HOLDING_EPOCHS, topology_blueprints
from esper_fast.envs.seed_lifecycle import (
    BASE_FEATURES,
    SLOT_FEATURES,
    STAGE_ORDER,
    EnvConfig,
    EnvObs,
    SeedLifecycleEnv,
)
from esper_fast.rules import slot_for_op

__all__ = ["RandomMaskedPolicy", "HeuristicPolicy", "OraclePolicy", "evaluate_policy"]

Policy = Callable[[EnvObs], Mapping[str, Tensor]]


class RandomMaskedPolicy:
    """Uniform over the valid entries of every head.

    With ``op_conditioned_slot`` (default) the slot is drawn among the slots where the sampled op
    is valid (``obs.slot_by_op``); otherwise uniformly over the slot mask, so that many actions
    turn into WAIT at execution, as an untrained esper policy's do.
    """

    def __init__(self, seed: int = 0, device: str | torch.device = "cpu", op_conditioned_slot: bool = True) -> None:
        self.device = torch.empty(0, device=device).device
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.op_conditioned_slot = op_conditioned_slot

    def _sample(self, mask: Tensor) -> Tensor:
        return torch.multinomial(mask.float(), 1, generator=self.generator).squeeze(1)

    def __call__(self, obs: EnvObs) -> dict[str, Tensor]:
        actions = {"op": self._sample(obs.masks["op"])}
        if self.op_conditioned_slot:
            slot_mask = slot_for_op(obs.slot_by_op, actions["op"]) & obs.masks["slot"]
            actions["slot"] = self._sample(slot_mask)
        for head in HEAD_NAMES:
            if head not in actions:
                actions[head] = self._sample(obs.masks[head])
        return {head: actions[head] for head in HEAD_NAMES}


def _first_true(cand: Tensor) -> tuple[Tensor, Tensor]:
    """``(any [E], index of the first True [E])`` of a ``[E, S]`` bool tensor."""
    return cand.any(1), cand.long().argmax(1)


class HeuristicPolicy:
    """Scripted controller working from the observation only (thresholds in accuracy points).

    Priority, first match wins, lowest slot first: PRUNE a seed whose estimate EMA is below
    ``prune_below`` once ``age >= min_age``; FOSSILIZE a HOLDING seed whose EMA is above
    ``fossilize_above`` after MIN_HOLDING_EPOCHS (or in the last ``endgame`` epochs); ADVANCE a
    GERMINATED seed, a TRAINING seed aged ``min_age`` with a positive EMA, or a BLENDING seed whose
    ramp is done; GERMINATE into an empty slot (blueprints in turn over the topology set, default
    style/tempo, full alpha) before ``germinate_until`` of the episode; else WAIT.
    """

    def __init__(
        self,
        config: EnvConfig | None = None,
        prune_below: float = 0.0,
        fossilize_above: float = 0.5,
        min_age: int = 4,
        endgame: int = 12,
        germinate_until: float = 0.75,
    ) -> None:
        self.config = config if config is not None else EnvConfig()
        self.prune_below, self.fossilize_above = prune_below, fossilize_above
        self.min_age, self.endgame, self.germinate_until = min_age, endgame, germinate_until
        self.blueprints = [b for b in topology_blueprints(self.config.topology) if b != 0]
        self._base = {name: i for i, name in enumerate(BASE_FEATURES)}
        self._slot = {name: i for i, name in enumerate(SLOT_FEATURES)}
        self._tables: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _lookup(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(stage values in one-hot order, blueprint rotation) on ``device``, built once per device."""
        if device not in self._tables:
            self._tables[device] = (
                torch.tensor([int(s) for s in STAGE_ORDER], device=device),
                torch.tensor(self.blueprints, device=device),
            )
        return self._tables[device]

    def _parse(self, obs: EnvObs) -> dict[str, Tensor]:
        """Per-slot readings ``[E, S]`` (stage values, age, EMA in points ...) and per-env ones ``[E]``."""
        num_envs, num_slots = obs.blueprint_indices.shape
        base = obs.obs[:, : len(BASE_FEATURES)]
        slots = obs.obs[:, len(BASE_FEATURES) :].view(num_envs, num_slots, len(SLOT_FEATURES))
        f = lambda name: slots[..., self._slot[name]]  # noqa: E731
        first = self._slot[f"stage_{STAGE_ORDER[0].name.lower()}"]
        stage_values = self._lookup(obs.obs.device)[0]
        stage = stage_values[slots[..., first : first + len(STAGE_ORDER)].argmax(-1)]
        left = (1.0 - base[:, self._base["epoch_frac"]]) * self.config.episode_length
        return {
            "stage": stage,
            "age": (f("age") * FULL_EVALUATION_AGE).round(),
            "stage_epochs": (f("stage_epochs") * FULL_EVALUATION_AGE).round(),
            "ema": f("estimate_ema") * 10,
            "alpha": f("alpha"),
            "ramp_done": f(f"alpha_mode_{AlphaMode.HOLD.name.lower()}") > 0.5,
            "epoch_frac": base[:, self._base["epoch_frac"]],
            "left": left,
            "germinated": (base[:, self._base["seeds_germinated"]] * 10).round().long(),
        }

    def __call__(self, obs: EnvObs) -> dict[str, Tensor]:
        p, sbo = self._parse(obs), obs.slot_by_op
        st, age, ema = p["stage"], p["age"], p["ema"]
        endgame = (p["left"] <= self.endgame).unsqueeze(1)
        valid = lambda op: sbo[:, int(op)]  # noqa: E731
        prune = valid(LifecycleOp.PRUNE) & (age >= self.min_age) & (ema < self.prune_below)
        fossil = (
            valid(LifecycleOp.FOSSILIZE)
            & (ema > self.fossilize_above)
            & ((p["stage_epochs"] >= MIN_HOLDING_EPOCHS) | endgame)
        )
        advance = valid(LifecycleOp.ADVANCE) & (
            (st == int(SeedStage.GERMINATED))
            | ((st == int(SeedStage.TRAINING)) & (ema > 0) & ((age >= self.min_age) | endgame))
            | ((st == int(SeedStage.BLENDING)) & p["ramp_done"])
        )
        germ = valid(LifecycleOp.GERMINATE) & (p["epoch_frac"] < self.germinate_until).unsqueeze(1)
        rules = [
            (LifecycleOp.PRUNE, prune),
            (LifecycleOp.FOSSILIZE, fossil),
            (LifecycleOp.ADVANCE, advance),
            (LifecycleOp.GERMINATE, germ),
        ]
        op = torch.full_like(p["germinated"], int(LifecycleOp.WAIT))
        slot = torch.zeros_like(op)
        for rule_op, cand in reversed(rules):  # earlier rules overwrite later ones
            has, index = _first_true(cand)
            op = torch.where(has, int(rule_op), op)
            slot = torch.where(has, index, slot)
        bps = self._lookup(op.device)[1]
        alpha_here = p["alpha"].gather(1, slot.unsqueeze(1)).squeeze(1)
        speed = torch.where(alpha_here > 0, int(AlphaSpeedAction.FAST), int(AlphaSpeedAction.INSTANT))
        full = lambda v: torch.full_like(op, int(v))  # noqa: E731
        return {
            "slot": slot,
            "blueprint": bps[(p["germinated"] + slot) % len(self.blueprints)],
            "style": full(GerminationStyle.SIGMOID_ADD),
            "tempo": full(TempoAction.STANDARD),
            "alpha_target": full(AlphaTargetAction.FULL),
            "alpha_speed": speed,
            "alpha_curve": full(0),
            "op": op,
        }


def _takes_episode_start(policy: Policy) -> bool:
    try:
        return "episode_start" in inspect.signature(policy).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


class OraclePolicy(HeuristicPolicy):
    """Privileged controller: :class:`HeuristicPolicy`'s rules on the TRUE contributions of ``env``.

    Reads ``env.contribution`` (points, hidden from the observation) scaled by the seed's style
    gain/loss - the value the estimate converges to at full maturity - in place of the estimate EMA.
    Thresholds: prune below / fossilise above 6 points (a seed worth less does not pay its rent; tuned
    on env seed 1 / episode seed 5, not on the trainer's evaluation seed: 56.4 vs the heuristic's 50.4
    mean return over 256 episodes there). ``env`` must be the env whose observations it is called with.
    """

    def __init__(
        self,
        env: SeedLifecycleEnv,
        prune_below: float = 6.0,
        fossilize_above: float = 6.0,
        min_age: int = 4,
        endgame: int = 12,
        germinate_until: float = 0.75,
    ) -> None:
        super().__init__(env.config, prune_below, fossilize_above, min_age, endgame, germinate_until)
        self.env = env

    def true_values(self) -> Tensor:
        """``[E, S]`` style-scaled true contributions (points) of the env's current seeds."""
        env = self.env
        c = env.contribution
        return c * torch.where(c > 0, env._style_gain[env.style], env._style_loss[env.style])

    def _parse(self, obs: EnvObs) -> dict[str, Tensor]:
        p = super()._parse(obs)
        p["ema"] = self.true_values().to(p["ema"].dtype)
        return p


def evaluate_policy(
    env: SeedLifecycleEnv | Callable[[], SeedLifecycleEnv],
    policy: Policy,
    num_episodes: int | None = None,
    seed: int | None = None,
) -> dict[str, object]:
    """Score ``policy`` on the first episodes of every env.

    Runs ``ceil(num_episodes / num_envs)`` episodes per env (default 1) from ``env.reset(seed)``
    A ``policy`` whose call takes an ``episode_start`` keyword (a recurrent one, like
    :class:`esper_fast.ppo.agent.PolicyActor`) is told, as an ``(E,)`` bool tensor, which rows start
    an episode (all at the reset, then the rows that ended at the previous step).

    Returns ``mean_return``, ``std_return``, ``se_return`` (the standard error of the mean,
    std / sqrt(n)), ``mean_length``, ``terminated_frac``, ``num_episodes`` and ``returns`` (CPU
    float32, episode-major). No host sync inside the loop.
    """
    env = env if isinstance(env, SeedLifecycleEnv) else env()
    num_envs = env.num_envs
    per_env = max(1, math.ceil((num_episodes or num_envs) / num_envs))
    returns = torch.zeros(num_envs, per_env, device=env.device)
    lengths, terminal = torch.zeros_like(returns), torch.zeros_like(returns)
    count = torch.zeros(num_envs, dtype=torch.long, device=env.device)
    obs = env.reset(seed)
    rows = torch.arange(num_envs, device=env.device)
    tell_starts = _takes_episode_start(policy)
    start = torch.ones(num_envs, dtype=torch.bool, device=env.device)
    for _ in range(per_env * env.config.episode_length):
        res = env.step(policy(obs, episode_start=start) if tell_starts else policy(obs))
        start = res.terminated | res.truncated
        done = start & (count < per_env)
        col = count.clamp(max=per_env - 1)
        for buf, value in (
            (returns, res.episode_return),
            (lengths, res.episode_length.float()),
            (terminal, res.terminated.float()),
        ):
            buf[rows, col] = torch.where(done, value, buf[rows, col])
        count = count + done.long()
        obs = res.next
    n = num_episodes or num_envs
    flat = lambda t: t.t().reshape(-1)[:n].cpu()  # noqa: E731
    r = flat(returns)
    std = float(r.std()) if n > 1 else 0.0
    return {
        "mean_return": float(r.mean()),
        "std_return": std,
        "se_return": std / math.sqrt(n),
        "mean_length": float(flat(lengths).mean()),
        "terminated_frac": float(flat(terminal).mean()),
        "num_episodes": n,
        "returns": r,
    }
