"""Replaying a rollout's env sequences through the LSTM, cut at episode starts (both PPO updates use it).

The LSTM starts from ``mb.initial_hidden`` and is zeroed, row by row, before the first step of every
episode that starts inside the rollout, exactly as in the rollout. The sequence ``[B, T]`` is cut at the
steps where some row starts an episode, so each piece runs the LSTM over its whole span in one call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

from esper_fast.constants import HEAD_NAMES
from esper_fast.ppo.buffer import RolloutBuffer
from esper_fast.types import Hidden

__all__ = ["cat_pieces", "episode_cuts", "replay_pieces"]

P = TypeVar("P", bound=tuple)


def episode_cuts(dones: Tensor) -> list[int]:
    """``[0, t_1, ..., t_k, T]`` for ``dones`` ``[B, T]`` bool: the steps ``t > 0`` at which some row starts a
    new episode (``dones[:, t - 1]``), between the sequence's ends; one host sync."""
    starts = dones[:, :-1].any(0).nonzero().flatten() + 1
    return [0, *starts.tolist(), dones.shape[1]]


def replay_pieces(mb: RolloutBuffer, run: Callable[[slice, Hidden], tuple[P, Hidden]]) -> list[P]:
    """Calls ``run(span, hidden) -> (outputs, hidden after the span)`` for every piece of ``mb``'s sequences,
    in time order, carrying the hidden state and zeroing it (per row) at episode starts; the pieces' outputs.

    ``span`` is a ``slice`` of the time axis; ``hidden`` is ``(h, c)``, each ``[L, B, H]``.
    """
    B = mb.dones.shape[0]
    cuts = episode_cuts(mb.dones)
    hidden = mb.initial_hidden
    pieces = []
    for start, end in zip(cuts, cuts[1:]):
        if start > 0:
            keep = (~mb.dones[:, start - 1]).to(hidden[0].dtype).view(1, B, 1)
            hidden = (hidden[0] * keep, hidden[1] * keep)
        out, hidden = run(slice(start, end), hidden)
        pieces.append(out)
    return pieces


def cat_pieces(pieces: list[P]) -> P:
    """The pieces' outputs joined along time (dim 1), field by field: a ``[B, t, ...]`` tensor, or a dict
    head -> ``[B, t, ...]`` tensor (then in HEAD_NAMES order). A single piece is returned as it is."""
    if len(pieces) == 1:
        return pieces[0]

    def cat(parts: list) -> Tensor | dict[str, Tensor]:
        if isinstance(parts[0], dict):
            return {h: torch.cat([d[h] for d in parts], dim=1) for h in HEAD_NAMES}
        return torch.cat(parts, dim=1)

    return tuple(cat([p[i] for p in pieces]) for i in range(len(pieces[0])))
