"""torchrun support: one process per device, NCCL on GPUs and gloo on CPUs; rank 0 writes."""
import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')
    owns_group: bool = False  # this env created the process group, so its cleanup destroys it

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun)."""
    return int(os.environ.get('RANK', 0))


def init_distributed(device: str) -> DistEnv:
    """Read torchrun's environment; pick the device and the process group backend to match."""
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    rank, local_rank = launch_rank(), int(os.environ.get('LOCAL_RANK', 0))
    dev = torch.device(device)
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError('--device cuda was asked for, but torch sees no CUDA device; use --device cpu.')
        dev = torch.device('cuda', local_rank if world_size > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend='nccl' if dev.type == 'cuda' else 'gloo')
    return DistEnv(rank, world_size, local_rank, dev, owns_group)


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        values = values.to(env.device)
        dist.all_reduce(values)
    return values.cpu()


def from_main(value: Any, env: DistEnv) -> Any:
    """Rank 0's `value` on every rank (a run id drawn at random must be one id for the whole run)."""
    if not env.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=env.device if env.device.type == 'cuda' else None)
    return box[0]


def gather_to_main(value: Any, env: DistEnv) -> List[Any]:
    """Every rank's `value`, in rank order, on rank 0 (other ranks get an empty list)."""
    if not env.distributed:
        return [value]
    box = [None] * env.world_size if env.is_main else None
    dist.gather_object(value, box, dst=0)
    return box or []


def barrier(env: DistEnv) -> None:
    """Wait until every rank gets here, e.g. until rank 0 has written a file the others read."""
    if env.distributed:
        dist.barrier()


def cleanup(env: DistEnv) -> None:
    """Destroy the process group only where `env` created it: a sweep keeps one group for all its runs.

    A second group created after a destroyed one reuses its name and its keys in torchrun's store, so
    a rank can read the stale address of the old group and wait forever.
    """
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()
