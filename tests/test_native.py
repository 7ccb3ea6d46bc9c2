"""esper_fast.ops._native and the cpu module's entries: named-field pointer calls, the lean one-entry
paths (same results and the same Philox key as the regular path), and their refusals."""

from __future__ import annotations

import pytest
import torch

from esper_fast.constants import HEAD_NAMES, get_action_head_sizes
from esper_fast.ops import select_op
from esper_fast.ops._native import action_fields, op_fields, prepare_actions, prepare_op
from esper_fast.ops.actions import empty_action_outputs, select_actions
from esper_fast.ops.backends import _cpu_module
from esper_fast.ops.select import empty_selection
from esper_fast.reference import select_op_reference

_C = _cpu_module()[0]
pytestmark = pytest.mark.skipif(_C is None, reason="esper_fast._C is not built")


def _inputs(n: int, a: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, a, generator=g)
    q = torch.randn(n, a, generator=g)
    mask = torch.rand(n, a, generator=g) < 0.6
    mask[:, 0] = True
    return logits, q, mask


def _heads(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    sizes = get_action_head_sizes(3)
    logits = {h: torch.randn(n, k, generator=g) for h, k in sizes.items()}
    masks = {h: torch.rand(n, k, generator=g) < 0.7 for h, k in sizes.items()}
    for m in masks.values():
        m[:, 0] = True
    return logits, masks, torch.randn(n, sizes["op"], generator=g)


def _same(a, b) -> None:
    for x, y in zip(a, b):
        assert torch.equal(x, y) or (x.is_floating_point() and torch.allclose(x, y, equal_nan=True, rtol=0, atol=0))


def test_pointer_entry_takes_named_fields_and_matches_the_reference():
    logits, q, mask = _inputs(37, 5, seed=1)
    inp, out = prepare_op(logits, q, mask, None), empty_selection(37, logits.device)
    assert _C.select_op(**op_fields(inp, None, True, out)) == 0
    ref = select_op_reference(logits, q, mask, deterministic=True)
    assert torch.equal(out.op, ref.op)
    torch.testing.assert_close(out.log_prob, ref.log_prob)


def test_pointer_entry_names_a_missing_unknown_or_mistyped_field():
    logits, q, mask = _inputs(4, 3, seed=2)
    inp, out = prepare_op(logits, q, mask, None), empty_selection(4, logits.device)
    fields = op_fields(inp, None, True, out)
    with pytest.raises(ValueError, match="select_op: missing argument 'out_value'"):
        _C.select_op(**{k: v for k, v in fields.items() if k != "out_value"})
    with pytest.raises(ValueError, match="select_op: unknown argument 'logit'"):
        _C.select_op(**fields, logit=0)
    with pytest.raises(TypeError, match="select_op: argument 'n' has the wrong type"):
        _C.select_op(**{**fields, "n": "four"})
    with pytest.raises(TypeError):
        _C.select_op(*fields.values())  # keyword arguments only
    logits_d, masks_d, qa = _heads(4, seed=3)
    act_in, act_out = prepare_actions(logits_d, masks_d, None, qa, None), empty_action_outputs(4, qa.device)
    act = action_fields(act_in, None, True, act_out)
    with pytest.raises(ValueError, match="select_actions: argument 'size' needs 8 entries"):
        _C.select_actions(**{**act, "size": act["size"][:7]})
    with pytest.raises(ValueError, match="select_actions_v2: missing argument 'floor'"):
        _C.select_actions_v2(**act)


@pytest.mark.parametrize("deterministic", [True, False])
def test_lean_select_op_matches_the_regular_path_and_draws_the_same_key(deterministic):
    logits, q, mask = _inputs(53, 6, seed=4)
    torch.manual_seed(123)
    lean = select_op(logits, q, mask, deterministic=deterministic)
    after_lean = torch.randint(0, 2**62, (1,))
    torch.manual_seed(123)  # an explicit generator takes the regular path (torch.randint key)
    regular = select_op(logits, q, mask, deterministic=deterministic, generator=torch.default_generator)
    after_regular = torch.randint(0, 2**62, (1,))
    _same(lean, regular)
    assert torch.equal(after_lean, after_regular)  # the lean path consumed exactly one key draw (or none)


@pytest.mark.parametrize("deterministic", [True, False])
def test_lean_select_actions_matches_the_regular_path(deterministic):
    logits, masks, q = _heads(41, seed=5)
    torch.manual_seed(7)
    lean = select_actions(logits, masks, q, deterministic=deterministic)
    torch.manual_seed(7)
    regular = select_actions(logits, masks, q, deterministic=deterministic, generator=torch.default_generator)
    for h in HEAD_NAMES:
        assert torch.equal(lean.actions[h], regular.actions[h]), h
        assert torch.equal(lean.log_probs[h], regular.log_probs[h]), h
        assert torch.equal(lean.entropies[h], regular.entropies[h]), h
    assert torch.equal(lean.q_op, regular.q_op) and torch.equal(lean.expected_value, regular.expected_value)


def test_lean_entries_decline_what_is_not_the_plain_case():
    logits, q, mask = _inputs(6, 4, seed=6)
    kb = torch.empty(1, dtype=torch.int64)
    before = torch.get_rng_state()
    declined = [
        (logits.t().contiguous().t(), q, mask, None),  # column stride != 1
        (logits, q[:, :3], mask, None),  # shape mismatch
        (logits, q, mask.float(), None),  # mask not bool
        (logits.double(), q, mask, None),  # dtype
        (logits, q, mask, torch.zeros(6, 4, dtype=torch.float16)),  # noise not fp32
        (logits[0], q, mask, None),  # 1-D
        ("logits", q, mask, None),  # not a tensor
        (logits[:, :0], q[:, :0], mask[:, :0], None),  # A = 0
    ]
    for args in declined:
        assert _C.select_op_lean(*args, False, kb) is None
    assert torch.equal(torch.get_rng_state(), before)  # nothing drawn when declining
    sel, bad = _C.select_op_lean(logits, q, mask, None, True, kb)
    assert bad == 0 and torch.equal(sel.op, select_op_reference(logits, q, mask, deterministic=True).op)
    all_masked = mask.clone()
    all_masked[2] = False
    assert _C.select_op_lean(logits, q, all_masked, None, True, kb)[1] == 1


def test_errors_keep_their_messages_through_the_lean_path():
    logits, q, mask = _inputs(5, 3, seed=8)
    with pytest.raises(ValueError, match=r"q must have shape \[5, 3\]"):
        select_op(logits, q[:, :2], mask)
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        select_op(logits, q, mask.float())
    bad = mask.clone()
    bad[3] = False
    with pytest.raises(Exception, match="No valid actions available in 1 row"):
        select_op(logits, q, bad)
    l8, m8, q8 = _heads(5, seed=9)
    with pytest.raises(ValueError, match=r"q must be a float \[5, 6\] tensor on cpu, got torch.float32 \[5, 2\]"):
        select_actions(l8, m8, q8[:, :2])


def test_lean_outputs_stay_on_the_cpu_under_another_default_device():
    logits, q, mask = _inputs(9, 4, seed=10)
    l8, m8, q8 = _heads(9, seed=11)
    with torch.device("meta"):  # torch.empty's default device; the CPU kernels need CPU outputs
        sel = select_op(logits, q, mask)
        acts = select_actions(l8, m8, q8)
        det = select_op(logits, q, mask, deterministic=True)
    assert sel.op.device.type == "cpu" and acts.actions["op"].device.type == "cpu"
    assert bool((sel.op >= 0).all()) and bool(mask.gather(1, sel.op[:, None]).all())  # valid sampled ops
    assert torch.equal(det.op, select_op_reference(logits, q, mask, deterministic=True).op)


def test_lean_key_buffer_first_made_under_inference_mode_works_outside_it() -> None:
    """The per-thread key buffer of the lean entries is a normal tensor even when the thread's first
    sampled call runs under torch.inference_mode (an inference tensor cannot be drawn into later)."""
    import threading

    errors: list[BaseException] = []

    def run() -> None:
        try:
            logits = torch.randn(5, 6)
            with torch.inference_mode():
                select_op(logits, None, None, deterministic=False, backend="cpu")
            select_op(logits, None, None, deterministic=False, backend="cpu")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=run)  # a fresh thread: its key buffer does not exist yet
    t.start()
    t.join()
    assert not errors, errors


