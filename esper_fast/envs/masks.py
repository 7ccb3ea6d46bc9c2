"""esper's action-mask rules, vectorised over environments (esper's ``tamiyo/policy/action_masks.py``).

esper builds one mask dict per env from per-slot reports (``compute_action_masks`` in
``tamiyo/policy/action_masks.py``). Here the same rules run on batched state tensors:

* ``stage``      ``[E, S]`` int64 ``SeedStage`` values; an empty slot is DORMANT (or UNKNOWN);
* ``age``        ``[E, S]`` int64 epochs since germination (esper's ``seed_age_epochs``);
* ``alpha_mode`` ``[E, S]`` int64 ``AlphaMode`` values;
* ``enabled``    ``[E, S]`` or ``[S]`` bool, the slots the controller may use (default: all).

Only physically impossible actions are masked, optimistically across enabled slots: an op is valid
when ANY enabled slot allows it. A sampled op that does not fit the chosen slot is turned into WAIT
at execution time (:func:`effective_op`), exactly as esper's ``_parse_sampled_action`` does.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import Tensor

from esper_fast.constants import (
    HEAD_NAMES,
    NUM_ALPHA_CURVES,
    NUM_ALPHA_SPEEDS,
    NUM_ALPHA_TARGETS,
    NUM_BLUEPRINTS,
    NUM_STYLES,
    NUM_TEMPO,
    AlphaMode,
    AlphaTargetAction,
    BlueprintAction,
    GerminationStyle,
    LifecycleOp,
    SeedStage,
)
from esper_fast.rules import slot_for_op

__all__ = [
    "MIN_PRUNE_AGE",
    "FULL_EVALUATION_AGE",
    "MIN_HOLDING_EPOCHS",
    "CNN_BLUEPRINTS",
    "TRANSFORMER_BLUEPRINTS",
    "TOPOLOGIES",
    "topology_blueprints",
    "blueprint_mask_for",
    "compute_slot_by_op_mask",
    "compute_action_masks",
    "effective_op",
    "stage_in",
]

MIN_PRUNE_AGE = 1  # a seed must have lived one epoch before it can be pruned
FULL_EVALUATION_AGE = 10  # epochs after which esper treats a seed's counterfactual as settled
MIN_HOLDING_EPOCHS = 5  # esper's minimum dwell in HOLDING before fossilisation is advised

B = BlueprintAction
CNN_BLUEPRINTS: tuple[int, ...] = tuple(
    int(b) for b in (B.NOOP, B.NORM, B.ATTENTION, B.CONV_LIGHT, B.DEPTHWISE, B.BOTTLENECK, B.CONV_SMALL, B.CONV_HEAVY)
)
TRANSFORMER_BLUEPRINTS: tuple[int, ...] = tuple(
    int(b) for b in (B.NOOP, B.NORM, B.ATTENTION, B.LORA, B.LORA_LARGE, B.MLP_SMALL, B.MLP, B.FLEX_ATTENTION)
)
TOPOLOGIES: dict[str, tuple[int, ...]] = {"cnn": CNN_BLUEPRINTS, "transformer": TRANSFORMER_BLUEPRINTS}

# Stages from which each transition is legal (leyline VALID_TRANSITIONS).
_ADVANCEABLE = (SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING)
_PRUNABLE = (SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING)
_RETARGETABLE = (SeedStage.BLENDING, SeedStage.HOLDING)


def topology_blueprints(topology: str) -> tuple[int, ...]:
    """The blueprint set of ``topology`` ("cnn" or "transformer"), NOOP included."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"topology: expected one of {sorted(TOPOLOGIES)}, got {topology!r}")
    return TOPOLOGIES[topology]


def blueprint_mask_for(topology: str, device: torch.device | str | None = None) -> Tensor:
    """``[NUM_BLUEPRINTS]`` bool: the topology's blueprints, NOOP always False (do not modify)."""
    return _blueprint_mask(topology, torch.device(device) if device is not None else torch.device("cpu"))


