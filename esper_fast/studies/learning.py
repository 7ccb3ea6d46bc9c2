"""Learning comparison of the value modes (``legacy`` / ``q_op`` / ``expected``): PPO, several seeds.

Four suites, each run for every value mode (``exact300``: ``q_op`` and ``expected``) and several seeds:

* ``tabular`` - tabular PPO on :class:`~esper_fast.envs.exact_mdp.ExactMDP`: per-state op logits,
  blueprint logits and an op-conditioned ``Q(s, op)`` table, trained with esper's loss terms
  (:mod:`esper_fast.ppo.losses`: per-head clipped surrogate with esper's causal masks, clipped value
  loss on Q(s, stored op), per-head entropy; scored by the update's
  :func:`~esper_fast.ops.score.score_actions_reference`) in the trainer's epoch loop
  (:func:`esper_fast.ppo.epochs.run_epochs`) on GAE from :func:`esper_fast.ppo.gae.compute_gae`; the
  value path is :func:`esper_fast.studies.advantage_bias.rollout` (``select_op``). The final policy
  is scored *exactly* (``sum_s rho0(s) V^pi(s)`` by DP).
* ``exact``   - the real :class:`esper_fast.ppo.Trainer` (LSTM FactoredPolicy / ReferencePolicy,
  esper's update, hyper-parameters :data:`STUDY_PPO`) on ExactMDP through
  :class:`~esper_fast.envs.exact_mdp.ExactMDPEsperEnv`
  (given to it: ``Trainer(cfg, env=...)``); scored by the mean return of 2048 fresh episodes (sampled
  actions, the trainer's :class:`~esper_fast.ppo.agent.PolicyActor`).
* ``exact300`` - the ``exact`` suite run for 300 updates (``q_op`` and ``expected``), with the critic
  diagnostics (:func:`critic_diagnostics`) every 10 updates.
* ``seed``    - the real Trainer on :class:`~esper_fast.envs.SeedLifecycleEnv` (:data:`STUDY_PPO`,
  64 hidden units), scored by the trainer's own evaluation (32 fixed episodes, sampled and greedy).

Every run also reports the trainer's explained variance (``1 - Var(R - v) / Var(R)`` of the stored
values; mean over the last updates). Results: mean and a 95% t-interval over seeds.

Run: ``python -m esper_fast.studies.learning --out docs/learning`` (finished runs are kept in
``<out>/runs/*.json`` and skipped when the command is run again).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from esper_fast.constants import (
    HEAD_NAMES,
    POLICY_VALUE_MODES,
    GerminationStyle,
    LifecycleOp,
    get_action_head_sizes,
)
from esper_fast.envs.exact_mdp import (
    BLUEPRINT_IDS,
    NUM_STATES,
    ExactMDP,
    ExactMDPConfig,
    ExactMDPEsperEnv,
    TabularPolicy,
)
from esper_fast.plotting import MODE_COLORS, NO_MATPLOTLIB, new_figure, save_figure
from esper_fast.ppo.config import ENTROPY_COEF_PER_HEAD
from esper_fast.ppo.epochs import MinibatchLoss, run_epochs
from esper_fast.ppo.gae import compute_gae, explained_variance, normalize_advantages
from esper_fast.ppo.losses import approx_kl, entropy_loss, head_ratios, policy_loss, value_loss
from esper_fast.studies.advantage_bias import MODES, rollout, single_thread

__all__ = [
    "TabularPPOConfig",
    "train_tabular",
    "train_trainer_exact",
    "train_trainer_seed",
    "evaluate_on_exact",
    "critic_diagnostics",
    "write_runs_csv",
    "STUDY_PPO",
    "EXACT300_PPO",
    "plot_diagnostics",
    "train_trainer_exact_long",
    "LONG_MODES",
    "t_interval",
    "SUITES",
    "run_suite",
    "summarize",
    "format_summary",
    "plot_learning",
    "main",
]

A, B = ExactMDP.num_ops, ExactMDP.num_sub
_GERM = int(LifecycleOp.GERMINATE)
_SIGMOID_ADD = int(GerminationStyle.SIGMOID_ADD)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """``(mean, half-width)`` of the Student-t interval (half-width NaN for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    try:
        from scipy.stats import t as student_t

        q = float(student_t.ppf(0.5 + level / 2, n - 1))
    except ImportError:  # two-sided 95% quantiles
        q = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}.get(n - 1, 1.96)
    return mean, q * sd / math.sqrt(n)


