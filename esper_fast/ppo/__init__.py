"""Recurrent PPO for esper_fast's policy, esper's algorithm (commit 0872525b), one module per job.

``config`` (PPOConfig, presets) -> ``normalize`` -> ``buffer`` -> ``gae`` -> ``losses`` -> ``epochs`` -> ``update``
-> ``trainer``; ``agent`` builds the policy and acts, ``checkpoint`` saves/loads (esper-compatible
network state), ``metrics`` writes CSV/JSONL/TensorBoard/PNG, ``distributed`` is torch.distributed
data parallelism, ``evaluate`` compares with the baselines, ``runlock`` keeps one run per directory,
``api`` is the Stable-Baselines3-style ``PPO`` (learn / save / load / predict).

The names below are imported on first use, so ``esper_fast.ppo.config`` (which the CLI's ``--help``
reads) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from esper_fast.ppo.api import PPO
    from esper_fast.ppo.checkpoint import CheckpointError, load_checkpoint, load_policy
    from esper_fast.ppo.config import PRESETS, PPOConfig, make_config
    from esper_fast.ppo.gae import compute_gae
    from esper_fast.ppo.runlock import RunDirInUseError
    from esper_fast.ppo.trainer import Trainer

__all__ = [
    "PPOConfig",
    "PRESETS",
    "make_config",
    "Trainer",
    "compute_gae",
    "CheckpointError",
    "load_checkpoint",
    "load_policy",
    "PPO",
    "RunDirInUseError",
]

_LAZY = {
    "CheckpointError": "esper_fast.ppo.checkpoint",
    "load_checkpoint": "esper_fast.ppo.checkpoint",
    "load_policy": "esper_fast.ppo.checkpoint",
    "PRESETS": "esper_fast.ppo.config",
    "PPOConfig": "esper_fast.ppo.config",
    "make_config": "esper_fast.ppo.config",
    "compute_gae": "esper_fast.ppo.gae",
    "RunDirInUseError": "esper_fast.ppo.runlock",
    "Trainer": "esper_fast.ppo.trainer",
    "PPO": "esper_fast.ppo.api",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'esper_fast.ppo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
