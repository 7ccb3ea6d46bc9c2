"""Data-parallel training over ``torch.distributed`` (launched by ``torchrun``).

Each process (rank) owns its envs and its rollout; after ``backward`` the gradients are averaged
over ranks (one flat all-reduce), so every rank takes the same optimiser step and the parameters
stay identical (rank 0's initial parameters are broadcast first). The KL early-stop value and the
observation-normaliser moments are averaged too, so every rank makes the same decisions and sees
the same normalisation. Rank 0 alone writes logs and checkpoints. Backend: gloo on CPU, nccl on CUDA.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment, or 1) everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistContext", "init_distributed", "shutdown_distributed"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size``, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_mean(self, x: Tensor) -> Tensor:
        """Mean of ``x`` over ranks (a new tensor; ``x`` itself when single-process)."""
        if not self.enabled:
            return x
        y = x.detach().clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y / self.world_size

    def all_reduce_sum(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        y = x.detach().clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    def all_reduce_grads(self, grads: list[Tensor]) -> None:
        """Average ``grads`` over ranks in place, through one flat buffer."""
        if not self.enabled or not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def any_flag(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any rank (e.g. a Ctrl-C seen by one)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (None elsewhere); ``[obj]`` when single-process."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out


def init_distributed(device: str = "cpu") -> DistContext:
    """Join the process group that ``torchrun`` set up (env vars), or return a single-process context.

    ``device`` "cpu" uses gloo; "cuda" uses nccl and ``cuda:<LOCAL_RANK>``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=torch.device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was requested under torchrun, but CUDA is not available")
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
