"""Gymnasium ids of esper_fast's envs (imports gymnasium, never torch: the adapters load on ``make``).

``import esper_fast`` calls :func:`register_envs` when gymnasium is installed, after which::

    gymnasium.make("esper_fast/SeedLifecycle-v0")            # one env, esper_fast.envs.gym.SeedLifecycleGymEnv
    gymnasium.make_vec("esper_fast/SeedLifecycle-v0", 16)    # batched, esper_fast.envs.gym.SeedLifecycleVectorEnv
    gymnasium.make("esper_fast/ExactMDP-v0")                 # ExactMDP through esper's eight heads

Without importing esper_fast first, ``gymnasium.make("esper_fast:esper_fast/SeedLifecycle-v0")``
imports it (Gymnasium's ``module:id`` form).
"""

from __future__ import annotations

__all__ = ["ENV_IDS", "register_envs"]

ENV_IDS: dict[str, tuple[str, str]] = {
    "esper_fast/SeedLifecycle-v0": (
        "esper_fast.envs.gym:SeedLifecycleGymEnv",
        "esper_fast.envs.gym:SeedLifecycleVectorEnv",
    ),
    "esper_fast/ExactMDP-v0": ("esper_fast.envs.gym:ExactMDPGymEnv", "esper_fast.envs.gym:ExactMDPVectorEnv"),
}
"""id -> (single-env entry point, vector entry point)."""


def register_envs() -> None:
    """Register :data:`ENV_IDS` with gymnasium (idempotent)."""
    import gymnasium

    for env_id, (entry, vector_entry) in ENV_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry, vector_entry_point=vector_entry)
