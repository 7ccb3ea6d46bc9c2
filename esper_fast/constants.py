"""esper's action-space constants and enums (floor 1: imports nothing from esper_fast).

Values match esper-lite at commit 0872525b (``leyline``), so actions, masks and checkpoints are
interchangeable with esper (esper-lite's ``leyline`` package at that commit is the source).
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "HEAD_NAMES",
    "NUM_ACTION_HEADS",
    "LifecycleOp",
    "GerminationStyle",
    "BlueprintAction",
    "TempoAction",
    "AlphaTargetAction",
    "AlphaSpeedAction",
    "AlphaCurveAction",
    "SeedStage",
    "AlphaMode",
    "NUM_OPS",
    "NUM_BLUEPRINTS",
    "NUM_STYLES",
    "NUM_TEMPO",
    "NUM_ALPHA_TARGETS",
    "NUM_ALPHA_SPEEDS",
    "NUM_ALPHA_CURVES",
    "DEFAULT_NUM_SLOTS",
    "MASKED_LOGIT_VALUE",
    "POLICY_VALUE_MODES",
    "TRAINER_VALUE_MODES",
    "BLUEPRINT_NULL_INDEX",
    "DEFAULT_BLUEPRINT_EMBED_DIM",
    "DEFAULT_FEATURE_DIM",
    "DEFAULT_LSTM_HIDDEN_DIM",
    "BASE_FEATURE_SIZE",
    "SLOT_FEATURE_SIZE",
    "DEFAULT_EPISODE_LENGTH",
    "STYLE_FREE_OPS",
    "get_feature_size",
    "get_action_head_sizes",
    "CAUSAL_HEAD_OPS",
]

HEAD_NAMES: tuple[str, ...] = (
    "slot",
    "blueprint",
    "style",
    "tempo",
    "alpha_target",
    "alpha_speed",
    "alpha_curve",
    "op",
)
NUM_ACTION_HEADS = len(HEAD_NAMES)


class LifecycleOp(IntEnum):
    WAIT = 0
    GERMINATE = 1
    SET_ALPHA_TARGET = 2
    PRUNE = 3
    FOSSILIZE = 4
    ADVANCE = 5


class GerminationStyle(IntEnum):
    LINEAR_ADD = 0
    LINEAR_MULTIPLY = 1
    SIGMOID_ADD = 2  # esper's default / "no-op" style: forced unless op is GERMINATE or SET_ALPHA_TARGET
    GATED_GATE = 3


class BlueprintAction(IntEnum):
    NOOP = 0
    CONV_LIGHT = 1
    ATTENTION = 2
    NORM = 3
    DEPTHWISE = 4
    BOTTLENECK = 5
    CONV_SMALL = 6
    CONV_HEAVY = 7
    LORA = 8
    LORA_LARGE = 9
    MLP_SMALL = 10
    MLP = 11
    FLEX_ATTENTION = 12


class TempoAction(IntEnum):
    FAST = 0  # 3 epochs
    STANDARD = 1  # 5 epochs
    SLOW = 2  # 8 epochs


class AlphaTargetAction(IntEnum):
    HALF = 0  # 0.5
    SEVENTY = 1  # 0.7
    FULL = 2  # 1.0


class AlphaSpeedAction(IntEnum):
    INSTANT = 0  # 0 steps
    FAST = 1  # 3 steps
    MEDIUM = 2  # 5 steps
    SLOW = 3  # 8 steps


class AlphaCurveAction(IntEnum):
    LINEAR = 0
    COSINE = 1
    SIGMOID_GENTLE = 2  # steepness 6
    SIGMOID = 3  # steepness 12
    SIGMOID_SHARP = 4  # steepness 24


class SeedStage(IntEnum):
    UNKNOWN = 0
    DORMANT = 1
    GERMINATED = 2
    TRAINING = 3
    BLENDING = 4
    # 5 is reserved upstream
    HOLDING = 6
    FOSSILIZED = 7
    PRUNED = 8
    EMBARGOED = 9
    RESETTING = 10


class AlphaMode(IntEnum):
    HOLD = 0
    UP = 1
    DOWN = 2


TEMPO_EPOCHS: tuple[int, ...] = (3, 5, 8)
ALPHA_TARGET_VALUES: tuple[float, ...] = (0.5, 0.7, 1.0)
ALPHA_SPEED_STEPS: tuple[int, ...] = (0, 3, 5, 8)
ALPHA_CURVE_STEEPNESS: tuple[float, ...] = (0.0, 0.0, 6.0, 12.0, 24.0)

NUM_OPS = len(LifecycleOp)
NUM_BLUEPRINTS = len(BlueprintAction)
NUM_STYLES = len(GerminationStyle)
NUM_TEMPO = len(TempoAction)
NUM_ALPHA_TARGETS = len(AlphaTargetAction)
NUM_ALPHA_SPEEDS = len(AlphaSpeedAction)
NUM_ALPHA_CURVES = len(AlphaCurveAction)
DEFAULT_NUM_SLOTS = 3

MASKED_LOGIT_VALUE = -1e4  # esper's FP16/BF16-safe fill for masked logits
# What the value of a decision is: Q(s, chosen op) ("q_op", esper's contract) or sum_a pi(a|s) Q(s, a)
# ("expected"); the trainer adds "legacy" (esper's double draw, ReferencePolicy(legacy=True)).
POLICY_VALUE_MODES: tuple[str, ...] = ("q_op", "expected")
TRAINER_VALUE_MODES: tuple[str, ...] = (*POLICY_VALUE_MODES, "legacy")
BLUEPRINT_NULL_INDEX = 13
DEFAULT_BLUEPRINT_EMBED_DIM = 4
DEFAULT_FEATURE_DIM = 512
DEFAULT_LSTM_HIDDEN_DIM = 512
BASE_FEATURE_SIZE = 24
SLOT_FEATURE_SIZE = 30
DEFAULT_EPISODE_LENGTH = 150

# Ops for which the style head is free; for every other op the network forces SIGMOID_ADD.
STYLE_FREE_OPS: tuple[int, ...] = (int(LifecycleOp.GERMINATE), int(LifecycleOp.SET_ALPHA_TARGET))

# esper's causal relevance (leyline/causal_masks.py): ops for which a head's choice matters.
# None means "always relevant" (op); slot is relevant for every op but WAIT.
CAUSAL_HEAD_OPS: dict[str, tuple[int, ...] | None] = {
    "op": None,
    "slot": tuple(int(o) for o in LifecycleOp if o != LifecycleOp.WAIT),
    "blueprint": (int(LifecycleOp.GERMINATE),),
    "style": STYLE_FREE_OPS,
    "tempo": (int(LifecycleOp.GERMINATE),),
    "alpha_target": STYLE_FREE_OPS,
    "alpha_speed": (int(LifecycleOp.SET_ALPHA_TARGET), int(LifecycleOp.PRUNE)),
    "alpha_curve": (int(LifecycleOp.SET_ALPHA_TARGET), int(LifecycleOp.PRUNE)),
}


def get_feature_size(num_slots: int = DEFAULT_NUM_SLOTS) -> int:
    """Observation size excluding blueprint embeddings: 24 + 30 per slot (114 for 3 slots)."""
    return BASE_FEATURE_SIZE + SLOT_FEATURE_SIZE * num_slots


def get_action_head_sizes(num_slots: int = DEFAULT_NUM_SLOTS) -> dict[str, int]:
    """Head name -> number of actions, in ``HEAD_NAMES`` order (slot head = ``num_slots``)."""
    return {
        "slot": num_slots,
        "blueprint": NUM_BLUEPRINTS,
        "style": NUM_STYLES,
        "tempo": NUM_TEMPO,
        "alpha_target": NUM_ALPHA_TARGETS,
        "alpha_speed": NUM_ALPHA_SPEEDS,
        "alpha_curve": NUM_ALPHA_CURVES,
        "op": NUM_OPS,
    }
