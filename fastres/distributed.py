"""Data-parallel training with PyTorch's own engine: torchrun + DistributedDataParallel.

fastres reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...);
without it everything runs in one process and none of this code does anything.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def from_env() -> Dist:
    """The process's place in a torchrun job (or a single process when not under torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(d: Dist, device_type: str) -> None:
    """Join the process group: NCCL between GPUs, Gloo on CPU."""
    if not d.enabled or dist.is_initialized():
        return
    if device_type == "cuda":
        torch.cuda.set_device(d.local_rank)
    # A bounded timeout: a rank that dies mid-collective ends the job instead of hanging it.
    dist.init_process_group(
        "nccl" if device_type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=5)
    )


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast(obj: Any, d: Dist) -> Any:
    """Rank 0's value of ``obj`` on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
