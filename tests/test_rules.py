"""esper_fast.rules: esper's op-dependent rules, and that every path uses the one definition."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

from esper_fast.constants import HEAD_NAMES, NUM_OPS, STYLE_FREE_OPS, GerminationStyle, LifecycleOp
from esper_fast.ops import available_backends
from esper_fast.ops.actions import select_actions
from esper_fast.reference.actions import select_actions_reference
from esper_fast.rules import AFTER_OP, causal_masks, op_dependent_masks, slot_for_op, style_override_mask

PACKAGE = Path(__file__).resolve().parents[1] / "esper_fast"


def test_after_op_is_every_head_but_the_op_in_esper_order():
    assert set(AFTER_OP) == set(HEAD_NAMES) - {"op"} and len(AFTER_OP) == len(HEAD_NAMES) - 1
    assert AFTER_OP[:2] == ("style", "slot")  # style and slot follow the op (they depend on it)


def test_after_op_and_the_slot_gather_are_written_once():
    """No module but rules.py spells AFTER_OP's tuple or gathers ``slot_by_op`` itself."""
    for path in PACKAGE.rglob("*.py"):
        if path.name == "rules.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Tuple) and all(isinstance(e, ast.Constant) for e in node.elts):
                assert tuple(e.value for e in node.elts) != AFTER_OP, f"{path}: AFTER_OP spelled out again"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "gather":
                owner = ast.unparse(node.func.value)
                assert "slot_by_op" not in owner and "sbo" not in owner, f"{path}:{node.lineno}: {owner}.gather"


def test_slot_for_op_reads_the_ops_row():
    g = torch.Generator().manual_seed(0)
    sbo = torch.rand(5, NUM_OPS, 3, generator=g) < 0.5
    op = torch.tensor([0, 1, 2, 5, 3])
    assert torch.equal(slot_for_op(sbo, op), sbo[torch.arange(5), op])
    # any leading shape: [B, T, num_ops, S] with [B, T] ops
    sbo4 = torch.rand(2, 3, NUM_OPS, 4, generator=g) < 0.5
    op4 = torch.randint(0, NUM_OPS, (2, 3), generator=g)
    expected = torch.stack([torch.stack([sbo4[b, t, op4[b, t]] for t in range(3)]) for b in range(2)])
    assert torch.equal(slot_for_op(sbo4, op4), expected)


def test_slot_for_op_out_of_range_restricts_nothing():
    sbo = torch.zeros(4, NUM_OPS, 3, dtype=torch.bool)  # no slot valid for any op
    op = torch.tensor([-1, NUM_OPS, NUM_OPS + 7, 2])
    assert slot_for_op(sbo, op).tolist() == [[True] * 3, [True] * 3, [True] * 3, [False] * 3]


def test_style_override_forces_sigmoid_add_unless_the_op_frees_it():
    mask = torch.tensor([[True, True, False, True]]).expand(NUM_OPS + 1, 4)
    op = torch.tensor(list(range(NUM_OPS)) + [-1])
    out = style_override_mask(mask, op)
    forced = [i == int(GerminationStyle.SIGMOID_ADD) for i in range(4)]
    for row, o in enumerate(op.tolist()):
        assert out[row].tolist() == (mask[row].tolist() if o in STYLE_FREE_OPS else forced), o


def test_op_dependent_masks_combine_the_slot_mask_with_the_ops_row():
    g = torch.Generator().manual_seed(1)
    n, S = 6, 3
    sbo = torch.rand(n, NUM_OPS, S, generator=g) < 0.6
    slot = torch.rand(n, S, generator=g) < 0.6
    op = torch.tensor([0, 1, 2, 3, 4, -1])
    style, slot2 = op_dependent_masks(op, None, slot, sbo, 4, S)
    assert torch.equal(style, style_override_mask(torch.ones(n, 4, dtype=torch.bool), op))
    assert torch.equal(slot2[:5], slot[:5] & sbo[torch.arange(5), op[:5]]) and torch.equal(slot2[5], slot[5])
    assert op_dependent_masks(op, None, slot, None, 4, S)[1] is slot
    assert torch.equal(op_dependent_masks(op, None, None, sbo, 4, S)[1], slot_for_op(sbo, op))


def test_causal_masks_follow_the_constants():
    op = torch.arange(NUM_OPS)
    m = causal_masks(op)
    assert set(m) == set(HEAD_NAMES)
    assert m["op"].all() and m["slot"].tolist() == [o != int(LifecycleOp.WAIT) for o in range(NUM_OPS)]
    assert m["blueprint"].tolist() == [o == int(LifecycleOp.GERMINATE) for o in range(NUM_OPS)]
    assert m["style"].tolist() == [o in STYLE_FREE_OPS for o in range(NUM_OPS)]


def _backends() -> list[str]:
    names = [b for b in available_backends() if b in ("cpu", "cuda")]
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") or torch.cuda.is_available():
        names += [b for b in available_backends() if b == "triton"]
    return names


@pytest.mark.parametrize("backend", _backends())
def test_bad_op_rows_choose_the_slot_by_the_same_rule_on_every_backend(backend):
    """A row with no valid op (op -1) leaves slot_by_op out of the slot head (slot_for_op's rule), even
    when slot_by_op's WAIT row is empty: every backend agrees with the reference."""
    g = torch.Generator().manual_seed(2)
    device = "cuda" if backend in ("cuda",) or (backend == "triton" and torch.cuda.is_available()) else "cpu"
    sizes = dict(op=NUM_OPS, slot=3, blueprint=5, style=4, tempo=3, alpha_target=3, alpha_speed=4, alpha_curve=5)
    n = 9
    logits = {h: torch.randn(n, sizes[h], generator=g).to(device) for h in HEAD_NAMES}
    masks = {h: torch.ones(n, sizes[h], dtype=torch.bool, device=device) for h in HEAD_NAMES}
    masks["op"][:4] = False  # rows 0-3: no valid op
    sbo = torch.rand(n, NUM_OPS, 3, generator=g) < 0.5
    sbo[:, :, 1] = True
    sbo[:4, 0] = False  # the op-0 row (what a clamp to 0 would read) is empty there
    sbo = sbo.to(device)
    q = torch.randn(n, NUM_OPS, generator=g).to(device)
    ref = select_actions_reference(logits, masks, q, deterministic=True, slot_by_op=sbo)
    got = select_actions(logits, masks, q, deterministic=True, slot_by_op=sbo, backend=backend)
    assert (ref.actions["op"][:4] == -1).all() and (ref.actions["slot"][:4] >= 0).all()
    for h in HEAD_NAMES:
        assert torch.equal(got.actions[h], ref.actions[h]), h
        torch.testing.assert_close(got.log_probs[h], ref.log_probs[h], equal_nan=True)
