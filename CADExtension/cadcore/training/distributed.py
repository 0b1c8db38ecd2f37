"""Distributed data parallel training under ``torchrun`` (gloo on CPU, NCCL on CUDA).

``torchrun --nproc_per_node N -m cadcore train ...`` starts N copies; each reads RANK/WORLD_SIZE/LOCAL_RANK from the
environment. Every rank trains on its own shard of the cases (DistributedSampler), gradients are averaged by DDP,
losses and validation scores are reduced across ranks, and only rank 0 writes files. Without torchrun (WORLD_SIZE
unset or 1) everything here is a no-op, so single-process training is unchanged.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def start(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the process group when launched by torchrun; returns the ranks and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(), device
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(ranks.local_rank)
        device = torch.device("cuda", ranks.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ranks, device


def wrap(network: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """The module to train: DDP around ``network`` when distributed (state dicts stay on ``network`` itself)."""
    if not ranks.distributed:
        return network
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)


def unwrapped(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (else ``network``): forward passes outside the training step (simulated-click
    rounds, validation) must not go through DDP, whose forward may broadcast buffers, a collective that would hang
    when ranks run different numbers of such passes."""
    from torch.nn.parallel import DistributedDataParallel

    return network.module if isinstance(network, DistributedDataParallel) else network


def sampler(dataset, ranks: Ranks, seed: int):
    if not ranks.distributed:
        return None
    return torch.utils.data.DistributedSampler(dataset, num_replicas=ranks.world, rank=ranks.rank, shuffle=True,
                                               seed=seed, drop_last=len(dataset) >= 2 * ranks.world)


def summed(values: np.ndarray, ranks: Ranks) -> np.ndarray:
    """Element-wise sum over ranks (float64)."""
    if not ranks.distributed:
        return values
    tensor = torch.as_tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.numpy()


def weights_digest(network: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 over the network's parameters and buffers (or over a state dict, such as the best checkpoint each rank
    kept), to prove every rank holds the same weights."""
    state = network.state_dict() if isinstance(network, torch.nn.Module) else network
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def gathered(value, ranks: Ranks) -> list:
    if not ranks.distributed:
        return [value]
    values: list = [None] * ranks.world
    dist.all_gather_object(values, value)
    return values


def finish(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
