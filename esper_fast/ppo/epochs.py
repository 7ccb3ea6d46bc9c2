"""The PPO epoch / minibatch loop, one copy: shuffling, KL early stop, gradient step, metric sums.

Every PPO update in the package runs through :func:`run_epochs` with its own per-minibatch loss:
:func:`esper_fast.ppo.update.ppo_update` (esper's loss), :func:`esper_fast.ppo.head_update.ppo_update_head`
(esper HEAD's loss) and the tabular study (:mod:`esper_fast.studies.learning`). The loop owns what they
share, in esper's order:

1. ``epochs`` passes; each pass takes the rows in order (``num_minibatches == 1``: esper, the whole batch)
   or in a ``randperm`` drawn from ``generator`` on the CPU, split into chunks of ``minibatch_rows``;
2. ``loss_fn(rows)`` for each chunk; it returns a :class:`MinibatchLoss`, or None to skip the chunk
   (HEAD's finiteness gate; counted in ``skipped``);
3. the KL (averaged over processes with ``all_reduce_mean``) of the first chunk that was not skipped is
   kept as ``approx_kl_first``, with what that chunk's ``first()`` returns;
4. above ``1.5 * target_kl`` the update stops *without* taking that step (esper);
5. ``zero_grad``, ``backward``, ``all_reduce_grads`` (average over processes), global-norm clip at
   ``max_grad_norm`` (None: measured, not clipped); a non-finite norm skips the step (``nonfinite_steps``);
6. after a step: ``metrics`` (plus ``approx_kl`` and ``grad_norm``) are summed, and averaged over the
   steps taken at the end.

Two host syncs per chunk (the KL decision when ``target_kl`` is set, the finite-gradient check).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from esper_fast.ppo.buffer import RolloutBuffer
from esper_fast.ppo.config import PPOConfig

__all__ = ["MinibatchLoss", "run_epochs"]


class MinibatchLoss(NamedTuple):
    """What a loss callback returns for one chunk of rows.

    ``loss``: the 0-dim loss to step on; ``kl``: the 0-dim KL estimate for the early stop (this
    process's; the loop averages it over processes); ``metrics``: 0-dim tensors summed over the steps
    taken (averaged at the end); ``first``: called on the first chunk only, returns 0-dim tensors kept
    as they are (entropies as the update found the policy); None: nothing.
    """

    loss: Tensor
    kl: Tensor
    metrics: dict[str, Tensor]
    first: Callable[[], dict[str, Tensor]] | None = None


def run_epochs(
    loss_fn: Callable[[Tensor], MinibatchLoss | None],
    num_rows: int,
    params: Iterable[Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    num_minibatches: int,
    minibatch_rows: int,
    target_kl: float | None,
    max_grad_norm: float | None,
    device: torch.device | str,
    generator: torch.Generator | None = None,
    all_reduce_mean: Callable[[Tensor], Tensor] | None = None,
    all_reduce_grads: Callable[[list[Tensor]], None] | None = None,
    metric_names: Sequence[str] = (),
) -> dict[str, Tensor]:
    """Run the loop over ``num_rows`` rows (env sequences); returns metric tensors.

    ``loss_fn(rows)`` gets the int64 row indices of one chunk (on ``device``). Returned keys: every
    ``metrics`` key of the callbacks averaged over the steps taken, plus ``approx_kl`` and ``grad_norm``
    (NaN, as is every name of ``metric_names``, when no step was taken; ``approx_kl`` then falls back to
    ``approx_kl_first``), ``approx_kl_first`` and the ``first`` keys, ``optimizer_steps``,
    ``early_stop`` (1.0 when the KL stopped the update), ``nonfinite_steps`` (steps skipped for a
    non-finite gradient norm) and ``skipped`` (chunks the callback skipped).
    """
    reduce = all_reduce_mean or (lambda x: x)
    params = [p for p in params if p.requires_grad]
    clip = math.inf if max_grad_norm is None else max_grad_norm
    sums: dict[str, Tensor] = {}
    first: dict[str, Tensor] | None = None
    steps_taken, nonfinite_steps, skipped, stopped = 0, 0, 0, False
    for _epoch in range(epochs):
        if num_minibatches == 1:  # esper: the whole batch, in row order
            order = torch.arange(num_rows, device=device)
        else:
            order = torch.randperm(num_rows, generator=generator, device="cpu").to(device)
        for rows in order.split(minibatch_rows):
            out = loss_fn(rows)
            if out is None:
                skipped += 1
                continue
            kl = reduce(out.kl)
            if first is None:  # entropies and KL as the update found the policy
                first = {"approx_kl_first": kl, **(out.first() if out.first is not None else {})}
            if target_kl is not None and bool(kl > 1.5 * target_kl):
                stopped = True
                break
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if all_reduce_grads is not None:
                all_reduce_grads([p.grad for p in params if p.grad is not None])
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
            if not bool(torch.isfinite(grad_norm)):  # NaN/inf loss or gradients: never step on them
                optimizer.zero_grad(set_to_none=True)  # (identical on every rank: grads were averaged)
                nonfinite_steps += 1
                continue
            optimizer.step()
            steps_taken += 1
            for name, value in (*out.metrics.items(), ("approx_kl", kl), ("grad_norm", grad_norm)):
                sums[name] = sums.get(name, 0.0) + value.detach()
        if stopped:
            break
    metrics = {k: v / max(steps_taken, 1) for k, v in sums.items()}
    for name in (*metric_names, "grad_norm"):
        metrics.setdefault(name, torch.tensor(float("nan")))
    metrics.update(first or {})
    metrics.setdefault("approx_kl", metrics.get("approx_kl_first", torch.tensor(float("nan"))))
    metrics["optimizer_steps"] = torch.tensor(float(steps_taken))
    metrics["early_stop"] = torch.tensor(float(stopped))
    metrics["nonfinite_steps"] = torch.tensor(float(nonfinite_steps))
    metrics["skipped"] = torch.tensor(float(skipped))
    return metrics


def run_config_epochs(
    loss_fn: Callable[[Tensor], MinibatchLoss | None],
    buffer: RolloutBuffer,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: PPOConfig,
    *,
    generator: torch.Generator | None = None,
    all_reduce_mean: Callable[[Tensor], Tensor] | None = None,
    all_reduce_grads: Callable[[list[Tensor]], None] | None = None,
    metric_names: Sequence[str] = (),
) -> dict[str, Tensor]:
    """:func:`run_epochs` over the buffer's env sequences with the trainer's settings from ``config``
    (update_epochs, num_minibatches, minibatch_envs, target_kl, max_grad_norm), on ``policy``'s parameters:
    the loop of :func:`esper_fast.ppo.update.ppo_update` and :func:`esper_fast.ppo.head_update.ppo_update_head`."""
    return run_epochs(
        loss_fn,
        buffer.num_envs,
        policy.parameters(),
        optimizer,
        epochs=config.update_epochs,
        num_minibatches=config.num_minibatches,
        minibatch_rows=config.minibatch_envs,
        target_kl=config.target_kl,
        max_grad_norm=config.max_grad_norm,
        device=buffer.obs.device,
        generator=generator,
        all_reduce_mean=all_reduce_mean,
        all_reduce_grads=all_reduce_grads,
        metric_names=metric_names,
    )
