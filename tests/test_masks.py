"""esper's action-mask rules (``tamiyo/policy/action_masks.py``) on hand-built and random states."""

from __future__ import annotations

import pytest
import torch

from esper_fast.constants import (
    HEAD_NAMES,
    NUM_OPS,
    AlphaMode,
    AlphaTargetAction,
    BlueprintAction,
    GerminationStyle,
    LifecycleOp,
    SeedStage,
    get_action_head_sizes,
)
from esper_fast.envs.masks import (
    CNN_BLUEPRINTS,
    MIN_PRUNE_AGE,
    TRANSFORMER_BLUEPRINTS,
    compute_action_masks,
    compute_slot_by_op_mask,
    effective_op,
)

Op, St, Mode = LifecycleOp, SeedStage, AlphaMode
HOLD, UP, DOWN = int(Mode.HOLD), int(Mode.UP), int(Mode.DOWN)


def _state(*slots: tuple[SeedStage, int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One env; each slot is (stage, age, alpha_mode)."""
    stage = torch.tensor([[int(s[0]) for s in slots]])
    age = torch.tensor([[s[1] for s in slots]])
    mode = torch.tensor([[s[2] for s in slots]])
    return stage, age, mode


def _ops(masks: dict[str, torch.Tensor]) -> set[LifecycleOp]:
    return {Op(i) for i in range(NUM_OPS) if masks["op"][0, i]}


# ------------------------------------------------------------------ a scalar transcription of esper's rules
def _esper_masks_one_env(slots, enabled, total_seeds, max_seeds, topology):
    """Per-env rules as esper writes them: loops over slots, optimistic over enabled ones."""
    sizes = get_action_head_sizes(len(slots))
    ops = {int(Op.WAIT)}
    can_germinate = retarget = False
    seed_limit = max_seeds > 0 and total_seeds >= max_seeds
    for i, (stage, age, mode) in enumerate(slots):
        if not enabled[i]:
            continue
        if stage in (int(St.DORMANT), int(St.UNKNOWN)):
            can_germinate |= not seed_limit
            continue
        if stage in (int(St.GERMINATED), int(St.TRAINING), int(St.BLENDING)):
            ops.add(int(Op.ADVANCE))
        if stage == int(St.HOLDING):
            ops.add(int(Op.FOSSILIZE))
        if (
            stage in (int(St.GERMINATED), int(St.TRAINING), int(St.BLENDING), int(St.HOLDING))
            and age >= MIN_PRUNE_AGE
            and mode == HOLD
        ):
            ops.add(int(Op.PRUNE))
        if stage in (int(St.BLENDING), int(St.HOLDING)) and mode == HOLD:
            ops.add(int(Op.SET_ALPHA_TARGET))
            retarget = True
    if can_germinate:
        ops.add(int(Op.GERMINATE))
    free = can_germinate or retarget
    bps = CNN_BLUEPRINTS if topology == "cnn" else TRANSFORMER_BLUEPRINTS
    return {
        "slot": list(enabled),
        "blueprint": [b in bps and b != 0 for b in range(sizes["blueprint"])],
        "style": [free or s == int(GerminationStyle.SIGMOID_ADD) for s in range(sizes["style"])],
        "tempo": [True] * sizes["tempo"],
        "alpha_target": [free or a == int(AlphaTargetAction.FULL) for a in range(sizes["alpha_target"])],
        "alpha_speed": [True] * sizes["alpha_speed"],
        "alpha_curve": [True] * sizes["alpha_curve"],
        "op": [o in ops for o in range(NUM_OPS)],
    }


@pytest.mark.parametrize("num_slots,max_seeds,topology", [(3, 0, "cnn"), (5, 4, "transformer"), (1, 2, "cnn")])
def test_masks_match_scalar_rules_on_random_states(num_slots, max_seeds, topology):
    gen = torch.Generator().manual_seed(num_slots)
    E = 257
    stage = torch.tensor([int(s) for s in SeedStage])[torch.randint(0, len(SeedStage), (E, num_slots), generator=gen)]
    age = torch.randint(0, 3, (E, num_slots), generator=gen)
    mode = torch.randint(0, 3, (E, num_slots), generator=gen)
    enabled = torch.rand(E, num_slots, generator=gen) < 0.8
    total = torch.randint(0, 6, (E,), generator=gen)
    masks = compute_action_masks(stage, age, mode, enabled, total, max_seeds, topology)
    assert list(masks) == list(HEAD_NAMES)
    for e in range(E):
        slots = list(zip(stage[e].tolist(), age[e].tolist(), mode[e].tolist()))
        want = _esper_masks_one_env(slots, enabled[e].tolist(), int(total[e]), max_seeds, topology)
        for head in HEAD_NAMES:
            assert masks[head][e].tolist() == want[head], (head, e, slots)


def test_mask_shapes_and_dtypes():
    stage = torch.full((4, 5), int(St.DORMANT))
    masks = compute_action_masks(stage, torch.zeros_like(stage), torch.zeros_like(stage))
    for head, n in get_action_head_sizes(5).items():
        assert masks[head].shape == (4, n) and masks[head].dtype == torch.bool
    assert compute_slot_by_op_mask(stage, stage, stage).shape == (4, NUM_OPS, 5)


def test_empty_slots_allow_germinate_and_wait_only():
    masks = compute_action_masks(*_state((St.DORMANT, 0, HOLD), (St.UNKNOWN, 0, HOLD)))
    assert _ops(masks) == {Op.WAIT, Op.GERMINATE}
    assert masks["style"].all() and masks["alpha_target"].all()


def test_noop_blueprint_never_valid_and_topology_sets():
    stage, age, mode = _state((St.DORMANT, 0, HOLD))
    cnn = compute_action_masks(stage, age, mode, topology="cnn")["blueprint"][0]
    tr = compute_action_masks(stage, age, mode, topology="transformer")["blueprint"][0]
    assert not cnn[int(BlueprintAction.NOOP)] and not tr[int(BlueprintAction.NOOP)]
    assert cnn[int(BlueprintAction.CONV_HEAVY)] and not cnn[int(BlueprintAction.LORA)]
    assert tr[int(BlueprintAction.LORA)] and not tr[int(BlueprintAction.CONV_HEAVY)]
    assert cnn[int(BlueprintAction.ATTENTION)] and tr[int(BlueprintAction.ATTENTION)]
    with pytest.raises(ValueError, match="topology"):
        compute_action_masks(stage, age, mode, topology="rnn")


def test_germinated_seed_advances_but_cannot_be_pruned_at_age_zero():
    assert _ops(compute_action_masks(*_state((St.GERMINATED, 0, HOLD)))) == {Op.WAIT, Op.ADVANCE}
    assert _ops(compute_action_masks(*_state((St.GERMINATED, 1, HOLD)))) == {Op.WAIT, Op.ADVANCE, Op.PRUNE}


def test_training_seed_advance_and_prune_no_retarget():
    masks = compute_action_masks(*_state((St.TRAINING, 3, HOLD)))
    assert _ops(masks) == {Op.WAIT, Op.ADVANCE, Op.PRUNE}
    # nothing can germinate or be retargeted: style/alpha_target collapse to their defaults
    assert masks["style"][0].tolist() == [s == GerminationStyle.SIGMOID_ADD for s in GerminationStyle]
    assert masks["alpha_target"][0].tolist() == [a == AlphaTargetAction.FULL for a in AlphaTargetAction]
    assert masks["tempo"].all() and masks["alpha_speed"].all() and masks["alpha_curve"].all()


def test_blending_seed_with_moving_alpha_cannot_be_pruned_or_retargeted():
    assert _ops(compute_action_masks(*_state((St.BLENDING, 5, UP)))) == {Op.WAIT, Op.ADVANCE}
    held = compute_action_masks(*_state((St.BLENDING, 5, HOLD)))
    assert _ops(held) == {Op.WAIT, Op.ADVANCE, Op.PRUNE, Op.SET_ALPHA_TARGET}
    assert held["style"].all() and held["alpha_target"].all()


def test_holding_seed_fossilize_prune_retarget_but_no_advance():
    assert _ops(compute_action_masks(*_state((St.HOLDING, 9, HOLD)))) == {
        Op.WAIT,
        Op.FOSSILIZE,
        Op.PRUNE,
        Op.SET_ALPHA_TARGET,
    }
    assert _ops(compute_action_masks(*_state((St.HOLDING, 9, DOWN)))) == {Op.WAIT, Op.FOSSILIZE}


@pytest.mark.parametrize("stage", [St.FOSSILIZED, St.PRUNED, St.EMBARGOED, St.RESETTING])
def test_terminal_and_cooling_stages_only_wait(stage):
    masks = compute_action_masks(*_state((stage, 20, HOLD)))
    assert _ops(masks) == {Op.WAIT}  # cooling slots are not empty: no germination either


def test_disabled_slots_are_ignored_and_slot_mask_is_enabled():
    stage, age, mode = _state((St.HOLDING, 9, HOLD), (St.DORMANT, 0, HOLD))
    masks = compute_action_masks(stage, age, mode, enabled=torch.tensor([False, True]))
    assert masks["slot"][0].tolist() == [False, True]
    assert _ops(masks) == {Op.WAIT, Op.GERMINATE}
    sbo = compute_slot_by_op_mask(stage, age, mode, enabled=torch.tensor([False, True]))
    assert sbo[0, int(Op.WAIT)].tolist() == [False, True]


def test_max_seeds_blocks_germination():
    stage, age, mode = _state((St.DORMANT, 0, HOLD))
    assert Op.GERMINATE in _ops(compute_action_masks(stage, age, mode, total_seeds=torch.tensor([2]), max_seeds=3))
    assert Op.GERMINATE not in _ops(compute_action_masks(stage, age, mode, total_seeds=torch.tensor([3]), max_seeds=3))
    assert Op.GERMINATE in _ops(compute_action_masks(stage, age, mode, total_seeds=torch.tensor([99]), max_seeds=0))


def test_op_valid_when_any_slot_allows_it_and_slot_by_op_is_per_slot():
    stage, age, mode = _state((St.HOLDING, 9, HOLD), (St.TRAINING, 2, HOLD), (St.DORMANT, 0, HOLD))
    assert _ops(compute_action_masks(stage, age, mode)) == set(LifecycleOp)
    sbo = compute_slot_by_op_mask(stage, age, mode)[0]
    assert sbo[int(Op.FOSSILIZE)].tolist() == [True, False, False]
    assert sbo[int(Op.ADVANCE)].tolist() == [False, True, False]
    assert sbo[int(Op.GERMINATE)].tolist() == [False, False, True]
    assert sbo[int(Op.PRUNE)].tolist() == [True, True, False]
    assert sbo[int(Op.WAIT)].all()


def test_effective_op_turns_slot_mismatch_into_wait():
    stage, age, mode = _state((St.HOLDING, 9, HOLD), (St.TRAINING, 2, HOLD), (St.DORMANT, 0, HOLD))
    stage, age, mode = stage.expand(4, -1), age.expand(4, -1), mode.expand(4, -1)
    op = torch.tensor([int(Op.FOSSILIZE), int(Op.FOSSILIZE), int(Op.GERMINATE), int(Op.ADVANCE)])
    slot = torch.tensor([0, 1, 2, 2])
    assert effective_op(op, slot, stage, age, mode).tolist() == [int(Op.FOSSILIZE), 0, int(Op.GERMINATE), 0]
    disabled = torch.tensor([False, True, True])
    assert effective_op(op, slot, stage, age, mode, disabled).tolist() == [0, 0, int(Op.GERMINATE), 0]


def test_bad_shapes_raise():
    stage = torch.full((2, 3), int(St.DORMANT))
    with pytest.raises(ValueError, match="age"):
        compute_action_masks(stage, torch.zeros(2, 4, dtype=torch.long), torch.zeros_like(stage))
    with pytest.raises(ValueError, match="enabled"):
        compute_action_masks(stage, stage, stage, enabled=torch.ones(3))
