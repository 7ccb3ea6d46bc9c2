"""``ExactMDP``: a small seed-lifecycle MDP with esper's factored action, solvable exactly.

One slot, three blueprints, ten states; the op head uses esper's op indices (:class:`LifecycleOp`)
and a ``blueprint`` sub-head that only matters for GERMINATE (esper's causal rule). Op masks depend
on the state. Everything the study needs is known in closed form: for any fixed tabular policy
:meth:`ExactMDP.solve` returns Q^pi and V^pi by dynamic programming (a linear solve).

States (``NB`` = 3 blueprints, ``b`` in 0..2)::

    0          EMPTY             valid ops: WAIT, GERMINATE(b)
    1 + b      TRAINING(b)       valid ops: WAIT, ADVANCE, PRUNE
    4 + b      BLENDING(b)       valid ops: WAIT, FOSSILIZE, PRUNE
    7 + b      FOSSILIZED(b)     valid ops: WAIT, PRUNE
    (DEAD)     governor rollback: absorbing, value 0, ends the episode as *terminated*

Dynamics (expected rewards; the rollout adds ``reward_noise * N(0, 1)`` to every reward):

* EMPTY: WAIT -> EMPTY (0); GERMINATE(b) -> TRAINING(b) (``-cost[b]``).
* TRAINING(b): WAIT stays (``-cost[b]``); ADVANCE -> BLENDING(b) w.p. ``advance_prob[b]`` else stays
  (``-cost[b]``); PRUNE -> EMPTY (``-prune_cost``).
* BLENDING(b): WAIT stays (``0.5 gain[b] - cost[b]``); FOSSILIZE -> FOSSILIZED(b) (``gain[b] - cost[b]``);
  both risk the governor: DEAD w.p. ``death_prob[b]`` with reward ``-death_penalty`` added;
  PRUNE -> EMPTY (``-prune_cost``).
* FOSSILIZED(b): WAIT stays (``gain[b] - fossil_rent * cost[b]``), but the host moves on and the
  slot empties w.p. ``fossil_expire``; PRUNE -> EMPTY (``-prune_fossil_cost``).
* An op the state does not allow acts as WAIT (esper's rule); the blueprint is ignored unless the
  effective op is GERMINATE.

Truncation is an artifact of the rollout, not of the MDP: the process is the infinite-horizon
gamma-discounted one, and :meth:`step` cuts episodes after ``horizon`` steps (``truncated``, the
state reached is in ``final``), so GAE's bootstrap at truncation should be exactly V^pi(s_H).
Episodes start in EMPTY w.p. ``empty_start_prob`` and uniformly in the other nine states otherwise,
so truncation (and every state) is reached often.

:class:`ExactMDPEsperEnv` shows the same MDP through esper's eight heads and 114-feature
observation, so :class:`esper_fast.ppo.Trainer` (LSTM policy, real value modes) can train on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from esper_fast.constants import (
    HEAD_NAMES,
    NUM_OPS,
    BlueprintAction,
    GerminationStyle,
    LifecycleOp,
    get_action_head_sizes,
    get_feature_size,
)
from esper_fast.envs.seed_lifecycle import EnvObs, StepResult

__all__ = [
    "ExactMDPConfig",
    "ExactMDP",
    "ExactObs",
    "ExactStep",
    "TabularPolicy",
    "ExactValues",
    "ExactMDPEsperEnv",
    "STATE_NAMES",
    "BLUEPRINT_IDS",
    "masked_softmax",
]

NB = 3
NUM_STATES = 1 + 3 * NB
EMPTY = 0
_WAIT, _GERM, _SETA, _PRUNE, _FOSS, _ADV = (
    int(o)
    for o in (
        LifecycleOp.WAIT,
        LifecycleOp.GERMINATE,
        LifecycleOp.SET_ALPHA_TARGET,
        LifecycleOp.PRUNE,
        LifecycleOp.FOSSILIZE,
        LifecycleOp.ADVANCE,
    )
)
BLUEPRINT_IDS: tuple[int, ...] = (
    int(BlueprintAction.CONV_LIGHT),
    int(BlueprintAction.ATTENTION),
    int(BlueprintAction.NORM),
)
"""esper blueprint index of sub-action b (what :class:`ExactMDPEsperEnv` shows on the blueprint head)."""
_BP_SHORT = ("conv_light", "attention", "norm")
STATE_NAMES: tuple[str, ...] = (
    "empty",
    *(f"{stage}({bp})" for stage in ("training", "blending", "fossilized") for bp in _BP_SHORT),
)


def _training(b: int) -> int:
    return 1 + b


def _blending(b: int) -> int:
    return 1 + NB + b


def _fossil(b: int) -> int:
    return 1 + 2 * NB + b


def masked_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the valid entries (exactly 0 elsewhere) along the last dim."""
    return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)


