"""Public ``select_op``: argument checks, the Philox key, dispatch, and opt-in validation."""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from esper_fast.errors import nonfinite_logits_message
from esper_fast.ops.backends import _LEAN_SELECT_OP, lean_select_op, resolve_backend
from esper_fast.ops.checks import check_out_not_aliased, normalize_out, out_overlaps_inputs, raise_for_bad_head
from esper_fast.types import OpSelection

__all__ = ["select_op", "draw_key", "empty_selection"]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_KEY_HIGH = 2**63 - 1
_KEY_SHAPE = (1,)
_INT64, _FLOAT32 = torch.int64, torch.float32


_is_compiling = torch.compiler.is_compiling
_THREAD = threading.local()


def _key_buffer() -> Tensor:
    """This thread's int64 ``[1]`` CPU tensor into which the lean entry draws the key (in place, with
    ``random_(0, 2**63 - 1)`` from the default generator: the value :func:`draw_key` would give; the
    kernel reads it before the entry returns, so one buffer per thread suffices)."""
    try:
        return _THREAD.key
    except AttributeError:
        # A normal tensor even when the first call runs under torch.inference_mode (an inference
        # tensor could not be drawn into in place later, outside inference mode).
        with torch.inference_mode(False):
            _THREAD.key = torch.empty(_KEY_SHAPE, dtype=_INT64, device="cpu")
        return _THREAD.key


