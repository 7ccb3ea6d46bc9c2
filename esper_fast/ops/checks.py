"""Argument checks of ``select_op`` / ``select_actions`` that need more than a dtype or shape test.

Each function raises ``TypeError`` / ``ValueError`` naming the argument, or returns a normalised value;
none syncs with the host except :func:`check_noise_finite` and :func:`raise_for_bad_head` (called only
under ``validate=True``, the latter only once a cheap check has found something wrong).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor

from esper_fast.constants import HEAD_NAMES
from esper_fast.errors import InvalidActionMaskError, no_valid_actions_message, nonfinite_logits_message
from esper_fast.types import OpSelection

_HEADS = frozenset(HEAD_NAMES)

__all__ = [
    "byte_range",
    "check_action_dicts",
    "check_noise_finite",
    "check_out_not_aliased",
    "normalize_out",
    "out_overlaps_inputs",
    "overlaps",
    "raise_for_bad_head",
]


def check_action_dicts(logits: object, masks: object, q: object, noise: object) -> dict[str, Tensor | None]:
    """``select_actions``' containers: dicts keyed by head names only, ``q`` a tensor, 2-D logits.

    Returns ``masks`` as a dict (``None`` means no mask on any head). Unknown keys (a typo such as
    ``"slots"``) raise instead of silently meaning "no mask".
    """
    if masks is None:
        masks = {}
    if _looks_fine(logits, masks, q, noise):  # the common case, in a few microseconds
        return masks
    if not isinstance(logits, Mapping):
        raise TypeError(f"logits must be a dict head -> [N, n_head] tensor, got {type(logits).__name__}")
    for name, d in (("logits", logits), ("masks", masks), ("noise", noise)):
        if d is None:
            continue
        if not isinstance(d, Mapping):
            raise TypeError(f"{name} must be a dict keyed by head name (or None), got {type(d).__name__}")
        unknown = sorted(str(k) for k in d if k not in HEAD_NAMES)
        if unknown:
            raise ValueError(f"{name} has unknown heads {unknown}; expected keys from {list(HEAD_NAMES)}")
    for h in HEAD_NAMES:
        if h in logits and not isinstance(logits[h], Tensor):
            raise TypeError(f"logits[{h!r}] must be a torch.Tensor, got {type(logits[h]).__name__}")
        if h in logits and logits[h].dim() != 2:
            raise ValueError(f"logits[{h!r}] must be 2-D [N, n_{h}], got shape {list(logits[h].shape)}")
        for name, d in (("masks", masks), ("noise", noise or {})):
            v = d.get(h)
            if v is not None and not isinstance(v, Tensor):
                raise TypeError(f"{name}[{h!r}] must be a torch.Tensor or None, got {type(v).__name__}")
    if not isinstance(q, Tensor):
        raise TypeError(f"q must be a float [N, num_ops] tensor of critic values, got {type(q).__name__}")
    return dict(masks)


def _looks_fine(logits: object, masks: object, q: object, noise: object) -> bool:
    try:
        return (
            isinstance(q, Tensor)
            and _HEADS.issuperset(logits)
            and _HEADS.issuperset(masks)
            and (noise is None or _HEADS.issuperset(noise))
            and all(isinstance(t, Tensor) and t.dim() == 2 for t in logits.values())
            and all(m is None or isinstance(m, Tensor) for m in masks.values())
            and (noise is None or all(g is None or isinstance(g, Tensor) for g in noise.values()))
        )
    except (TypeError, AttributeError):  # not dicts: the slow path names the argument
        return False


def check_noise_finite(noise: Mapping[str, Tensor] | None) -> None:
    """Explicit Gumbel noise must be finite (one host sync; only under ``validate``)."""
    if not noise:
        return
    present = [(h, g) for h, g in noise.items() if g is not None]
    if not present or bool(torch.stack([torch.isfinite(g).all() for _, g in present]).all()):
        return
    bad = [h for h, g in present if not bool(torch.isfinite(g).all())]
    raise ValueError(f"noise must be finite (standard Gumbel samples); non-finite values in heads {bad}")


def byte_range(t: Tensor) -> tuple[int, int, int]:
    """(storage pointer, first byte, one past the last byte) that ``t`` can touch."""
    if t.numel() == 0:
        return (t.untyped_storage().data_ptr(), 0, 0)
    start = t.data_ptr()
    span = sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()))
    return (t.untyped_storage().data_ptr(), start, start + (span + 1) * t.element_size())


def overlaps(a: Tensor, b: Tensor) -> bool:
    """Whether two tensors' memory ranges intersect (conservative for interleaved strides)."""
    if a.device != b.device:
        return False
    sa, a0, a1 = byte_range(a)
    sb, b0, b1 = byte_range(b)
    return sa == sb and a0 < b1 and b0 < a1