def test_lean_outputs_are_fresh_and_match_the_reference_across_row_counts():
    """The lean entry allocates its outputs like cached [n] templates: every call (and every n, the
    templates being rebuilt when n changes) gets five distinct new buffers; poisoning one call's outputs
    leaves the next call's values equal to the reference."""
    kb = torch.empty(1, dtype=torch.int64)
    previous = []
    for n in (5, 5, 1, 17, 0, 5):
        logits, q, mask = _inputs(n, 4, seed=n + 20)
        sel, bad = _C.select_op_lean(logits, q, mask, None, True, kb)
        ptrs = {t.data_ptr() for t in sel if t.numel()}
        assert len(ptrs) == (5 if n else 0)  # no two fields share a buffer
        for old in previous:  # earlier results are still alive: nothing handed out twice
            assert not ptrs & {t.data_ptr() for t in old if t.numel()}
        ref = select_op_reference(logits, q, mask, deterministic=True)
        for got, want in zip(sel, ref):
            assert got.shape == (n,) and got.is_contiguous()
            torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-5, atol=1e-5)
        for t in sel:  # poison: must not leak into the next call
            t.fill_(-7)
        previous.append(sel)
        assert bad == 0


def test_lean_entry_argument_count_error():
    kb = torch.empty(1, dtype=torch.int64)
    logits, q, mask = _inputs(3, 4, seed=1)
    with pytest.raises(TypeError, match="takes 6 positional arguments, got 5"):
        _C.select_op_lean(logits, q, mask, None, True)
    with pytest.raises(TypeError, match="takes 6 positional arguments, got 7"):
        _C.select_op_lean(logits, q, mask, None, True, kb, kb)


def test_lean_outputs_follow_the_callers_inference_mode():
    kb = torch.empty(1, dtype=torch.int64)
    logits, q, mask = _inputs(4, 3, seed=2)
    with torch.inference_mode():
        inner, _ = _C.select_op_lean(logits, q, mask, None, True, kb)
    outer, _ = _C.select_op_lean(logits, q, mask, None, True, kb)  # same n: the same templates
    assert all(t.is_inference() for t in inner) and not any(t.is_inference() for t in outer)
    outer.log_prob.add_(1.0)  # a normal tensor: in-place use outside inference mode works
