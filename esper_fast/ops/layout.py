"""The fused ``select_actions`` output layout, named once (C++ twin: ``csrc/select_actions.h``).

Every backend writes two buffers, heads in ``HEAD_NAMES`` order (0 slot ... 7 op):

* ``actions [ACTION_ROWS, N]`` int64: row ``h`` is head ``h``'s action.
* ``floats [FLOAT_ROWS, N]`` float32: row ``LOG_PROB_ROW + h`` is head ``h``'s log-prob, row
  ``ENTROPY_ROW + h`` its entropy, row ``Q_OP_ROW`` Q(s, chosen op), row ``VALUE_ROW`` sum_a pi(a) Q(s, a).

``select_actions_v2`` appends one float row, ``STATE_VALUE_ROW_V2`` (V(s), passed through), for
``FLOAT_ROWS_V2`` rows in all. ``tests/test_layout.py`` checks these against the C++ constants, which
the ``_C`` module exposes as ``OUTPUT_LAYOUT``.
"""

from __future__ import annotations

__all__ = [
    "NUM_HEADS",
    "ACTION_ROWS",
    "LOG_PROB_ROW",
    "ENTROPY_ROW",
    "Q_OP_ROW",
    "VALUE_ROW",
    "FLOAT_ROWS",
    "STATE_VALUE_ROW_V2",
    "FLOAT_ROWS_V2",
    "PYTHON_LAYOUT",
    "log_prob_row",
    "entropy_row",
    "write_selection",
]

NUM_HEADS = 8  # len(HEAD_NAMES)
ACTION_ROWS = NUM_HEADS
LOG_PROB_ROW = 0  # + head index
ENTROPY_ROW = NUM_HEADS  # + head index
Q_OP_ROW = 2 * NUM_HEADS
VALUE_ROW = Q_OP_ROW + 1
FLOAT_ROWS = VALUE_ROW + 1
STATE_VALUE_ROW_V2 = FLOAT_ROWS
FLOAT_ROWS_V2 = STATE_VALUE_ROW_V2 + 1

# The names the C++ module exposes (``esper_fast._C.OUTPUT_LAYOUT``), for the agreement test.
PYTHON_LAYOUT = {
    "num_heads": NUM_HEADS,
    "action_rows": ACTION_ROWS,
    "log_prob_row": LOG_PROB_ROW,
    "entropy_row": ENTROPY_ROW,
    "q_op_row": Q_OP_ROW,
    "value_row": VALUE_ROW,
    "float_rows": FLOAT_ROWS,
    "state_value_row_v2": STATE_VALUE_ROW_V2,
    "float_rows_v2": FLOAT_ROWS_V2,
}


def log_prob_row(head: int) -> int:
    """The floats row holding head ``head``'s log-prob (``head`` in HEAD_NAMES order)."""
    return LOG_PROB_ROW + head


def entropy_row(head: int) -> int:
    """The floats row holding head ``head``'s entropy."""
    return ENTROPY_ROW + head


def write_selection(sel, out) -> None:
    """Copy a reference ``ActionSelection`` (head -> ``actions`` / ``log_probs`` / ``entropies``, plus
    ``q_op`` and ``expected_value``) into the two output buffers ``out = (actions, floats)``, heads in
    ``HEAD_NAMES`` order. The torch backends of both fused ops use it."""
    from esper_fast.constants import HEAD_NAMES

    actions, floats = out
    for i, h in enumerate(HEAD_NAMES):
        actions[i].copy_(sel.actions[h])
        floats[LOG_PROB_ROW + i].copy_(sel.log_probs[h])
        floats[ENTROPY_ROW + i].copy_(sel.entropies[h])
    floats[Q_OP_ROW].copy_(sel.q_op)
    floats[VALUE_ROW].copy_(sel.expected_value)
