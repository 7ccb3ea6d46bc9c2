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


# ---- item 8: containers and arguments of select_actions -------------------------------------------
def test_unknown_head_keys_raise_naming_them():
    logits, q = heads(4)
    with pytest.raises(ValueError, match=r"masks has unknown heads \['slots'\]"):
        select_actions(logits, {"slots": torch.zeros(4, 3, dtype=torch.bool)}, q)
    with pytest.raises(ValueError, match=r"logits has unknown heads \['opp'\]"):
        select_actions({**logits, "opp": logits["op"]}, {}, q)
    with pytest.raises(ValueError, match=r"noise has unknown heads"):
        select_actions(logits, {}, q, noise={"Op": torch.zeros(4, 6)})


def test_masks_none_means_no_masks_and_q_none_names_q():
    logits, q = heads(4)
    a = select_actions(logits, None, q, deterministic=True, backend="cpu")
    b = select_actions(logits, {}, q, deterministic=True, backend="cpu")
    for h in HEAD_NAMES:
        assert torch.equal(a.actions[h], b.actions[h])
    with pytest.raises(TypeError, match="^q must be"):
        select_actions(logits, {}, None)


def test_zero_dim_logits_names_the_head():
    logits, q = heads(4)
    with pytest.raises(ValueError, match=r"logits\['op'\] must be 2-D"):
        select_actions({**logits, "op": torch.tensor(1.0)}, {}, q)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_nan_noise_raises_under_validation(backend, device):
    logits, q = heads(4, device)
    noise = {"op": torch.full((4, SIZES["op"]), float("nan"), device=device)}
    with pytest.raises(ValueError, match=r"noise must be finite.*\['op'\]"):
        select_actions(logits, {}, q, noise=noise, backend=backend, validate=True)


# ---- item 8: select_op's out= and inputs -------------------------------------------------------------
def _fresh_out(n):
    from esper_fast.ops.select import empty_selection

    return empty_selection(n, torch.device("cpu"))


def test_out_with_aliased_fields_raises_before_the_kernel():
    from esper_fast.types import OpSelection

    o = _fresh_out(4)
    o.op.fill_(-7)
    with pytest.raises(ValueError, match="out.log_prob and out.entropy share memory"):
        select_op(torch.randn(4, 6), None, out=OpSelection(o.op, o.log_prob, o.log_prob, o.q_op, o.value))
    assert (o.op == -7).all()  # nothing was written


@pytest.mark.parametrize("backend,device", [(b, d) for b, d in BACKEND_DEVICES if d == "cpu"])
def test_out_as_plain_tuple_is_accepted(backend, device):
    o = _fresh_out(4)
    logits = torch.randn(4, 6)
    res = select_op(logits, None, deterministic=True, out=tuple(o), backend=backend)
    assert res.op.data_ptr() == o.op.data_ptr()
    assert torch.equal(o.op, logits.argmax(-1))
    with pytest.raises(TypeError, match="out must be an OpSelection"):
        select_op(logits, None, out=[o.op, o.log_prob])


@pytest.mark.parametrize("backend,device", [(b, d) for b, d in BACKEND_DEVICES if d == "cpu"])
def test_out_overlapping_an_input_gives_the_same_answer(backend, device):
    n, a = 64, 6
    g = torch.Generator().manual_seed(3)
    buf = torch.randn(n * a + 4 * n, generator=g)
    logits = buf[: n * a].view(n, a)
    want = select_op(logits.clone(), None, deterministic=True, backend="torch")
    # out.log_prob and out.entropy lie over the last rows of logits: written before they are read
    o = _fresh_out(n)
    from esper_fast.types import OpSelection

    out = OpSelection(o.op, buf[n * a - 2 * n : n * a - n], buf[n * a - n : n * a], o.q_op, o.value)
    select_op(logits, None, deterministic=True, out=out, backend=backend)
    assert torch.equal(out.op, want.op)
    torch.testing.assert_close(out.log_prob, want.log_prob)
    torch.testing.assert_close(out.entropy, want.entropy)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_inputs_that_require_grad(backend, device):
    x = torch.randn(4, 6, device=device, requires_grad=True)
    res = select_op(x, x * 2, deterministic=True, backend=backend)
    assert torch.equal(res.op.cpu(), x.detach().argmax(-1).cpu())
    assert not res.log_prob.requires_grad


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_huge_logits_give_finite_entropy(backend, device):
    logits = torch.tensor([[3e38, -3e38, 3e38], [-3e38, 3e38, 1.0]], device=device)
    res = select_op(logits, None, deterministic=True, backend=backend)
    want = torch.tensor([2.0, 1.0]).log() * torch.tensor([1.0, 0.0])
    torch.testing.assert_close(res.entropy.cpu(), want)
    assert res.op.cpu().tolist() == [0, 1]


def test_cuda_width_limit_is_visible_to_auto(monkeypatch):
    """A > 1024: auto skips the cuda kernel; an explicit "cuda" names the limit (no GPU needed)."""
    import dataclasses

    from esper_fast import BackendUnavailableError
    from esper_fast.ops import backends

    for name in ("cuda", "triton"):
        monkeypatch.setitem(
            backends._BACKENDS, name, dataclasses.replace(backends._BACKENDS[name], why_not=lambda d: None)
        )
    dev = torch.device("cuda")
    assert backends.resolve_backend("auto", dev, (4, 1024)).name == "cuda"
    assert backends.resolve_backend("auto", dev, (4, 1025)).name == "triton"
    with pytest.raises(BackendUnavailableError, match="at most 1024 actions"):
        backends.resolve_backend("cuda", dev, (4, 1025))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_launch_on_a_gpu_other_than_the_current_one(backend):
    if backend not in __import__("esper_fast").available_backends("cuda"):
        pytest.skip(f"{backend} unavailable")
    logits = torch.randn(8, 6, device="cuda:1")
    res = select_op(logits, None, deterministic=True, backend=backend)
    assert torch.equal(res.op.cpu(), logits.argmax(-1).cpu())
