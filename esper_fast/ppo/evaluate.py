"""Score a trained policy against esper_fast's oracle, heuristic and random baselines on the same episodes."""

from __future__ import annotations

import math
from typing import Any

import torch

from esper_fast.envs import HeuristicPolicy, OraclePolicy, RandomMaskedPolicy, SeedLifecycleEnv, evaluate_policy
from esper_fast.network import FactoredNetwork
from esper_fast.ppo.agent import PolicyActor, cpu_threads, env_config
from esper_fast.ppo.config import PPOConfig
from esper_fast.ppo.normalize import ObsNormalizer

__all__ = ["compare_with_baselines", "format_table", "evaluation_markdown", "gap_shares", "gap_share_with_se"]


def compare_with_baselines(
    policy: FactoredNetwork | None,
    obs_normalizer: ObsNormalizer | None,
    config: PPOConfig,
    episodes: int,
    seed: int,
    device: str | torch.device = "cpu",
    ppo_modes: tuple[str, ...] = ("sampled", "greedy"),
) -> dict[str, dict[str, Any]]:
    """``{name: evaluate_policy result}`` for the policy (each of ``ppo_modes``), the privileged oracle
    (reads the env's hidden true contributions), heuristic and random.

    Every entry plays the same ``episodes`` episodes (env seed ``seed``: the same host curves and
    noise streams), so each entry but the heuristic also gets ``vs_heuristic`` / ``vs_heuristic_se``:
    the mean per-episode difference of its return minus the heuristic's and the standard error of
    that paired difference (smaller than either return's own, since the episodes are shared); each PPO
    entry gets ``gap_share`` / ``gap_share_se`` (:func:`gap_share_with_se`: the share of the
    heuristic-to-oracle gap it closes, with its standard error). The ``returns`` tensors are dropped.
    """
    env = SeedLifecycleEnv(episodes, env_config(config), device=device, seed=seed)
    controllers: dict[str, Any] = {}
    if policy is not None:
        for mode in ppo_modes:
            controllers[f"ppo ({mode})"] = PolicyActor(
                policy,
                obs_normalizer,
                deterministic=(mode == "greedy"),
                op_conditioned_slot=config.op_conditioned_slot,
                seed=seed,
            )
    controllers["oracle"] = OraclePolicy(env)
    controllers["heuristic"] = HeuristicPolicy(env.config)
    controllers["random"] = RandomMaskedPolicy(seed=seed, device=device)
    results = {}
    with cpu_threads(config.torch_threads, device):
        for name, controller in controllers.items():
            results[name] = evaluate_policy(env, controller, num_episodes=episodes, seed=seed)
    base = results["heuristic"]["returns"]
    for name, res in results.items():
        if name != "heuristic":
            diff = (res["returns"] - base).double()
            res["vs_heuristic"] = float(diff.mean())
            res["vs_heuristic_se"] = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
    oracle_gap = (results["oracle"]["returns"] - base).double()
    for name, res in results.items():
        if name.startswith("ppo"):
            res["gap_share"], res["gap_share_se"] = gap_share_with_se((res["returns"] - base).double(), oracle_gap)
    for res in results.values():
        res.pop("returns", None)
    return results


def gap_share_with_se(diff: torch.Tensor, oracle_gap: torch.Tensor) -> tuple[float, float]:
    """``mean(diff) / mean(oracle_gap)`` and its standard error (delta method for a ratio of paired means).

    ``diff [n]`` is a policy's per-episode return minus the heuristic's, ``oracle_gap [n]`` the oracle's minus
    the heuristic's on the same episodes: se = std(diff - share * oracle_gap) / (sqrt(n) |mean(oracle_gap)|).
    NaN share when the oracle gap's mean is 0; se 0 for one episode."""
    n, gap = diff.numel(), float(oracle_gap.mean())
    if gap == 0.0:
        return float("nan"), float("nan")
    share = float(diff.mean()) / gap
    se = float((diff - share * oracle_gap).std()) / (math.sqrt(n) * abs(gap)) if n > 1 else 0.0
    return share, se


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: policy, mean return +- its standard error, std, the paired difference to the
    heuristic +- its standard error, mean length, terminated fraction, episodes."""
    header = (
        f"{'policy':<16} {'return +- se':>15} {'std':>6} {'vs heuristic +- se':>19} {'length':>7} "
        f"{'terminated':>10} {'episodes':>8}"
    )
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        se = r.get("se_return", float("nan"))
        ret = f"{r['mean_return']:.2f} +- {se:.2f}"
        diff = f"{r['vs_heuristic']:+.2f} +- {r['vs_heuristic_se']:.2f}" if "vs_heuristic" in r else "-"
        lines.append(
            f"{name:<16} {ret:>15} {r['std_return']:>6.2f} {diff:>19} {r['mean_length']:>7.1f} "
            f"{r['terminated_frac']:>10.3f} {r['num_episodes']:>8d}"
        )
    gap = gap_shares(results)
    if gap:
        with_se = lambda k, v: (
            f"{k} {v:+.1%}" + (f" +- {results[k]['gap_share_se']:.1%}" if "gap_share_se" in results[k] else "")
        )
        lines.append("share of the heuristic-to-oracle gap closed: " + ", ".join(with_se(k, v) for k, v in gap.items()))
    margins = [
        f"{k} {r['vs_heuristic'] / r['vs_heuristic_se']:+.1f}"
        for k, r in results.items()
        if k.startswith("ppo") and r.get("vs_heuristic_se")
    ]
    if margins:
        lines.append("PPO minus heuristic in paired standard errors: " + ", ".join(margins))
    return "\n".join(lines)


def evaluation_markdown(results: dict[str, dict[str, Any]], episodes: int, seed: int) -> str:
    """The table of :func:`format_table` as markdown (TensorBoard's text tab renders it)."""
    lines = [
        f"{episodes} episodes, env seed {seed}; +- is the standard error",
        "",
        "| policy | return | se | std | vs heuristic | se (paired) | length | terminated |",
        "|---" * 8 + "|",
    ]
    for name, r in results.items():
        diff = (f"{r['vs_heuristic']:+.2f} | {r['vs_heuristic_se']:.2f}") if "vs_heuristic" in r else "- | -"
        lines.append(
            f"| {name} | {r['mean_return']:.2f} | {r['se_return']:.2f} | {r['std_return']:.2f} | {diff} | "
            f"{r['mean_length']:.1f} | {r['terminated_frac']:.3f} |"
        )
    shares = [f"{k} {r['gap_share']:+.1%} +- {r['gap_share_se']:.1%}" for k, r in results.items() if "gap_share" in r]
    if shares:
        lines += ["", "share of the heuristic-to-oracle gap closed (+- se): " + ", ".join(shares)]
    return "\n".join(lines)


def gap_shares(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``(ppo - heuristic) / (oracle - heuristic)`` of mean returns for every ppo entry (needs both)."""
    if "oracle" not in results or "heuristic" not in results:
        return {}
    h, o = results["heuristic"]["mean_return"], results["oracle"]["mean_return"]
    if o == h:
        return {}
    return {k: (v["mean_return"] - h) / (o - h) for k, v in results.items() if k.startswith("ppo")}
