"""Recurrent PPO for esper_fast's policy, esper's algorithm (commit 0872525b), one module per job.

``config`` (PPOConfig, presets) -> ``normalize`` -> ``buffer`` -> ``gae`` -> ``losses`` -> ``update``
-> ``trainer``; ``agent`` builds the policy and acts, ``checkpoint`` saves/loads (esper-compatible
network state), ``metrics`` writes CSV/JSONL/TensorBoard/PNG, ``distributed`` is torch.distributed
data parallelism, ``evaluate`` compares with the baselines, ``runlock`` keeps one run per directory.
"""

from esper_fast.ppo.checkpoint import CheckpointError, load_checkpoint, load_policy
from esper_fast.ppo.config import PRESETS, PPOConfig, make_config
from esper_fast.ppo.gae import compute_gae
from esper_fast.ppo.runlock import RunDirInUseError
from esper_fast.ppo.trainer import Trainer

__all__ = ["PPOConfig", "PRESETS", "make_config", "Trainer", "compute_gae", "CheckpointError",
           "load_checkpoint", "load_policy", "RunDirInUseError"]
