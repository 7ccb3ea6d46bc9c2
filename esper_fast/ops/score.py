"""``score_actions``: the PPO update's per-head scoring as ONE differentiable op.

For every row and all eight heads: the log-prob of the stored action under esper's -1e4 masking and
the normalised entropy (``MaskedCategorical.entropy() / log(#valid)``), with the op-dependent rules
of ``FactoredNetwork.score_actions``: the style head allows only SIGMOID_ADD unless the stored op is
GERMINATE / SET_ALPHA_TARGET, and, when ``slot_by_op`` is given, the slot head's mask is
``mask & slot_by_op[row, op]``. Forward and backward are one kernel launch each.

The heads travel *packed*: one ``[..., A]`` logits tensor (and one bool mask of the same shape) whose
columns hold head h at ``layout.offsets[h] : + layout.sizes[h]`` (HEAD_NAMES order, any column
order), so the op has one differentiable input and the stacked-GEMM head layout feeds it without
copies. Actions are ``[..., 8]`` int64 (HEAD_NAMES order).

========  ===============================  =========================================
backend   runs on                          implementation
========  ===============================  =========================================
torch     any device                       :func:`score_actions_reference` (plain torch)
cpu       CPU tensors                      csrc/score_cpu.cpp via esper_fast._C_score
triton    CUDA (CPU under TRITON_INTERPRET)  esper_fast/ops/triton_score.py
========  ===============================  =========================================

``cpu`` and ``triton`` are registered with ``torch.library`` (custom_op + register_autograd +
register_fake: ``esper_fast::score_actions`` / ``esper_fast::score_actions_backward``), so
``torch.compile(fullgraph=True)`` traces a loss that uses them. Outputs are float32 (float64 for
float64 logits); the gradient comes back in the logits' dtype. A stored action outside its head's
range gives a NaN log-prob (and NaN gradients) in the kernels; the torch reference raises instead.
Nothing here syncs with the host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from esper_fast.constants import HEAD_NAMES, MASKED_LOGIT_VALUE
from esper_fast.errors import BackendUnavailableError
from esper_fast.ops._native import DTYPE_CODES, load_module, unit_cols
from esper_fast.rules import normalized_entropy, slot_for_op, style_override_mask

__all__ = [
    "SCORE_BACKENDS",
    "ScoreLayout",
    "score_actions",
    "score_actions_packed",
    "score_actions_reference",
    "resolve_score_backend",
]

SCORE_BACKENDS = ("torch", "cpu", "triton")
_DTYPE_CODES = {**DTYPE_CODES, torch.float64: 3}
_NATIVE, _NATIVE_WHY = load_module("_C_score")


@dataclass(frozen=True)
class ScoreLayout:
    """Where each head's columns lie in the packed row: ``offsets[h]``, ``sizes[h]`` (HEAD_NAMES order)."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    width: int

    @classmethod
    def packed(cls, sizes: dict[str, int], order: tuple[str, ...] = HEAD_NAMES) -> ScoreLayout:
        """Heads side by side in ``order`` (every head of HEAD_NAMES exactly once)."""
        if sorted(order) != sorted(HEAD_NAMES):
            raise ValueError(f"order must be a permutation of {HEAD_NAMES}, got {order}")
        start, offsets = 0, {}
        for h in order:
            offsets[h] = start
            start += int(sizes[h])
        return cls(tuple(offsets[h] for h in HEAD_NAMES), tuple(int(sizes[h]) for h in HEAD_NAMES), start)

    def split(self, packed: Tensor) -> dict[str, Tensor]:
        """Head -> ``[..., n_h]`` views of a packed ``[..., A]`` tensor."""
        return {h: packed[..., o : o + s] for h, o, s in zip(HEAD_NAMES, self.offsets, self.sizes)}