@dataclass(frozen=True)
class ExactMDPConfig:
    """Parameters of :class:`ExactMDP` (per blueprint: conv_light, attention, norm)."""

    gamma: float = 0.95
    """Discount of the infinite-horizon process (the DP and the study's GAE use it)."""
    horizon: int = 20
    """Steps after which a rollout episode is truncated (bootstraps from the state reached)."""
    gain: tuple[float, float, float] = (1.0, 2.0, 0.4)
    """Per-step gain of a fossilised seed (half of it while blending)."""
    cost: tuple[float, float, float] = (0.15, 0.4, 0.05)
    """Per-step rent of a training / blending seed."""
    advance_prob: tuple[float, float, float] = (0.6, 0.4, 0.9)
    """Probability that ADVANCE moves TRAINING -> BLENDING."""
    death_prob: tuple[float, float, float] = (0.02, 0.10, 0.0)
    """Governor rollback probability per step while blending (WAIT or FOSSILIZE)."""
    death_penalty: float = 8.0
    """Reward -death_penalty on a governor rollback (terminal, no bootstrap)."""
    fossil_expire: float = 0.15
    """Probability per step that a fossilised slot empties (WAIT)."""
    fossil_rent: float = 0.2
    """Fraction of the rent a fossilised seed still pays."""
    prune_cost: float = 0.2
    """Cost of pruning a training / blending seed."""
    prune_fossil_cost: float = 0.5
    """Cost of pruning a fossilised seed."""
    reward_noise: float = 0.5
    """Std of the Gaussian noise added to every reward in rollouts (the DP uses expectations)."""
    empty_start_prob: float = 0.4
    """Probability that an episode starts in EMPTY (else uniform over the other states)."""


class ExactObs(NamedTuple):
    """One decision's observation of :class:`ExactMDP`."""

    state: Tensor  # (E,) int64 state index
    obs: Tensor  # (E, NUM_STATES) float32 one-hot
    masks: dict[str, Tensor]  # "op": (E, NUM_OPS) bool, "blueprint": (E, NB) bool (True = valid)
    time: Tensor  # (E,) int64 steps taken in the current episode


class ExactStep(NamedTuple):
    """Outcome of :meth:`ExactMDP.step` (field names as :class:`esper_fast.envs.StepResult`)."""

    next: ExactObs  # observation for the next decision (finished rows already reset)
    reward: Tensor  # (E,) float32
    terminated: Tensor  # (E,) bool, governor rollback (no bootstrap)
    truncated: Tensor  # (E,) bool, time limit (bootstrap from `final`)
    final: ExactObs  # observation reached by this step before auto-reset (dead rows: the state they died in)
    effective_op: Tensor  # (E,) int64, op after the invalid -> WAIT rule
    episode_return: Tensor  # (E,) float32, return of the episode that ended here, else 0
    episode_length: Tensor  # (E,) int64, length of the episode that ended here, else 0


