"""esper_fast.ppo.replay: the sequence cut, the per-row hidden reset and the join along time."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from esper_fast.constants import HEAD_NAMES
from esper_fast.ppo.replay import cat_pieces, episode_cuts, replay_pieces


def _step_by_step(dones: torch.Tensor, h0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """An independent one-step-at-a-time recurrence h_t = 0.5 h_{t-1} + x_t, h zeroed after a done."""
    h, outs = h0.clone(), []
    for t in range(dones.shape[1]):
        if t > 0:
            h = h * (~dones[:, t - 1]).float().view(1, -1, 1)
        h = 0.5 * h + x[:, t].view(1, -1, 1)
        outs.append(h[0, :, 0].clone())
    return torch.stack(outs, 1)


def test_episode_cuts_are_the_steps_after_any_done():
    dones = torch.zeros(3, 7, dtype=torch.bool)
    dones[0, 1] = True  # row 0's episode ends at step 1: a cut at 2
    dones[2, 4] = True  # a cut at 5
    dones[1, 6] = True  # the last step: no cut (nothing follows)
    assert episode_cuts(dones) == [0, 2, 5, 7]
    assert episode_cuts(torch.zeros(2, 4, dtype=torch.bool)) == [0, 4]


def test_replay_pieces_equals_a_step_by_step_recurrence():
    g = torch.Generator().manual_seed(0)
    B, T = 4, 9
    dones = torch.rand(B, T, generator=g) < 0.25
    x = torch.randn(B, T, generator=g)
    h0 = torch.randn(1, B, 1, generator=g)
    mb = SimpleNamespace(dones=dones, initial_hidden=(h0, h0.clone()))
    spans = []

    def run(span, hidden):  # a piece: the recurrence over its span, in one call
        spans.append((span.start, span.stop))
        h, outs = hidden[0], []
        for t in range(span.start, span.stop):
            h = 0.5 * h + x[:, t].view(1, -1, 1)
            outs.append(h[0, :, 0])
        return (torch.stack(outs, 1),), (h, hidden[1])

    (out,) = cat_pieces(replay_pieces(mb, run))
    cuts = episode_cuts(dones)
    assert spans == list(zip(cuts, cuts[1:]))
    torch.testing.assert_close(out, _step_by_step(dones, h0, x), rtol=0, atol=0)


def test_cat_pieces_joins_tensors_and_head_dicts_along_time():
    a = ({h: torch.full((2, 1), float(i)) for i, h in enumerate(reversed(HEAD_NAMES))}, torch.zeros(2, 1, 3))
    b = ({h: torch.full((2, 2), -1.0) for h in HEAD_NAMES}, torch.ones(2, 2, 3))
    assert cat_pieces([a]) is a
    d, t = cat_pieces([a, b])
    assert list(d) == list(HEAD_NAMES)
    for h in HEAD_NAMES:
        assert torch.equal(d[h], torch.cat([a[0][h], b[0][h]], 1))
    assert torch.equal(t, torch.cat([a[1], b[1]], 1))
