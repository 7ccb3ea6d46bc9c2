"""Property-based attack on select_op / select_actions (issue 15), every backend that runs here.

Random shapes (A from 1 to past the cuda kernel's 1024, N including 0), dtypes, strides, masks (sparse,
single-valid, all-masked rows), explicit / Philox / no noise, and values at the edges of fp16/bf16/fp32.
Properties: a masked entry is never chosen; every backend equals the torch reference (the same op, the
same Philox draw for the same generator seed, floats within rounding); bad arguments raise errors that
name the argument.

Budget: the ``ci`` profile (default) runs a few hundred examples in well under a minute on 2 cores;
``ESPER_FAST_HYPOTHESIS=long`` runs ~20x more for local hunting. Triton runs under its CPU interpreter
here (~10 ms a program), so it gets few, small examples.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from esper_fast.constants import HEAD_NAMES, GerminationStyle, get_action_head_sizes
from esper_fast.ops.actions import select_actions
from esper_fast.ops.select import select_op
from esper_fast.reference.select import select_op_reference
from tests.conftest import BACKEND_DEVICES

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("long", parent=settings.get_profile("ci"), derandomize=False)
PROFILE = os.environ.get("ESPER_FAST_HYPOTHESIS", "ci")
SCALE = {"ci": 1, "long": 20}[PROFILE]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SLOW = {"triton"}  # the interpreter: few, small examples


def budget(backend: str, fast: int, slow: int) -> settings:
    return settings(settings.get_profile(PROFILE), max_examples=SCALE * (slow if backend in SLOW else fast))


def values(seed: int, shape: tuple[int, int], dtype: torch.dtype, kind: str) -> torch.Tensor:
    """Logits of one ``kind``: normal, huge (near the dtype's max), ties, tiny (subnormal), mixed."""
    g = torch.Generator().manual_seed(seed)
    fmax = torch.finfo(dtype).max
    if kind == "normal":
        x = torch.randn(shape, generator=g) * 3
    elif kind == "huge":
        x = (torch.rand(shape, generator=g) * 2 - 1) * fmax
    elif kind == "ties":
        x = torch.randint(-2, 3, shape, generator=g).float()
    elif kind == "tiny":
        x = torch.randn(shape, generator=g) * torch.finfo(dtype).tiny
    else:  # mixed: each entry from a different scale
        x = (
            torch.randn(shape, generator=g)
            * torch.tensor([1e-30, 1.0, 1e4, 1e30])[torch.randint(0, 4, shape, generator=g)]
        )
    return x.clamp(-fmax, fmax).to(dtype)


def strided(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values with another layout: contiguous, column-major, or every other row of a buffer."""
    if layout == "t":
        return t.t().contiguous().t()
    if layout == "rows":
        buf = torch.empty((2 * t.shape[0], t.shape[1]) if t.shape[0] else t.shape, dtype=t.dtype)
        view = buf[::2] if t.shape[0] else buf
        view.copy_(t)
        return view
    return t


def masks(seed: int, n: int, a: int, density: float, empty_rows: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    m = torch.rand(n, a, generator=g) < density
    if n:
        m[torch.arange(n), torch.randint(0, a, (n,), generator=g)] = True  # >= 1 valid per row
        if empty_rows:
            m[torch.randint(0, n, (max(1, n // 3),), generator=g)] = False
    return m


def gumbel(seed: int, n: int, a: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 2)
    return -torch.log(-torch.log(torch.rand(n, a, generator=g).clamp(1e-7, 1 - 1e-7)))


SELECT_CASE = dict(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(0, 9),
    a=st.one_of(st.integers(1, 40), st.sampled_from([64, 127, 1024, 1025, 1100])),
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(["normal", "huge", "ties", "tiny", "mixed"]),
    layout=st.sampled_from(["c", "t", "rows"]),
    density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    empty_rows=st.booleans(),
    with_q=st.booleans(),
    sampling=st.sampled_from(["deterministic", "noise", "philox"]),
)


def check_select_op(backend: str, seed, n, a, dtype, kind, layout, density, empty_rows, with_q, sampling) -> None:
    if backend in SLOW:
        assume(n <= 4 and a <= 128)
    logits = strided(values(seed, (n, a), dtype, kind), layout)
    q = strided(values(seed + 3, (n, a), dtype, "normal"), layout) if with_q else None
    mask = masks(seed, n, a, density, empty_rows) if density < 1.0 or empty_rows else None
    noise = gumbel(seed, n, a) if sampling == "noise" else None
    kw = dict(deterministic=sampling == "deterministic", noise=noise, validate=False)
    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731 - the same Philox key on both sides
    got = select_op(logits, q, mask, backend=backend, generator=gen(), **kw)
    want = select_op(logits, q, mask, backend="torch", generator=gen(), **kw)
    valid = torch.ones(n, a, dtype=torch.bool) if mask is None else mask
    ok = got.op >= 0
    # property 1: a masked entry is never chosen; only rows without a valid entry come back -1
    assert bool(valid[ok.nonzero().flatten(), got.op[ok]].all())
    assert torch.equal(~ok, valid.sum(-1) == 0)  # every logit here is finite
    # property 2: the same as the torch reference (the same op; floats within fp32 rounding)
    assert torch.equal(got.op, want.op)
    for field in ("log_prob", "entropy", "q_op", "value"):
        a_, b_ = getattr(got, field), getattr(want, field)
        tol = 1e-4 * (1 + b_.abs().nan_to_num(0, 0, 0))
        assert bool(((a_ - b_).abs() <= tol).logical_or(a_.isnan() & b_.isnan()).all()), field
    assert bool(torch.isfinite(got.entropy[ok]).all()) and bool((got.entropy[ok] >= -1e-5).all())
    # and the torch backend is the reference function itself
    if sampling != "philox":
        ref = select_op_reference(logits, q, mask, deterministic=kw["deterministic"], noise=noise)
        assert torch.equal(ref.op, want.op)


@pytest.mark.parametrize("backend", [b for b, d in BACKEND_DEVICES if d == "cpu"])
def test_select_op_properties(backend):
    given(**SELECT_CASE)(budget(backend, 150, 12)(lambda **case: check_select_op(backend, **case)))()


# ---- errors name the argument ---------------------------------------------------------------------
BAD_ARGS = {
    "logits 1-D": (lambda l, q, m: (l[0], q, m), {}, "logits"),
    "logits int": (lambda l, q, m: (l.long(), q, m), {}, "logits"),
    "q shape": (lambda l, q, m: (l, q[:, :1], m), {}, "q"),
    "q int": (lambda l, q, m: (l, q.int(), m), {}, "q"),
    "mask float": (lambda l, q, m: (l, q, m.float()), {}, "mask"),
    "mask shape": (lambda l, q, m: (l, q, m[:, :1]), {}, "mask"),
    "noise shape": (lambda l, q, m: (l, q, m), {"noise": torch.zeros(1, 1)}, "noise"),
    "empty row": (lambda l, q, m: (l, q, torch.zeros_like(m)), {"validate": True}, "No valid actions"),
    "nan logit": (
        lambda l, q, m: (l.masked_fill(torch.ones_like(m), float("nan")), q, m),
        {"validate": True},
        "logits",
    ),
    "backend": (lambda l, q, m: (l, q, m), {"backend": "gpu"}, "backend"),
}


@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 6),
    a=st.integers(2, 12),
    case=st.sampled_from(sorted(BAD_ARGS)),
    backend=st.sampled_from([b for b, d in BACKEND_DEVICES if d == "cpu" and b not in SLOW]),
)
@settings(settings.get_profile(PROFILE), max_examples=SCALE * 60)
def test_bad_arguments_name_the_argument(seed, n, a, case, backend):
    l = values(seed, (n, a), torch.float32, "normal")
    q, m = values(seed + 1, (n, a), torch.float32, "normal"), torch.ones(n, a, dtype=torch.bool)
    corrupt, extra, name = BAD_ARGS[case]
    args = corrupt(l, q, m)
    with pytest.raises((TypeError, ValueError, RuntimeError)) as info:
        select_op(*args, **{"backend": backend, **extra})
    assert name in str(info.value)


# ---- select_actions ---------------------------------------------------------------------------------
ACTIONS_CASE = dict(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(0, 7),
    num_slots=st.integers(1, 5),
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(["normal", "huge", "ties", "mixed"]),
    density=st.sampled_from([0.1, 0.5, 1.0]),
    with_sbo=st.booleans(),
    style_excludes_forced=st.booleans(),
    sampling=st.sampled_from(["deterministic", "noise", "philox"]),
)


def check_select_actions(
    backend, seed, n, num_slots, dtype, kind, density, with_sbo, style_excludes_forced, sampling
) -> None:
    if backend in SLOW:
        assume(n <= 3)
    sizes = get_action_head_sizes(num_slots)
    logits = {h: values(seed + i, (n, k), dtype, kind) for i, (h, k) in enumerate(sizes.items())}
    q = values(seed + 50, (n, sizes["op"]), dtype, "normal")
    mk = {h: masks(seed + 10 * i, n, k, density, False) for i, (h, k) in enumerate(sizes.items())}
    if style_excludes_forced:
        mk["style"][:, GerminationStyle.SIGMOID_ADD] = False
        mk["style"][:, 0] = True  # a free op still has a style
    sbo = None
    if with_sbo:
        g = torch.Generator().manual_seed(seed + 99)
        sbo = torch.rand(n, sizes["op"], num_slots, generator=g) < 0.5
        sbo[..., 0] = True
        mk["slot"][:, 0] = True
    noise = {h: gumbel(seed + i, n, k) for i, (h, k) in enumerate(sizes.items())} if sampling == "noise" else None
    kw = dict(deterministic=sampling == "deterministic", noise=noise, slot_by_op=sbo)
    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    got = select_actions(logits, mk, q, backend=backend, generator=gen(), **kw)
    want = select_actions(logits, mk, q, backend="torch", generator=gen(), **kw)
    op = got.actions["op"]
    free = (op == 1) | (op == 2)  # GERMINATE / SET_ALPHA_TARGET choose the style freely
    for h in HEAD_NAMES:
        a = got.actions[h]
        assert torch.equal(a, want.actions[h]), h
        assert bool((a >= 0).all()), h  # every head had a valid entry under the rules
        valid = mk[h].clone()
        if h == "style":
            forced = torch.zeros_like(valid)
            forced[:, GerminationStyle.SIGMOID_ADD] = True
            valid = torch.where(free[:, None], valid, forced)
        if h == "slot" and sbo is not None:
            valid &= sbo[torch.arange(n), op]
        assert bool(valid[torch.arange(n), a].all()), h  # never a masked entry
        for got_f, want_f in ((got.log_probs[h], want.log_probs[h]), (got.entropies[h], want.entropies[h])):
            assert bool(((got_f - want_f).abs() <= 1e-4 * (1 + want_f.abs())).all()), h
    assert bool(((got.q_op - want.q_op).abs() <= 1e-4 * (1 + want.q_op.abs())).all())


@pytest.mark.parametrize("backend", [b for b, d in BACKEND_DEVICES if d == "cpu" and b != "torch"])
def test_select_actions_properties(backend):
    given(**ACTIONS_CASE)(budget(backend, 80, 6)(lambda **case: check_select_actions(backend, **case)))()