class ExactValues(NamedTuple):
    """Exact action values of a tabular policy (float64)."""

    q_full: Tensor  # (S, NUM_OPS, NB) Q^pi(s, op, b): the value of the joint (factored) action
    q: Tensor  # (S, NUM_OPS) Q^pi(s, op) = sum_b pi(b | s, op) Q^pi(s, op, b) (what an op-conditioned critic learns)
    v: Tensor  # (S,) V^pi(s) = sum_op pi(op | s) Q^pi(s, op)


@dataclass
class TabularPolicy:
    """Per-state logits of the op head and of the op-conditioned blueprint sub-head.

    ``pi(op, b | s) = pi(op | s) * pi(b | s, op)``, both masked softmaxes (masked entries get
    probability exactly 0, as in :func:`esper_fast.select_op`).
    """

    op_logits: Tensor  # (S, NUM_OPS)
    sub_logits: Tensor  # (S, NUM_OPS, NB)

    @classmethod
    def uniform(cls) -> TabularPolicy:
        return cls(
            torch.zeros(NUM_STATES, NUM_OPS, dtype=torch.float64),
            torch.zeros(NUM_STATES, NUM_OPS, NB, dtype=torch.float64),
        )

    @classmethod
    def random(cls, seed: int = 0, scale: float = 1.0) -> TabularPolicy:
        """Logits ~ N(0, scale^2): a fixed, fairly stochastic policy."""
        g = torch.Generator().manual_seed(seed)
        return cls(
            scale * torch.randn(NUM_STATES, NUM_OPS, generator=g, dtype=torch.float64),
            scale * torch.randn(NUM_STATES, NUM_OPS, NB, generator=g, dtype=torch.float64),
        )

    def probs(self, mdp: ExactMDP) -> tuple[Tensor, Tensor]:
        """``(pi_op (S, NUM_OPS), pi_sub (S, NUM_OPS, NB))`` under ``mdp``'s masks (float64)."""
        pi_op = masked_softmax(self.op_logits.double(), mdp.op_mask)
        pi_sub = masked_softmax(self.sub_logits.double(), mdp.sub_mask.unsqueeze(1).expand(-1, NUM_OPS, -1))
        return pi_op, pi_sub

    def joint(self, mdp: ExactMDP) -> Tensor:
        """``pi(op, b | s)`` as ``(S, NUM_OPS, NB)``."""
        pi_op, pi_sub = self.probs(mdp)
        return pi_op.unsqueeze(-1) * pi_sub


