"""The fused output layout: esper_fast/ops/layout.py and csrc/select_actions.h's constexpr twins agree."""

from __future__ import annotations

import pytest
import torch

from esper_fast.constants import HEAD_NAMES
from esper_fast.ops import layout
from esper_fast.ops.actions import select_actions
from esper_fast.ops.backends import _cpu_module


def test_python_and_cpp_layouts_agree():
    mod, why = _cpu_module()
    if mod is None:
        pytest.skip(f"esper_fast._C not built: {why}")
    assert dict(mod.OUTPUT_LAYOUT) == layout.PYTHON_LAYOUT


def test_layout_is_consistent():
    assert layout.NUM_HEADS == layout.ACTION_ROWS == len(HEAD_NAMES)
    rows = (
        [layout.log_prob_row(h) for h in range(layout.NUM_HEADS)]
        + [layout.entropy_row(h) for h in range(layout.NUM_HEADS)]
        + [layout.Q_OP_ROW, layout.VALUE_ROW]
    )
    assert sorted(rows) == list(range(layout.FLOAT_ROWS))  # every float row named exactly once
    assert layout.STATE_VALUE_ROW_V2 == layout.FLOAT_ROWS and layout.FLOAT_ROWS_V2 == layout.FLOAT_ROWS + 1


def test_cpu_kernel_writes_the_rows_the_layout_names():
    """The C++ kernel's raw buffers, read at the layout's rows, hold what select_op gives for the op head."""
    from esper_fast.constants import get_action_head_sizes
    from esper_fast.ops.select import select_op

    sizes = get_action_head_sizes(3)
    g = torch.Generator().manual_seed(0)
    n = 37
    logits = {h: torch.randn(n, sizes[h], generator=g) for h in HEAD_NAMES}
    q = torch.randn(n, sizes["op"], generator=g)
    sel = select_actions(logits, {}, q, deterministic=True, backend="cpu")
    op = HEAD_NAMES.index("op")
    ref = select_op(logits["op"], q, deterministic=True, backend="cpu")
    # the ActionSelection tensors are views of the two buffers: check the row each one sits at
    floats = sel.q_op._base if sel.q_op._base is not None else sel.q_op
    assert floats.shape == (layout.FLOAT_ROWS, n)
    assert torch.equal(floats[layout.Q_OP_ROW], ref.q_op) and torch.equal(floats[layout.VALUE_ROW], ref.value)
    assert torch.equal(floats[layout.log_prob_row(op)], ref.log_prob)
    assert torch.equal(floats[layout.entropy_row(op)], ref.entropy)
