"""Constants of esper HEAD (2016337e, value-head schema v2) that differ from or add to 0872525b.

Read from esper-lite's ``src/esper/leyline/__init__.py`` at HEAD (facts, our own code): the
observation without blueprint embeddings is 23 base + 31 per slot features (116 for 3 slots; network
input 116 + 3 * 4 = 128), the value head is split into V(s) + Q(s, op) (schema version 2), per-head
probability floors and entropy floors, and the canonical ("placeholder") action every head takes when
the chosen op makes it irrelevant (``FactoredRecurrentActorCritic.get_action`` at HEAD).
"""

from __future__ import annotations

from esper_fast.constants import (
    CAUSAL_HEAD_OPS,
    AlphaCurveAction,
    AlphaSpeedAction,
    AlphaTargetAction,
    BlueprintAction,
    GerminationStyle,
    TempoAction,
)

__all__ = [
    "CANONICAL_ACTION",
    "ENTROPY_FLOOR_PENALTY_COEF",
    "ENTROPY_FLOOR_PER_HEAD",
    "OBS_V3_BASE_FEATURE_SIZE",
    "OBS_V3_NON_BLUEPRINT_DIM",
    "OBS_V3_SLOT_FEATURE_SIZE",
    "PROBABILITY_FLOOR_PER_HEAD",
    "VALUE_HEAD_SCHEMA_VERSION",
    "get_obs_v3_size",
]

OBS_V3_BASE_FEATURE_SIZE = 23
OBS_V3_SLOT_FEATURE_SIZE = 31
OBS_V3_NON_BLUEPRINT_DIM = OBS_V3_BASE_FEATURE_SIZE + 3 * OBS_V3_SLOT_FEATURE_SIZE  # 116
VALUE_HEAD_SCHEMA_VERSION = 2

# leyline PROBABILITY_FLOOR_PER_HEAD at HEAD: every valid action keeps at least this probability
# (capped at 0.99 / #valid), the rest renormalised (floor-preserving, one pass).
PROBABILITY_FLOOR_PER_HEAD: dict[str, float] = {
    "op": 0.15,
    "slot": 0.05,
    "blueprint": 0.12,
    "style": 0.08,
    "tempo": 0.12,
    "alpha_target": 0.08,
    "alpha_speed": 0.06,
    "alpha_curve": 0.06,
}
# leyline ENTROPY_FLOOR_PER_HEAD / ENTROPY_FLOOR_PENALTY_COEF at HEAD (normalised entropy, 0..1).
ENTROPY_FLOOR_PER_HEAD: dict[str, float] = {
    "op": 0.30,
    "slot": 0.15,
    "blueprint": 0.20,
    "style": 0.15,
    "tempo": 0.20,
    "alpha_target": 0.10,
    "alpha_speed": 0.10,
    "alpha_curve": 0.10,
}
ENTROPY_FLOOR_PENALTY_COEF: dict[str, float] = {
    "op": 0.3,
    "slot": 0.1,
    "blueprint": 0.3,
    "style": 0.1,
    "tempo": 0.3,
    "alpha_target": 0.1,
    "alpha_speed": 0.1,
    "alpha_curve": 0.1,
}

# head -> (the action forced when the op makes the head irrelevant, the ops for which it is relevant).
# The slot head is special: it is irrelevant only for WAIT and then takes the FIRST valid slot.
CANONICAL_ACTION: dict[str, tuple[int, tuple[int, ...]]] = {
    "blueprint": (int(BlueprintAction.NOOP), CAUSAL_HEAD_OPS["blueprint"]),
    "style": (int(GerminationStyle.SIGMOID_ADD), CAUSAL_HEAD_OPS["style"]),
    "tempo": (int(TempoAction.STANDARD), CAUSAL_HEAD_OPS["tempo"]),
    "alpha_target": (int(AlphaTargetAction.FULL), CAUSAL_HEAD_OPS["alpha_target"]),
    "alpha_speed": (int(AlphaSpeedAction.INSTANT), CAUSAL_HEAD_OPS["alpha_speed"]),
    "alpha_curve": (int(AlphaCurveAction.LINEAR), CAUSAL_HEAD_OPS["alpha_curve"]),
}


def get_obs_v3_size(num_slots: int = 3) -> int:
    """HEAD's observation size excluding blueprint embeddings: 23 + 31 per slot (116 for 3 slots)."""
    return OBS_V3_BASE_FEATURE_SIZE + OBS_V3_SLOT_FEATURE_SIZE * num_slots
