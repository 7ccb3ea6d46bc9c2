"""Hostile and careless arguments to select_op / select_actions (issue 15): one rule on every backend,
and errors that name the argument instead of crashes, garbage or a kernel that already wrote."""

from __future__ import annotations

import pytest
import torch

from esper_fast.constants import HEAD_NAMES, GerminationStyle, LifecycleOp, get_action_head_sizes
from esper_fast.ops.actions import select_actions
from esper_fast.ops.select import select_op
from tests.conftest import BACKEND_DEVICES

SIZES = get_action_head_sizes(3)


def heads(n: int, device: str = "cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = {h: torch.randn(n, k, generator=g).to(device) for h, k in SIZES.items()}
    q = torch.randn(n, SIZES["op"], generator=g).to(device)
    return logits, q


# ---- item 4: a forced SIGMOID_ADD wins over a style mask that excludes it ------------------------
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("deterministic", [True, False])
def test_forced_style_wins_over_style_mask_on_every_backend(backend, device, deterministic):
    n = 6
    logits, q = heads(n, device)
    op_mask = torch.zeros(n, SIZES["op"], dtype=torch.bool)
    op_mask[:, LifecycleOp.WAIT] = True  # an op for which the style is forced
    style_mask = torch.ones(n, SIZES["style"], dtype=torch.bool)
    style_mask[:, GerminationStyle.SIGMOID_ADD] = False
    masks = {"op": op_mask.to(device), "style": style_mask.to(device)}
    sel = select_actions(logits, masks, q, deterministic=deterministic, backend=backend, validate=True)
    assert (sel.actions["op"].cpu() == LifecycleOp.WAIT).all()
    assert (sel.actions["style"].cpu() == GerminationStyle.SIGMOID_ADD).all()
    assert torch.equal(sel.log_probs["style"].cpu(), torch.zeros(n))
    assert torch.equal(sel.entropies["style"].cpu(), torch.zeros(n))
    # a free op (GERMINATE) keeps the style mask: SIGMOID_ADD is never chosen there
    op_mask2 = torch.zeros(n, SIZES["op"], dtype=torch.bool)
    op_mask2[:, LifecycleOp.GERMINATE] = True
    masks2 = {"op": op_mask2.to(device), "style": style_mask.to(device)}
    sel2 = select_actions(logits, masks2, q, deterministic=deterministic, backend=backend, validate=True)
    assert (sel2.actions["style"].cpu() != GerminationStyle.SIGMOID_ADD).all()
    assert (sel2.actions["style"].cpu() >= 0).all()
