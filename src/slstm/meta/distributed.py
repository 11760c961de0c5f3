"""Data-parallel meta-training with ``torch.distributed``.

``torchrun --nproc-per-node K -m slstm meta-train ...`` starts K processes; each
one reads its rank from the environment that torchrun sets (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). Every rank runs its own
episodes on its own tasks; after each truncation the meta-gradients are summed
with ``all_reduce`` and divided by the number of ranks that contributed a finite
one, so every rank applies the same Adam step and the update networks stay
identical. Rank 0 alone writes checkpoints, metrics and logs.

The backend is ``gloo`` on CPU and ``nccl`` on CUDA.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistributedContext:
    """Rank, world size and the collective operations meta-training needs.

    With ``world_size == 1`` and no process group every method works locally, so
    the trainer has one code path.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and logs (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def average_gradients(
        self, gradients: list[torch.Tensor], contributes: bool, stop: bool = False
    ) -> tuple[list[torch.Tensor], int, bool]:
        """Average ``gradients`` over the ranks whose ``contributes`` is True.

        A rank that does not contribute (its meta-loss or meta-gradient was not
        finite, or its episode already ended) adds zeros. ``stop`` is True when
        this rank was asked to stop (SIGTERM or Ctrl-C). Returns the averaged
        tensors, the number of contributing ranks and whether any rank asked to
        stop. When no rank contributes, the caller skips the meta-update on
        every rank alike. Every rank learns of a stop request in the same call,
        so all of them can stop at the same point.
        """
        if not self.active:
            return gradients, int(contributes), stop
        flat = torch.cat([g.reshape(-1) for g in gradients])
        if not contributes:
            flat = torch.zeros_like(flat)
        # The count and the stop requests ride in the same buffer, so one
        # collective call suffices.
        extra = torch.tensor(
            [1.0 if contributes else 0.0, 1.0 if stop else 0.0], dtype=flat.dtype
        )
        buffer = torch.cat([flat, extra.to(flat.device)])
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        contributors = int(round(buffer[-2].item()))
        stop_requested = buffer[-1].item() > 0.5
        if contributors == 0:
            return [torch.zeros_like(g) for g in gradients], 0, stop_requested
        mean = buffer[:-2] / contributors
        averaged = []
        offset = 0
        for g in gradients:
            averaged.append(mean[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return averaged, contributors, stop_requested

    def all_gather_object(self, obj) -> list:
        """Return ``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        if not self.active:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast_object(self, obj):
        """Return rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a short list of numbers over the ranks."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def _comm_device(self) -> torch.device:
        # nccl only moves CUDA tensors.
        if dist.is_initialized() and dist.get_backend() == "nccl":
            return self.device
        return torch.device("cpu")


def launched_by_torchrun() -> bool:
    """Whether the environment describes a multi-process job (``WORLD_SIZE > 1``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup_distributed(device: torch.device, *, timeout_s: float = 1800.0):
    """Join the process group torchrun describes, or return a single-process context.

    On CUDA each rank uses the GPU ``LOCAL_RANK`` and the ``nccl`` backend; on CPU
    the ``gloo`` backend. Returns ``(context, device)``, where ``device`` is the
    one this rank must use.
    """
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        return DistributedContext(rank, world_size, device, owns_group=False), device
    if not launched_by_torchrun():
        return DistributedContext(0, 1, device), device
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(
                f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {name} is not set; "
                "start distributed meta-training with torchrun, which sets RANK, "
                "LOCAL_RANK, MASTER_ADDR and MASTER_PORT"
            )
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(
        backend=backend, timeout=datetime.timedelta(seconds=timeout_s)
    )
    context = DistributedContext(
        dist.get_rank(), dist.get_world_size(), device, owns_group=True
    )
    return context, device
