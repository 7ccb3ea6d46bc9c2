"""Score a trained policy against esper_fast's oracle, heuristic and random baselines on the same episodes."""

from __future__ import annotations

from typing import Any

import torch

from esper_fast.envs import HeuristicPolicy, OraclePolicy, RandomMaskedPolicy, SeedLifecycleEnv, evaluate_policy
from esper_fast.network import FactoredNetwork
from esper_fast.ppo.agent import PolicyActor, cpu_threads, env_config
from esper_fast.ppo.config import PPOConfig
from esper_fast.ppo.normalize import ObsNormalizer

__all__ = ["compare_with_baselines", "format_table", "gap_shares"]


def compare_with_baselines(policy: FactoredNetwork | None, obs_normalizer: ObsNormalizer | None, config: PPOConfig,
                           episodes: int, seed: int, device: str | torch.device = "cpu",
                           ppo_modes: tuple[str, ...] = ("sampled", "greedy")) -> dict[str, dict[str, Any]]:  # fmt: skip
    """``{name: evaluate_policy result}`` for the policy (each of ``ppo_modes``), the privileged oracle
    (reads the env's hidden true contributions), heuristic and random.

    Every entry plays the same ``episodes`` episodes (env seed ``seed``); ``returns`` tensors dropped.
    """
    env = SeedLifecycleEnv(episodes, env_config(config), device=device, seed=seed)
    controllers: dict[str, Any] = {}
    if policy is not None:
        for mode in ppo_modes:
            controllers[f"ppo ({mode})"] = PolicyActor(policy, obs_normalizer, deterministic=(mode == "greedy"),
                                                       op_conditioned_slot=config.op_conditioned_slot,
                                                       seed=seed)  # fmt: skip
    controllers["oracle"] = OraclePolicy(env)
    controllers["heuristic"] = HeuristicPolicy(env.config)
    controllers["random"] = RandomMaskedPolicy(seed=seed, device=device)
    results = {}
    with cpu_threads(config.torch_threads, device):
        for name, controller in controllers.items():
            res = evaluate_policy(env, controller, num_episodes=episodes, seed=seed)
            res.pop("returns", None)
            results[name] = res
    return results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: policy, mean +- std return, mean length, terminated fraction, episodes."""
    header = f"{'policy':<16} {'return':>16} {'length':>8} {'terminated':>11} {'episodes':>9}"
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        ret = f"{r['mean_return']:.2f} +- {r['std_return']:.2f}"
        lines.append(f"{name:<16} {ret:>16} {r['mean_length']:>8.1f} {r['terminated_frac']:>11.3f} {r['num_episodes']:>9d}")
    gap = gap_shares(results)
    if gap:
        lines.append("share of the heuristic-to-oracle gap closed: "
                     + ", ".join(f"{k} {v:+.1%}" for k, v in gap.items()))  # fmt: skip
    return "\n".join(lines)


def gap_shares(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``(ppo - heuristic) / (oracle - heuristic)`` of mean returns for every ppo entry (needs both)."""
    if "oracle" not in results or "heuristic" not in results:
        return {}
    h, o = results["heuristic"]["mean_return"], results["oracle"]["mean_return"]
    if o == h:
        return {}
    return {k: (v["mean_return"] - h) / (o - h) for k, v in results.items() if k.startswith("ppo")}
