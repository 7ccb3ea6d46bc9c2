"""Hostile and careless inputs to FactoredPolicy (issue 15): each case gets a clear error or the right
answer, never action -1 / NaN in silence, and the same behaviour on both sides of the explicit-cell
LSTM threshold (batch <= 128 on CPU runs explicit cells, larger batches nn.LSTM)."""

from __future__ import annotations

import copy

import pytest
import torch

from esper_fast import FactoredPolicy
from esper_fast.constants import HEAD_NAMES, LifecycleOp

STATE_DIM = 20
BATCHES = [1, 4, 200]  # 200 > 128: the nn.LSTM path of get_action on CPU


def policy(seed: int = 0, **kw) -> FactoredPolicy:
    torch.manual_seed(seed)
    return FactoredPolicy(STATE_DIM, feature_dim=16, lstm_hidden_dim=16, backend="cpu", **kw)


def inputs(B: int, seed: int = 0, T: int | None = None):
    g = torch.Generator().manual_seed(seed)
    lead = (B,) if T is None else (B, T)
    return torch.randn(*lead, STATE_DIM, generator=g), torch.randint(-1, 13, (*lead, 3), generator=g)


# ---- item 1: a diverged network must not pass validation -----------------------------------------
@pytest.mark.parametrize("B", BATCHES)
def test_nan_weights_raise_under_validation(B):
    p = policy()
    with torch.no_grad():
        p.op_head[2].weight.fill_(float("nan"))
    s, bp = inputs(B)
    with pytest.raises(ValueError, match="inf/nan"):
        p.get_action(s, bp)
    with pytest.raises(ValueError, match="inf/nan"):
        p.forward(s.unsqueeze(1), bp.unsqueeze(1))
    actions = {h: torch.zeros(B, 1, dtype=torch.int64) for h in HEAD_NAMES}
    with pytest.raises(ValueError, match="inf/nan"):
        p.evaluate_actions(s.unsqueeze(1), bp.unsqueeze(1), actions)


def test_nan_observation_at_batch_one_raises():
    p = policy()
    s, bp = inputs(1)
    s[0, 3] = float("nan")
    with pytest.raises(ValueError, match="inf/nan"):
        p.get_action(s, bp)


def test_validation_fast_path_is_one_check_on_healthy_inputs(monkeypatch):
    """Healthy logits take the one-sync path: each head's logits are checked once, not again per head."""
    import esper_fast.network as network

    calls = []
    real = torch.isfinite
    monkeypatch.setattr(network.torch, "isfinite", lambda t: calls.append(1) or real(t))
    logits = {"op": torch.randn(5, 6), "slot": torch.randn(5, 3)}
    network.validate_masks_and_logits(logits, {"op": torch.ones(5, 6, dtype=torch.bool), "slot": None})
    assert len(calls) == len(logits)
