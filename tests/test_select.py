"""select_op on every backend against the pure-torch reference (esper_fast.reference)."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

import esper_fast
from esper_fast import InvalidActionMaskError, OpSelection, select_op
from esper_fast.errors import BackendUnavailableError
from esper_fast.ops.select import draw_key
from esper_fast.reference import reference_gumbel, select_op_reference
from tests.conftest import BACKEND_DEVICES, NATIVE_BACKEND_DEVICES, requires_cuda, small_n

SHAPES = [(1, 1), (1, 6), (7, 3), (33, 13), (64, 64), (129, 5), (257, 6)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 2e-5, torch.float16: 2e-5, torch.bfloat16: 2e-5}  # fp32 math in every case


def make_inputs(n, a, dtype=torch.float32, device="cpu", p_valid=0.6, seed=0, scale=2.0):
    """Random logits/q/mask with at least one valid entry per row; a quarter of rows keep one."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, a, generator=g) * scale).to(dtype)
    q = (torch.randn(n, a, generator=g) * 5).to(dtype)
    mask = torch.rand(n, a, generator=g) < p_valid
    keep = torch.randint(0, a, (n,), generator=g)
    mask[torch.arange(n), keep] = True
    single = torch.rand(n, generator=g) < 0.25
    mask[single] = False
    mask[single, keep[single]] = True
    return logits.to(device), q.to(device), mask.to(device)


def poisoned(n: int, device) -> OpSelection:
    """Outputs filled with -1 / NaN so a kernel that skips a row cannot pass."""
    return OpSelection(
        torch.full((n,), -7, dtype=torch.int64, device=device),
        *(torch.full((n,), float("nan"), device=device) for _ in range(4)),
    )


def assert_matches(got: OpSelection, ref: OpSelection, atol: float = 2e-5) -> None:
    assert torch.equal(got.op.cpu(), ref.op.cpu()), "chosen ops differ from the reference"
    for name in ("log_prob", "entropy", "q_op", "value"):
        torch.testing.assert_close(
            getattr(got, name).cpu(),
            getattr(ref, name).cpu(),
            atol=atol,
            rtol=1e-5,
            equal_nan=True,
            msg=lambda m, name=name: f"{name}: {m}",
        )


# ---- agreement with the reference -----------------------------------------------------------
@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic_matches_reference(backend, device, shape, dtype):
    logits, q, mask = make_inputs(*shape, dtype=dtype, device=device, seed=shape[0] * 131 + shape[1])
    out = poisoned(shape[0], device)
    got = select_op(logits, q, mask, deterministic=True, backend=backend, out=out)
    assert got is out
    ref = select_op_reference(logits, q, mask, deterministic=True)
    assert_matches(got, ref, TOL[dtype])
    assert (mask.gather(1, got.op[:, None])).all()


@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_explicit_noise_matches_reference(backend, device, shape, dtype):
    logits, q, mask = make_inputs(*shape, dtype=dtype, device=device, seed=7 + shape[0])
    noise = -torch.log(-torch.log(torch.rand(shape, generator=torch.Generator().manual_seed(3))))
    noise = noise.to(device)
    got = select_op(logits, q, mask, noise=noise, backend=backend, out=poisoned(shape[0], device))
    ref = select_op_reference(logits, q, mask, deterministic=False, noise=noise)
    assert_matches(got, ref, TOL[dtype])


@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES)
def test_no_mask_means_all_valid(backend, device):
    logits, q, _ = make_inputs(19, 7, device=device)
    got = select_op(logits, q, None, deterministic=True, backend=backend)
    ref = select_op_reference(logits, q, torch.ones_like(logits, dtype=torch.bool), deterministic=True)
    assert_matches(got, ref)


@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES)
def test_internal_rng_equals_reference_philox(backend, device):
    """Same generator seed -> same key -> the reference's Philox noise -> the same ops."""
    n = small_n(backend, device, 3000)
    logits, q, mask = make_inputs(n, 6, device=device, seed=11, scale=0.5)
    got = select_op(logits, q, mask, backend=backend, generator=torch.Generator(device).manual_seed(42))
    key = draw_key(torch.device(device), torch.Generator(device).manual_seed(42))
    noise = reference_gumbel(key, n, 6, device)
    ref = select_op_reference(logits, q, mask, deterministic=False, noise=noise)
    assert_matches(got, ref)