@cache
def _blueprint_mask(topology: str, device: torch.device) -> Tensor:
    mask = torch.zeros(NUM_BLUEPRINTS, dtype=torch.bool)
    mask[list(topology_blueprints(topology))] = True
    mask[int(BlueprintAction.NOOP)] = False
    return mask.to(device)


@cache
def _stage_table(stages: tuple[int, ...], device: torch.device) -> Tensor:
    """``[max SeedStage + 1]`` bool lookup table: True for ``stages`` (cached per device)."""
    table = torch.zeros(max(SeedStage) + 1, dtype=torch.bool)
    table[list(stages)] = True
    return table.to(device)


def stage_in(stage: Tensor, stages: tuple[int, ...]) -> Tensor:
    """``stage`` (int64 SeedStage values, any shape) is one of ``stages``: one gather, no host sync."""
    return _stage_table(tuple(sorted(int(s) for s in stages)), stage.device)[stage]


def _check_state(stage: Tensor, age: Tensor, alpha_mode: Tensor, enabled: Tensor | None) -> Tensor:
    """Validate shapes; return ``enabled`` as ``[E, S]`` bool."""
    if stage.dim() != 2:
        raise ValueError(f"stage: expected shape [E, S], got {tuple(stage.shape)}")
    for name, t in (("age", age), ("alpha_mode", alpha_mode)):
        if t.shape != stage.shape:
            raise ValueError(f"{name}: expected shape {tuple(stage.shape)} (like stage), got {tuple(t.shape)}")
    if enabled is None:
        return torch.ones_like(stage, dtype=torch.bool)
    if enabled.dtype != torch.bool:
        raise ValueError(f"enabled: expected dtype torch.bool, got {enabled.dtype}")
    if enabled.dim() == 1:
        enabled = enabled.unsqueeze(0)
    if enabled.shape[-1] != stage.shape[1] or enabled.shape[0] not in (1, stage.shape[0]):
        raise ValueError(
            f"enabled: expected shape {tuple(stage.shape)} or [{stage.shape[1]}], got {tuple(enabled.shape)}"
        )
    return enabled.expand_as(stage)


def compute_slot_by_op_mask(
    stage: Tensor,
    age: Tensor,
    alpha_mode: Tensor,
    enabled: Tensor | None = None,
    total_seeds: Tensor | None = None,
    max_seeds: int = 0,
) -> Tensor:
    """Execution-time validity of every (op, slot) pair.

    Returns ``[E, NUM_OPS, S]`` bool. WAIT: every enabled slot. GERMINATE: enabled empty slots,
    unless ``max_seeds > 0`` and ``total_seeds [E] >= max_seeds``. ADVANCE: GERMINATED/TRAINING/
    BLENDING. FOSSILIZE: HOLDING. PRUNE: GERMINATED..HOLDING with ``age >= MIN_PRUNE_AGE`` and
    alpha mode HOLD. SET_ALPHA_TARGET: BLENDING/HOLDING with alpha mode HOLD.
    """
    enabled = _check_state(stage, age, alpha_mode, enabled)
    hold = alpha_mode == int(AlphaMode.HOLD)
    empty = stage_in(stage, (SeedStage.DORMANT, SeedStage.UNKNOWN))
    germ = empty
    if max_seeds > 0 and total_seeds is not None:
        germ = germ & (total_seeds.reshape(-1, 1) < max_seeds)
    per_op = [
        torch.ones_like(empty),  # WAIT
        germ,  # GERMINATE
        stage_in(stage, _RETARGETABLE) & hold,  # SET_ALPHA_TARGET
        stage_in(stage, _PRUNABLE) & (age >= MIN_PRUNE_AGE) & hold,  # PRUNE
        stage == int(SeedStage.HOLDING),  # FOSSILIZE
        stage_in(stage, _ADVANCEABLE),  # ADVANCE
    ]
    return torch.stack(per_op, dim=1) & enabled.unsqueeze(1)  # (E, NUM_OPS, S)


