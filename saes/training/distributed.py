"""Data-parallel training with torch.distributed (DDP-style, written out so it stays exact).

Launch with `torchrun --nproc_per_node N workbench sae train ...` (or any launcher that sets
RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT); gloo on CPU, nccl on CUDA.

Every rank reads the same global batch and trains on its slice of rows; every loss term is a
sum over tokens divided by a *global* quantity (token count, variance of the global batch), so
the sum of the ranks' gradients is exactly the one-process gradient. Gradients are summed with
one all_reduce per step, and identical optimizers keep identical weights on every rank. With one
process every collective is the identity.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from workbench.errors import InvalidInputError


class Reducer:
    """Collectives over the data-parallel ranks (no-ops with a single process)."""

    def __init__(self, local: bool = False) -> None:
        """local=True: a one-process reducer even inside a process group."""
        self.active = not local and dist.is_available() and dist.is_initialized()
        self.world = dist.get_world_size() if self.active else 1
        self.rank = dist.get_rank() if self.active else 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch [B, d] -> [B / world, d]."""
        if self.world == 1:
            return x
        if x.shape[0] % self.world:
            raise InvalidInputError(
                f"the batch of {x.shape[0]} tokens does not split evenly over {self.world} "
                f"processes; use a --batch-size divisible by {self.world}"
            )
        n = x.shape[0] // self.world
        return x[self.rank * n : (self.rank + 1) * n]

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (a new tensor)."""
        return self._reduce(t, dist.ReduceOp.SUM)

    def max(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t, dist.ReduceOp.MAX)

    def min(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t, dist.ReduceOp.MIN)

    def any(self, flag: bool, device: torch.device) -> bool:
        """True when `flag` holds on any rank."""
        if self.world == 1:
            return flag
        return bool(self.max(torch.tensor([int(flag)], device=device)).item())

    def cat(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate equal-shaped tensors from all ranks along dim 0 (rank order)."""
        if self.world == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def sum_grads_(self, params: list[torch.Tensor]) -> None:
        """Sum the .grad of `params` over ranks in place (one flat all_reduce)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Copy rank 0's values of `tensors` to every rank (in place)."""
        if self.world == 1:
            return
        for t in tensors:
            dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def _reduce(self, t: torch.Tensor, op) -> torch.Tensor:
        out = t.detach().clone()
        if self.world > 1:
            dist.all_reduce(out, op=op)
        return out


def launched_distributed() -> bool:
    """True when a launcher (torchrun) asked for more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device | None = None) -> Reducer:
    """Join the process group a launcher set up (env vars), if any, and return a Reducer.

    Uses nccl on CUDA and gloo otherwise; on CUDA each rank takes the GPU `LOCAL_RANK`.
    """
    if launched_distributed() and not dist.is_initialized():
        use_cuda = (device is None or torch.device(device).type == "cuda") and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Reducer()


def rank_device(device: torch.device) -> torch.device:
    """On CUDA under a launcher: this rank's GPU; otherwise `device` unchanged."""
    if device.type == "cuda" and launched_distributed() and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device