def test_backends_share_one_random_stream():
    """The seeded C++ kernel and the torch reference pick identical ops (bit-identical uniforms)."""
    logits, q, mask = make_inputs(500, 9, seed=5, scale=0.3)
    picks = [
        select_op(logits, q, mask, backend=b, generator=torch.Generator().manual_seed(9)).op
        for b in esper_fast.available_backends("cpu")
    ]
    for p in picks[1:]:
        assert torch.equal(p, picks[0])


# ---- the random stream ------------------------------------------------------------------------
@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES)
def test_masked_actions_never_sampled(backend, device):
    n = small_n(backend, device, 25_000)
    calls = 100_000 // n + (100_000 % n > 0)
    logits, q, mask = make_inputs(n, 8, device=device, p_valid=0.4, seed=2, scale=0.1)
    logits = logits.masked_fill(~mask, 5.0)  # masked entries carry the LARGEST logits
    gen = torch.Generator(device).manual_seed(0)
    for _ in range(calls):
        op = select_op(logits, q, mask, backend=backend, generator=gen).op
        assert mask.gather(1, op[:, None]).all()


@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES + [("torch", "cpu")])
@pytest.mark.parametrize("seed", [0, 1])
def test_samples_follow_softmax_chi_square(backend, device, seed):
    """Counts of 40K draws from one row fit softmax(masked logits); masked counts are exactly 0."""
    n = small_n(backend, device, 40_000)
    row = torch.tensor([0.3, -1.0, 2.0, 0.0, 1.1, -0.4, 0.7])
    valid = torch.tensor([True, True, False, True, True, True, False])
    logits = row.expand(n, -1).to(device)
    mask = valid.expand(n, -1).to(device)
    q = torch.zeros_like(logits)
    gen = torch.Generator(device).manual_seed(seed)
    counts = torch.zeros(7, dtype=torch.int64)
    draws = 0
    while draws < 40_000:
        op = select_op(logits, q, mask, backend=backend, generator=gen).op.cpu()
        counts += torch.bincount(op, minlength=7)
        draws += n
    assert counts[~valid].sum() == 0
    probs = torch.softmax(row.double().masked_fill(~valid, float("-inf")), 0)[valid]
    observed = counts[valid].double()
    _, p_value = chisquare(observed.numpy(), (probs * draws).numpy())
    assert p_value > 1e-3, f"chi-square p={p_value:.2e}; counts {observed.tolist()}"


@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES)
def test_seeded_calls_reproduce_and_consecutive_calls_differ(backend, device):
    logits, q, mask = make_inputs(small_n(backend, device, 512), 6, device=device, scale=0.1)
    torch.manual_seed(123)
    if device == "cuda":
        torch.cuda.manual_seed(123)
    first = select_op(logits, q, mask, backend=backend).op
    second = select_op(logits, q, mask, backend=backend).op
    torch.manual_seed(123)
    if device == "cuda":
        torch.cuda.manual_seed(123)
    again = select_op(logits, q, mask, backend=backend).op
    assert torch.equal(first, again)
    assert not torch.equal(first, second)


# ---- edge cases -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_empty_batch(backend, device):
    logits = torch.zeros(0, 5, device=device)
    got = select_op(logits, logits, torch.zeros(0, 5, dtype=torch.bool, device=device), backend=backend)
    assert all(t.shape == (0,) for t in got)
    assert got.op.dtype == torch.int64 and got.value.dtype == torch.float32


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("deterministic", [True, False])
def test_single_action(backend, device, deterministic):
    logits, q = torch.randn(5, 1, device=device), torch.randn(5, 1, device=device)
    got = select_op(logits, q, deterministic=deterministic, backend=backend, out=poisoned(5, device))
    assert (got.op == 0).all()
    assert torch.equal(got.log_prob.cpu(), torch.zeros(5))
    assert torch.equal(got.entropy.cpu(), torch.zeros(5))
    assert torch.equal(got.q_op.cpu(), q[:, 0].cpu())
    torch.testing.assert_close(got.value.cpu(), q[:, 0].cpu())


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_ties_pick_the_lowest_index(backend, device):
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, 5.0, 5.0, 5.0]], device=device)
    mask = torch.tensor([[True] * 4, [False, True, True, True], [True] * 4], device=device)
    q = torch.zeros_like(logits)
    det = select_op(logits, q, mask, deterministic=True, backend=backend)
    assert det.op.tolist() == [1, 1, 1]
    zero_noise = select_op(logits, q, mask, noise=torch.zeros_like(logits), backend=backend)
    assert zero_noise.op.tolist() == [1, 1, 1]


