"""torch.compile / CUDA-graph readiness: registered ops, fake impls, no graph breaks, fresh RNG."""

from __future__ import annotations

import pytest
import torch

from esper_fast import FactoredPolicy, select_op
from esper_fast.constants import HEAD_NAMES, get_action_head_sizes
from esper_fast.ops.actions import select_actions
from esper_fast.ops.library import select_actions_op, select_op_op
from esper_fast.ppo.agent import validation_off
from tests.conftest import requires_cuda
from tests.op_value import assert_value_read_at_returned_op


@pytest.fixture
def no_validation():
    with validation_off(FactoredPolicy):
        yield


def policy_inputs(B, device="cpu", seed=0):
    torch.manual_seed(seed)
    policy = FactoredPolicy(114, feature_dim=32, lstm_hidden_dim=32).to(device)
    state = torch.randn(B, 114, device=device)
    bp = torch.randint(-1, 13, (B, 3), device=device)
    masks = {f"{h}_mask": torch.ones(B, n, dtype=torch.bool, device=device) for h, n in policy.head_sizes.items()}
    return policy, state, bp, masks


def test_opcheck_registered_ops():
    g = torch.Generator().manual_seed(0)
    logits, q = torch.randn(9, 6, generator=g), torch.randn(9, 6, generator=g)
    mask = torch.rand(9, 6, generator=g) < 0.7
    mask[:, 0] = True
    torch.library.opcheck(select_op_op, (logits, q, mask, None, None, True, "cpu"))
    sizes = get_action_head_sizes(3)
    heads = [torch.randn(9, sizes[h], generator=g) for h in HEAD_NAMES]
    masks = [None] * 8
    torch.library.opcheck(select_actions_op, (heads, masks, masks, q, None, None, True, "cpu"))


def test_explicit_schemas_match_the_python_signatures():
    """The written-out schemas (kept for older torch releases) say what the annotations say."""
    from esper_fast.ops import library

    infer = getattr(torch.library, "infer_schema", None)
    if infer is None:
        pytest.skip("torch.library.infer_schema is not public in this torch")
    assert infer(select_op_op._init_fn, mutates_args=()) == library.SELECT_OP_SCHEMA
    assert infer(select_actions_op._init_fn, mutates_args=()) == library.SELECT_ACTIONS_SCHEMA
    assert str(torch.ops.esper_fast.select_op.default._schema) == "esper_fast::select_op" + library.SELECT_OP_SCHEMA


def test_get_action_compiles_fullgraph_and_matches_eager(no_validation):
    policy, state, bp, masks = policy_inputs(8)
    torch._dynamo.reset()
    compiled = torch.compile(policy.get_action, fullgraph=True, backend="aot_eager")
    got = compiled(state, bp, None, **masks, deterministic=True)
    ref = policy.get_action(state, bp, None, **masks, deterministic=True)
    for h in HEAD_NAMES:
        assert torch.equal(got.actions[h], ref.actions[h])
        torch.testing.assert_close(got.log_probs[h], ref.log_probs[h], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.values, ref.values, atol=1e-5, rtol=1e-5)
    sampled = compiled(state, bp, None, **masks, deterministic=False)
    assert_value_read_at_returned_op(policy, state, bp, sampled)
    assert torch.equal(sampled.sampled_op, sampled.actions["op"])  # value_read_op traced too


def test_select_op_and_select_actions_compile_fullgraph():
    torch._dynamo.reset()
    logits, q = torch.randn(5, 6), torch.randn(5, 6)
    f = torch.compile(
        lambda l, q: select_op(l, q, deterministic=True, validate=False), fullgraph=True, backend="aot_eager"
    )
    got, ref = f(logits, q), select_op(logits, q, deterministic=True)
    assert torch.equal(got.op, ref.op)
    torch.testing.assert_close(got.value, ref.value)
    sizes = get_action_head_sizes(3)
    heads = {h: torch.randn(5, sizes[h]) for h in HEAD_NAMES}
    g = torch.compile(
        lambda heads, q: select_actions(heads, {}, q, deterministic=True), fullgraph=True, backend="aot_eager"
    )
    got, ref = g(heads, q), select_actions(heads, {}, q, deterministic=True)
    assert all(torch.equal(got.actions[h], ref.actions[h]) for h in HEAD_NAMES)


@requires_cuda
def test_cuda_graph_replay_draws_fresh_actions(no_validation):
    from esper_fast.bench.get_action import capture_get_action

    policy, state, bp, masks = policy_inputs(256, "cuda")
    graph, static = capture_get_action(policy, state, bp, None, **masks)
    seen = []
    for _ in range(3):
        with torch.inference_mode():  # get_action's outputs are inference tensors
            for t in static.actions.values():
                t.fill_(-7)  # poison: only the replayed kernels can restore these
            static.values.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert all((t >= 0).all() for t in static.actions.values())
        assert torch.isfinite(static.values).all()
        assert_value_read_at_returned_op(policy, state, bp, static)
        assert torch.equal(static.sampled_op, static.actions["op"])  # value_read_op replayed in the graph
        seen.append(torch.stack([static.actions[h] for h in HEAD_NAMES]).clone())
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])


@requires_cuda
def test_get_action_compiles_with_inductor_on_gpu(no_validation):
    policy, state, bp, masks = policy_inputs(64, "cuda")
    torch._dynamo.reset()
    compiled = torch.compile(policy.get_action, fullgraph=True)
    got = compiled(state, bp, None, **masks, deterministic=True)
    ref = policy.get_action(state, bp, None, **masks, deterministic=True)
    assert all(torch.equal(got.actions[h], ref.actions[h]) for h in HEAD_NAMES)
