"""Scale-out with torchrun: DistributedDataParallel, gloo on CPU and NCCL on CUDA.

``torchrun --standalone --nproc_per_node=N --no-python morph train ...`` starts N copies;
torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) tells each
which it is. Several machines: the same command on each with ``--nnodes=M --node_rank=K
--rdzv_backend=c10d --rdzv_endpoint=HOST:PORT`` instead of ``--standalone``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: str) -> Dist:
    """Join the process group if torchrun started us; pick this process's device.

    ``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available). Under
    torchrun with CUDA, each process takes the GPU of its local rank.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, dev)


def all_flags(d: Dist, *flags: bool) -> list[bool]:
    """Logical OR of each flag over all processes (so that every process stops at the same step)."""
    if not d.active:
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def mean_values(d: Dist, values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over all processes (for logging the global batch's losses)."""
    if not d.active:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64,
                     device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return dict(zip(values, (t / d.world).tolist()))


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def teardown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()