@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES)
def test_logits_already_filled_with_esper_mask_value(backend, device):
    """esper pre-masks logits with -1e4: still exact zero probability at masked entries here."""
    logits, q, mask = make_inputs(40, 6, device=device)
    filled = logits.masked_fill(~mask, -1e4)
    got = select_op(filled, q, mask, deterministic=True, backend=backend)
    assert_matches(got, select_op_reference(logits, q, mask, deterministic=True))


@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES)
def test_non_contiguous_views(backend, device):
    big_l, big_q, big_m = make_inputs(40, 20, device=device, seed=9)
    views = {
        "col_stride_2": (big_l[:, ::2], big_q[:, ::2], big_m[:, ::2]),
        "row_slice": (big_l[3:30, 4:11], big_q[3:30, 4:11], big_m[3:30, 4:11]),
        "transposed": (big_l[:7].t(), big_q[:7].t(), big_m[:7].t()),
    }
    for l, q, m in views.values():
        m = m.clone()
        m[:, 0] = True
        noise = torch.rand(l.shape, device=device).t().contiguous().t()  # non-contiguous noise
        for kw in ({"deterministic": True}, {"noise": noise}):
            got = select_op(l, q, m, backend=backend, **kw)
            ref = select_op_reference(l, q, m, deterministic=kw.get("deterministic", False), noise=kw.get("noise"))
            assert_matches(got, ref)


@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES)
def test_mixed_input_dtypes(backend, device):
    logits, q, mask = make_inputs(21, 6, device=device)
    got = select_op(logits.half(), q.bfloat16(), mask, deterministic=True, backend=backend)
    ref = select_op_reference(logits.half(), q.bfloat16(), mask, deterministic=True)
    assert_matches(got, ref)
    assert got.value.dtype == torch.float32


# ---- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("deterministic", [True, False])
def test_empty_mask_row_raises_naming_rows(backend, device, deterministic):
    logits, q, mask = make_inputs(10, 4, device=device)
    mask[3] = False
    mask[7] = False
    with pytest.raises(InvalidActionMaskError, match=r"^No valid actions available.*\[3, 7\]"):
        select_op(logits, q, mask, deterministic=deterministic, backend=backend)
    assert issubclass(InvalidActionMaskError, RuntimeError)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_valid_logit_raises(backend, device, bad_value):
    logits, q, mask = make_inputs(6, 4, device=device, p_valid=1.0)
    mask[:] = True
    logits[2, 1] = bad_value
    with pytest.raises(ValueError, match=r"inf/nan.*\[2\]"):
        select_op(logits, q, mask, backend=backend)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_non_finite_logit_at_masked_entry_is_ignored(backend, device):
    logits, q, mask = make_inputs(6, 4, device=device)
    mask[:, 0] = False
    mask[:, 1] = True
    logits[:, 0] = float("nan")
    got = select_op(logits, q, mask, deterministic=True, backend=backend)
    assert (got.op >= 1).all() and torch.isfinite(got.value).all()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_validate_false_marks_bad_rows_without_raising(backend, device):
    logits, q, mask = make_inputs(8, 5, device=device)
    mask[1] = False
    logits[4, :] = float("nan")
    mask[4, 0] = True
    got = select_op(logits, q, mask, backend=backend, validate=False, out=poisoned(8, device))
    assert got.op[1].item() == -1 and got.op[4].item() == -1
    for t in got[1:]:
        assert torch.isnan(t[[1, 4]]).all()
    good = torch.tensor([0, 2, 3, 5, 6, 7])
    assert (got.op.cpu()[good] >= 0).all() and torch.isfinite(got.value.cpu()[good]).all()


