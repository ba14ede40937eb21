"""The processes torchrun / accelerate launch start for `eval` and `run-batch`: which one this is, and
waiting for all of them. Each process answers its share and writes its own part; the first merges."""

from __future__ import annotations

import datetime
import os

import torch


def distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun / accelerate set up in the environment,
    each process on its own GPU (``LOCAL_RANK``) where there are GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" then means this process's GPU
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=4))
    return dist.get_rank(), dist.get_world_size()


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
