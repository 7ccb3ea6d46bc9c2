"""Which value does PPO need? The three value modes measured exactly on :class:`ExactMDP`.

A fixed stochastic tabular policy pi plays :class:`~esper_fast.envs.exact_mdp.ExactMDP`. Its critic is
an op-conditioned table ``q[s, op]`` - the exact ``Q^pi(s, op)`` ("oracle") or one learned the way the
trainer learns it ("learned"). The value path is the real one: :func:`esper_fast.select_op` with
``q = q[s, :]`` picks the op and returns ``Q(s, op)`` and ``sum_a pi(a|s) Q(s, a)`` in one pass, and
:func:`esper_fast.ppo.gae.compute_gae` turns the rollout into advantages (esper's truncation rule).

Definitions. The action is the joint ``a = (op, b)`` (op head and the op-conditioned blueprint
sub-head). ``Q^pi(s, op, b)`` is its value, ``Q^pi(s, op) = sum_b pi(b|s, op) Q^pi(s, op, b)`` is what an
op-conditioned critic Q(s, op) estimates (the sub-head marginalised under pi), and
``V^pi(s) = sum_op pi(op|s) Q^pi(s, op)``. The **true advantage** is the joint one,
``A^pi(s, a) = Q^pi(s, op, b) - V^pi(s)``; its op part is ``A^pi(s, op) = Q^pi(s, op) - V^pi(s)``
(= ``E[A^pi(s, a) | s, op]``, what the op head's gradient needs).

Value modes (what is stored as ``values[t]`` and as the bootstrap at a truncation / rollout end):

* ``legacy``   - esper 97d9ba3f: ``v_t = Q(s_t, op'_t)``, op' a second, independent draw (the action
  is another draw); bootstrap ``Q(s', op'')`` with op'' random while the returned action is argmax.
* ``q_op``     - esper 0872525b (the contract): ``v_t = Q(s_t, op_t)`` of the op taken; bootstrap
  ``Q(s', argmax op)`` (argmax of the policy's logits).
* ``expected`` - ``v_t = V(s_t) = sum_op pi(op|s_t) Q(s_t, op)``; bootstrap ``V(s')``.

Analytic expectations with the oracle critic. Let ``k_t`` be the number of steps from t to the step
where t's episode is cut by truncation or by the end of the rollout (fixed by the time in the
episode), ``P_pi`` the live-state transition matrix under pi (a governor death drops out: no
bootstrap) and ``g(s) = E[bootstrap | s] - V^pi(s)``. Then, for every lambda::

    E[GAE_t | s_t, a_t, k_t] = Q(s_t, op_t, b_t) - m_t + (gamma lambda)^k_t gamma [P(. | s_t, a_t) P_pi^k_t g]

with ``m_t = E[v_t | s_t, a_t]``: ``V(s_t)`` for ``expected``, ``V(s_t)`` for ``legacy`` (op' is
independent of the action), ``Q(s_t, op_t)`` for ``q_op``; and ``g = 0`` for ``expected`` and
``legacy``, ``g(s) = Q(s, argmax op) - V(s)`` for ``q_op``. (Every later TD error has mean 0 because
``E[v_{t+1} | s_{t+1}] = V(s_{t+1})`` in all three modes; only the first step's value and the bootstrap
can carry bias.) Consequences:

* ``expected``: ``E[GAE_t | s_t, a_t] = A^pi(s_t, a_t)`` exactly - unbiased (zero error variance at
  the bootstrap; the only noise is the return's own).
* ``legacy``: also unbiased in expectation (the double draw averages out), but ``v_t`` and the
  bootstrap carry the extra noise ``Q(s, op') - V(s)``. Its bootstrap is unbiased against V^pi, and
  biased against the value of the action it returns, ``Q(s', argmax op)`` (what esper measured).
* ``q_op``: ``E[GAE_t | s_t, a_t] = Q(s_t, op_t, b_t) - Q(s_t, op_t)`` plus the bootstrap term
  ``(gamma lambda)^k gamma E[Q(s'_e, argmax op) - V(s'_e)]``: the estimate is of the *sub-head* advantage
  ``Q(s, op, b) - Q(s, op)`` only. For the op head ``E[GAE_t | s_t, op_t] = 0`` up to the bootstrap term:
  with an exact critic the op gets no signal, only noise (``Q - Q``, not ``Q - V``); the bias against
  the true advantage is ``-(Q(s, op) - V(s))`` per (s, op) cell, which averages to 0 over pi, so only
  conditional (per-cell) bias shows it. At lambda = 0 and away from the bootstrap,
  ``E[r_t + gamma Q(s_{t+1}, op_{t+1}) - Q(s_t, op_t) | s_t, op_t] = 0`` exactly. The bootstrap itself
  is biased against V^pi by ``Q(s', argmax op) - V(s')``.

Run: ``python -m esper_fast.studies.advantage_bias --out docs`` (or ``esper-fast study advantage-bias``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from esper_fast.constants import POLICY_VALUE_MODES
from esper_fast.envs.exact_mdp import NUM_STATES, ExactMDP, ExactMDPConfig, ExactValues, TabularPolicy
from esper_fast.ops.select import select_op
from esper_fast.plotting import MODE_COLORS, NO_MATPLOTLIB, new_figure, save_figure
from esper_fast.ppo.agent import cpu_threads
from esper_fast.ppo.epochs import MinibatchLoss, run_epochs
from esper_fast.ppo.gae import compute_gae, explained_variance
from esper_fast.ppo.losses import value_loss

__all__ = [
    "MODES",
    "LAMBDAS",
    "CRITIC_UPDATES",
    "Rollout",
    "single_thread",
    "study_policy",
    "rollout",
    "gae",
    "steps_to_cut",
    "bootstrap_gap",
    "analytic_expectation",
    "advantage_stats",
    "learn_critic",
    "run_study",
    "format_table",
    "write_csv",
    "plot_study",
    "main",
]

MODES: tuple[str, ...] = ("legacy", *POLICY_VALUE_MODES)  # the trainer's value modes, legacy first
LAMBDAS: tuple[float, ...] = (0.0, 0.95, 1.0)
CRITIC_UPDATES: tuple[int, ...] = (60, 10)
A = ExactMDP.num_ops
B = ExactMDP.num_sub


def single_thread() -> AbstractContextManager[None]:
    """``cpu_threads(1, "cpu")`` (esper_fast.ppo.agent) for the block: the study's tensors are tiny, and
    on a busy machine intra-op threads cost 10-20x more than they save."""
    return cpu_threads(1, "cpu")


def study_policy(mdp: ExactMDP, tau: float = 1.0, noise: float = 0.5, seed: int = 0) -> TabularPolicy:
    """The study's fixed stochastic policy: ``softmax(Q*/tau + noise N(0, 1))`` per head.

    Halfway between uniform and optimal (objective ~8.2 vs 14.7 optimal and -1.6 uniform with the
    default config), with every valid action having non-negligible probability.
    """
    q_star, _ = mdp.optimal()
    valid = mdp.op_mask.unsqueeze(-1) & mdp.sub_mask.unsqueeze(1)
    q_op_star = q_star.masked_fill(~valid, -1e9).amax(-1)
    g = torch.Generator().manual_seed(seed)
    op_logits = q_op_star / tau + noise * torch.randn(NUM_STATES, A, generator=g, dtype=torch.float64)
    sub_logits = q_star / tau + noise * torch.randn(NUM_STATES, A, B, generator=g, dtype=torch.float64)
    return TabularPolicy(op_logits.masked_fill(~mdp.op_mask, 0.0), sub_logits)


# ======================================================================================================
# Rollout with a value mode
# ======================================================================================================
class Rollout(NamedTuple):
    """``[E, T]`` tensors of one rollout (env-major, like the trainer's buffer)."""

    state: Tensor  # int64 s_t
    time: Tensor  # int64 steps already taken in s_t's episode
    op: Tensor  # int64 op_t (the action)
    sub: Tensor  # int64 b_t (blueprint sub-action)
    reward: Tensor  # float32 r_t
    terminated: Tensor  # bool, died at t (no bootstrap)
    truncated: Tensor  # bool, time limit at t
    done: Tensor  # bool, terminated | truncated
    value: Tensor  # float32 v_t, the mode's stored value
    value_op: Tensor  # int64 op the value was read at (-1 for expected)
    bootstrap: Tensor  # float32 bootstrap value where boot_point, else 0
    boot_point: Tensor  # bool, truncated[t] or (t == T - 1 and not done[t])
    boot_action_op: Tensor  # int64 the op the bootstrap call returns as its action (argmax), -1 elsewhere
    final_state: Tensor  # int64 s_{t+1} before auto-reset (dead rows: the state they died in)


def _value_path(
    mode: str, logits: Tensor, q: Tensor, mask: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """One decision: ``(action op, stored value, op the value was read at)`` with ``mode``'s rule."""
    if mode == "legacy":  # esper 97d9ba3f: forward's draw gives the value, a second draw the action
        fwd = select_op(logits, q, mask, generator=generator)
        act = select_op(logits, q, mask, generator=generator)
        return act.op, fwd.q_op, fwd.op
    sel = select_op(logits, q, mask, generator=generator)  # one draw: op, Q(s, op) and V(s) together
    if mode == "q_op":
        return sel.op, sel.q_op, sel.op
    return sel.op, sel.value, torch.full_like(sel.op, -1)


def _bootstrap_path(
    mode: str, logits: Tensor, q: Tensor, mask: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Bootstrap at s' (deterministic call, as the trainer): ``(value, returned action op)``."""
    greedy = select_op(logits, q, mask, deterministic=True)
    if mode == "legacy":  # value from forward's random draw, action = argmax
        fwd = select_op(logits, q, mask, generator=generator)
        return fwd.q_op, greedy.op
    if mode == "q_op":
        return greedy.q_op, greedy.op
    return greedy.value, greedy.op


def rollout(
    mdp: ExactMDP, policy: TabularPolicy, q_table: Tensor, mode: str, steps: int, generator: torch.Generator
) -> Rollout:
    """Run every row of ``mdp`` for ``steps`` steps from its current state (auto-reset) under ``policy``.

    ``q_table`` ``(S, NUM_OPS)`` is the critic read through ``select_op``; the blueprint sub-head is
    sampled with ``select_op`` too (no critic), from ``pi(b | s, op)``.
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    op_logits, sub_logits = policy.op_logits.float(), policy.sub_logits.float()
    q_table = q_table.float()
    obs = mdp.observe()
    T = steps
    cols: dict[str, list[Tensor]] = {k: [] for k in Rollout._fields}
    for t in range(T):
        s, mask = obs.state, obs.masks["op"]
        op, value, value_op = _value_path(mode, op_logits[s], q_table[s], mask, generator)
        sub = select_op(sub_logits[s, op], None, obs.masks["blueprint"], generator=generator).op
        step = mdp.step((op, sub))
        done = step.terminated | step.truncated
        boot_point = step.truncated | ((~done) if t == T - 1 else torch.zeros_like(done))
        s2 = step.final.state
        boot, boot_op = _bootstrap_path(mode, op_logits[s2], q_table[s2], step.final.masks["op"], generator)
        for k, x in (
            ("state", s),
            ("time", obs.time),
            ("op", op),
            ("sub", sub),
            ("reward", step.reward),
            ("terminated", step.terminated),
            ("truncated", step.truncated),
            ("done", done),
            ("value", value),
            ("value_op", value_op),
            ("bootstrap", torch.where(boot_point, boot, torch.zeros_like(boot))),
            ("boot_point", boot_point),
            ("boot_action_op", torch.where(boot_point, boot_op, torch.full_like(boot_op, -1))),
            ("final_state", s2),
        ):
            cols[k].append(x)
        obs = step.next
    return Rollout(**{k: torch.stack(v, 1) for k, v in cols.items()})


def gae(roll: Rollout, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """The trainer's GAE on a rollout: ``(advantages, returns)`` ``[E, T]`` (float64 inputs for exactness)."""
    return compute_gae(
        roll.reward.double(), roll.value.double(), roll.done, roll.truncated, roll.bootstrap.double(), gamma, lam
    )


def steps_to_cut(roll: Rollout, horizon: int) -> Tensor:
    """``k_t`` ``[E, T]``: steps from t to the step where t's episode is cut (truncation or rollout end),
    if it does not die first - a function of (t, time in episode) only."""
    T = roll.state.shape[1]
    t = torch.arange(T).unsqueeze(0)
    return torch.minimum(horizon - 1 - roll.time, T - 1 - t)


def bootstrap_gap(mode: str, exact: ExactValues, policy: TabularPolicy, mdp: ExactMDP) -> Tensor:
    """``g(s) = E[bootstrap | s] - V^pi(s)`` ``(S,)`` for the oracle critic: 0, except
    ``Q(s, argmax op) - V(s)`` in ``q_op`` mode (argmax of the policy's valid logits, as select_op)."""
    if mode != "q_op":
        return torch.zeros_like(exact.v)
    greedy = policy.op_logits.float().masked_fill(~mdp.op_mask, float("-inf")).argmax(-1)
    return exact.q[torch.arange(exact.q.shape[0]), greedy] - exact.v


def analytic_expectation(
    roll: Rollout, exact: ExactValues, mode: str, gamma: float, lam: float, policy: TabularPolicy, mdp: ExactMDP
) -> Tensor:
    """``E[GAE_t | s_t, a_t, k_t]`` with the oracle critic, ``[E, T]`` float64 (module docstring):

        Q(s_t, op_t, b_t) - m_t + (gamma lambda)^k_t gamma [P(. | s_t, a_t) P_pi^k_t g]

    ``k_t`` = :func:`steps_to_cut`, ``P_pi`` the live-state transition matrix under pi (dying rows
    drop out: no bootstrap), ``g`` = :func:`bootstrap_gap`, ``m_t = Q(s_t, op_t)`` for ``q_op`` and
    ``V(s_t)`` otherwise. ``GAE_t`` minus this has mean 0 given anything known at t.
    """
    q_full, q, v = exact
    s, op, b = roll.state, roll.op, roll.sub
    m = q[s, op] if mode == "q_op" else v[s]
    k = steps_to_cut(roll, mdp.horizon)
    P_pi, _ = mdp.policy_tables(policy)
    g = bootstrap_gap(mode, exact, policy, mdp)
    w = [g]
    for _ in range(int(k.max())):
        w.append(P_pi @ w[-1])
    W = torch.stack(w)  # (K + 1, S): P_pi^k g
    reach = torch.einsum("...t,...t->...", mdp.P[s, op, b, :-1], W[k])  # E[g(s'_e) 1{alive} | s_t, a_t]
    return q_full[s, op, b] - m + (gamma * lam) ** k.double() * gamma * reach


# ======================================================================================================
# Statistics
# ======================================================================================================
def _corr(x: Tensor, y: Tensor) -> float:
    x, y = x - x.mean(), y - y.mean()
    den = (x.pow(2).sum() * y.pow(2).sum()).sqrt()
    return float((x * y).sum() / den) if float(den) > 0 else float("nan")


def _cond_bias_rms(err: Tensor, cell: Tensor, num_cells: int) -> float:
    """RMS over (s, op, b) cells of the cell's mean error (visit-weighted, noise-corrected)."""
    n = torch.bincount(cell, minlength=num_cells).double()
    s1 = torch.bincount(cell, weights=err, minlength=num_cells)
    s2 = torch.bincount(cell, weights=err * err, minlength=num_cells)
    used = n > 1
    mean = s1[used] / n[used]
    var = (s2[used] / n[used] - mean**2) * n[used] / (n[used] - 1)
    sq = ((mean**2 - var / n[used]) * n[used]).sum() / n[used].sum()
    return math.sqrt(max(float(sq), 0.0))


def advantage_stats(roll: Rollout, exact: ExactValues, gamma: float, lam: float) -> dict[str, float]:
    """Error of the GAE advantage against the true advantage, and of the bootstrap against V^pi.

    Keys: ``bias`` (mean of GAE - A), ``bias_se`` (its standard error, rows as independent units),
    ``err_var`` / ``err_std`` (variance / std of GAE - A), ``cond_bias_rms`` (RMS over (s, op, b)
    cells of the per-cell mean error: bias that averages out globally still shows here),
    ``corr`` (corr(GAE, A)), ``corr_op`` (corr(GAE, A_op) with ``A_op = Q(s, op) - V(s)``),
    ``slope_op`` (regression slope of GAE on A_op: 1 = the op head gets its advantage, 0 = nothing),
    ``adv_std``, ``explained_variance`` (the trainer's, of values vs returns), ``boot_bias`` /
    ``boot_bias_se`` / ``boot_std`` / ``boot_rmse`` (bootstrap - V^pi(s') at bootstrap points),
    ``n_steps``, ``n_boot``.
    """
    q_full, q, v = exact
    adv, ret = gae(roll, gamma, lam)
    s, op, b = roll.state, roll.op, roll.sub
    true = q_full[s, op, b] - v[s]
    true_op = q[s, op] - v[s]
    err = adv - true
    E = err.shape[0]
    row_means = err.mean(1)
    cell = ((s * A + op) * B + b).flatten()
    top = true_op - true_op.mean()
    boot_err = (roll.bootstrap.double() - v[roll.final_state])[roll.boot_point]
    boot_rows = roll.boot_point.sum(1).clamp(min=1)
    boot_row_means = torch.where(roll.boot_point, roll.bootstrap.double() - v[roll.final_state], 0.0).sum(1) / boot_rows
    return {
        "bias": float(err.mean()),
        "bias_se": float(row_means.std() / math.sqrt(E)),
        "err_var": float(err.var()),
        "err_std": float(err.std()),
        "cond_bias_rms": _cond_bias_rms(err.flatten(), cell, NUM_STATES * A * B),
        "corr": _corr(adv.flatten(), true.flatten()),
        "corr_op": _corr(adv.flatten(), true_op.flatten()),
        "slope_op": float(((adv - adv.mean()) * top).sum() / top.pow(2).sum()),
        "adv_std": float(adv.std()),
        "explained_variance": float(explained_variance(roll.value.double(), ret)),
        "boot_bias": float(boot_err.mean()),
        "boot_bias_se": float(boot_row_means.std() / math.sqrt(E)),
        "boot_std": float(boot_err.std()),
        "boot_rmse": float(boot_err.pow(2).mean().sqrt()),
        "n_steps": int(err.numel()),
        "n_boot": int(boot_err.numel()),
    }


# ======================================================================================================
# A learned (imperfect) critic, trained the way the trainer trains it
# ======================================================================================================
def learn_critic(
    policy: TabularPolicy,
    mode: str,
    *,
    config: ExactMDPConfig | None = None,
    updates: int = 60,
    num_envs: int = 128,
    steps: int | None = None,
    lam: float = 0.95,
    lr: float = 0.1,
    epochs: int = 4,
    seed: int = 0,
) -> Tensor:
    """A tabular ``Q(s, op)`` critic learned under ``mode`` with ``policy`` fixed; returns ``(S, NUM_OPS)``.

    As :class:`esper_fast.ppo.Trainer`: from Q = 0, each update rolls out with the mode's value path,
    computes GAE(lambda) returns, and takes ``epochs`` Adam steps (the trainer's epoch loop,
    :func:`esper_fast.ppo.epochs.run_epochs`, without clipping) on esper's clipped value loss of
    Q(s, stored op) against the returns (anchor: the rollout's Q(s, stored op); legacy: the stored
    value, as the trainer does). Few updates -> an imperfect critic (lagging and noisy).
    """
    with single_thread():
        return _learn_critic(policy, mode, config, updates, num_envs, steps, lam, lr, epochs, seed)


def _learn_critic(
    policy: TabularPolicy,
    mode: str,
    config: ExactMDPConfig | None,
    updates: int,
    num_envs: int,
    steps: int | None,
    lam: float,
    lr: float,
    epochs: int,
    seed: int,
) -> Tensor:
    mdp = ExactMDP(num_envs, config, seed=seed)
    steps = steps or mdp.horizon
    q = torch.zeros(NUM_STATES, A, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([q], lr=lr, eps=1e-5)
    gen = torch.Generator().manual_seed(seed + 7)
    for _ in range(updates):
        mdp.reset()
        roll = rollout(mdp, policy, q.detach(), mode, steps, gen)
        _, ret = gae(roll, mdp.gamma, lam)
        old_q = roll.value.double() if mode == "legacy" else q.detach()[roll.state, roll.op]

        def critic_loss(rows: Tensor, roll: Rollout = roll, old_q: Tensor = old_q, ret: Tensor = ret) -> MinibatchLoss:
            loss = value_loss(q[roll.state[rows], roll.op[rows]], old_q[rows], ret[rows], True, 10.0)
            return MinibatchLoss(loss, loss.new_zeros(()), {})  # (no policy: no KL, no early stop)

        # the trainer's epoch loop: one full batch per epoch, no gradient clipping (max_grad_norm None)
        run_epochs(
            critic_loss,
            num_envs,
            [q],
            opt,
            epochs=epochs,
            num_minibatches=1,
            minibatch_rows=num_envs,
            target_kl=None,
            max_grad_norm=None,
            device="cpu",
        )
    return q.detach()


# ======================================================================================================
# The study
# ======================================================================================================
def run_study(
    num_envs: int = 4096,
    seed: int = 0,
    config: ExactMDPConfig | None = None,
    lambdas: Sequence[float] = LAMBDAS,
    modes: Sequence[str] = MODES,
    critic_updates: Sequence[int] = CRITIC_UPDATES,
    log=print,
) -> dict[str, Any]:
    """Every (critic, mode, lambda) cell; returns ``{"rows": [...], "meta": {...}}``.

    Critics: ``oracle`` (exact Q^pi) and, for each n in ``critic_updates``, ``learned-n``: the mode's
    own critic after n updates of :func:`learn_critic` (60: close, 10: early in training, lagging).
    """
    with single_thread():
        return _run_study(num_envs, seed, config, lambdas, modes, critic_updates, log)


def _run_study(
    num_envs: int,
    seed: int,
    config: ExactMDPConfig | None,
    lambdas: Sequence[float],
    modes: Sequence[str],
    critic_updates: Sequence[int],
    log,
) -> dict[str, Any]:
    mdp0 = ExactMDP(1, config)
    policy = study_policy(mdp0, seed=seed)
    exact = mdp0.solve_full(policy)
    pi_op, _ = policy.probs(mdp0)
    critics: dict[str, dict[str, Tensor]] = {"oracle": {m: exact.q for m in modes}}
    critic_err: dict[str, dict[str, tuple[float, float]]] = {"oracle": {m: (0.0, 0.0) for m in modes}}
    for n in critic_updates:
        name = f"learned-{n}"
        critics[name], critic_err[name] = {}, {}
        for i, mode in enumerate(modes):
            qhat = learn_critic(policy, mode, config=config, updates=n, seed=seed + 100 + i)
            critics[name][mode] = qhat
            rmse_q = float((qhat - exact.q)[mdp0.op_mask].pow(2).mean().sqrt())
            rmse_v = float(((pi_op * qhat).sum(1) - exact.v).pow(2).mean().sqrt())
            critic_err[name][mode] = (rmse_q, rmse_v)
            log(f"{name} critic ({mode}): RMSE(Q) {rmse_q:.3f}, RMSE(V) {rmse_v:.3f}")
    rows = []
    for critic, tables in critics.items():
        for i, mode in enumerate(modes):
            mdp = ExactMDP(num_envs, config, seed=seed + 1000 + i)
            gen = torch.Generator().manual_seed(seed + 2000 + i)
            t0 = time.perf_counter()
            roll = rollout(mdp, policy, tables[mode], mode, mdp.horizon, gen)
            for lam in lambdas:
                stats = advantage_stats(roll, exact, mdp.gamma, lam)
                rows.append(
                    {
                        "critic": critic,
                        "mode": mode,
                        "lambda": lam,
                        "critic_rmse_q": critic_err[critic][mode][0],
                        "critic_rmse_v": critic_err[critic][mode][1],
                        **stats,
                    }
                )
            log(f"{critic:>7} {mode:>8}: {roll.state.numel()} steps in {time.perf_counter() - t0:.1f}s")
    a_op = exact.q - exact.v.unsqueeze(1)
    meta = {
        "num_envs": num_envs,
        "seed": seed,
        "gamma": mdp0.gamma,
        "horizon": mdp0.horizon,
        "policy_objective": mdp0.objective(policy),
        "optimal_objective": float(mdp0.rho0 @ mdp0.optimal()[1]),
        "uniform_objective": mdp0.objective(TabularPolicy.uniform()),
        "op_advantage_rms": float(((pi_op * a_op**2).sum(1)).mean().sqrt()),
        "config": vars(mdp0.config) if hasattr(mdp0.config, "__dict__") else {},
    }
    return {"rows": rows, "meta": meta}


COLUMNS = (
    ("critic", "critic", "{}"),
    ("mode", "mode", "{}"),
    ("lambda", "λ", "{:g}"),
    ("critic_rmse_v", "RMSE(V̂)", "{:.2f}"),
    ("bias", "mean(Â−A)", "{:+.3f}"),
    ("bias_se", "±SE", "{:.3f}"),
    ("err_var", "var(Â−A)", "{:.2f}"),
    ("cond_bias_rms", "cond. bias RMS", "{:.3f}"),
    ("corr", "corr(Â,A)", "{:.3f}"),
    ("corr_op", "corr(Â,A_op)", "{:.3f}"),
    ("slope_op", "slope on A_op", "{:+.3f}"),
    ("explained_variance", "EV", "{:.3f}"),
    ("boot_bias", "boot − V", "{:+.3f}"),
    ("boot_bias_se", "±SE", "{:.3f}"),
    ("boot_rmse", "boot RMSE", "{:.3f}"),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of the study's rows."""
    head = "| " + " | ".join(c[1] for c in COLUMNS) + " |"
    sep = "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|"
    lines = [head, sep]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[key]) for key, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def plot_study(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Grouped bars per lambda and mode: conditional bias RMS, error std, corr(Â, A_op), bootstrap bias."""
    critics = list(dict.fromkeys(r["critic"] for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    lams = list(dict.fromkeys(r["lambda"] for r in rows))
    panels = (
        ("cond_bias_rms", "conditional bias RMS of Â−A", None),
        ("err_std", "std(Â−A)", None),
        ("slope_op", "slope of Â on A_op = Q(s,op)−V(s)\n(1 = op head gets its advantage)", None),
        ("boot_bias", "bootstrap − V(s') (mean ± 2 SE)", "boot_bias_se"),
    )
    colors = MODE_COLORS
    fig, axes = new_figure(len(critics), len(panels), figsize=(4.2 * len(panels), 3.3 * len(critics)))
    width = 0.8 / len(modes)
    for i, critic in enumerate(critics):
        for j, (key, title, err_key) in enumerate(panels):
            ax = axes[i][j]
            for k, mode in enumerate(modes):
                sel = {r["lambda"]: r for r in rows if r["critic"] == critic and r["mode"] == mode}
                xs = [x + (k - (len(modes) - 1) / 2) * width for x in range(len(lams))]
                ys = [sel[lam][key] for lam in lams]
                yerr = [2 * sel[lam][err_key] for lam in lams] if err_key else None
                ax.bar(xs, ys, width, yerr=yerr, color=colors.get(mode), label=mode, capsize=2)
            ax.set_xticks(range(len(lams)), [f"λ={lam:g}" for lam in lams])
            ax.axhline(0, color="black", linewidth=0.6)
            ax.set_title(f"{critic} critic: {title}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=8, loc="center left", framealpha=0.9)
    return save_figure(fig, path)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="esper-fast study advantage-bias", description=__doc__.split("\n")[0])
    p.add_argument(
        "--out",
        default="study-results",
        help="directory for value_baselines_study.{md,csv,json,png} (default ./study-results; "
        "docs/ holds the committed results)",
    )
    p.add_argument("--num-envs", type=int, default=4096, help="rollout rows per (critic, mode) (default 4096)")
    p.add_argument("--seed", type=int, default=0, help="seed of the policy, envs and samplers (default 0)")
    p.add_argument(
        "--critic-updates",
        type=lambda t: tuple(int(x) for x in t.split(",") if x),
        default=CRITIC_UPDATES,
        help="updates of each learned critic, comma-separated, empty = oracle only (default 60,10)",
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``esper-fast study advantage-bias``: run the study, print the table, write md/csv/json/png."""
    args = build_parser().parse_args(argv)
    result = run_study(
        args.num_envs, args.seed, critic_updates=args.critic_updates, log=lambda m: print(m, file=sys.stderr)
    )
    table = format_table(result["rows"])
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "value_baselines_study.md").write_text(table + "\n")
    write_csv(result["rows"], out / "value_baselines_study.csv")
    (out / "value_baselines_study.json").write_text(json.dumps(result, indent=2, default=str))
    if not args.no_plot:
        try:
            print(f"plot: {plot_study(result['rows'], out / 'value_baselines_study.png')}", file=sys.stderr)
        except ImportError:
            print(NO_MATPLOTLIB, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
