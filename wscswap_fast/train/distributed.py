"""Single process or DDP under torchrun, told apart by the environment torchrun sets.

torchrun (or torch.multiprocessing with the same variables) sets WORLD_SIZE, RANK, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT. With WORLD_SIZE > 1 the process group starts with NCCL when the
run's device is a GPU and gloo on the CPU; each process takes the GPU of its LOCAL_RANK.
Only rank 0 writes (checkpoints, logs, TensorBoard); the others compute and synchronise.
"""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
from torch import nn


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process sits: world size, global rank, local rank, its device, and whether it
    started the process group (and so must end it)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer (set by torchrun)") from None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> the GPU of this local rank when CUDA is available, else the CPU; 'cuda' -> the
    GPU of this local rank; 'cpu' / 'cuda:N' as given. ValueError for an unusable device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"run.device={name!r} but torch sees no CUDA GPU (use run.device=cpu)")
        index = local_rank if name == "cuda" else int(name.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise ValueError(f"run.device={name!r}: GPU {index} asked for, {torch.cuda.device_count()} present")
        return torch.device("cuda", index)
    raise ValueError(f"run.device must be auto, cpu, cuda or cuda:N, got {name!r}")


def init_distributed(device: str = "auto") -> DistInfo:
    """Read torchrun's environment; with WORLD_SIZE > 1 start the process group (unless the
    caller already did). The backend is NCCL for GPUs and gloo for the CPU."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world_size} are inconsistent")
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    initialised_here = False
    if world_size > 1 and not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise ValueError(f"WORLD_SIZE={world_size} but {var} is not set: start the run with torchrun")
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world_size)
        initialised_here = True
    if dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
    return DistInfo(world_size, rank, local_rank, dev, initialised_here)


def shutdown(info: DistInfo) -> None:
    """End the process group if :func:`init_distributed` started it."""
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def wrap_ddp(module: nn.Module, info: DistInfo) -> nn.Module:
    """DistributedDataParallel around module when distributed, else module itself. DDP
    broadcasts rank 0's parameters at construction, so every rank starts identical."""
    if not info.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(module, device_ids=ids, output_device=ids[0] if ids else None, broadcast_buffers=False)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or module itself)."""
    return getattr(module, "module", module)


def mean_over_ranks(values: dict, info: DistInfo) -> dict:
    """Average a dict of float scalars over all ranks (for logging); identity when single process."""
    if not info.distributed or not values:
        return dict(values)
    names = sorted(values)
    t = torch.tensor([float(values[n]) for n in names], dtype=torch.float64,
                     device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    t /= info.world_size
    return {n: v for n, v in zip(names, t.tolist())}