def compute_action_masks(
    stage: Tensor,
    age: Tensor,
    alpha_mode: Tensor,
    enabled: Tensor | None = None,
    total_seeds: Tensor | None = None,
    max_seeds: int = 0,
    topology: str = "cnn",
    slot_by_op: Tensor | None = None,
) -> dict[str, Tensor]:
    """esper's ``compute_action_masks`` for a batch: head -> ``[E, n_head]`` bool (True = valid).

    Keys follow ``HEAD_NAMES``. ``slot``: enabled slots. ``blueprint``: the topology set without
    NOOP. ``style``/``alpha_target``: all entries when some enabled slot can germinate or be
    retargeted, else only SIGMOID_ADD / FULL. ``tempo``, ``alpha_speed``, ``alpha_curve``: all.
    ``op``: WAIT always, every other op when any enabled slot allows it. ``slot_by_op`` may be
    passed when already computed (from :func:`compute_slot_by_op_mask`, same arguments).
    """
    enabled_es = _check_state(stage, age, alpha_mode, enabled)
    if slot_by_op is None:
        slot_by_op = compute_slot_by_op_mask(stage, age, alpha_mode, enabled_es, total_seeds, max_seeds)
    num_envs, device = stage.shape[0], stage.device
    op = slot_by_op.any(dim=-1)  # (E, NUM_OPS)
    op[:, int(LifecycleOp.WAIT)] = True
    free = (op[:, int(LifecycleOp.GERMINATE)] | op[:, int(LifecycleOp.SET_ALPHA_TARGET)]).unsqueeze(1)

    def full(n: int) -> Tensor:
        return torch.ones(num_envs, n, dtype=torch.bool, device=device)

    def only(n: int, index: int) -> Tensor:
        return torch.arange(n, device=device).unsqueeze(0) == index

    masks = {
        "slot": enabled_es.clone(),
        "blueprint": blueprint_mask_for(topology, device).unsqueeze(0).expand(num_envs, -1).clone(),
        "style": free | only(NUM_STYLES, int(GerminationStyle.SIGMOID_ADD)),
        "tempo": full(NUM_TEMPO),
        "alpha_target": free | only(NUM_ALPHA_TARGETS, int(AlphaTargetAction.FULL)),
        "alpha_speed": full(NUM_ALPHA_SPEEDS),
        "alpha_curve": full(NUM_ALPHA_CURVES),
        "op": op,
    }
    return {name: masks[name] for name in HEAD_NAMES}


def effective_op(
    op: Tensor,
    slot: Tensor,
    stage: Tensor,
    age: Tensor,
    alpha_mode: Tensor,
    enabled: Tensor | None = None,
    total_seeds: Tensor | None = None,
    max_seeds: int = 0,
    slot_by_op: Tensor | None = None,
) -> Tensor:
    """``[E]`` int64: the sampled ``op [E]`` where it is valid for the chosen ``slot [E]``, else WAIT.

    A disabled slot, or an op the slot's state does not allow, turns the action into WAIT
    (esper's execution-time rule; the stored action stays the sampled one). An op or slot outside its
    range (possible only with the env's action validation off) is never valid: WAIT.
    """
    if slot_by_op is None:
        slot_by_op = compute_slot_by_op_mask(stage, age, alpha_mode, enabled, total_seeds, max_seeds)
    num_envs, num_ops, num_slots = slot_by_op.shape
    if op.shape != (num_envs,) or slot.shape != (num_envs,):
        raise ValueError(f"op, slot: expected shape ({num_envs},), got {tuple(op.shape)}, {tuple(slot.shape)}")
    in_range = (op >= 0) & (op < num_ops) & (slot >= 0) & (slot < num_slots)
    slots = slot_for_op(slot_by_op, op)  # [E, S]
    valid = slots.gather(1, slot.clamp(0, num_slots - 1).unsqueeze(1)).squeeze(1) & in_range
    return torch.where(valid, op, torch.zeros_like(op))