class ExactMDP:
    """Batched finite MDP with esper's factored action; Q^pi / V^pi by dynamic programming.

    Args:
        num_envs: rows stepped together (E).
        config: :class:`ExactMDPConfig`.
        device: where the rollout tensors live (the DP tables are float64 on the CPU).
        seed: seeds the env's own generator (resets, transitions, reward noise).

    Tables (public, float64): ``P (S, NUM_OPS, NB, S + 1)`` transition probabilities (last column
    = DEAD), ``R (S, NUM_OPS, NB)`` expected reward *excluding* the death penalty, ``op_mask (S, NUM_OPS)``,
    ``sub_mask (S, NB)``, ``rho0 (S,)`` start distribution.
    """

    num_states = NUM_STATES
    num_ops = NUM_OPS
    num_sub = NB

    def __init__(
        self, num_envs: int = 1, config: ExactMDPConfig | None = None, device: str | torch.device = "cpu", seed: int = 0
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs: expected >= 1, got {num_envs}")
        self.config = config or ExactMDPConfig()
        if not 0.0 <= self.config.gamma < 1.0:
            raise ValueError(f"gamma: expected in [0, 1), got {self.config.gamma}")
        if self.config.horizon < 1:
            raise ValueError(f"horizon: expected >= 1, got {self.config.horizon}")
        self.num_envs, self.device = num_envs, torch.device(device)
        self.gamma, self.horizon = self.config.gamma, self.config.horizon
        self.P, self.R, self.op_mask, self.sub_mask, self.rho0 = self._build_tables(self.config)
        self.death_reward = -self.config.death_penalty
        # expected one-step reward including the death penalty
        self.R_bar = self.R + self.P[..., -1] * self.death_reward
        # rollout copies (float32 on the device)
        self._cdf = self.P.cumsum(-1).float().to(self.device)
        self._cdf[..., -1] = 1.0
        self._R32 = self.R.float().to(self.device)
        self._op_mask_d = self.op_mask.to(self.device)
        self._sub_mask_d = self.sub_mask.to(self.device)
        self._rho0_cdf = self.rho0.cumsum(0).float().to(self.device)
        self._rho0_cdf[-1] = 1.0
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.reset()

    # ------------------------------------------------------------------ tables
    @staticmethod
    def _build_tables(c: ExactMDPConfig) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        S, A, D = NUM_STATES, NUM_OPS, NUM_STATES  # D = DEAD column index
        P = torch.zeros(S, A, NB, S + 1, dtype=torch.float64)
        R = torch.zeros(S, A, NB, dtype=torch.float64)
        mask = torch.zeros(S, A, dtype=torch.bool)

        def set_all_b(s: int, op: int, row: dict[int, float], reward: float) -> None:
            for b in range(NB):
                for s2, p in row.items():
                    P[s, op, b, s2] += p
                R[s, op, b] = reward

        # EMPTY
        mask[EMPTY, [_WAIT, _GERM]] = True
        set_all_b(EMPTY, _WAIT, {EMPTY: 1.0}, 0.0)
        for b in range(NB):
            P[EMPTY, _GERM, b, _training(b)] = 1.0
            R[EMPTY, _GERM, b] = -c.cost[b]
        for b in range(NB):
            t, bl, fo = _training(b), _blending(b), _fossil(b)
            # TRAINING(b)
            mask[t, [_WAIT, _ADV, _PRUNE]] = True
            set_all_b(t, _WAIT, {t: 1.0}, -c.cost[b])
            set_all_b(t, _ADV, {bl: c.advance_prob[b], t: 1.0 - c.advance_prob[b]}, -c.cost[b])
            set_all_b(t, _PRUNE, {EMPTY: 1.0}, -c.prune_cost)
            # BLENDING(b)
            d = c.death_prob[b]
            mask[bl, [_WAIT, _FOSS, _PRUNE]] = True
            set_all_b(bl, _WAIT, {bl: 1.0 - d, D: d}, 0.5 * c.gain[b] - c.cost[b])
            set_all_b(bl, _FOSS, {fo: 1.0 - d, D: d}, c.gain[b] - c.cost[b])
            set_all_b(bl, _PRUNE, {EMPTY: 1.0}, -c.prune_cost)
            # FOSSILIZED(b)
            mask[fo, [_WAIT, _PRUNE]] = True
            set_all_b(
                fo, _WAIT, {fo: 1.0 - c.fossil_expire, EMPTY: c.fossil_expire}, c.gain[b] - c.fossil_rent * c.cost[b]
            )
            set_all_b(fo, _PRUNE, {EMPTY: 1.0}, -c.prune_fossil_cost)
        # invalid ops act as WAIT (esper); the blueprint of a non-GERMINATE op is ignored (rows equal over b)
        for s in range(S):
            for op in range(A):
                if not mask[s, op]:
                    P[s, op], R[s, op] = P[s, _WAIT].clone(), R[s, _WAIT].clone()
        sub_mask = torch.ones(S, NB, dtype=torch.bool)
        rho0 = torch.full((S,), (1.0 - c.empty_start_prob) / (S - 1), dtype=torch.float64)
        rho0[EMPTY] = c.empty_start_prob
        assert torch.allclose(P.sum(-1), torch.ones_like(P[..., 0]))
        return P, R, mask, sub_mask, rho0

    # ------------------------------------------------------------------ dynamic programming
    def policy_tables(self, policy: TabularPolicy) -> tuple[Tensor, Tensor]:
        """``(P_pi (S, S), R_pi (S,))``: live-state transition matrix and expected reward under pi."""
        joint = policy.joint(self)
        P_pi = torch.einsum("sab,sabt->st", joint, self.P[..., :-1])
        R_pi = (joint * self.R_bar).sum((1, 2))
        return P_pi, R_pi

    def solve_full(self, policy: TabularPolicy, gamma: float | None = None) -> ExactValues:
        """Exact ``Q^pi(s, op, b)``, ``Q^pi(s, op)`` and ``V^pi(s)`` (float64) by a linear solve.

        ``V = (I - gamma P_pi)^-1 R_pi`` (DEAD is absorbing with value 0);
        ``Q(s, op, b) = R_bar(s, op, b) + gamma sum_s' P(s' | s, op, b) V(s')``. Masked ops get the
        value of what they do (WAIT).
        """
        g = self.gamma if gamma is None else gamma
        P_pi, R_pi = self.policy_tables(policy)
        v = torch.linalg.solve(torch.eye(NUM_STATES, dtype=torch.float64) - g * P_pi, R_pi)
        q_full = self.R_bar + g * torch.einsum("sabt,t->sab", self.P[..., :-1], v)
        _, pi_sub = policy.probs(self)
        q = (pi_sub * q_full).sum(-1)
        return ExactValues(q_full, q, v)

    def solve(self, policy: TabularPolicy, gamma: float | None = None) -> tuple[Tensor, Tensor]:
        """``(Q, V)``: ``Q^pi(s, op)`` ``(S, NUM_OPS)`` (sub-head marginalised under pi) and ``V^pi(s)`` ``(S,)``."""
        vals = self.solve_full(policy, gamma)
        return vals.q, vals.v

    def optimal(self, gamma: float | None = None, tol: float = 1e-12) -> tuple[Tensor, Tensor]:
        """``(Q*(s, op, b), V*(s))`` by value iteration over the valid joint actions."""
        g = self.gamma if gamma is None else gamma
        valid = self.op_mask.unsqueeze(-1) & self.sub_mask.unsqueeze(1)
        v = torch.zeros(NUM_STATES, dtype=torch.float64)
        for _ in range(100_000):
            q = self.R_bar + g * torch.einsum("sabt,t->sab", self.P[..., :-1], v)
            v_new = q.masked_fill(~valid, float("-inf")).flatten(1).amax(1)
            if (v_new - v).abs().max() < tol:
                v = v_new
                break
            v = v_new
        q = self.R_bar + g * torch.einsum("sabt,t->sab", self.P[..., :-1], v)
        return q, v

    def greedy_policy(self, q_full: Tensor) -> TabularPolicy:
        """The deterministic tabular policy taking the argmax joint action of ``q_full`` in every state."""
        valid = self.op_mask.unsqueeze(-1) & self.sub_mask.unsqueeze(1)
        qm = q_full.masked_fill(~valid, float("-inf"))
        best_b = qm.argmax(-1)  # (S, A)
        best = qm.amax(-1)  # (S, A)
        op_logits = torch.full((NUM_STATES, NUM_OPS), -1e6, dtype=torch.float64)
        best_op = best.argmax(-1)
        op_logits[torch.arange(NUM_STATES), best_op] = 0.0
        sub_logits = torch.full((NUM_STATES, NUM_OPS, NB), -1e6, dtype=torch.float64)
        sub_logits.scatter_(-1, best_b.unsqueeze(-1), 0.0)
        return TabularPolicy(op_logits, sub_logits)

    def objective(self, policy: TabularPolicy) -> float:
        """Discounted value from the start distribution, ``sum_s rho0(s) V^pi(s)``."""
        return float(self.rho0 @ self.solve(policy)[1])

    def expected_episode_return(self, policy: TabularPolicy, horizon: int | None = None) -> float:
        """Exact expected *undiscounted* return of a rollout episode (``horizon`` steps or death) from rho0."""
        H = self.horizon if horizon is None else horizon
        P_pi, R_pi = self.policy_tables(policy)
        d, total = self.rho0.clone(), 0.0
        for _ in range(H):
            total += float(d @ R_pi)
            d = d @ P_pi  # mass that died leaves
        return total

    # ------------------------------------------------------------------ batched rollout
    def reset(self, seed: int | None = None) -> ExactObs:
        """Start a new episode in every row (``seed`` restarts the env's generator)."""
        if seed is not None:
            self.generator.manual_seed(seed)
        E = self.num_envs
        self.state = self._sample_start(E)
        self.time = torch.zeros(E, dtype=torch.long, device=self.device)
        self.ep_return = torch.zeros(E, device=self.device)
        return self.observe()

    def _sample_start(self, n: int) -> Tensor:
        u = torch.rand(n, device=self.device, generator=self.generator)
        return (self._rho0_cdf.unsqueeze(0) < u.unsqueeze(1)).sum(1).clamp(max=NUM_STATES - 1)

    def _obs(self, state: Tensor, time: Tensor) -> ExactObs:
        onehot = torch.nn.functional.one_hot(state, NUM_STATES).float()
        return ExactObs(state, onehot, {"op": self._op_mask_d[state], "blueprint": self._sub_mask_d[state]}, time)

    def observe(self) -> ExactObs:
        return self._obs(self.state, self.time)

    def set_state(self, state: Tensor, time: Tensor | None = None) -> ExactObs:
        """Put every row in ``state`` (``(E,)`` int64) at episode time ``time`` (default 0)."""
        self.state = state.to(self.device, torch.long).clone()
        self.time = torch.zeros_like(self.state) if time is None else time.to(self.device, torch.long).clone()
        self.ep_return = torch.zeros(self.num_envs, device=self.device)
        return self.observe()

    def step(self, actions: Mapping[str, Tensor] | tuple[Tensor, Tensor]) -> ExactStep:
        """Apply ``{"op": (E,), "blueprint": (E,)}`` (or ``(op, b)``); auto-resets finished rows.

        ``blueprint`` is the sub-action index 0..2 (not esper's blueprint id). Invalid ops act as WAIT.
        """
        if isinstance(actions, tuple):
            op, sub = actions
        else:
            op, sub = actions["op"], actions["blueprint"]
        op, sub = op.to(self.device, torch.long), sub.to(self.device, torch.long)
        if bool(((op < 0) | (op >= NUM_OPS) | (sub < 0) | (sub >= NB)).any()):
            raise ValueError(
                f"actions: op must be in [0, {NUM_OPS}) and blueprint in [0, {NB}), got op={op.tolist()}, "
                f"blueprint={sub.tolist()}"
            )
        s, E = self.state, self.num_envs
        valid = self._op_mask_d[s, op]
        eff = torch.where(valid, op, torch.full_like(op, _WAIT))
        eff_sub = torch.where(eff == _GERM, sub, torch.zeros_like(sub))
        u = torch.rand(E, device=self.device, generator=self.generator)
        cdf = self._cdf[s, eff, eff_sub]  # (E, S + 1)
        s2 = (cdf < u.unsqueeze(1)).sum(1).clamp(max=NUM_STATES)
        dead = s2 == NUM_STATES
        noise = torch.randn(E, device=self.device, generator=self.generator) * self.config.reward_noise
        reward = self._R32[s, eff, eff_sub] + dead.float() * self.death_reward + noise
        time = self.time + 1
        truncated = ~dead & (time >= self.horizon)
        done = dead | truncated
        final_state = torch.where(dead, s, s2)
        final = self._obs(final_state, time)
        ep_return = self.ep_return + reward
        episode_return = torch.where(done, ep_return, torch.zeros_like(ep_return))
        episode_length = torch.where(done, time, torch.zeros_like(time))
        fresh = self._sample_start(E)
        self.state = torch.where(done, fresh, final_state)
        self.time = torch.where(done, torch.zeros_like(time), time)
        self.ep_return = torch.where(done, torch.zeros_like(ep_return), ep_return)
        return ExactStep(self.observe(), reward, dead, truncated, final, eff, episode_return, episode_length)


# ======================================================================================================
# esper's eight-head view (for esper_fast.ppo.Trainer)
# ======================================================================================================
class ExactMDPEsperEnv:
    """:class:`ExactMDP` behind :class:`esper_fast.envs.SeedLifecycleEnv`'s interface (3 slots, 8 heads).

    Observation: 114 floats (``get_feature_size(3)``), the one-hot state in columns 1..10 (column 0,
    esper's ``epoch_frac``, is the episode time / horizon), blueprint indices ``(E, 3)`` (slot 0 holds
    the live seed's esper blueprint id, -1 elsewhere). Masks: the op mask of the state; blueprint:
    only :data:`BLUEPRINT_IDS`; slot: slot 0 only; every other head: a single valid entry (style
    SIGMOID_ADD, the others index 0), so those heads are deterministic and carry no log-prob.
    ``step`` takes esper's action dict and returns :class:`esper_fast.envs.StepResult`.
    """

    def __init__(
        self, num_envs: int, config: ExactMDPConfig | None = None, device: str | torch.device = "cpu", seed: int = 0
    ) -> None:
        self.mdp = ExactMDP(num_envs, config, device, seed)
        self.num_envs, self.device, self.num_slots = num_envs, self.mdp.device, 3
        self.head_sizes = get_action_head_sizes(self.num_slots)
        self.obs_dim = get_feature_size(self.num_slots)
        dev = self.device
        single = {h: torch.zeros(n, dtype=torch.bool, device=dev) for h, n in self.head_sizes.items()}
        for h in ("tempo", "alpha_target", "alpha_speed", "alpha_curve", "slot"):
            single[h][0] = True
        single["style"][int(GerminationStyle.SIGMOID_ADD)] = True
        single["blueprint"][list(BLUEPRINT_IDS)] = True
        self._fixed_masks = single
        self._bp_to_sub = torch.zeros(self.head_sizes["blueprint"], dtype=torch.long, device=dev)
        self._bp_to_sub[list(BLUEPRINT_IDS)] = torch.arange(NB, device=dev)
        self._sub_to_bp = torch.tensor(BLUEPRINT_IDS, device=dev)

    def _view(self, o: ExactObs) -> EnvObs:
        E = o.state.shape[0]
        obs = torch.zeros(E, self.obs_dim, device=self.device)
        obs[:, 0] = o.time.float() / self.mdp.horizon
        obs[:, 1 : 1 + NUM_STATES] = o.obs
        live = o.state > EMPTY
        seed_b = (o.state - 1).clamp(min=0) % NB
        bp_idx = torch.full((E, self.num_slots), -1, dtype=torch.long, device=self.device)
        bp_idx[:, 0] = torch.where(live, self._sub_to_bp[seed_b], torch.full_like(seed_b, -1))
        masks = {h: self._fixed_masks[h].expand(E, -1) for h in HEAD_NAMES}
        masks["op"] = o.masks["op"]
        slot_by_op = torch.zeros(E, NUM_OPS, self.num_slots, dtype=torch.bool, device=self.device)
        slot_by_op[:, :, 0] = True
        return EnvObs(obs, bp_idx, {h: masks[h] for h in HEAD_NAMES}, slot_by_op)

    def reset(self, seed: int | None = None) -> EnvObs:
        return self._view(self.mdp.reset(seed))

    def observe(self) -> EnvObs:
        return self._view(self.mdp.observe())

    def state_index(self, env_obs: EnvObs) -> Tensor:
        """The ExactMDP state of an observation of this view."""
        return env_obs.obs[:, 1 : 1 + NUM_STATES].argmax(1)

    def step(self, actions: Mapping[str, Tensor]) -> StepResult:
        sub = self._bp_to_sub[actions["blueprint"].clamp(0, self.head_sizes["blueprint"] - 1)]
        r = self.mdp.step({"op": actions["op"], "blueprint": sub})
        return StepResult(
            self._view(r.next),
            r.reward,
            r.terminated,
            r.truncated,
            self._view(r.final),
            r.effective_op,
            r.episode_return,
            r.episode_length,
        )