def test_argument_errors_name_the_argument():
    l, q, m = make_inputs(4, 3)
    cases = [
        ((l[0], q, m), {}, ValueError, "logits must be 2-D"),
        ((l, q[:, :2], m), {}, ValueError, r"q must have shape \[4, 3\]"),
        ((l, q, m[:2]), {}, ValueError, r"mask must have shape \[4, 3\]"),
        ((l.long(), q, m), {}, TypeError, "logits must be float32"),
        ((l, q.double(), m), {}, TypeError, "q must be float32"),
        ((l, q, m.float()), {}, TypeError, "mask must be a bool tensor"),
        ((l, q, m), {"noise": torch.zeros(4, 2)}, ValueError, "noise must have shape"),
        ((l, q, m), {"backend": "nope"}, ValueError, "backend must be one of"),
        ((torch.zeros(4, 0), torch.zeros(4, 0), None), {}, ValueError, "A >= 1"),
        (([[1.0]], q, m), {}, TypeError, "logits must be a torch.Tensor"),
        ((l, q, m), {"out": OpSelection(*[torch.empty(3)] * 5)}, ValueError, "out.op must be"),
    ]
    for args, kwargs, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            select_op(*args, **kwargs)


def test_unavailable_backend_is_refused_not_replaced():
    l, q, m = make_inputs(4, 3)
    with pytest.raises(BackendUnavailableError, match="'cuda' cannot run here"):
        select_op(l, q, m, backend="cuda")
    assert issubclass(BackendUnavailableError, ValueError)


def test_env_var_selects_backend(monkeypatch, request):
    from esper_fast.ops.backends import reload_env  # the variable is read at import and by reload_env

    def restore():
        monkeypatch.undo()  # the variable back first, then re-read it
        reload_env()

    request.addfinalizer(restore)
    l, q, m = make_inputs(4, 3)
    monkeypatch.setenv("ESPER_FAST_BACKEND", "bogus")
    reload_env()
    with pytest.raises(ValueError, match=r"ESPER_FAST_BACKEND"):
        select_op(l, q, m)
    monkeypatch.setenv("ESPER_FAST_BACKEND", "cuda")
    reload_env()
    with pytest.raises(BackendUnavailableError):
        select_op(l, q, m)
    monkeypatch.setenv("ESPER_FAST_BACKEND", "torch")
    reload_env()
    assert_matches(select_op(l, q, m, deterministic=True), select_op_reference(l, q, m, deterministic=True))


def test_generator_must_be_a_generator():
    l, q, m = make_inputs(4, 3)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        select_op(l, q, m, generator=5)


@requires_cuda
def test_generator_on_wrong_device_is_refused():
    l, q, m = make_inputs(4, 3)
    with pytest.raises(ValueError, match="generator is on"):
        select_op(l, q, m, generator=torch.Generator("cuda"))


