"""Public ``select_actions``: a whole factored action in ONE kernel launch, the op chosen once.

Per row: the op (with Q(s, op) and sum_a pi(a) Q(s, a)), esper's op-dependent rules (style forced to
SIGMOID_ADD unless GERMINATE / SET_ALPHA_TARGET; optional ``slot_by_op`` mask), then every other
head. ``fused=False`` runs the same composition head by head with :func:`select_op` (one call per
head): the path the fused kernel is tested against. Nothing here syncs with the host unless
``validate=True``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from esper_fast.constants import HEAD_NAMES
from esper_fast.errors import InvalidActionMaskError, no_valid_actions_message
from esper_fast.ops.backends import lean_select_actions, resolve_backend
from esper_fast.ops.checks import check_action_dicts, check_noise_finite, raise_for_bad_head
from esper_fast.ops.layout import ACTION_ROWS, ENTROPY_ROW, FLOAT_ROWS, LOG_PROB_ROW, Q_OP_ROW, VALUE_ROW
from esper_fast.ops.select import FLOAT_DTYPES, _is_compiling, _key_buffer, draw_key, select_op
from esper_fast.rules import AFTER_OP, compose_heads
from esper_fast.types import ActionSelection

__all__ = ["ActionSelection", "select_actions", "empty_action_outputs", "unpack_action_outputs", "raise_for_bad_rows"]

_ORDER = ("op",) + AFTER_OP  # dict order of every ActionSelection (esper's get_action order)
_IDX = {h: i for i, h in enumerate(HEAD_NAMES)}
_NO_NOISE: dict = {}


def empty_action_outputs(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(actions ``[ACTION_ROWS, n]`` int64, floats ``[FLOAT_ROWS, n]`` float32), see :mod:`esper_fast.ops.layout`."""
    return (
        torch.empty(ACTION_ROWS, n, dtype=torch.int64, device=device),
        torch.empty(FLOAT_ROWS, n, dtype=torch.float32, device=device),
    )


def unpack_action_outputs(actions: Tensor, floats: Tensor) -> ActionSelection:
    """Views of the fused kernel's outputs (rows in HEAD_NAMES order) as an ActionSelection."""
    acts, fl = actions.unbind(0), floats.unbind(0)  # one call each: cheaper than 26 indexings
    return ActionSelection(
        {h: acts[_IDX[h]] for h in _ORDER},
        {h: fl[LOG_PROB_ROW + _IDX[h]] for h in _ORDER},
        {h: fl[ENTROPY_ROW + _IDX[h]] for h in _ORDER},
        fl[Q_OP_ROW],
        fl[VALUE_ROW],
    )


def _check(logits, masks, q, noise, slot_by_op) -> tuple[int, torch.device]:
    missing = [h for h in HEAD_NAMES if h not in logits]
    if missing:
        raise ValueError(f"logits must have every head {HEAD_NAMES}; missing {missing}")
    n, device = logits["op"].shape[0], logits["op"].device
    for h in HEAD_NAMES:
        l = logits[h]
        if l.dim() != 2 or l.shape[0] != n or l.dtype not in FLOAT_DTYPES or l.device != device:
            raise ValueError(
                f"logits[{h!r}] must be a float [{n}, n_{h}] tensor on {device}, "
                f"got {l.dtype} {list(l.shape)} on {l.device}"
            )
        m = masks.get(h)
        if m is not None and (m.dtype != torch.bool or m.shape != l.shape or m.device != device):
            raise ValueError(
                f"masks[{h!r}] must be a bool {list(l.shape)} tensor on {device}, "
                f"got {m.dtype} {list(m.shape)} on {m.device}"
            )
        g = (noise or {}).get(h)
        if g is not None and (g.shape != l.shape or g.device != device or not g.is_floating_point()):
            raise ValueError(f"noise[{h!r}] must be a float {list(l.shape)} tensor on {device}")
    n_ops, n_slots = logits["op"].shape[1], logits["slot"].shape[1]
    if q.shape != (n, n_ops) or q.dtype not in FLOAT_DTYPES or q.device != device:
        raise ValueError(
            f"q must be a float [{n}, {n_ops}] tensor on {device}, got {q.dtype} {list(q.shape)} on {q.device}"
        )
    if slot_by_op is not None and (
        slot_by_op.dtype != torch.bool or slot_by_op.shape != (n, n_ops, n_slots) or slot_by_op.device != device
    ):
        raise ValueError(
            f"slot_by_op must be a bool [{n}, {n_ops}, {n_slots}] tensor on {device}, "
            f"got {slot_by_op.dtype} {list(slot_by_op.shape)}"
        )
    return n, device


