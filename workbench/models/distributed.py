"""Data-parallel language-model training with torch.distributed (DDP, written out exactly).

Launch with `torchrun --nproc_per_node N -m app.cli lm train ...` (any launcher that sets RANK /
WORLD_SIZE / MASTER_ADDR / MASTER_PORT); gloo on CPU, nccl on CUDA.

Every rank draws the same global batch of sequences and trains on its slice of rows. Its loss
is its sum of token losses divided by the *global* number of target tokens (and router losses
are local means divided by the world size, with their counts summed over ranks), so the sum of
the ranks' gradients is exactly the one-process gradient of the global batch. The gradients are
summed with one flat all_reduce per step; identical optimizers then keep identical weights on
every rank. Rank 0 alone writes checkpoints, the catalog and the artifact. With one process
every collective is the identity.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from workbench.errors import InvalidInputError


class DataParallel:
    """The data-parallel ranks of an LM training run (world 1 without a process group)."""

    def __init__(self) -> None:
        self.active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.world = dist.get_world_size() if self.active else 1
        self.rank = dist.get_rank() if self.active else 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch [B, ...] -> [B / world, ...]."""
        if self.world == 1:
            return batch
        if batch.shape[0] % self.world:
            raise InvalidInputError(
                f"the batch of {batch.shape[0]} sequences does not split evenly over "
                f"{self.world} processes; use a --batch-size divisible by {self.world}"
            )
        n = batch.shape[0] // self.world
        return batch[self.rank * n:(self.rank + 1) * n]

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        out = value.detach().clone()
        if self.active:
            dist.all_reduce(out)
        return out

    def sum_grads_(self, params: list[torch.Tensor]) -> None:
        """Sum the parameters' .grad over ranks in place (one flat all_reduce)."""
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(p).clone()
            offset += g.numel()

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Copy rank 0's values into every rank's tensors (in place)."""
        if self.active:
            for t in tensors:
                dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def join_launcher_group(device: torch.device) -> torch.device:
    """Join the process group a launcher set up (WORLD_SIZE > 1), if not joined yet, and return
    this rank's device (its GPU LOCAL_RANK on CUDA). nccl on CUDA, gloo otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device
