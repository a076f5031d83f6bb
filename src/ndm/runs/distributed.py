"""Data-parallel training on PyTorch's own engine: DDP processes launched by ``torchrun``.

``torchrun --nproc_per_node=N -m ndm.cli train ...`` (or ``--nnodes``/``--rdzv-*`` for several
machines) sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_distributed` joins
the process group (NCCL on GPUs, gloo on CPUs). Without those variables a run is one plain
process and nothing here touches ``torch.distributed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """Where this process sits: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder; every rank computes."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"``: the ``local_rank``-th GPU when CUDA is available, else the CPU; ``"cuda"``
    under ``torchrun`` means this process's GPU. Raises ``ValueError`` for a device this
    machine cannot use (CUDA without CUDA, MPS without its build, a GPU index it lacks)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    if device.type != "cpu":
        try:
            torch.zeros(1, device=device)
        except (RuntimeError, AssertionError) as error:  # no backend, or no such index
            reason = str(error).strip().split("\n")[0].split(". ")[0][:160]
            raise ValueError(f"device {name!r} is not usable here ({reason})") from error
    return device


def init_distributed(device_name: str) -> Distributed:
    """Join the ``torchrun`` process group if there is one; return this process's place."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size == 1:
        return Distributed(0, 1, device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), device)


def mean_over_processes(values: dict[str, float], place: Distributed) -> dict[str, float]:
    """Average scalars over all processes (identity for one process)."""
    if not place.enabled:
        return values
    keys = sorted(values)
    stacked = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=place.device)
    dist.all_reduce(stacked)
    return dict(zip(keys, (stacked / place.world_size).tolist(), strict=True))


def shard_seed(seed: int, step: int, shard: int) -> int:
    """Seed of the noise of micro-batch ``shard`` of step ``step``.

    A step's global batch is cut into ``world_size * grad_accum`` micro-batches numbered in
    order; each draws its noise from its own generator, so a run gives the same result on
    one process with ``k``-fold gradient accumulation as on ``k`` processes.
    """
    return (seed * 1_000_003 + step) * 4_099 + shard