def select_actions(
    logits: dict[str, Tensor],
    masks: dict[str, Tensor | None],
    q: Tensor,
    *,
    deterministic: bool = False,
    noise: dict[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    slot_by_op: Tensor | None = None,
    backend: str = "auto",
    fused: bool = True,
    validate: bool = False,
) -> ActionSelection:
    """Choose every head of a factored action, the op exactly once.

    Args:
        logits: head -> ``[N, n_head]`` raw logits, every head of ``HEAD_NAMES``.
        masks: head -> ``[N, n_head]`` bool (True = valid) or None / absent (all valid); ``None``
            for no masks at all. Keys must be head names (a typo raises).
        q: ``[N, num_ops]`` critic values Q(s, a) for every op.
        deterministic: argmax every head (ties to the lowest index) instead of sampling.
        noise: optional head -> ``[N, n_head]`` Gumbel noise (exact tests); other heads use Philox
            (fused: one key per call, stream h + 1 for head h; unfused: one key per head).
        generator: torch.Generator on the inputs' device for the Philox key(s).
        slot_by_op: optional ``[N, num_ops, num_slots]`` bool: the slots valid for each op.
        backend: "auto", "torch", "cpu", "cuda" or "triton".
        fused: one kernel launch for every head (default) or one :func:`select_op` call per head.
        validate: raise :class:`InvalidActionMaskError` / ``ValueError`` on bad rows (one sync).

    Returns:
        :class:`ActionSelection` (dicts in esper's order: op, style, slot, blueprint, tempo,
        alpha_target, alpha_speed, alpha_curve); bad rows get action -1 and NaN.
    """
    masks = check_action_dicts(logits, masks, q, noise)
    if fused and generator is None and not (validate and noise) and not _is_compiling():
        lean = lean_select_actions(backend)  # the cpu backend's one C++ entry (checks, outputs, key, kernel)
        if lean is not None:
            g = noise or _NO_NOISE
            res = lean(
                [logits.get(h) for h in HEAD_NAMES],
                [masks.get(h) for h in HEAD_NAMES],
                [g.get(h) for h in HEAD_NAMES],
                q,
                slot_by_op,
                bool(deterministic),
                _key_buffer(),
            )
            if res is not None:  # None: not the plain case, nothing drawn or run; the path below decides
                sel = unpack_action_outputs(res[0], res[1])
                if validate and res[2]:
                    raise_for_bad_rows(sel.actions, logits, masks, rules="style override / slot_by_op")
                return sel
    n, device = _check(logits, masks, q, noise, slot_by_op)
    if validate:
        check_noise_finite(noise)
    if not fused:
        sel = compose_heads(
            lambda l, q_, m, g, head: select_op(
                l, q_, m, deterministic=deterministic, noise=g, generator=generator, backend=backend, validate=False
            ),
            logits,
            masks,
            q,
            noise,
            slot_by_op,
        )
    else:
        needs_key = not deterministic and any((noise or {}).get(h) is None for h in HEAD_NAMES)
        key = draw_key(device, generator) if needs_key else None
        if torch.compiler.is_compiling():  # traced through the registered op (see ops/library.py)
            from esper_fast.ops.library import select_actions_op

            per_head = lambda d: [d.get(h) for h in HEAD_NAMES]  # noqa: E731
            out = select_actions_op(
                [logits[h] for h in HEAD_NAMES],
                per_head(masks),
                per_head(noise or {}),
                q,
                slot_by_op,
                key,
                deterministic,
                backend,
            )
        else:
            out = empty_action_outputs(n, device)
            impl = resolve_backend(backend, device)
            run = impl.run_actions_lean or impl.run_actions  # lean: the tensors into one C++ entry
            run(logits, masks, q, noise or {}, slot_by_op, key, deterministic, out)
        sel = unpack_action_outputs(*out)
    if validate:
        raise_for_bad_rows(sel.actions, logits, masks, rules="style override / slot_by_op")
    return sel


def raise_for_bad_rows(
    actions: dict[str, Tensor],
    logits: dict[str, Tensor],
    masks: dict[str, Tensor | None],
    *,
    rules: str,
    mask_heads: tuple[str, ...] | None = None,
    skip_rows_of_bad_op: bool = False,
) -> None:
    """The fused ops' validation (select_actions and select_actions_v2): one sync on the happy path; on
    failure, names the head, the rows and the cause.

    ``actions``: head -> ``[N]`` (-1 on a bad row). An empty mask row raises "No valid actions available
    for head ... in k row(s)" for the heads in ``mask_heads`` (None: every head); inf/nan at valid logits
    raise ``ValueError``; anything else is a head emptied by the op-dependent ``rules`` (named in the
    message). ``skip_rows_of_bad_op``: a head's bad rows whose op is bad too are reported under the op.
    """
    if not bool(torch.stack([a < 0 for a in actions.values()]).any()):
        return
    for head in _ORDER:
        bad = torch.nonzero(actions[head] < 0).flatten()
        if bad.numel() == 0:
            continue
        rows = bad[:8].tolist()
        if skip_rows_of_bad_op and head != "op" and bool((actions["op"][bad] < 0).all()):
            continue  # reported under the op head
        mask = masks.get(head)
        checks_mask = mask is not None and (mask_heads is None or head in mask_heads)
        raise_for_bad_head(head, logits[head], mask, rows=bad, check_empty=checks_mask)
        raise InvalidActionMaskError(  # a head emptied by the op-dependent rules
            no_valid_actions_message(head, rows, bad.numel(), cause=f"once the op-dependent rules apply ({rules})")
        )