def draw_key(device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """A fresh 64-bit Philox key as an int64 tensor ``[1]`` on ``device``, drawn from ``generator``.

    Drawn on the device itself (no host sync; inside a captured CUDA graph every replay draws a new
    key). Calls are reproducible under ``torch.manual_seed``; distinct calls use independent keys (two
    calls share numbers only if two 63-bit draws collide).
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"generator is on {generator.device} but the inputs are on {device}; "
            f"pass a torch.Generator(device={str(device)!r})"
        )
    return torch.randint(0, _KEY_HIGH, _KEY_SHAPE, dtype=_INT64, device=device, generator=generator)


def empty_selection(n: int, device: torch.device) -> OpSelection:
    """Uninitialised output tensors for ``n`` rows (floats share one ``[4, n]`` allocation)."""
    f = torch.empty(4, n, dtype=torch.float32, device=device)
    return OpSelection(torch.empty(n, dtype=torch.int64, device=device), *f.unbind(0))


def _check_float(name: str, t: object, shape: tuple[int, ...] | None = None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if shape is not None and t.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)} (like logits), got {list(t.shape)}")


def _check_args(
    logits: Tensor, q: Tensor | None, mask: Tensor | None, noise: Tensor | None, out: OpSelection | None
) -> None:
    _check_float("logits", logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D [N, A], got shape {list(logits.shape)}")
    n, a = logits.shape
    if a < 1:
        raise ValueError(f"logits must have at least one action column (A >= 1), got A = {a}")
    tensors = {}
    if q is not None:
        _check_float("q", q, (n, a))
        tensors["q"] = q
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            what = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a bool tensor (True = valid), got {what}")
        if mask.shape != (n, a):
            raise ValueError(f"mask must have shape {[n, a]} (like logits), got {list(mask.shape)}")
        tensors["mask"] = mask
    if noise is not None:
        _check_float("noise", noise, (n, a))
        tensors["noise"] = noise
    if out is not None:
        for field, t in zip(OpSelection._fields, out):
            dtype = torch.int64 if field == "op" else torch.float32
            if not isinstance(t, Tensor) or t.dtype != dtype or tuple(t.shape) != (n,):
                raise ValueError(f"out.{field} must be a {dtype} tensor of shape [{n}]")
            if not t.is_contiguous():
                raise ValueError(f"out.{field} must be contiguous")
            tensors[f"out.{field}"] = t
    for name, t in tensors.items():
        if t.device != logits.device:
            raise ValueError(f"{name} is on {t.device} but logits is on {logits.device}")


def _raise_for_bad_rows(
    logits: Tensor, mask: Tensor | None, noise: Tensor | None, op: Tensor, bad_count: int | None
) -> None:
    """Raises if any row is bad (one host sync). The happy path costs one reduction."""
    if noise is not None and not bool(torch.isfinite(noise).all()):
        raise ValueError("noise must be finite (standard Gumbel samples)")
    if bad_count == 0 or (bad_count is None and not bool((op < 0).any())):
        return
    raise_for_bad_head(None, logits, mask)  # an empty row, or a non-finite logit at a valid entry
    raise ValueError(nonfinite_logits_message(None, [], 0))  # a bad row with neither (not expected)


def select_op(
    logits: Tensor,
    q: Tensor | None,
    mask: Tensor | None = None,
    *,
    deterministic: bool = False,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    validate: bool = True,
    out: OpSelection | None = None,
) -> OpSelection:
    """Choose one action per row of a masked categorical and read the critic at it, in one pass.

    Per row n: masked entries get probability exactly 0; the op is chosen ONCE (argmax of the valid
    logits if ``deterministic``, else Gumbel-max = an exact softmax sample), and everything that
    depends on it is returned from the same kernel.

    Args:
        logits: ``[N, A]`` float32/float16/bfloat16 policy logits (any strides).
        q: ``[N, A]`` float32/float16/bfloat16 critic values Q(s, a) for every action a, or None
            for a head without a critic (then ``q_op`` and ``value`` are 0).
        mask: ``[N, A]`` bool, True = valid, or None (all valid).
        deterministic: argmax (ties to the lowest index) instead of sampling.
        noise: ``[N, A]`` explicit standard-Gumbel noise for sampling (testing); default: Philox
            noise keyed by a fresh 64-bit key drawn from ``generator`` on the inputs' device.
        generator: torch.Generator on the inputs' device (default: torch's default generator).
        backend: "auto", "torch", "cpu", "cuda" or "triton" (see :mod:`esper_fast.ops.backends`).
        validate: raise on bad rows (one host sync). With False there is no sync: bad rows
            (no valid entry, or a non-finite valid logit) get op -1 and NaN floats.
        out: optional preallocated :class:`OpSelection` to write into (contiguous ``[N]`` tensors).

    Returns:
        :class:`OpSelection` ``(op, log_prob, entropy, q_op, value)``, each ``[N]``; floats are fp32
        whatever the input dtype (computed in fp32).

    Raises:
        TypeError / ValueError: bad arguments (named in the message).
        InvalidActionMaskError: ``validate`` and a mask row without a valid entry.
        ValueError: ``validate`` and a non-finite logit at a valid entry.
        BackendUnavailableError: an explicitly requested backend cannot run on these tensors.
    """
    if out is None and generator is None and not _is_compiling():
        try:  # the cpu backend's one C++ entry (checks, outputs, key, kernel), cached per backend name
            lean = _LEAN_SELECT_OP[backend]
        except (KeyError, TypeError):
            lean = lean_select_op(backend)
        if lean is not None:
            try:
                key_buf = _THREAD.key
            except AttributeError:
                key_buf = _key_buffer()
            res = lean(logits, q, mask, noise, deterministic, key_buf)  # truth of deterministic taken in C++
            if res is not None:  # None: not the plain case, nothing drawn or run; the path below decides
                sel, bad = res
                if validate and (bad or (noise is not None and not deterministic)):
                    _raise_for_bad_rows(logits, mask, None if deterministic else noise, sel.op, bad)
                return sel
    if isinstance(logits, Tensor) and logits.dim() == 2:
        out = normalize_out(out, logits.shape[0])
    _check_args(logits, q, mask, noise, out)
    if not torch.compiler.is_compiling():  # reads storage pointers: eager only
        check_out_not_aliased(out)
    if deterministic:
        noise = None  # unused: argmax ignores noise
    key = None if deterministic or noise is not None else draw_key(logits.device, generator)
    if torch.compiler.is_compiling():  # traced through the registered op (see ops/library.py)
        from esper_fast.ops.library import select_op_op

        op, f = select_op_op(logits, q, mask, noise, key, deterministic, backend)  # resolved inside
        res = OpSelection(op, f[0], f[1], f[2], f[3])
        if out is None:
            return res
        for dst, src in zip(out, res):
            dst.copy_(src)
        return out
    device = logits.device
    impl = resolve_backend(backend, device, tuple(logits.shape))
    target = None
    if out is not None and out_overlaps_inputs(out, (logits, q, mask, noise)):
        target, out = out, None  # the kernel writes rows while it reads: compute aside, then copy
    if out is None and impl.run_lean is not None:  # the lean path: outputs [N] + [4, N], one C++ entry
        n = logits.shape[0]
        op = torch.empty(n, dtype=_INT64, device=device)
        f = torch.empty(4, n, dtype=_FLOAT32, device=device)
        bad_count = impl.run_lean(logits, q, mask, noise, key, deterministic, op, f)
        out = OpSelection(op, *f.unbind(0))
    else:
        if out is None:
            out = empty_selection(logits.shape[0], logits.device)
        bad_count = impl.run(logits, q, mask, noise, key, deterministic, out)
    if target is not None:
        for dst, src in zip(target, out):
            dst.copy_(src)
        out = target
    if validate:
        _raise_for_bad_rows(logits, mask, noise, out.op, bad_count)
    return out