# ======================================================================================================
# Tabular PPO on ExactMDP
# ======================================================================================================
@dataclass(frozen=True)
class TabularPPOConfig:
    """Tabular PPO hyper-parameters (esper's loss; one Adam over logits and the Q table)."""

    updates: int = 150
    num_envs: int = 32
    steps: int = 20
    learning_rate: float = 0.05
    gae_lambda: float = 0.95
    clip_ratio: float = 0.2
    epochs: int = 4
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    value_clip: float = 10.0
    max_grad_norm: float = 1.0
    target_kl: float | None = 0.03
    normalize_advantages: bool = True


def _head_terms(
    op_logits: Tensor, bp_logits: Tensor, s: Tensor, op: Tensor, b: Tensor, op_mask: Tensor, sub_mask: Tensor
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per-head log-probs of the stored actions and normalised entropies: the update's scoring,
    :func:`esper_fast.ops.score.score_actions_reference` (esper's -1e4 masking), on the tabular logits.

    The op and blueprint heads are the tables' rows; every other head has a single valid action (as in
    :class:`~esper_fast.envs.exact_mdp.ExactMDPEsperEnv`), so its log-prob and entropy are exactly 0.
    """
    from esper_fast.ops.score import score_actions_reference

    sizes = get_action_head_sizes(3)
    logits = {h: op_logits.new_zeros(*s.shape, n) for h, n in sizes.items()}
    single = {h: torch.arange(n, device=s.device) == (_SIGMOID_ADD if h == "style" else 0) for h, n in sizes.items()}
    masks = {h: m.expand(*s.shape, -1) for h, m in single.items()}
    actions = {h: torch.full_like(s, _SIGMOID_ADD if h == "style" else 0) for h in HEAD_NAMES}
    logits["op"], logits["blueprint"] = op_logits[s], bp_logits[s]
    masks["op"], masks["blueprint"] = op_mask, sub_mask
    actions["op"], actions["blueprint"] = op, b
    return score_actions_reference(logits, masks, actions)


def _tabular_loss(
    rows: Tensor,
    *,
    cfg: TabularPPOConfig,
    tables: tuple[Tensor, Tensor, Tensor],
    batch: dict[str, Tensor],
    old_lp: dict[str, Tensor],
    causal: dict[str, Tensor],
) -> MinibatchLoss:
    """esper's loss terms on the tables for the rollout rows ``rows`` (the epoch loop's callback)."""
    op_logits, bp_logits, q = tables
    mb = {k: v[rows] for k, v in batch.items()}
    new_lp, ent = _head_terms(op_logits, bp_logits, mb["s"], mb["op"], mb["b"], mb["om"], mb["sm"])
    old = {h: v[rows] for h, v in old_lp.items()}
    cz = {h: v[rows] for h, v in causal.items()}
    ratios = head_ratios(new_lp, old)
    loss = (
        policy_loss(ratios, mb["adv"], cz, cfg.clip_ratio)
        + cfg.value_coef * value_loss(q[mb["s"], mb["op"]], mb["old_q"], mb["ret"], True, cfg.value_clip)
        + cfg.entropy_coef * entropy_loss(ent, cz, ENTROPY_COEF_PER_HEAD)
    )
    return MinibatchLoss(loss, approx_kl(new_lp, old, cz), {})


def train_tabular(
    mode: str, seed: int, cfg: TabularPPOConfig = TabularPPOConfig(), mdp_config: ExactMDPConfig | None = None
) -> dict[str, Any]:
    """Tabular PPO with value mode ``mode``; returns the exact objective curve and explained variance.

    The blueprint logits are per state (not per op), like esper's blueprint head; the blueprint is
    relevant only for GERMINATE (esper's causal mask). The env runs on across updates (auto-reset),
    the rollout's last step bootstraps like a truncation, as in the trainer.
    """
    with single_thread():
        return _train_tabular(mode, seed, cfg, mdp_config)


def _train_tabular(mode: str, seed: int, cfg: TabularPPOConfig, mdp_config: ExactMDPConfig | None) -> dict[str, Any]:
    torch.manual_seed(seed)
    mdp = ExactMDP(cfg.num_envs, mdp_config, seed=seed)
    op_logits = torch.zeros(NUM_STATES, A, requires_grad=True)
    bp_logits = torch.zeros(NUM_STATES, B, requires_grad=True)
    q = torch.zeros(NUM_STATES, A, requires_grad=True)
    opt = torch.optim.Adam([op_logits, bp_logits, q], lr=cfg.learning_rate, eps=1e-5)
    gen = torch.Generator().manual_seed(seed + 1)
    op_mask_tab, sub_mask_tab = mdp.op_mask, mdp.sub_mask

    def current() -> TabularPolicy:
        return TabularPolicy(op_logits.detach().double(), bp_logits.detach().double().unsqueeze(1).expand(-1, A, -1))

    objective, ev_curve, ret_curve = [mdp.objective(current())], [], []
    for _ in range(cfg.updates):
        roll = rollout(mdp, current(), q.detach(), mode, cfg.steps, gen)
        adv, ret = compute_gae(
            roll.reward, roll.value, roll.done, roll.truncated, roll.bootstrap, mdp.gamma, cfg.gae_lambda
        )
        ev_curve.append(float(explained_variance(roll.value, ret)))
        if cfg.normalize_advantages:
            adv = normalize_advantages(adv)
        s, op, b = roll.state, roll.op, roll.sub
        om, sm = op_mask_tab[s], sub_mask_tab[s]
        with torch.no_grad():
            old_lp, _ = _head_terms(op_logits, bp_logits, s, op, b, om, sm)
        old_q = roll.value if mode == "legacy" else q.detach()[s, op]  # the trainer's value-clip anchor
        causal = {h: torch.zeros_like(op, dtype=torch.bool) for h in HEAD_NAMES}
        causal["op"], causal["blueprint"] = torch.ones_like(op, dtype=torch.bool), op == _GERM

        batch = {"s": s, "op": op, "b": b, "om": om, "sm": sm, "adv": adv, "ret": ret, "old_q": old_q}
        loss_fn = partial(
            _tabular_loss, cfg=cfg, tables=(op_logits, bp_logits, q), batch=batch, old_lp=old_lp, causal=causal
        )
        # the trainer's epoch loop: esper's one full batch per epoch, the KL early stop, the clipped step
        run_epochs(
            loss_fn,
            cfg.num_envs,
            [op_logits, bp_logits, q],
            opt,
            epochs=cfg.epochs,
            num_minibatches=1,
            minibatch_rows=cfg.num_envs,
            target_kl=cfg.target_kl,
            max_grad_norm=cfg.max_grad_norm,
            device="cpu",
        )
        objective.append(mdp.objective(current()))
        ret_curve.append(mdp.expected_episode_return(current()))
    tail = max(1, cfg.updates // 5)
    return {
        "suite": "tabular",
        "mode": mode,
        "seed": seed,
        "config": asdict(cfg),
        "final_objective": objective[-1],
        "final_episode_return": ret_curve[-1],
        "explained_variance": sum(ev_curve[-tail:]) / tail,
        "objective_curve": objective,
        "episode_return_curve": ret_curve,
        "ev_curve": ev_curve,
        "steps_per_update": cfg.num_envs * cfg.steps,
    }


# ======================================================================================================
# The real trainer on ExactMDP and on SeedLifecycleEnv
# ======================================================================================================
STUDY_PPO: dict[str, Any] = dict(
    num_envs=16,
    update_epochs=4,
    num_minibatches=4,
    learning_rate=1e-3,
    anneal_lr=True,
    target_kl=0.03,
    gamma=0.99,
    gae_lambda=0.95,
    entropy_coef=0.01,
    entropy_coef_end=None,
    entropy_anneal_updates=0,
    entropy_coef_min=0.0,
    op_conditioned_slot=True,
    torch_threads=1,
)
"""Trainer hyper-parameters of the ``exact`` and ``seed`` suites, pinned (the "default" preset of the
time the study was run) so that later preset changes do not change the study. ``exact`` uses the
MDP's gamma (0.95). Every mode samples the slot op-conditioned (``op_conditioned_slot``), so modes
differ only in the value baseline."""
EXACT300_PPO: dict[str, Any] = dict(entropy_coef=0.05, entropy_coef_end=0.0, entropy_anneal_updates=250)
"""``exact300`` ran with the later "default" preset's entropy schedule (0.05 annealed to 0 over 250 updates)."""


def evaluate_on_exact(
    policy,
    obs_normalizer,
    op_conditioned_slot: bool,
    episodes: int = 2048,
    seed: int = 12345,
    mdp_config: ExactMDPConfig | None = None,
) -> dict[str, float]:
    """Mean undiscounted and discounted return of ``episodes`` fresh ExactMDP episodes (sampled actions)."""
    from esper_fast.ppo.agent import PolicyActor

    env = ExactMDPEsperEnv(episodes, mdp_config, seed=seed)
    obs = env.reset()
    # the trainer's evaluation controller (compare_with_baselines plays SeedLifecycleEnv with it)
    actor = PolicyActor(policy, obs_normalizer, deterministic=False, op_conditioned_slot=op_conditioned_slot, seed=seed)
    ret = torch.zeros(episodes, dtype=torch.float64)
    disc_ret = torch.zeros(episodes, dtype=torch.float64)
    alive = torch.ones(episodes, dtype=torch.bool)
    policy.eval()
    with torch.no_grad():
        for t in range(env.mdp.horizon):  # one episode per row: the LSTM state runs on (no episode_start)
            step = env.step(actor(obs))
            r = step.reward.double() * alive
            ret += r
            disc_ret += r * env.mdp.gamma**t
            alive &= ~step.terminated
            obs = step.next
    se = float(ret.std()) / math.sqrt(episodes)
    return {"mean_return": float(ret.mean()), "return_se": se, "mean_discounted_return": float(disc_ret.mean())}


def critic_diagnostics(policy, obs_normalizer, mdp_config: ExactMDPConfig | None = None) -> dict[str, float]:
    """How much op signal the trained network's critic carries, against the exact values.

    Reads the network at every ExactMDP state (episode start, zero LSTM state): its op and blueprint
    probabilities define a tabular policy pi_hat, whose exact ``Q(s, op) - V(s)`` (DP) is the op
    advantage the op head should see. Returns ``true_op_spread`` / ``critic_op_spread`` (mean over
    states of ``sqrt(sum_op pi (Q(s, op) - V(s))^2)``, exact vs the critic's ``Q_hat``) and
    ``critic_op_corr`` (pi-weighted correlation of the two op advantages over valid (s, op)) and
    ``tabular_objective`` (the exact objective of pi_hat).
    """
    env = ExactMDPEsperEnv(NUM_STATES, mdp_config)
    eo = env._view(env.mdp.set_state(torch.arange(NUM_STATES)))
    device = next(policy.parameters()).device
    with torch.no_grad():
        out = policy.heads(
            obs_normalizer.normalize(eo.obs).unsqueeze(1),
            eo.blueprint_indices.unsqueeze(1),
            policy.get_initial_hidden(NUM_STATES, device),
        )
    op_logits = out.logits["op"][:, 0].double().cpu()
    bp_logits = out.logits["blueprint"][:, 0].double().cpu()[:, list(BLUEPRINT_IDS)]
    q_hat = out.q_values[:, 0].double().cpu()
    mdp = env.mdp
    tab = TabularPolicy(op_logits, bp_logits.unsqueeze(1).expand(-1, A, -1))
    _, q, v = mdp.solve_full(tab)
    pi_op, _ = tab.probs(mdp)
    a_true = (q - v.unsqueeze(1)).masked_fill(~mdp.op_mask, 0.0)
    a_hat = (q_hat - (pi_op * q_hat).sum(1, keepdim=True)).masked_fill(~mdp.op_mask, 0.0)
    spread = lambda a: float((pi_op * a**2).sum(1).sqrt().mean())  # noqa: E731
    cov = (pi_op * a_true * a_hat).sum()
    corr = cov / ((pi_op * a_true**2).sum() * (pi_op * a_hat**2).sum()).sqrt().clamp(min=1e-12)
    return {
        "true_op_spread": spread(a_true),
        "critic_op_spread": spread(a_hat),
        "critic_op_corr": float(corr),
        "tabular_objective": mdp.objective(tab),
    }


HEAD_MODES: tuple[str, ...] = ("head_v", "head_q")
"""Modes of the ``exact_head`` / ``seed_head`` rows: esper HEAD's network and PPO (``--preset esper-head``)
with GAE on HEAD's separate V(s) head (``head_v``) or on sum_a pi(a|s) Q(s, a) from the q_head, returned
by the same get_action kernel pass (``head_q``); everything else identical (both heads are trained)."""


def _preset_for(mode: str) -> tuple[str, dict[str, Any]]:
    """(preset, fields) of a study mode: a value_mode of the esper preset, or one of :data:`HEAD_MODES`."""
    if mode in HEAD_MODES:
        return "esper-head", {"head_baseline": "state_value" if mode == "head_v" else "expected_q"}
    return "esper", {"value_mode": mode}


def _tail_mean(rows: list[dict[str, Any]], key: str, n: int) -> float | None:
    vals = [r[key] for r in rows[-n:] if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def train_trainer_exact(
    mode: str,
    seed: int,
    updates: int = 120,
    num_envs: int = 16,
    rollout_steps: int = 40,
    hidden: int = 64,
    eval_episodes: int = 2048,
    diag_every: int = 10,
    ppo_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The real Trainer (:data:`STUDY_PPO`, ``hidden`` units, gamma = the MDP's) on ExactMDPEsperEnv.

    Every ``diag_every`` updates :func:`critic_diagnostics` is recorded (``diag_curve``).
    """
    from esper_fast.ppo import Trainer, make_config

    mdp_cfg = ExactMDPConfig()
    ppo = {**STUDY_PPO, **(ppo_overrides or {})}
    preset, mode_fields = _preset_for(mode)
    if preset == "esper-head":
        diag_every = 0  # critic_diagnostics reads FactoredPolicy's heads()
    cfg = make_config(
        preset,
        **{
            **ppo,
            **mode_fields,
            "seed": seed,
            "feature_dim": hidden,
            "lstm_hidden_dim": hidden,
            "num_envs": num_envs,
            "episode_length": mdp_cfg.horizon,
            "rollout_steps": rollout_steps,
            "total_timesteps": num_envs * rollout_steps * updates,
            "gamma": mdp_cfg.gamma,
            "eval_episodes": 0,
        },
    )
    env = ExactMDPEsperEnv(num_envs, mdp_cfg, seed=seed)
    trainer = Trainer(cfg, run_dir=None, env=env, log=lambda _m: None, tensorboard=False)
    rows: list[dict[str, Any]] = []
    diag_curve: list[dict[str, Any]] = []

    def on_update(row: dict[str, Any]) -> None:
        rows.append(row)
        if diag_every and len(rows) % diag_every == 0:
            diag_curve.append(
                {"update": len(rows), **critic_diagnostics(trainer.policy, trainer.obs_normalizer, mdp_cfg)}
            )

    t0 = time.perf_counter()
    trainer.train(on_update=on_update, handle_signals=False)
    ev = evaluate_on_exact(trainer.policy, trainer.obs_normalizer, bool(cfg.op_conditioned_slot), eval_episodes)
    diag = critic_diagnostics(trainer.policy, trainer.obs_normalizer, mdp_cfg) if preset != "esper-head" else {}
    tail = max(1, updates // 5)
    return {
        **diag,
        "suite": "exact",
        "mode": mode,
        "seed": seed,
        "updates": updates,
        "env_steps": trainer.global_step,
        "final_episode_return": ev["mean_return"],
        "final_return_se": ev["return_se"],
        "final_discounted_return": ev["mean_discounted_return"],
        "explained_variance": _tail_mean(rows, "losses/explained_variance", tail),
        "train_return_curve": [r.get("charts/episode_return") for r in rows],
        "ev_curve": [r.get("losses/explained_variance") for r in rows],
        "diag_curve": diag_curve,
        "seconds": time.perf_counter() - t0,
    }


def train_trainer_seed(
    mode: str, seed: int, updates: int = 50, hidden: int = 64, eval_episodes: int = 32, eval_seed: int = 777
) -> dict[str, Any]:
    """The real Trainer on SeedLifecycleEnv (:data:`STUDY_PPO` at ``hidden`` units, ``updates`` x 16 x 150 steps)."""
    from esper_fast.ppo import Trainer, make_config

    preset, mode_fields = _preset_for(mode)
    cfg = make_config(
        preset,
        **{
            **STUDY_PPO,
            **mode_fields,
            "seed": seed,
            "feature_dim": hidden,
            "lstm_hidden_dim": hidden,
            "total_timesteps": 16 * 150 * updates,
            "eval_episodes": eval_episodes,
            "eval_seed": eval_seed,
        },
    )
    trainer = Trainer(cfg, run_dir=None, log=lambda _m: None, tensorboard=False)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    summary = trainer.train(on_update=rows.append, handle_signals=False)
    evaluation = summary.get("evaluation", {})
    tail = max(1, updates // 5)
    return {
        "suite": "seed",
        "mode": mode,
        "seed": seed,
        "updates": updates,
        "env_steps": trainer.global_step,
        "final_episode_return": evaluation["ppo (sampled)"]["mean_return"],
        "final_greedy_return": evaluation["ppo (greedy)"]["mean_return"],
        "heuristic_return": evaluation["heuristic"]["mean_return"],
        "random_return": evaluation["random"]["mean_return"],
        "train_return_tail": _tail_mean(rows, "charts/episode_return", tail),
        "explained_variance": _tail_mean(rows, "losses/explained_variance", tail),
        "train_return_curve": [r.get("charts/episode_return") for r in rows],
        "ev_curve": [r.get("losses/explained_variance") for r in rows],
        "seconds": time.perf_counter() - t0,
    }


def train_trainer_exact_long(mode: str, seed: int, updates: int = 300, **kwargs: Any) -> dict[str, Any]:
    """:func:`train_trainer_exact` for 300 updates with :data:`EXACT300_PPO` (suite ``exact300``)."""
    return {
        **train_trainer_exact(mode, seed, updates=updates, ppo_overrides=EXACT300_PPO, **kwargs),
        "suite": "exact300",
    }


SUITES: dict[str, Callable[..., dict[str, Any]]] = {
    "tabular": train_tabular,
    "exact": train_trainer_exact,
    "seed": train_trainer_seed,
    "exact300": train_trainer_exact_long,
}
LONG_MODES: tuple[str, ...] = POLICY_VALUE_MODES
"""Modes of the ``exact300`` suite (legacy left out to save CPU: it matches expected elsewhere)."""


def run_suite(
    suite: str, seeds: Sequence[int], out: Path, modes: Sequence[str] = MODES, log=print, **kwargs: Any
) -> list[dict[str, Any]]:
    """Every (mode, seed) run of ``suite``; each result is cached in ``out/runs/<suite>_<mode>_<seed>.json``."""
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in seeds:
        for mode in modes:
            path = runs_dir / f"{suite}_{mode}_{seed}.json"
            if path.is_file():
                results.append(json.loads(path.read_text()))
                continue
            t0 = time.perf_counter()
            res = SUITES[suite](mode, seed, **kwargs)
            path.write_text(json.dumps(res))
            results.append(res)
            log(
                f"{suite} {mode:>8} seed {seed}: return {res['final_episode_return']:.2f}, "
                f"EV {res['explained_variance']:.3f} ({time.perf_counter() - t0:.0f}s)"
            )
    return results


def _final(run: dict[str, Any], metric: str) -> float | None:
    """A run's final metric; a trainer run on ExactMDP reports as ``final_objective`` the exact objective
    of its network's policy read at episode start (:func:`critic_diagnostics`), when recorded."""
    if metric == "final_objective" and run.get("final_objective") is None and run.get("diag_curve"):
        return run["diag_curve"][-1]["tabular_objective"]
    return run.get(metric)


def summarize(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (suite, mode): mean and 95% t-interval of every final metric over seeds."""
    metrics = ("final_objective", "final_episode_return", "final_greedy_return", "explained_variance")
    out = []
    for suite in dict.fromkeys(r["suite"] for r in results):
        for mode in (*MODES, *HEAD_MODES):
            rs = [r for r in results if r["suite"] == suite and r["mode"] == mode]
            if not rs:
                continue
            row: dict[str, Any] = {"suite": suite, "mode": mode, "seeds": len(rs)}
            for m in metrics:
                vals = [_final(r, m) for r in rs if _final(r, m) is not None]
                if vals:
                    row[m], row[m + "_ci"] = t_interval(vals)
            for m in ("heuristic_return", "random_return"):
                if rs[0].get(m) is not None:
                    row[m] = sum(r[m] for r in rs) / len(rs)
            out.append(row)
    return out


def format_summary(summary: Sequence[dict[str, Any]]) -> str:
    """Markdown: one row per (suite, mode), ``mean ± 95% half-width``."""
    cols = (
        ("final_objective", "exact objective J"),
        ("final_episode_return", "episode return (sampled)"),
        ("final_greedy_return", "episode return (greedy)"),
        ("explained_variance", "explained variance"),
    )
    lines = [
        "| suite | mode | seeds | " + " | ".join(c[1] for c in cols) + " |",
        "|---|---|---:|" + "---:|" * len(cols),
    ]
    for r in summary:
        cells = [f"{r[k]:.2f} ± {r[k + '_ci']:.2f}" if k in r else "" for k, _ in cols]
        lines.append(f"| {r['suite']} | {r['mode']} | {r['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _smooth(curve: Sequence[float | None], k: int) -> list[float | None]:
    """Trailing moving average over the last ``k`` non-missing points (``k`` = 1: unchanged)."""
    out, window = [], []
    for x in curve:
        if x is not None:
            window = (window + [x])[-k:]
        out.append(sum(window) / len(window) if window else None)
    return out


def write_runs_csv(results: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One row per run: suite, mode, seed and the final metrics."""
    import csv

    keys = (
        "suite",
        "mode",
        "seed",
        "final_objective",
        "final_episode_return",
        "final_greedy_return",
        "explained_variance",
        "heuristic_return",
        "random_return",
        "critic_op_spread",
        "true_op_spread",
        "critic_op_corr",
        "env_steps",
        "seconds",
    )
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for r in results:
            w.writerow(["" if r.get(k) is None else r[k] for k in keys])
    return path


def plot_learning(
    results: Sequence[dict[str, Any]], path: str | Path, references: dict[str, dict[str, float]], smooth: int = 5
) -> Path:
    """Per suite: mean learning curve per mode with a 95% t-band (3+ seeds; the min-max range for 2)
    (tabular: exact objective J; the trainers' noisy per-update training returns and explained
    variances: ``smooth``-update moving mean)."""
    colors = MODE_COLORS
    suites = list(dict.fromkeys(r["suite"] for r in results))
    panels = []
    for suite in suites:
        key = "objective_curve" if suite == "tabular" else "train_return_curve"
        panels.append(
            (
                suite,
                key,
                {
                    "tabular": "exact objective J (ExactMDP, tabular PPO)",
                    "exact": f"training episode return, {smooth}-update mean (ExactMDP, Trainer)",
                    "exact300": f"training episode return, {smooth}-update mean (ExactMDP, Trainer, 300 updates)",
                    "seed": f"training episode return, {smooth}-update mean (SeedLifecycleEnv, Trainer)",
                }[suite],
            )
        )
        panels.append(
            (
                suite,
                "ev_curve",
                f"explained variance ({suite}{'' if suite == 'tabular' else f', {smooth}-update mean'})",
            )
        )
    cols = 2
    fig, axes = new_figure(len(suites), cols, figsize=(6.5 * cols, 3.4 * len(suites)))
    for i, (suite, key, title) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        for mode in (*MODES, *HEAD_MODES):
            k = 1 if key == "objective_curve" else smooth
            curves = [_smooth(r[key], k) for r in results if r["suite"] == suite and r["mode"] == mode]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            xs, means, lo, hi = [], [], [], []
            for j in range(n):
                vals = [c[j] for c in curves if c[j] is not None]
                if not vals:
                    continue
                m, h = t_interval(vals)
                xs.append(j)
                means.append(m)
                if len(vals) >= 3:
                    lo.append(m - h)
                    hi.append(m + h)
                else:  # a t-interval from 2 seeds is uninformative (t = 12.7): show their range
                    lo.append(min(vals))
                    hi.append(max(vals))
            ax.plot(xs, means, color=colors[mode], label=f"{mode} ({len(curves)} seeds)")
            ax.fill_between(xs, lo, hi, color=colors[mode], alpha=0.15)
        if key != "ev_curve":
            for name, value in references.get("exact" if suite == "exact300" else suite, {}).items():
                ax.axhline(value, linestyle="--", color="gray", linewidth=0.8)
                ax.annotate(name, (0, value), fontsize=7, color="gray", va="bottom")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def plot_diagnostics(results: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Trainer runs on ExactMDP: the exact objective of the network's (tabularised) policy, and the op
    advantage the critic carries against the exact one, per mode (mean over seeds)."""
    colors = MODE_COLORS
    runs = [r for r in results if r.get("diag_curve")]
    suites = list(dict.fromkeys(r["suite"] for r in runs))
    fig, axes = new_figure(len(suites), 3, figsize=(15, 3.4 * len(suites)))
    for i, suite in enumerate(suites):
        for mode in MODES:
            rs = [r for r in runs if r["suite"] == suite and r["mode"] == mode]
            if not rs:
                continue
            n = min(len(r["diag_curve"]) for r in rs)
            xs = [rs[0]["diag_curve"][j]["update"] for j in range(n)]
            mean = lambda key, j: sum(r["diag_curve"][j][key] for r in rs) / len(rs)  # noqa: E731
            lab = f"{mode} ({len(rs)} seeds)"
            axes[i][0].plot(xs, [mean("tabular_objective", j) for j in range(n)], color=colors[mode], label=lab)
            axes[i][1].plot(
                xs, [mean("critic_op_spread", j) for j in range(n)], color=colors[mode], label=f"{lab}: critic"
            )
            axes[i][1].plot(
                xs,
                [mean("true_op_spread", j) for j in range(n)],
                color=colors[mode],
                linestyle="--",
                label=f"{lab}: exact",
            )
            axes[i][2].plot(xs, [mean("critic_op_corr", j) for j in range(n)], color=colors[mode], label=lab)
        titles = (
            f"{suite}: exact objective J of the network's policy",
            f"{suite}: RMS op advantage (critic vs exact)",
            f"{suite}: corr(critic op advantage, exact)",
        )
        for ax, title in zip(axes[i], titles):
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("update")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return save_figure(fig, path)


def _references() -> dict[str, dict[str, float]]:
    mdp = ExactMDP(1)
    q_star, v_star = mdp.optimal()
    greedy = mdp.greedy_policy(q_star)
    uniform = TabularPolicy.uniform()
    return {
        "tabular": {"optimal": float(mdp.rho0 @ v_star), "uniform": mdp.objective(uniform)},
        "exact": {"optimal": mdp.expected_episode_return(greedy), "uniform": mdp.expected_episode_return(uniform)},
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m esper_fast.studies.learning", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/learning", help="output directory (default docs/learning)")
    p.add_argument(
        "--suites",
        default="tabular,exact,seed,exact300",
        help="comma-separated subset of tabular,exact,seed,exact300,exact_head,seed_head "
        "(the last two: esper HEAD's network, V(s) head vs sum pi Q; not in the default)",
    )
    p.add_argument("--tabular-seeds", type=int, default=10)
    p.add_argument("--trainer-seeds", type=int, default=3)
    p.add_argument("--exact-updates", type=int, default=120)
    p.add_argument("--seed-updates", type=int, default=50)
    p.add_argument("--long-seeds", type=int, default=2, help="seeds of the exact300 suite (q_op and expected only)")
    p.add_argument("--summarize-only", action="store_true", help="only aggregate the cached runs")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    results: list[dict[str, Any]] = []
    for suite in [s for s in args.suites.split(",") if s]:
        if args.summarize_only:
            base = {"exact_head": "exact_head_", "seed_head": "seed_head_"}.get(suite, f"{suite}_")
            results += [
                json.loads(f.read_text())
                for f in sorted((out / "runs").glob(f"{base}*.json"))
                if suite.endswith("_head") or not f.name.startswith(f"{suite}_head_")
            ]
            continue
        if suite == "tabular":
            results += run_suite("tabular", range(args.tabular_seeds), out, log=log)
        elif suite == "exact":
            results += run_suite("exact", range(args.trainer_seeds), out, log=log, updates=args.exact_updates)
        elif suite == "seed":
            results += run_suite("seed", range(args.trainer_seeds), out, log=log, updates=args.seed_updates)
        elif suite == "exact_head":
            results += run_suite(
                "exact", range(args.trainer_seeds), out, modes=HEAD_MODES, log=log, updates=args.exact_updates
            )
        elif suite == "seed_head":
            results += run_suite(
                "seed", range(args.trainer_seeds), out, modes=HEAD_MODES, log=log, updates=args.seed_updates
            )
        elif suite == "exact300":
            results += run_suite("exact300", range(args.long_seeds), out, modes=LONG_MODES, log=log)
        else:
            raise SystemExit(
                f"unknown suite {suite!r}: expected tabular, exact, seed, exact300, exact_head or seed_head"
            )
    summary = summarize(results)
    refs = _references()
    table = format_summary(summary)
    print(table)
    (out / "learning_summary.md").write_text(table + "\n")
    (out / "learning_summary.json").write_text(json.dumps({"summary": summary, "references": refs}, indent=2))
    write_runs_csv(results, out / "learning_runs.csv")
    try:
        log(f"plot: {plot_learning(results, out / 'learning_curves.png', refs)}")
        if any(r.get("diag_curve") for r in results):
            log(f"plot: {plot_diagnostics(results, out / 'learning_diagnostics.png')}")
    except ImportError:
        log(NO_MATPLOTLIB)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
