"""esper_fast.errors: the one set of validation messages, as every validator words them."""

from __future__ import annotations

import re

import pytest
import torch

from esper_fast.constants import HEAD_NAMES
from esper_fast.errors import (
    KASMINA_HINT,
    InvalidActionMaskError,
    InvalidStateMachineError,
    no_valid_actions_message,
    nonfinite_logits_message,
)
from esper_fast.ops.actions import select_actions
from esper_fast.ops.select import select_op
from esper_fast.policy import FactoredPolicy
from esper_fast.policy_v2 import FactoredPolicyV2

# the one format: "No valid [op ]actions available[where][ for head 'h'] in k row(s), first rows [..][ cause].[ hint]"
EMPTY = re.compile(
    r"^No valid (op )?actions available( in forward\(\))?( for head '\w+')? in \d+ row\(s\), "
    r"first rows \[[\d, ]*\][^.]*\.( .+)?$"
)
NONFINITE = re.compile(
    r"^logits(\['\w+'\])? contain inf/nan( at valid entries)? in \d+ row\(s\), first rows \[[\d, ]*\]\."
)


def test_the_message_builders():
    assert no_valid_actions_message(None, [3, 7], 2) == "No valid actions available in 2 row(s), first rows [3, 7]."
    assert no_valid_actions_message("op", [0], 1, where=" in forward()", hint=KASMINA_HINT) == (
        "No valid op actions available in forward() for head 'op' in 1 row(s), first rows [0]. " + KASMINA_HINT
    )
    assert no_valid_actions_message("slot", [1], 1, cause="once the rules apply") == (
        "No valid actions available for head 'slot' in 1 row(s), first rows [1] once the rules apply."
    )
    assert (
        nonfinite_logits_message("tempo", [2], 1)
        == "logits['tempo'] contain inf/nan at valid entries in 1 row(s), first rows [2]."
    )
    assert (
        nonfinite_logits_message(None, [0], 1, valid_only=False)
        == "logits contain inf/nan in 1 row(s), first rows [0]."
    )


def _heads(n: int = 4):
    g = torch.Generator().manual_seed(0)
    sizes = dict(op=6, slot=3, blueprint=5, style=4, tempo=3, alpha_target=3, alpha_speed=4, alpha_curve=5)
    logits = {h: torch.randn(n, sizes[h], generator=g) for h in HEAD_NAMES}
    masks = {h: torch.ones(n, sizes[h], dtype=torch.bool) for h in HEAD_NAMES}
    return logits, masks, torch.randn(n, 6, generator=g)


def test_every_validator_words_its_errors_alike():
    logits, masks, q = _heads()
    messages = []
    with pytest.raises(InvalidActionMaskError) as e:
        select_op(logits["op"], q, torch.zeros(4, 6, dtype=torch.bool), validate=True)
    messages.append(str(e.value))
    with pytest.raises(InvalidActionMaskError) as e:
        select_actions(logits, {**masks, "tempo": torch.zeros(4, 3, dtype=torch.bool)}, q, validate=True)
    messages.append(str(e.value))
    p = FactoredPolicy(state_dim=114, num_slots=3, feature_dim=16, lstm_hidden_dim=16, validate=True)
    state, bp = torch.randn(2, 114), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(InvalidStateMachineError) as e:
        p.get_action(state, bp, op_mask=torch.zeros(2, 6, dtype=torch.bool))
    messages.append(str(e.value))
    with pytest.raises(InvalidStateMachineError) as e:
        p.forward(state[:, None], bp[:, None], None, op_mask=torch.zeros(2, 1, 6, dtype=torch.bool))
    messages.append(str(e.value))
    old = FactoredPolicyV2.validate
    try:
        FactoredPolicyV2.validate = True
        p2 = FactoredPolicyV2(116, 16, 16)  # HEAD's obs v3: 116 non-blueprint features
        state = torch.randn(2, 116)
        only_germinate = torch.zeros(2, 6, dtype=torch.bool)
        only_germinate[:, 1] = True
        with pytest.raises(InvalidStateMachineError) as e:
            p2.get_action(state, bp, slot_mask=torch.zeros(2, 3, dtype=torch.bool), op_mask=only_germinate)
        messages.append(str(e.value))
    finally:
        FactoredPolicyV2.validate = old
    for m in messages:
        assert EMPTY.match(m), m
    bad = dict(logits)
    bad["alpha_curve"] = logits["alpha_curve"].clone()
    bad["alpha_curve"][3, 0] = float("nan")
    with pytest.raises(ValueError) as e:
        select_actions(bad, masks, q, validate=True)
    assert NONFINITE.match(str(e.value)) and "[3]" in str(e.value), str(e.value)
    with pytest.raises(ValueError) as e:
        select_op(bad["alpha_curve"], None, validate=True)
    assert NONFINITE.match(str(e.value)), str(e.value)
