"""The shared Philox uniform map: in the open interval (0, 1) at the one counter fp32 rounds to 1.0."""

from __future__ import annotations

import math

import pytest
import torch

from esper_fast.reference.philox import UNIFORM_MAX, gumbel_from_uniform, philox_uniform

# Counters (key, row, col, stream) whose Philox output has x >> 8 == 2^24 - 1, where the unclamped
# map ((x >> 8) + 0.5) * 2^-24 rounds to exactly 1.0 in fp32 (found by a search over rows with the
# reference implementation; any counter with that property would do).
EDGE_COUNTERS = [(12345, 5827187, 7, 0), (12345, 7320845, 3, 0)]


@pytest.mark.parametrize("key,row,col,stream", EDGE_COUNTERS)
def test_reference_uniform_below_one_at_edge_counter(key, row, col, stream):
    u = philox_uniform(torch.tensor(key), torch.tensor([row]), torch.tensor([col]), stream)
    assert u.dtype == torch.float32
    assert u.item() == UNIFORM_MAX < 1.0
    assert math.isfinite(gumbel_from_uniform(u).item())


@pytest.mark.parametrize("key,row,col,stream", EDGE_COUNTERS)
def test_cpu_uniform_matches_reference_at_edge_counter(key, row, col, stream):
    _C = pytest.importorskip("esper_fast._C")
    ref = philox_uniform(torch.tensor(key), torch.tensor([row]), torch.tensor([col]), stream).item()
    assert _C.philox_uniform(key, row, col, stream) == ref == UNIFORM_MAX


def test_clamp_touches_only_the_top_value():
    """Neighbouring counters keep their unclamped values (streams stay as they were elsewhere)."""
    key, row, col, stream = EDGE_COUNTERS[0]
    rows = torch.arange(row - 512, row + 512)
    u = philox_uniform(torch.tensor(key), rows[:, None], torch.arange(8)[None, :], stream)
    assert (u < 1.0).all() and (u > 0.0).all()
    assert int((u == UNIFORM_MAX).sum()) == 1


# Small counters with the same property, so a whole select_op / select_actions call reaches them (found
# by a search over keys with the reference map's integer part; x >> 8 == 2^24 - 1 at (row, col)).
# select_op draws stream 0; select_actions draws the op head from stream HEAD_NAMES.index("op") + 1 = 8.
SELECT_EDGE = (116087, 2, 7)  # key, row, col (stream 0)
ACTIONS_OP_EDGE = (253944, 2, 5)  # key, row, col (stream 8)


def _cpu_backends() -> list[str]:
    from tests.conftest import BACKEND_DEVICES

    return [b for b, d in BACKEND_DEVICES if d == "cpu"]


def test_small_edge_counters_hit_the_top_value():
    for (key, row, col), stream in ((SELECT_EDGE, 0), (ACTIONS_OP_EDGE, 8)):
        u = philox_uniform(torch.tensor(key), torch.tensor([row]), torch.tensor([col]), stream)
        assert u.item() == UNIFORM_MAX


@pytest.mark.parametrize("backend", _cpu_backends())
def test_select_op_never_picks_a_masked_entry_at_the_edge_counter(backend):
    from esper_fast.ops.backends import resolve_backend
    from esper_fast.ops.select import empty_selection

    key, row, col = SELECT_EDGE
    logits = torch.zeros(row + 1, col + 1)
    mask = torch.ones_like(logits, dtype=torch.bool)
    mask[row, col] = False
    out = empty_selection(row + 1, torch.device("cpu"))
    resolve_backend(backend, torch.device("cpu")).run(logits, None, mask, None, torch.tensor([key]), False, out)
    assert out.op[row] not in (col, -1)
    assert torch.isfinite(out.log_prob).all()
    # unmasked, the edge entry carries the largest (finite) noise of its row and wins
    resolve_backend(backend, torch.device("cpu")).run(logits, None, None, None, torch.tensor([key]), False, out)
    assert out.op[row] == col and torch.isfinite(out.log_prob).all()


@pytest.mark.parametrize("backend", _cpu_backends())
def test_select_actions_never_picks_a_masked_op_at_the_edge_counter(backend):
    from esper_fast.constants import get_action_head_sizes
    from esper_fast.ops.actions import empty_action_outputs, unpack_action_outputs
    from esper_fast.ops.backends import resolve_backend

    key, row, col = ACTIONS_OP_EDGE
    sizes = get_action_head_sizes(3)
    n = row + 1
    logits = {h: torch.zeros(n, k) for h, k in sizes.items()}
    op_mask = torch.ones(n, sizes["op"], dtype=torch.bool)
    op_mask[row, col] = False
    out = empty_action_outputs(n, torch.device("cpu"))
    resolve_backend(backend, torch.device("cpu")).run_actions(
        logits, {"op": op_mask}, torch.zeros(n, sizes["op"]), {}, None, torch.tensor([key]), False, out
    )
    sel = unpack_action_outputs(*out)
    assert sel.actions["op"][row] not in (col, -1)
    assert torch.isfinite(sel.log_probs["op"]).all()
