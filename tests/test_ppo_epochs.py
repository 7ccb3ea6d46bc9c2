"""ppo.epochs.run_epochs: the one PPO epoch/minibatch loop (order, KL early stop, skipped and non-finite steps)."""

from __future__ import annotations

import math

import pytest
import torch

from esper_fast.ppo.epochs import MinibatchLoss, run_epochs


def _problem(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, generator=g), torch.randn(n, generator=g)
    w = torch.zeros(3, requires_grad=True)
    return x, y, w


def _run(loss_fn, w, n, **kw):
    opt = torch.optim.Adam([w], lr=0.1)
    args = dict(epochs=2, num_minibatches=1, minibatch_rows=n, target_kl=None, max_grad_norm=1.0, device="cpu")
    return run_epochs(loss_fn, n, [w], opt, **{**args, **kw})


def test_rows_in_order_or_in_the_generators_permutation():
    n, seen = 6, []
    x, y, w = _problem(n)

    def loss_fn(rows):
        seen.append(rows.tolist())
        return MinibatchLoss(((x[rows] @ w - y[rows]) ** 2).mean(), torch.zeros(()), {})

    _run(loss_fn, w, n)
    assert seen == [list(range(n))] * 2
    seen.clear()
    _run(loss_fn, w, n, num_minibatches=3, minibatch_rows=2, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    want = [chunk.tolist() for _ in range(2) for chunk in torch.randperm(n, generator=g).split(2)]
    assert seen == want


def test_steps_match_a_plain_adam_loop_and_metrics_are_means_over_steps():
    n = 6
    x, y, w = _problem(n)
    x2, y2, w2 = _problem(n)
    losses = []

    def loss_fn(rows):
        loss = ((x[rows] @ w - y[rows]) ** 2).mean()
        losses.append(loss.detach())
        return MinibatchLoss(loss, torch.tensor(0.01), {"loss": loss}, first=lambda: {"entropy/op": torch.tensor(7.0)})

    out = _run(loss_fn, w, n, epochs=3)
    opt = torch.optim.Adam([w2], lr=0.1)
    for _ in range(3):  # the loop written out by hand
        loss = ((x2 @ w2 - y2) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([w2], 1.0)
        opt.step()
    assert torch.equal(w.detach(), w2.detach())
    assert out["optimizer_steps"] == 3 and out["early_stop"] == 0 and out["nonfinite_steps"] == 0
    assert torch.allclose(out["loss"], torch.stack(losses).mean())
    assert torch.allclose(out["approx_kl"], torch.tensor(0.01)) and out["approx_kl_first"] == torch.tensor(0.01)
    assert out["entropy/op"] == 7.0 and out["skipped"] == 0


def test_kl_above_one_and_a_half_target_stops_before_the_step():
    n = 4
    x, y, w = _problem(n)
    kls = iter([0.0, 0.0, 1.0, 0.0])
    snapshots = []

    def loss_fn(rows):
        snapshots.append(w.detach().clone())
        return MinibatchLoss(((x @ w - y) ** 2).mean(), torch.tensor(next(kls)), {})

    out = _run(loss_fn, w, n, epochs=4, target_kl=0.5)
    assert out["early_stop"] == 1 and out["optimizer_steps"] == 2 and len(snapshots) == 3
    assert torch.equal(w.detach(), snapshots[2])  # the stopping chunk took no step


def test_nonfinite_loss_skips_the_step_and_a_none_chunk_is_skipped():
    n = 4
    x, y, w = _problem(n)
    calls = iter(["none", "nan", "ok"])

    def loss_fn(rows):
        kind = next(calls)
        if kind == "none":
            return None
        loss = ((x @ w - y) ** 2).mean() * (float("nan") if kind == "nan" else 1.0)
        return MinibatchLoss(loss, torch.tensor(0.25 if kind == "nan" else 0.5), {"loss": loss})

    out = _run(loss_fn, w, n, epochs=3)
    assert out["skipped"] == 1 and out["nonfinite_steps"] == 1 and out["optimizer_steps"] == 1
    assert out["approx_kl_first"] == 0.25  # the first chunk that was not skipped
    assert math.isfinite(float(out["loss"])) and torch.isfinite(w).all()


def test_no_step_gives_nan_metrics_and_first_kl():
    n = 4
    x, y, w = _problem(n)

    def loss_fn(rows):
        return MinibatchLoss(((x @ w - y) ** 2).mean(), torch.tensor(9.0), {"loss": torch.tensor(1.0)})

    out = _run(loss_fn, w, n, target_kl=0.1, metric_names=("loss", "clip_fraction"))
    assert out["optimizer_steps"] == 0 and out["early_stop"] == 1
    assert all(math.isnan(float(out[k])) for k in ("loss", "clip_fraction", "grad_norm"))
    assert out["approx_kl"] == 9.0 and torch.equal(w.detach(), torch.zeros(3))


@pytest.mark.parametrize("max_grad_norm", [None, 1e-3])
def test_max_grad_norm_none_does_not_clip(max_grad_norm):
    n = 4
    x, y, w = _problem(n)
    _, _, w2 = _problem(n)
    opt2 = torch.optim.SGD([w2], lr=1.0)
    loss_fn = lambda rows: MinibatchLoss((100 * (x @ w - y) ** 2).mean(), torch.zeros(()), {})  # noqa: E731
    run_epochs(
        loss_fn,
        n,
        [w],
        torch.optim.SGD([w], lr=1.0),
        epochs=1,
        num_minibatches=1,
        minibatch_rows=n,
        target_kl=None,
        max_grad_norm=max_grad_norm,
        device="cpu",
    )
    (100 * (x @ w2 - y) ** 2).mean().backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_([w2], max_grad_norm)
    opt2.step()
    assert torch.equal(w.detach(), w2.detach())
