"""score_actions (the PPO update's fused scoring op): values and gradients vs the plain-torch reference."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.gradcheck import GradcheckError

import esper_fast.ops.score as score_mod
from esper_fast.constants import HEAD_NAMES, get_action_head_sizes
from esper_fast.errors import BackendUnavailableError
from esper_fast.network import FactoredNetwork
from esper_fast.ops.score import (
    ScoreLayout,
    score_actions,
    score_actions_op,
    score_actions_packed,
    score_actions_reference,
)
from esper_fast.ops.triton_score import score_backward_triton, score_forward_triton
from tests.conftest import BACKEND_DEVICES

KERNELS = [(b, d) for b, d in BACKEND_DEVICES if b in ("cpu", "triton")]
ODD_SIZES = {
    "slot": 5,
    "blueprint": 7,
    "style": 4,
    "tempo": 1,
    "alpha_target": 3,
    "alpha_speed": 2,
    "alpha_curve": 9,
    "op": 6,
}


def make_inputs(n, sizes=None, *, dtype=torch.float64, device="cpu", seed=0, p_valid=0.7, slot_by_op=False, scale=2.0):
    """Random heads with ragged masks (>= 1 valid per row except forced all-masked rows)."""
    g = torch.Generator().manual_seed(seed)
    sizes = sizes or get_action_head_sizes(3)
    logits = {h: (scale * torch.randn(n, s, generator=g)).to(dtype) for h, s in sizes.items()}
    masks = {}
    for h, s in sizes.items():
        m = torch.rand(n, s, generator=g) < p_valid
        m[torch.arange(n), torch.randint(0, s, (n,), generator=g)] = True
        masks[h] = m
    if n > 3:
        masks["blueprint"][1] = False  # an all-masked row
        masks["tempo"][2] = False
        masks["tempo"][2, 0] = True  # a single-valid row
    actions = {h: torch.randint(0, s, (n,), generator=g) for h, s in sizes.items()}
    actions["op"][: min(n, 4)] = torch.tensor([1, 2, 0, 3])[: min(n, 4)] % sizes["op"]  # style free and forced
    sbo = None
    if slot_by_op:
        sbo = torch.rand(n, sizes["op"], sizes["slot"], generator=g) < 0.6
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return (
        {h: to(t) for h, t in logits.items()},
        {h: to(t) for h, t in masks.items()},
        {h: to(t) for h, t in actions.items()},
        to(sbo),
    )


def weighted_loss(lp: dict, ent: dict, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(2, 8, *lp["op"].shape, generator=g, dtype=torch.float64)
    return sum(
        (lp[h].double() * w[0, k].to(lp[h].device)).sum() + (ent[h].double() * w[1, k].to(lp[h].device)).sum()
        for k, h in enumerate(HEAD_NAMES)
    )


def grads(fn, logits):
    leaves = {h: l.detach().clone().requires_grad_() for h, l in logits.items()}
    lp, ent = fn(leaves)
    g = torch.autograd.grad(weighted_loss(lp, ent), [leaves[h] for h in HEAD_NAMES])
    return lp, ent, dict(zip(HEAD_NAMES, g))


def assert_close_dicts(a, b, atol, rtol=1e-6):
    for h in HEAD_NAMES:
        torch.testing.assert_close(
            a[h].double().cpu(), b[h].double().cpu(), atol=atol, rtol=rtol, msg=lambda m: f"{h}: {m}"
        )


# ---- the reference is FactoredNetwork.score_actions -----------------------------------------------
def test_reference_equals_network_score_actions():
    logits, masks, actions, _ = make_inputs(40)
    net = FactoredNetwork(8, feature_dim=8, lstm_hidden_dim=8)
    lp0, ent0 = net.score_actions(logits, masks, actions)
    lp1, ent1 = score_actions_reference(logits, masks, actions)
    for h in HEAD_NAMES:
        assert torch.equal(lp0[h], lp1[h]) and torch.equal(ent0[h], ent1[h])


def test_reference_slot_by_op_is_the_op_dependent_slot_mask():
    logits, masks, actions, sbo = make_inputs(30, slot_by_op=True)
    by_op = sbo[torch.arange(30), actions["op"]]
    lp0, ent0 = score_actions_reference(logits, {**masks, "slot": masks["slot"] & by_op}, actions)
    lp1, ent1 = score_actions_reference(logits, masks, actions, sbo)
    assert torch.equal(lp0["slot"], lp1["slot"]) and torch.equal(ent0["slot"], ent1["slot"])


# ---- values and gradients ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize(
    "n,sizes,sbo", [(1, None, False), (7, ODD_SIZES, True), (37, None, True), (130, ODD_SIZES, False)]
)
def test_values_and_grads_equal_reference(backend, device, n, sizes, sbo):
    dtype = torch.float64 if backend == "cpu" else torch.float32
    logits, masks, actions, slot_by_op = make_inputs(n, sizes, dtype=dtype, device=device, slot_by_op=sbo)
    ref = grads(
        lambda l: score_actions_reference({h: t.double() for h, t in l.items()}, masks, actions, slot_by_op), logits
    )
    got = grads(lambda l: score_actions(l, masks, actions, slot_by_op, backend=backend), logits)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for a, b in zip(got, ref):
        assert_close_dicts(a, b, atol=tol, rtol=tol)
    assert got[0]["op"].dtype == dtype


@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(backend, device, dtype):
    """Kernels compute in fp32 from the half inputs: tight against the fp64 reference of the same
    values, loose against the reference run in the half dtype itself."""
    logits, masks, actions, sbo = make_inputs(33, dtype=dtype, device=device, slot_by_op=True)
    exact = grads(lambda l: score_actions_reference({h: t.double() for h, t in l.items()}, masks, actions, sbo), logits)
    same = grads(lambda l: score_actions_reference(l, masks, actions, sbo), logits)
    got = grads(lambda l: score_actions(l, masks, actions, sbo, backend=backend), logits)
    assert got[0]["op"].dtype == torch.float32 and got[2]["op"].dtype == dtype
    assert_close_dicts(got[0], exact[0], atol=1e-4, rtol=1e-5)
    assert_close_dicts(got[1], exact[1], atol=1e-5)
    assert_close_dicts(got[2], exact[2], atol=1e-2 if dtype == torch.bfloat16 else 2e-3, rtol=1e-2)
    loose = 0.1 if dtype == torch.bfloat16 else 2e-2
    for a, b in zip(got, same):
        assert_close_dicts(a, b, atol=loose, rtol=loose)


@pytest.mark.parametrize("backend,device", KERNELS)
def test_all_masked_and_single_valid_rows(backend, device):
    logits, masks, actions, _ = make_inputs(8, dtype=torch.float32, device=device)
    actions["op"][:2] = 1  # GERMINATE: style follows the mask
    for h in HEAD_NAMES:
        masks[h][0] = False  # row 0: every head all-masked (style: forced unless op free)
        masks[h][1] = False
        masks[h][1, actions[h][1]] = True  # row 1: only the stored action valid
    ref = grads(lambda l: score_actions_reference(l, masks, actions), logits)
    got = grads(lambda l: score_actions(l, masks, actions, backend=backend), logits)
    for a, b in zip(got, ref):
        assert_close_dicts(a, b, atol=1e-5, rtol=1e-5)
    for h in HEAD_NAMES:
        n = logits[h].shape[1]
        torch.testing.assert_close(got[0][h][0].cpu(), torch.tensor(-torch.log(torch.tensor(float(n))).item()))
        assert got[1][h][0].item() == 0.0 and got[1][h][1].item() == 0.0  # exactly 0 with <= 1 valid
        assert abs(got[0][h][1].item()) < 1e-6
        assert torch.count_nonzero(got[2][h][0]).item() == 0  # masked entries get no gradient


@pytest.mark.parametrize("backend,device", KERNELS)
def test_style_override_and_slot_by_op(backend, device):
    """Style: only SIGMOID_ADD unless GERMINATE / SET_ALPHA_TARGET; slot: mask & slot_by_op[op]."""
    n = 12
    logits, masks, actions, sbo = make_inputs(n, dtype=torch.float32, device=device, slot_by_op=True)
    actions["op"] = torch.arange(n, device=device) % 6
    actions["style"] = torch.full((n,), 2, device=device)
    lp, ent = score_actions(logits, masks, actions, sbo, backend=backend)
    forced = (actions["op"] != 1) & (actions["op"] != 2)
    assert torch.all(lp["style"][forced].abs() < 1e-6) and torch.all(ent["style"][forced] == 0)
    lp_ref, ent_ref = score_actions_reference(logits, masks, actions, sbo)
    torch.testing.assert_close(lp["slot"], lp_ref["slot"])
    torch.testing.assert_close(ent["slot"], ent_ref["slot"])
    lp_plain, _ = score_actions(logits, masks, actions, None, backend=backend)
    assert not torch.allclose(lp_plain["slot"], lp["slot"])  # slot_by_op changed something


@pytest.mark.parametrize("backend,device", KERNELS)
def test_non_contiguous_inputs(backend, device):
    n = 21
    logits, masks, actions, sbo = make_inputs(n, dtype=torch.float32, device=device, slot_by_op=True)
    layout = ScoreLayout.packed(get_action_head_sizes(3), order=HEAD_NAMES[::-1])
    packed = torch.cat([logits[h] for h in HEAD_NAMES[::-1]], -1)
    mask = torch.cat([masks[h] for h in HEAD_NAMES[::-1]], -1)
    acts = torch.stack([actions[h] for h in HEAD_NAMES], 0).t()  # column stride != 1
    wide = torch.zeros(n, packed.shape[1] + 5, device=device)
    wide[:, 3 : 3 + packed.shape[1]] = packed  # row stride > width
    strided_logits = wide[:, 3 : 3 + packed.shape[1]]
    transposed_mask = mask.t().contiguous().t()  # column-major bool
    sbo_nc = sbo.transpose(1, 2).contiguous().transpose(1, 2)
    assert not acts.is_contiguous() and not strided_logits.is_contiguous() and not sbo_nc.is_contiguous()
    lp, ent = score_actions_packed(strided_logits, layout, acts, transposed_mask, sbo_nc, backend=backend)
    lp_ref, ent_ref = score_actions_packed(packed, layout, acts.contiguous(), mask, sbo, backend="torch")
    torch.testing.assert_close(lp, lp_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ent_ref, atol=1e-6, rtol=1e-5)
    # leading [B, T] dims and a time-sliced buffer view, as evaluate_actions passes them
    big = torch.randn(3, 9, packed.shape[1], device=device)
    big_acts = torch.stack([torch.randint(0, s, (3, 9), device=device) for s in layout.sizes], -1)
    lp3, _ = score_actions_packed(big[:, 2:7], layout, big_acts[:, 2:7], None, None, backend=backend)
    lp3_ref, _ = score_actions_packed(
        big[:, 2:7].contiguous(), layout, big_acts[:, 2:7].contiguous(), None, None, backend="torch"
    )
    assert lp3.shape == (8, 3, 5)
    torch.testing.assert_close(lp3, lp3_ref, atol=1e-5, rtol=1e-5)


TRITON_DEVICE = next((d for b, d in KERNELS if b == "triton"), None)


def test_poisoned_outputs_are_fully_written():
    """Native and Triton entry points called with NaN-filled output buffers (gaps in the layout too)."""
    n = 19
    logits, masks, actions, sbo = make_inputs(n, dtype=torch.float32, slot_by_op=True)
    sizes = get_action_head_sizes(3)
    order = ("op", "slot", "style", "tempo", "alpha_target", "alpha_speed", "alpha_curve", "blueprint")
    base = ScoreLayout.packed(sizes, order)
    layout = ScoreLayout(tuple(o + (2 if o >= 6 else 0) for o in base.offsets), base.sizes, base.width + 2)  # 2-col gap
    packed = torch.full((n, layout.width), float("nan"))
    mask = torch.zeros(n, layout.width, dtype=torch.bool)
    for h, o, s in zip(HEAD_NAMES, layout.offsets, layout.sizes):
        packed[:, o : o + s], mask[:, o : o + s] = logits[h], masks[h]
    acts = torch.stack([actions[h] for h in HEAD_NAMES], -1)
    g_lp, g_ent = torch.randn(8, n), torch.randn(8, n)
    ref = {h: l.detach().clone().requires_grad_() for h, l in logits.items()}
    lp_r, ent_r = score_actions_reference(ref, masks, actions, sbo)
    torch.autograd.backward(
        [torch.stack([lp_r[h] for h in HEAD_NAMES]), torch.stack([ent_r[h] for h in HEAD_NAMES])], [g_lp, g_ent]
    )
    runners = [
        (
            "cpu",
            lambda *a: score_mod._NATIVE.score_forward(
                **score_mod._native_args(*a[:6]), out_log_prob=a[6].data_ptr(), out_entropy=a[7].data_ptr()
            ),
            lambda *a: score_mod._NATIVE.score_backward(
                **score_mod._native_args(*a[:6]),
                grad_log_prob=a[6].data_ptr(),
                grad_entropy=a[7].data_ptr(),
                grad_logits=a[8].data_ptr(),
            ),
        ),
        ("triton", score_forward_triton, score_backward_triton),
    ]
    for name, fwd, bwd in runners:
        dev = "cpu" if name == "cpu" else TRITON_DEVICE
        if dev is None:
            continue
        out_lp, out_ent = torch.full((8, n), float("nan"), device=dev), torch.full((8, n), float("nan"), device=dev)
        grad = torch.full((n, layout.width), float("nan"), device=dev)
        args = (packed.to(dev), mask.to(dev), acts.to(dev), sbo.to(dev), list(layout.offsets), list(layout.sizes))
        fwd(*args, out_lp, out_ent)
        bwd(*args, g_lp.to(dev), g_ent.to(dev), grad)
        out_lp, out_ent, grad = out_lp.cpu(), out_ent.cpu(), grad.cpu()
        assert torch.isfinite(out_lp).all() and torch.isfinite(out_ent).all() and torch.isfinite(grad).all(), name
        assert torch.all(grad[:, 6:8] == 0), name  # the gap columns
        torch.testing.assert_close(out_lp, torch.stack([lp_r[h] for h in HEAD_NAMES]).detach(), atol=1e-3, rtol=1e-5)
        for h, o, s in zip(HEAD_NAMES, layout.offsets, layout.sizes):
            torch.testing.assert_close(
                grad[:, o : o + s], ref[h].grad, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name} {h}: {m}"
            )


# ---- gradcheck, and a wrong gradient is caught ---------------------------------------------------------
def _gradcheck_packed(n=6, seed=0, slot_by_op=True):
    logits, masks, actions, sbo = make_inputs(n, ODD_SIZES, seed=seed, slot_by_op=slot_by_op, scale=1.0)
    layout = ScoreLayout.packed(ODD_SIZES)
    packed = torch.cat([logits[h] for h in HEAD_NAMES], -1).requires_grad_()
    mask = torch.cat([masks[h] for h in HEAD_NAMES], -1)
    acts = torch.stack([actions[h] for h in HEAD_NAMES], -1)
    return torch.autograd.gradcheck(
        lambda x: score_actions_packed(x, layout, acts, mask, sbo, backend="cpu"),
        (packed,),
        eps=1e-6,
        atol=1e-7,
        rtol=1e-5,
    )


def test_gradcheck_float64_cpu():
    assert _gradcheck_packed(seed=0)
    assert _gradcheck_packed(n=5, seed=3, slot_by_op=False)


@pytest.mark.parametrize("mutant", ["scaled", "no_entropy_term", "leaks_into_masked", "swapped_rows"])
def test_gradcheck_catches_a_wrong_gradient(monkeypatch, mutant):
    real = score_mod.score_actions_backward_op

    def wrong(g_lp, g_ent, logits, mask, actions, sbo, offsets, sizes, backend):
        if mutant == "no_entropy_term":
            return real(g_lp, torch.zeros_like(g_ent), logits, mask, actions, sbo, offsets, sizes, backend)
        grad = real(g_lp, g_ent, logits, mask, actions, sbo, offsets, sizes, backend)
        if mutant == "scaled":
            return grad * 1.01
        if mutant == "leaks_into_masked":
            return grad + 1e-3 * (~mask).to(grad.dtype)
        return grad.flip(0)

    monkeypatch.setattr(score_mod, "score_actions_backward_op", wrong)
    with pytest.raises(GradcheckError):
        _gradcheck_packed()


# ---- torch.library registration and torch.compile -------------------------------------------------------
def test_opcheck_registered_op():
    logits, masks, actions, sbo = make_inputs(9, dtype=torch.float32, slot_by_op=True)
    layout = ScoreLayout.packed(get_action_head_sizes(3))
    packed = torch.cat([logits[h] for h in HEAD_NAMES], -1).requires_grad_()
    mask = torch.cat([masks[h] for h in HEAD_NAMES], -1)
    acts = torch.stack([actions[h] for h in HEAD_NAMES], -1)
    torch.library.opcheck(score_actions_op, (packed, mask, acts, sbo, list(layout.offsets), list(layout.sizes), "cpu"))
    torch.library.opcheck(score_actions_op, (packed, None, acts, None, list(layout.offsets), list(layout.sizes), "cpu"))


def test_loss_compiles_fullgraph_and_matches_eager():
    logits, masks, actions, _ = make_inputs(16, dtype=torch.float32)

    def loss_fn(l):
        lp, ent = score_actions(l, masks, actions, backend="cpu")
        return sum(lp[h].mean() - 0.01 * ent[h].mean() for h in HEAD_NAMES)

    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    eager_leaves = {h: t.clone().requires_grad_() for h, t in logits.items()}
    comp_leaves = {h: t.clone().requires_grad_() for h, t in logits.items()}
    e, c = loss_fn(eager_leaves), compiled(comp_leaves)
    e.backward()
    c.backward()
    torch.testing.assert_close(c, e)
    for h in HEAD_NAMES:
        torch.testing.assert_close(comp_leaves[h].grad, eager_leaves[h].grad)


# ---- bad input -------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_argument():
    logits, masks, actions, sbo = make_inputs(4, dtype=torch.float32, slot_by_op=True)
    layout = ScoreLayout.packed(get_action_head_sizes(3))
    packed = torch.cat([logits[h] for h in HEAD_NAMES], -1)
    acts = torch.stack([actions[h] for h in HEAD_NAMES], -1)
    with pytest.raises(ValueError, match="logits must be"):
        score_actions_packed(packed[:, :-1], layout, acts)
    with pytest.raises(ValueError, match="actions must be int64"):
        score_actions_packed(packed, layout, acts.int())
    with pytest.raises(ValueError, match="actions must be int64"):
        score_actions_packed(packed, layout, acts[:, :7])
    with pytest.raises(ValueError, match="mask must be bool"):
        score_actions_packed(packed, layout, acts, torch.ones_like(packed))
    with pytest.raises(ValueError, match="slot_by_op must be bool"):
        score_actions_packed(packed, layout, acts, None, sbo[:, :, :2])
    with pytest.raises(TypeError, match="logits must be float"):
        score_actions_packed(packed.long(), layout, acts)
    with pytest.raises(BackendUnavailableError, match="unknown score backend"):
        score_actions_packed(packed, layout, acts, backend="nope")
    if ("triton", "cpu") in KERNELS:
        with pytest.raises(TypeError, match="float64"):
            score_actions_packed(packed.double(), layout, acts, backend="triton")


def test_out_of_range_action_gives_nan_not_garbage():
    logits, masks, actions, _ = make_inputs(5, dtype=torch.float32)
    actions["tempo"][3] = 7
    lp, _ = score_actions(logits, masks, actions, backend="cpu")
    assert torch.isnan(lp["tempo"][3]) and torch.isfinite(lp["tempo"][[0, 1, 2, 4]]).all()


@pytest.mark.skipif(score_mod._NATIVE is None, reason="esper_fast._C_score not built")
def test_native_entries_take_named_fields_only():
    """_C_score's entries take keyword arguments named as ScoreArgs' fields: positional integers are refused."""
    sizes = [get_action_head_sizes(3)[h] for h in HEAD_NAMES]
    logits = torch.randn(3, sum(sizes))
    actions = torch.zeros(3, 8, dtype=torch.int64)
    offsets = [sum(sizes[:h]) for h in range(8)]
    lp, ent = torch.empty(8, 3), torch.empty(8, 3)
    fields = score_mod._native_args(logits, None, actions, None, offsets, sizes)
    with pytest.raises(TypeError):
        score_mod._NATIVE.score_forward(*fields.values(), lp.data_ptr(), ent.data_ptr())
    score_mod._NATIVE.score_forward(**fields, out_log_prob=lp.data_ptr(), out_entropy=ent.data_ptr())
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