# ---- the plain-torch reference (esper's FactoredNetwork.score_actions, plus slot_by_op) -------------
def score_actions_reference(
    logits: dict[str, Tensor],
    masks: dict[str, Tensor | None],
    actions: dict[str, Tensor],
    slot_by_op: Tensor | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Head -> log-prob of the stored action and normalised entropy (shape of the actions), torch ops.

    ``logits`` / ``masks`` head -> ``[..., n_h]``; ``actions`` head -> ``[...]`` int64; ``slot_by_op``
    optional ``[..., num_ops, S]`` bool. Without ``slot_by_op`` this is exactly
    ``FactoredNetwork.score_actions``.
    """
    op = actions["op"]
    log_probs, entropy = {}, {}
    for head in HEAD_NAMES:
        head_logits = logits[head]
        mask = masks.get(head)
        if mask is None:
            mask = torch.ones_like(head_logits, dtype=torch.bool)
        if head == "style":
            mask = style_override_mask(mask, op)
        if head == "slot" and slot_by_op is not None:
            mask = mask & slot_for_op(slot_by_op, op)
        masked = head_logits.masked_fill(~mask, MASKED_LOGIT_VALUE)
        logp = torch.log_softmax(masked, dim=-1)
        log_probs[head] = logp.gather(-1, actions[head].unsqueeze(-1)).squeeze(-1)
        entropy[head] = normalized_entropy(masked, mask)
    return log_probs, entropy


# ---- backends ---------------------------------------------------------------------------------------
def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _why_not(name: str, device: torch.device) -> str | None:
    if name == "torch":
        return None
    if name == "cpu":
        if device.type != "cpu":
            return f"the cpu backend takes CPU tensors, got {device}"
        return _NATIVE_WHY
    if name == "triton":
        if device.type == "cpu" and not _interpreting():
            return "triton runs CPU tensors only under TRITON_INTERPRET=1"
        try:
            import triton  # noqa: F401
        except ImportError as exc:
            return f"triton is not installed ({exc})"
        return None
    return f"unknown score backend {name!r}; expected one of {SCORE_BACKENDS} or 'auto'"


def resolve_score_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> ``cpu`` on CPU, ``triton`` on CUDA (``torch`` only if neither can run); a named
    backend that cannot run raises :class:`BackendUnavailableError` (never a silent fallback)."""
    if backend == "auto":
        for name in ("cpu",) if device.type == "cpu" else ("triton",):
            if _why_not(name, device) is None:
                return name
        return "torch"
    why = _why_not(backend, device)
    if why is not None:
        raise BackendUnavailableError(f"score_actions backend {backend!r} cannot run: {why}")
    return backend


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _native_args(logits, mask, actions, slot_by_op, offsets, sizes) -> dict[str, object]:
    """The named fields of ``_C_score``'s entries (ScoreArgs in csrc/score_row.h) but the outputs."""
    return dict(
        logits=logits.data_ptr(),
        logits_dtype=_DTYPE_CODES[logits.dtype],
        logits_stride=logits.stride(0),
        mask=0 if mask is None else mask.data_ptr(),
        mask_stride=0 if mask is None else mask.stride(0),
        actions=actions.data_ptr(),
        actions_stride=actions.stride(0),
        slot_by_op=0 if slot_by_op is None else slot_by_op.data_ptr(),
        slot_by_op_stride=0 if slot_by_op is None else slot_by_op.stride(0),
        offset=list(offsets),
        size=list(sizes),
        a_total=logits.shape[1],
        n=logits.shape[0],
        num_threads=torch.get_num_threads(),
    )


def _prepare(logits, mask, actions, slot_by_op):
    logits, actions = unit_cols(logits), unit_cols(actions)
    mask = None if mask is None else unit_cols(mask)
    if slot_by_op is not None and not (slot_by_op.stride(2) == 1 and slot_by_op.stride(1) == slot_by_op.shape[2]):
        slot_by_op = slot_by_op.contiguous()
    return logits, mask, actions, slot_by_op


@torch.library.custom_op("esper_fast::score_actions", mutates_args=())
def score_actions_op(
    logits: Tensor,
    mask: Tensor | None,
    actions: Tensor,
    slot_by_op: Tensor | None,
    offsets: list[int],
    sizes: list[int],
    backend: str,
) -> tuple[Tensor, Tensor]:
    """(log_probs ``[8, N]``, entropy ``[8, N]``) for packed ``logits [N, A]``; backend "cpu" / "triton"."""
    n = logits.shape[0]
    out_lp = torch.empty(8, n, dtype=_acc_dtype(logits.dtype), device=logits.device)
    out_ent = torch.empty_like(out_lp)
    logits, mask, actions, slot_by_op = _prepare(logits, mask, actions, slot_by_op)
    if backend == "cpu":
        _NATIVE.score_forward(
            **_native_args(logits, mask, actions, slot_by_op, offsets, sizes),
            out_log_prob=out_lp.data_ptr(),
            out_entropy=out_ent.data_ptr(),
        )
    else:
        from esper_fast.ops.triton_score import score_forward_triton

        score_forward_triton(logits, mask, actions, slot_by_op, offsets, sizes, out_lp, out_ent)
    return out_lp, out_ent


@score_actions_op.register_fake
def _score_actions_fake(logits, mask, actions, slot_by_op, offsets, sizes, backend):
    n = logits.shape[0]
    out = logits.new_empty(8, n, dtype=_acc_dtype(logits.dtype))
    return out, torch.empty_like(out)


@torch.library.custom_op("esper_fast::score_actions_backward", mutates_args=())
def score_actions_backward_op(
    grad_log_probs: Tensor,
    grad_entropy: Tensor,
    logits: Tensor,
    mask: Tensor | None,
    actions: Tensor,
    slot_by_op: Tensor | None,
    offsets: list[int],
    sizes: list[int],
    backend: str,
) -> Tensor:
    """d loss / d logits ``[N, A]`` (logits' dtype) from the output grads ``[8, N]``."""
    acc = _acc_dtype(logits.dtype)
    g_lp, g_ent = grad_log_probs.to(acc).contiguous(), grad_entropy.to(acc).contiguous()
    grad = torch.empty(logits.shape, dtype=acc, device=logits.device)
    logits, mask, actions, slot_by_op = _prepare(logits, mask, actions, slot_by_op)
    if backend == "cpu":
        _NATIVE.score_backward(
            **_native_args(logits, mask, actions, slot_by_op, offsets, sizes),
            grad_log_prob=g_lp.data_ptr(),
            grad_entropy=g_ent.data_ptr(),
            grad_logits=grad.data_ptr(),
        )
    else:
        from esper_fast.ops.triton_score import score_backward_triton

        score_backward_triton(logits, mask, actions, slot_by_op, offsets, sizes, g_lp, g_ent, grad)
    return grad.to(logits.dtype)


@score_actions_backward_op.register_fake
def _score_actions_backward_fake(
    grad_log_probs, grad_entropy, logits, mask, actions, slot_by_op, offsets, sizes, backend
):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    logits, mask, actions, slot_by_op, offsets, sizes, backend = inputs
    ctx.save_for_backward(logits, mask, actions, slot_by_op)
    ctx.layout = (offsets, sizes, backend)


def _backward(ctx, grad_log_probs, grad_entropy):
    logits, mask, actions, slot_by_op = ctx.saved_tensors
    offsets, sizes, backend = ctx.layout
    if grad_log_probs is None:
        grad_log_probs = logits.new_zeros(8, logits.shape[0], dtype=_acc_dtype(logits.dtype))
    if grad_entropy is None:
        grad_entropy = torch.zeros_like(grad_log_probs)
    grad = score_actions_backward_op(
        grad_log_probs, grad_entropy, logits, mask, actions, slot_by_op, offsets, sizes, backend
    )
    return grad, None, None, None, None, None, None


score_actions_op.register_autograd(_backward, setup_context=_setup_context)


# ---- public entry points ----------------------------------------------------------------------------
def _check(
    logits: Tensor, layout: ScoreLayout, actions: Tensor, mask: Tensor | None, slot_by_op: Tensor | None
) -> None:
    lead = tuple(logits.shape[:-1])
    if not logits.is_floating_point() or logits.dtype not in _DTYPE_CODES:
        raise TypeError(f"logits must be float32/float16/bfloat16/float64, got {logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] != layout.width:
        raise ValueError(f"logits must be [..., {layout.width}] (the layout's packed width), got {list(logits.shape)}")
    if actions.dtype != torch.int64 or tuple(actions.shape) != lead + (8,) or actions.device != logits.device:
        raise ValueError(
            f"actions must be int64 {list(lead + (8,))} on {logits.device} (HEAD_NAMES order), "
            f"got {actions.dtype} {list(actions.shape)} on {actions.device}"
        )
    if mask is not None and (mask.dtype != torch.bool or mask.shape != logits.shape or mask.device != logits.device):
        raise ValueError(
            f"mask must be bool {list(logits.shape)} on {logits.device}, "
            f"got {mask.dtype} {list(mask.shape)} on {mask.device}"
        )
    if slot_by_op is not None:
        want = lead + (layout.sizes[7], layout.sizes[0])
        if slot_by_op.dtype != torch.bool or tuple(slot_by_op.shape) != want or slot_by_op.device != logits.device:
            raise ValueError(
                f"slot_by_op must be bool {list(want)} on {logits.device}, "
                f"got {slot_by_op.dtype} {list(slot_by_op.shape)} on {slot_by_op.device}"
            )


def score_actions_packed(
    logits: Tensor,
    layout: ScoreLayout,
    actions: Tensor,
    mask: Tensor | None = None,
    slot_by_op: Tensor | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Fused scoring of packed heads.

    Args:
        logits: ``[..., A]`` float, heads at ``layout``'s columns (differentiable).
        layout: the :class:`ScoreLayout` of ``logits`` / ``mask``.
        actions: ``[..., 8]`` int64 stored actions, HEAD_NAMES order (column 7 is the op).
        mask: ``[..., A]`` bool (True = valid) or None (all valid).
        slot_by_op: optional ``[..., num_ops, num_slots]`` bool: slots valid per op.
        backend: "auto", "torch", "cpu" or "triton".

    Returns:
        (log_probs ``[8, ...]``, entropy ``[8, ...]``), rows in HEAD_NAMES order.
    """
    _check(logits, layout, actions, mask, slot_by_op)
    lead = tuple(logits.shape[:-1])
    name = resolve_score_backend(backend, logits.device)
    if name == "torch":
        split_mask = {} if mask is None else layout.split(mask)
        lp, ent = score_actions_reference(
            layout.split(logits), split_mask, dict(zip(HEAD_NAMES, actions.unbind(-1))), slot_by_op
        )
        acc = _acc_dtype(logits.dtype)
        return torch.stack([lp[h] for h in HEAD_NAMES]).to(acc), torch.stack([ent[h] for h in HEAD_NAMES]).to(acc)
    A = layout.width
    flat = lambda t, *tail: None if t is None else t.reshape(-1, *tail)  # noqa: E731
    lp, ent = score_actions_op(
        logits.reshape(-1, A),
        flat(mask, A),
        actions.reshape(-1, 8),
        flat(slot_by_op, *layout.sizes[7:8], layout.sizes[0]),
        list(layout.offsets),
        list(layout.sizes),
        name,
    )
    return lp.view(8, *lead), ent.view(8, *lead)


def score_actions(
    logits: dict[str, Tensor],
    masks: dict[str, Tensor | None],
    actions: dict[str, Tensor],
    slot_by_op: Tensor | None = None,
    backend: str = "auto",
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``FactoredNetwork.score_actions`` as one fused op: head -> ``[...]`` log-probs and entropies.

    Packs the heads (one cat of the logits, one of the masks, one stack of the actions) and calls
    :func:`score_actions_packed`. ``logits`` head -> ``[..., n_h]``; ``masks`` head -> bool or None.
    """
    sizes = {h: logits[h].shape[-1] for h in HEAD_NAMES}
    layout = ScoreLayout.packed(sizes)
    packed = torch.cat([logits[h] for h in HEAD_NAMES], dim=-1)
    mask = None
    if any(masks.get(h) is not None for h in HEAD_NAMES):
        mask = torch.cat(
            [
                masks[h] if masks.get(h) is not None else torch.ones_like(logits[h], dtype=torch.bool)
                for h in HEAD_NAMES
            ],
            dim=-1,
        )
    acts = torch.stack([actions[h] for h in HEAD_NAMES], dim=-1)
    lp, ent = score_actions_packed(packed, layout, acts, mask, slot_by_op, backend)
    return dict(zip(HEAD_NAMES, lp.unbind(0))), dict(zip(HEAD_NAMES, ent.unbind(0)))