def normalize_out(out: object, n: int) -> OpSelection | None:
    """``out=`` as an :class:`OpSelection` (a plain 5-tuple of tensors is accepted).

    Checked before any kernel runs, so a bad ``out`` never leaves a half-written buffer.
    """
    if out is None or isinstance(out, OpSelection):
        sel = out
    elif isinstance(out, (tuple, list)) and len(out) == len(OpSelection._fields):
        sel = OpSelection(*out)
    else:
        raise TypeError(
            f"out must be an OpSelection {OpSelection._fields} of [{n}] tensors or None, got {type(out).__name__}"
        )
    return sel


def check_out_not_aliased(out: OpSelection | None) -> None:
    """Every ``out`` field needs its own memory (``log_prob is entropy`` would mix two results)."""
    if out is None:
        return
    fields = list(zip(OpSelection._fields, out))
    for i, (fa, ta) in enumerate(fields):
        for fb, tb in fields[i + 1 :]:
            if overlaps(ta, tb):
                raise ValueError(f"out.{fa} and out.{fb} share memory; every out field needs its own buffer")


def out_overlaps_inputs(out: Iterable[Tensor], inputs: Iterable[Tensor | None]) -> bool:
    """Whether any output buffer shares memory with an input (then the kernel must not write in place)."""
    ins = [t for t in inputs if t is not None]
    return any(overlaps(o, t) for o in out for t in ins)


def raise_for_bad_head(
    head: str | None,
    logits: Tensor | None,
    valid: Tensor | None,
    *,
    rows: Tensor | None = None,
    check_empty: bool = True,
    valid_only: bool = True,
    empty_error: Callable[[str], Exception] = InvalidActionMaskError,
    where: str = "",
    cause: str = "",
    hint: str = "",
    nonfinite_hint: str = "",
) -> None:
    """The one mask/logit validator: finds one head's bad rows and raises for the first kind found.

    Every validation path (``network.validate_masks_and_logits``, ``select_op``, ``select_actions[_v2]``,
    ``FactoredPolicyV2``) calls this once its own cheap check (one sync) has found something wrong; it
    returns when this head has no bad row (syncs: a few, on that failure path only).

    Args:
        head: the head's name for the message, None for a single-head call (``select_op``).
        logits: ``[..., A]`` float logits, or None (no non-finite check).
        valid: ``[..., A]`` bool, True = valid, or None (every entry valid). Leading dims are flattened:
            rows are reported as flattened row indices.
        rows: int64 ``[k]`` (flattened) rows to look at, in ascending order, or None (every row).
        check_empty: raise ``empty_error(no_valid_actions_message(...))`` for a row with no valid entry
            (checked first), with ``where`` / ``cause`` / ``hint``.
        valid_only: non-finite logits count at valid entries only (else at any entry); either raises
            ``ValueError(nonfinite_logits_message(...))`` with ``nonfinite_hint``.
    """
    ref = logits if logits is not None else valid
    if ref is None:
        return
    lg = None if logits is None else logits.flatten(0, -2)
    ok = torch.ones(ref.shape, dtype=torch.bool, device=ref.device) if valid is None else valid
    ok = ok.flatten(0, -2)
    if rows is not None:
        ok = ok[rows]
        lg = None if lg is None else lg[rows]

    def found(flags: Tensor) -> Tensor:  # [k] bool -> the reported (flattened) row indices
        idx = torch.nonzero(flags).flatten()
        return idx if rows is None else rows[idx]

    if check_empty:
        empty = found(~ok.any(-1))
        if empty.numel() > 0:
            msg = no_valid_actions_message(head, empty[:8].tolist(), empty.numel(), where=where, cause=cause, hint=hint)
            raise empty_error(msg)
    if lg is not None:
        nonfinite = found((ok & ~torch.isfinite(lg)).any(-1) if valid_only else ~torch.isfinite(lg).all(-1))
        if nonfinite.numel() > 0:
            raise ValueError(
                nonfinite_logits_message(
                    head, nonfinite[:8].tolist(), nonfinite.numel(), valid_only=valid_only, hint=nonfinite_hint
                )
            )
