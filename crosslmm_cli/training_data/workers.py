"""The loader's worker processes: how many, and how the cores of the machine are shared out
between them and the training step."""

from __future__ import annotations

import os

import torch

from ..cores import usable_cores
from ..interrupts import quiet_abandoned_hand_overs
from ..video.decode import decode_on_one_core

CLIP_CACHE_BYTES = 2 << 30  # decoded clips kept in memory, shared out between the workers


def cores_per_process() -> int:
    """The cores this process may use: its share of the node beside the other training processes
    that torchrun / accelerate launch started there."""
    return max(1, usable_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def default_workers() -> int:
    """One per core of the process, at most 8. On CPU the step's thread shares a core with one of
    them: on 2 cores, single `crosslmm finetune` runs of the tiny model over 50 clips of 3 s 360p
    took their first epoch at 12.7 and 13.1 samples/s with 2 workers, 10.8-12.3 with 1 and 10.8 with
    3 (benchmarks/data_loading.py compares the default with what it replaced)."""
    return min(8, cores_per_process())


def share_cores(workers: int) -> None:
    """On CPU the step keeps the cores the workers leave it (at least one): a worker decodes on one
    core, and torch's threads on the same cores would only wait on each other. The user's own
    OMP_NUM_THREADS wins."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, cores_per_process() - workers))


def decoding_worker(_worker_id: int) -> None:
    decode_on_one_core()  # the workers are the parallelism (torch's own threads there are 1 already)
    quiet_abandoned_hand_overs()  # Ctrl-C: the main process's "interrupted" is the only line