@requires_cuda
def test_tensors_on_different_devices_are_refused():
    l, q, m = make_inputs(4, 3)
    with pytest.raises(ValueError, match="q is on cpu but logits is on cuda"):
        select_op(l.cuda(), q, m.cuda())


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("a", [65, 100, 128, 129, 255, 256, 300, 512, 513, 1000, 1024])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_rows_wider_than_64_match_reference(a, dtype):
    """Rows wider than 64 take the multi-element-per-lane kernels (csrc/select_cuda.cu: EPT 4 ... 32 at
    32 lanes); every width class, full and partial, against the reference: argmax, noise, the Philox
    stream; outputs poisoned first; non-contiguous rows too. (A > 1024 is refused: test_adversarial_ops.)"""
    n = 203  # odd: a partial last block
    tol = TOL[dtype] * max(1.0, a / 64)  # fp32 sums over A terms in another order than torch's
    logits, q, mask = make_inputs(n, a, dtype=dtype, device="cuda", seed=a)
    noise = torch.rand(n, a, device="cuda")
    for kw in ({"deterministic": True}, {"noise": noise}):
        got = select_op(logits, q, mask, backend="cuda", out=poisoned(n, "cuda"), **kw)
        ref = select_op_reference(logits, q, mask, deterministic="deterministic" in kw, noise=kw.get("noise"))
        assert_matches(got, ref, tol)
    got = select_op(logits, q, mask, backend="cuda", generator=torch.Generator("cuda").manual_seed(a))
    key = draw_key(torch.device("cuda"), torch.Generator("cuda").manual_seed(a))
    assert_matches(got, select_op_reference(logits, q, mask, deterministic=False, key=key), tol)
    wide_l, wide_q, wide_m = make_inputs(n, 2 * a, dtype=dtype, device="cuda", seed=a + 1)
    l, qq, m = wide_l[:, ::2], wide_q[:, ::2], wide_m[:, ::2].clone()
    m[:, 0] = True
    got = select_op(l, qq, m, deterministic=True, backend="cuda")
    assert_matches(got, select_op_reference(l, qq, m, deterministic=True), tol)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_torch_backend_is_the_reference(device):
    """By design the ``torch`` backend runs :mod:`esper_fast.reference` itself, which is why the
    backend-vs-reference tests compare only the other backends: its outputs are the reference's bit for
    bit (NaNs included) for select_op, select_actions and select_actions_v2, with noise, a key or argmax."""
    from esper_fast.ops.actions import select_actions
    from esper_fast.ops.actions_v2 import select_actions_v2
    from esper_fast.reference.actions import select_actions_reference
    from esper_fast.reference.actions_v2 import select_actions_v2_reference
    from tests.test_actions import make_heads

    def same(a, b):
        for x, y in zip(a, b):
            if isinstance(x, dict):
                assert list(x) == list(y) and all(
                    torch.equal(x[h], y[h]) or torch.allclose(x[h], y[h], 0, 0, True) for h in x
                )
            else:
                assert torch.equal(x, y) or torch.allclose(x, y, rtol=0, atol=0, equal_nan=True)

    n = 37
    logits, q, mask = make_inputs(n, 7, device=device, seed=21)
    mask[3] = False  # a bad row: -1 / NaN on both
    noise = torch.rand(n, 7, device=device)
    key = draw_key(torch.device(device), torch.Generator(device).manual_seed(4))
    for kw in ({"deterministic": True}, {"noise": noise}):
        same(
            select_op(logits, q, mask, backend="torch", validate=False, **kw),
            select_op_reference(logits, q, mask, deterministic=kw.get("deterministic", False), noise=kw.get("noise")),
        )
    same(
        select_op(logits, q, mask, backend="torch", validate=False, generator=torch.Generator(device).manual_seed(4)),
        select_op_reference(logits, q, mask, deterministic=False, key=key),
    )
    heads, masks, hq, sbo = make_heads(n, device, seed=22)
    value = torch.randn(n, device=device)
    for det in (True, False):
        key = draw_key(torch.device(device), torch.Generator(device).manual_seed(5))
        same(
            select_actions(
                heads,
                masks,
                hq,
                slot_by_op=sbo,
                deterministic=det,
                backend="torch",
                generator=torch.Generator(device).manual_seed(5),
            ),
            select_actions_reference(heads, masks, hq, slot_by_op=sbo, deterministic=det, key=key),
        )
        same(
            select_actions_v2(
                heads,
                masks,
                hq,
                value,
                slot_by_op=sbo,
                deterministic=det,
                backend="torch",
                generator=torch.Generator(device).manual_seed(5),
            ),
            select_actions_v2_reference(heads, masks, hq, value, slot_by_op=sbo, deterministic=det, key=key),
        )


def test_available_backends_on_cpu_has_reference_and_cpu():
    names = esper_fast.available_backends("cpu")
    assert names[:2] == ["torch", "cpu"]


@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES)
def test_q_none_gives_zero_critic_outputs(backend, device):
    logits, q, mask = make_inputs(17, 5, device=device)
    noise = torch.rand(17, 5, device=device)
    got = select_op(logits, None, mask, noise=noise, backend=backend, out=poisoned(17, device))
    ref = select_op_reference(logits, q, mask, deterministic=False, noise=noise)
    assert torch.equal(got.op.cpu(), ref.op.cpu())
    torch.testing.assert_close(got.log_prob.cpu(), ref.log_prob.cpu())
    assert (got.q_op == 0).all() and (got.value == 0).all()


def test_auto_dispatch_by_size():
    from esper_fast.ops.backends import prefer_triton

    assert not prefer_triton(64, 6) and not prefer_triton(4_194_304, 6)  # narrow rows: cuda
    assert not prefer_triton(16_384, 64)  # small input: launch overhead decides
    assert prefer_triton(262_144, 16) and prefer_triton(4_194_304, 64)
