"""Simulated environments for esper's controller: the batched seed-lifecycle env and baselines."""

from esper_fast.envs.baselines import HeuristicPolicy, OraclePolicy, RandomMaskedPolicy, evaluate_policy
from esper_fast.envs.exact_mdp import ExactMDP
from esper_fast.envs.masks import compute_action_masks, compute_slot_by_op_mask, effective_op
from esper_fast.envs.seed_lifecycle import EnvConfig, EnvObs, SeedLifecycleEnv, StepResult

__all__ = [
    "SeedLifecycleEnv",
    "EnvConfig",
    "EnvObs",
    "StepResult",
    "compute_action_masks",
    "compute_slot_by_op_mask",
    "effective_op",
    "HeuristicPolicy",
    "OraclePolicy",
    "RandomMaskedPolicy",
    "evaluate_policy",
    "ExactMDP",
]
