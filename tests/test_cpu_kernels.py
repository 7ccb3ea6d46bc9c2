"""The CPU kernels one by one (chosen in csrc/cpu_dispatch.cpp): every SIMD build and the scalar path.

* Philox on lanes is bit-identical to csrc/philox.h and to the torch reference.
* exp / log / Gumbel on lanes stay within the error bounds documented in csrc/simd.h and README.md
  (the Gumbel exhaustively: it only ever sees the 2^24 uniforms of the open-interval map).
* Every kernel matches the torch reference (ops exactly, floats to 2e-5) on fresh inputs: full and
  partial blocks, contiguous and strided rows (both load paths), every dtype, argmax, injected
  noise and the Philox stream; the SIMD builds agree with each other bit for bit.
* The fused select_actions kernel matches the reference per kernel, and the SIMD kernels apply the
  op-dependent rules exactly as the scalar kernel (also where the style mask excludes SIGMOID_ADD).
* Just below and at each OpenMP threshold (select_op, select_actions, select_actions_v2, score_actions)
  the kernels match the reference and their one-thread runs bit for bit.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch

from esper_fast import select_op
from esper_fast.ops.actions import select_actions
from esper_fast.ops.select import draw_key
from esper_fast.ops.threads import cpu_threads
from esper_fast.reference import reference_gumbel, select_op_reference
from esper_fast.reference.actions import select_actions_reference
from esper_fast.reference.philox import UNIFORM_MAX, philox_uniform
from tests.test_actions import assert_same, gumbel, make_heads
from tests.test_select import assert_matches, make_inputs, poisoned

_C = pytest.importorskip("esper_fast._C")
KERNELS = _C.cpu_kernels()
SIMD_KERNELS = [k for k in KERNELS if k != "scalar"]


@pytest.fixture
def kernel(request):
    """Runs the test with the named CPU kernel, restoring the default afterwards."""
    before = _C.cpu_kernel()
    _C.set_cpu_kernel(request.param)
    yield request.param
    _C.set_cpu_kernel(before)


def _math(what: int, x: torch.Tensor) -> torch.Tensor:
    out = torch.full_like(x, float("nan"))
    _C.kernel_math(what, x.data_ptr(), out.data_ptr(), x.numel())
    return out


def _ulp(y: torch.Tensor) -> torch.Tensor:
    """fp32 ulp at |y| (float64)."""
    y = y.float().abs()
    return (torch.nextafter(y, torch.tensor(float("inf"))) - y).double()


def test_default_kernel_is_the_best_supported():
    assert KERNELS[-1] == "scalar" and "generic" in KERNELS
    assert _C.cpu_kernel() == KERNELS[0]


def test_unknown_or_unsupported_kernel_is_refused():
    with pytest.raises(ValueError, match="cpu kernel must be one of"):
        _C.set_cpu_kernel("avx9000")
    assert _C.cpu_kernel() == KERNELS[0]


# ---- Philox and the lane math -----------------------------------------------------------------
@pytest.mark.parametrize("kernel", KERNELS, indirect=True)
def test_philox_lanes_bit_identical_to_scalar_and_reference(kernel):
    g = torch.Generator().manual_seed(1)
    for key in [0, 12345, 2**63 - 1, int(torch.randint(0, 2**62, (1,), generator=g))]:
        for row0, col, stream in [(0, 0, 0), (2**32 - 20, 5, 3), (5827180, 7, 0), (123456789, 63, 8)]:
            n = 37  # full blocks and a tail for every width
            got = torch.empty(n)
            _C.kernel_philox(key, row0, n, col, stream, got.data_ptr())
            rows = torch.arange(row0, row0 + n, dtype=torch.int64)
            ref = philox_uniform(torch.tensor(key), rows, torch.tensor(col), stream)
            assert torch.equal(got, ref), (key, row0, col, stream)
            assert got.tolist() == [_C.philox_uniform(key, r, col, stream) for r in rows.tolist()]


def test_philox_lanes_apply_the_clamp_at_the_edge_counter():
    for k in KERNELS:
        _C.set_cpu_kernel(k)
        got = torch.empty(16)
        _C.kernel_philox(12345, 5827187 - 5, 16, 7, 0, got.data_ptr())  # tests/test_philox.py's edge
        assert got[5].item() == UNIFORM_MAX and (got < 1).all()
    _C.set_cpu_kernel("auto")


def test_simd_gumbel_error_bound_over_every_uniform():
    """All 2^24 uniforms: |g - g_exact| <= 6e-7 (measured 5.25e-7, as glibc's scalar path) and
    within 1.2e-6 of torch's fp32 -log(-log(u)) (measured 9.5e-7); the SIMD builds agree exactly."""
    k = torch.arange(2**24, dtype=torch.float64)
    u = ((k + 0.5) * 2.0**-24).float().clamp_max(UNIFORM_MAX)
    exact = -torch.log(-torch.log(u.double()))
    torch_f32 = -torch.log(-torch.log(u))
    first = None
    for name in SIMD_KERNELS:
        _C.set_cpu_kernel(name)
        g = _math(2, u)
        first = g if first is None else first
        assert torch.equal(g, first), name
    _C.set_cpu_kernel("auto")
    assert (first.double() - exact).abs().max() <= 6e-7
    assert (first.double() - torch_f32.double()).abs().max() <= 1.2e-6


def test_simd_exp_within_one_ulp():
    bits = torch.arange(0, 0x42AEAC50, 61, dtype=torch.int64).to(torch.int32)  # |x| <= 87.3365
    x = -bits.view(torch.float32)
    exact = torch.exp(x.double())
    for name in SIMD_KERNELS:
        _C.set_cpu_kernel(name)
        e = _math(0, x).double()
        normal = exact > 1.2e-38
        assert ((e - exact).abs()[normal] / _ulp(exact[normal])).max() <= 1.0, name
        assert (e[~normal] <= 1.2e-38).all() and (e[~normal] >= 0).all()
    assert _math(0, torch.tensor([0.0, -1e30, -100.0])).tolist() == [1.0, 0.0, 0.0]
    _C.set_cpu_kernel("auto")


def test_simd_log_within_one_ulp():
    bits = torch.arange(0x00800000, 0x7F000000, 127, dtype=torch.int64).to(torch.int32)  # normals
    x = bits.view(torch.float32)
    exact = torch.log(x.double())
    for name in SIMD_KERNELS:
        _C.set_cpu_kernel(name)
        err = (_math(1, x).double() - exact).abs()
        assert (err / _ulp(exact)).max() <= 1.0, name
    _C.set_cpu_kernel("auto")


# ---- select_op per kernel ---------------------------------------------------------------------
SHAPES = [(1, 6), (15, 6), (16, 6), (17, 6), (33, 13), (64, 16), (100, 17), (257, 6), (1000, 3)]


@pytest.mark.parametrize("kernel", KERNELS, indirect=True)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kernel_matches_reference(kernel, shape, dtype):
    n, a = shape
    logits, q, mask = make_inputs(n, a, dtype=dtype, seed=n * 7 + a)
    ref = select_op_reference(logits, q, mask, deterministic=True)
    assert_matches(select_op(logits, q, mask, deterministic=True, backend="cpu", out=poisoned(n, "cpu")), ref)
    noise = -torch.log(-torch.log(torch.rand(n, a, generator=torch.Generator().manual_seed(n))))
    ref = select_op_reference(logits, q, mask, deterministic=False, noise=noise)
    assert_matches(select_op(logits, q, mask, noise=noise, backend="cpu", out=poisoned(n, "cpu")), ref)
    got = select_op(logits, q, mask, backend="cpu", generator=torch.Generator().manual_seed(n))
    key = draw_key(torch.device("cpu"), torch.Generator().manual_seed(n))
    ref = select_op_reference(logits, q, mask, deterministic=False, noise=reference_gumbel(key, n, a, "cpu"))
    assert_matches(got, ref)


@pytest.mark.parametrize("kernel", KERNELS, indirect=True)
def test_kernel_strided_and_broadcast_inputs(kernel):
    """Row strides != A and a stride-0 (expanded) mask take the exact-size load path."""
    n, a = 70, 6
    big_l, big_q, _ = make_inputs(n, 2 * a + 1, seed=3)
    logits, q = big_l[:, 1 : a + 1], big_q[:, a : 2 * a]
    mask = torch.rand(a, generator=torch.Generator().manual_seed(4)) < 0.6
    mask[2] = True
    mask = mask.expand(n, a)
    assert mask.stride(0) == 0 and logits.stride(0) == 2 * a + 1
    for det in (True, False):
        gen = torch.Generator().manual_seed(5)
        got = select_op(logits, q, mask, deterministic=det, backend="cpu", generator=gen)
        key = draw_key(torch.device("cpu"), torch.Generator().manual_seed(5))
        ref = select_op_reference(logits, q, mask, deterministic=det, key=key)
        assert_matches(got, ref)


def test_simd_kernels_bit_identical_and_masked_non_finite_ignored():
    n, a = 203, 11
    logits, q, mask = make_inputs(n, a, seed=9)
    logits = logits.masked_fill(~mask & (torch.arange(a) % 2 == 0), float("nan"))
    q = q.masked_fill(~mask & (torch.arange(a) % 3 == 0), float("inf"))
    outs = []
    for name in SIMD_KERNELS:
        _C.set_cpu_kernel(name)
        outs.append(select_op(logits, q, mask, backend="cpu", generator=torch.Generator().manual_seed(1)))
    _C.set_cpu_kernel("auto")
    for o in outs[1:]:
        for x, y in zip(o, outs[0]):
            assert torch.equal(x, y)
    key = draw_key(torch.device("cpu"), torch.Generator().manual_seed(1))
    assert_matches(outs[0], select_op_reference(logits, q, mask, deterministic=False, key=key))


@pytest.mark.parametrize("kernel", KERNELS, indirect=True)
def test_kernel_bad_rows(kernel):
    n, a = 40, 5
    logits, q, mask = make_inputs(n, a, seed=2)
    mask[3] = False
    logits[20, int(mask[20].nonzero()[0])] = float("inf")
    got = select_op(logits, q, mask, backend="cpu", validate=False)
    ref = select_op_reference(logits, q, mask, deterministic=True)
    assert got.op[3] == -1 and got.op[20] == -1 and torch.isnan(got.value[[3, 20]]).all()
    assert int((got.op < 0).sum()) == 2 and torch.equal(got.op < 0, ref.op < 0)


def test_threads_split_rows_without_changing_results():
    """Above the parallel threshold the rows are split over threads: same bits as one thread."""
    n, a = 40_000, 6
    logits, q, mask = make_inputs(n, a, seed=12)
    before, threshold = _C.get_num_threads(), _C.parallel_threshold()
    res, fused = [], []
    logits_, masks, q_, sbo = make_heads(3000, seed=4)
    for threads in (1, 2):
        with cpu_threads(threads, runtime="native", parallel_threshold=n * a // 2):
            res.append(select_op(logits, q, mask, backend="cpu", generator=torch.Generator().manual_seed(3)))
            fused.append(
                select_actions(
                    logits_, masks, q_, slot_by_op=sbo, backend="cpu", generator=torch.Generator().manual_seed(5)
                )
            )
    assert (_C.get_num_threads(), _C.parallel_threshold()) == (before, threshold)  # restored
    assert_same(fused[0], fused[1], atol=0)
    for x, y in zip(*res):
        assert torch.equal(x, y)


# ---- select_actions per kernel ----------------------------------------------------------------
@pytest.mark.parametrize("kernel", KERNELS, indirect=True)
@pytest.mark.parametrize("n", [1, 16, 45, 300])
def test_fused_kernel_matches_reference(kernel, n):
    logits, masks, q, sbo = make_heads(n, seed=n + 20)
    noise = gumbel(n, "cpu", seed=n)
    got = select_actions(logits, masks, q, noise=noise, slot_by_op=sbo, backend="cpu")
    assert_same(got, select_actions_reference(logits, masks, q, deterministic=False, noise=noise, slot_by_op=sbo))
    got = select_actions(logits, masks, q, deterministic=True, slot_by_op=sbo, backend="cpu")
    assert_same(got, select_actions_reference(logits, masks, q, deterministic=True, slot_by_op=sbo))
    got = select_actions(logits, masks, q, slot_by_op=sbo, backend="cpu", generator=torch.Generator().manual_seed(n))
    key = draw_key(torch.device("cpu"), torch.Generator().manual_seed(n))
    assert_same(got, select_actions_reference(logits, masks, q, deterministic=False, key=key, slot_by_op=sbo))


def test_simd_fused_kernels_apply_op_rules_as_the_scalar_kernel():
    """Including rows whose style mask excludes SIGMOID_ADD and ops without allowed slots: the SIMD
    kernels must give exactly the scalar kernel's actions (the rules live in entry_valid /
    style_forced, shared by both)."""
    n = 333
    logits, masks, q, sbo = make_heads(n, seed=77)
    g = torch.Generator().manual_seed(78)
    masks["style"] = torch.rand(n, masks["style"].shape[1], generator=g) < 0.5
    sbo = torch.rand(sbo.shape, generator=g) < 0.4
    noise = gumbel(n, "cpu", seed=79)
    outs = {}
    for name in KERNELS:
        _C.set_cpu_kernel(name)
        outs[name] = select_actions(logits, masks, q, noise=noise, slot_by_op=sbo, backend="cpu")
    _C.set_cpu_kernel("auto")
    for name in SIMD_KERNELS:
        assert_same(outs[name], outs["scalar"])


# ---- the lean call path -------------------------------------------------------------------------
def test_lean_entry_declines_non_unit_columns_and_select_op_falls_back():
    n, a = 21, 5
    logits, q, mask = make_inputs(n, a, seed=31)
    lt = logits.t().contiguous().t()  # column stride n
    noise16 = (-torch.log(-torch.log(torch.rand(n, a, generator=torch.Generator().manual_seed(2))))).half()
    op, f = torch.empty(n, dtype=torch.int64), torch.empty(4, n)
    assert _C.select_op_tensors(lt, q, mask, None, None, True, op, f) == -1
    assert _C.select_op_tensors(logits, q, mask, noise16, None, False, op, f) == -1
    assert _C.select_op_tensors(logits, q, mask, None, None, True, op, f) == 0
    assert_matches(
        select_op(lt, q, mask, deterministic=True, backend="cpu"),
        select_op_reference(logits, q, mask, deterministic=True),
    )
    assert_matches(
        select_op(logits, q, mask, noise=noise16, backend="cpu"),
        select_op_reference(logits, q, mask, deterministic=False, noise=noise16.float()),
    )


def test_env_var_kernel_choice_is_honoured_or_fails_loudly():
    import os
    import subprocess
    import sys

    code = "import esper_fast._C as C; print(C.cpu_kernel())"
    env = {**os.environ, "ESPER_FAST_CPU_KERNEL": "generic"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "generic"
    env["ESPER_FAST_CPU_KERNEL"] = "bogus"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "ESPER_FAST_CPU_KERNEL: cpu kernel must be one of" in out.stderr


# ---- exact across the OpenMP thresholds ------------------------------------------------------------
CSRC = Path(__file__).resolve().parents[1] / "csrc"


def csrc_constant(file: str, pattern: str) -> int:
    """A threshold the C++ source hard-codes (not exposed by the module), read from the source so that the
    tests below keep straddling it if it moves."""
    m = re.search(pattern, (CSRC / file).read_text())
    assert m is not None, f"{pattern!r} not found in csrc/{file}: update this test with the kernel"
    return eval(m.group(1), {})  # an integer expression such as "1 << 15"


@pytest.fixture
def two_omp_threads():
    """The _C module's OpenMP team at 2 threads (and torch's, for score's num_threads), restored after."""
    before, before_torch, threshold = _C.get_num_threads(), torch.get_num_threads(), _C.parallel_threshold()
    _C.set_num_threads(2)
    torch.set_num_threads(2)
    yield
    _C.set_num_threads(before)
    torch.set_num_threads(before_torch)
    _C.set_parallel_threshold(threshold)


def _single_thread(fn):
    """``fn()`` with the row split off (threshold above any input): the one-thread bits."""
    threshold = _C.parallel_threshold()
    _C.set_parallel_threshold(1 << 62)
    try:
        return fn()
    finally:
        _C.set_parallel_threshold(threshold)


def test_select_op_exact_just_below_and_above_the_parallel_threshold(two_omp_threads):
    """select_op splits rows over OpenMP from ``parallel_threshold()`` elements (n * A) on: one row below
    and at the threshold, the kernel matches the reference and the one-thread run bit for bit."""
    a = 8
    elements = _C.parallel_threshold()
    for n in (elements // a - 1, -(-elements // a)):  # n * a just below / at or above the threshold
        assert (n * a >= elements) == (n == -(-elements // a)) and n > 16
        logits, q, mask = make_inputs(n, a, seed=n)
        noise = torch.rand(n, a, generator=torch.Generator().manual_seed(n))
        for kw in ({"deterministic": True}, {"noise": noise}):
            got = select_op(logits, q, mask, backend="cpu", out=poisoned(n, "cpu"), **kw)
            ref = select_op_reference(logits, q, mask, deterministic="deterministic" in kw, noise=kw.get("noise"))
            assert_matches(got, ref)
            one = _single_thread(functools.partial(select_op, logits, q, mask, backend="cpu", **kw))
            for x, y in zip(got, one):
                assert torch.equal(x, y)
        got = select_op(logits, q, mask, backend="cpu", generator=torch.Generator().manual_seed(3))
        key = draw_key(torch.device("cpu"), torch.Generator().manual_seed(3))
        assert_matches(got, select_op_reference(logits, q, mask, deterministic=False, key=key))


def test_select_actions_exact_just_below_and_above_the_parallel_threshold(two_omp_threads):
    """The fused kernel's threshold counts n * (sum of head sizes) elements."""
    from esper_fast.constants import get_action_head_sizes

    width = sum(get_action_head_sizes(3).values())
    elements = _C.parallel_threshold()
    for n in ((elements - 1) // width, -(-elements // width)):
        logits, masks, q, sbo = make_heads(n, seed=n)
        run = functools.partial(select_actions, logits, masks, q, slot_by_op=sbo, backend="cpu")
        got = run(generator=torch.Generator().manual_seed(n))
        key = draw_key(torch.device("cpu"), torch.Generator().manual_seed(n))
        assert_same(got, select_actions_reference(logits, masks, q, deterministic=False, key=key, slot_by_op=sbo))
        one = _single_thread(functools.partial(run, generator=torch.Generator().manual_seed(n)))
        assert_same(got, one, atol=0)


def test_select_actions_v2_exact_just_below_and_above_its_row_threshold(two_omp_threads):
    """select_actions_v2's CPU loop goes parallel from a fixed row count (csrc/select_actions_v2_cpu.cpp's
    kV2ParallelRows)."""
    from esper_fast.ops.actions_v2 import select_actions_v2
    from esper_fast.reference.actions_v2 import select_actions_v2_reference
    from tests.test_actions_v2 import FLOORS
    from tests.test_actions_v2 import assert_same as assert_same_v2
    from tests.test_actions_v2 import make_inputs as make_inputs_v2

    rows = csrc_constant("select_actions_v2_cpu.cpp", r"kV2ParallelRows = (\d+);")
    for n in (rows - 1, rows):
        logits, masks, q, value, sbo = make_inputs_v2(n, seed=n)
        run = functools.partial(
            select_actions_v2, logits, masks, q, value, floors=FLOORS, slot_by_op=sbo, backend="cpu"
        )
        got = run(generator=torch.Generator().manual_seed(n))
        key = draw_key(torch.device("cpu"), torch.Generator().manual_seed(n))
        assert_same_v2(
            got,
            select_actions_v2_reference(
                logits, masks, q, value, floors=FLOORS, deterministic=False, key=key, slot_by_op=sbo
            ),
        )
        _C.set_num_threads(1)
        one = run(generator=torch.Generator().manual_seed(n))
        _C.set_num_threads(2)
        assert_same_v2(got, one, atol=0)


def _score_cpu(logits, masks, actions, sbo):
    from esper_fast.ops.score import score_actions

    return score_actions(logits, masks, actions, sbo, backend="cpu")


def _score_ref(logits, masks, actions, sbo):
    from esper_fast.ops.score import score_actions_reference

    return score_actions_reference(logits, masks, actions, sbo)


def test_score_actions_exact_just_below_and_above_its_element_threshold(two_omp_threads):
    """score_actions' CPU forward and backward go parallel from a fixed element count n * sum(sizes)
    (csrc/score_cpu.cpp), with torch.get_num_threads() threads: values and gradients match the fp64
    reference and the one-thread run bit for bit."""
    from esper_fast.constants import get_action_head_sizes
    from tests.test_score import assert_close_dicts, grads
    from tests.test_score import make_inputs as make_score_inputs

    elements = csrc_constant("score_cpu.cpp", r"kScoreParallelElements = ([0-9 <]+);")
    width = sum(get_action_head_sizes(3).values())
    for n in ((elements - 1) // width, -(-elements // width)):
        logits, masks, actions, sbo = make_score_inputs(n, seed=n, slot_by_op=True)
        got = grads(functools.partial(_score_cpu, masks=masks, actions=actions, sbo=sbo), logits)
        ref = grads(functools.partial(_score_ref, masks=masks, actions=actions, sbo=sbo), logits)
        for a, b in zip(got, ref):
            assert_close_dicts(a, b, atol=1e-10, rtol=1e-10)
        torch.set_num_threads(1)
        one = grads(functools.partial(_score_cpu, masks=masks, actions=actions, sbo=sbo), logits)
        torch.set_num_threads(2)
        for a, b in zip(got, one):
            assert all(torch.equal(a[h], b[h]) for h in a)
