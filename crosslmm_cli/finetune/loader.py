"""Feeding the training step: DataLoader worker processes decode and tokenise batches ahead of
it, and the cores of the machine are shared out between them and the step."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

import torch

from ..cores import usable_cores
from ..errors import UserError
from ..interrupts import quiet_abandoned_hand_overs
from ..video.decode import decode_on_one_core
from .data import Row, VideoQADataset, collate, visual_stand_in

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


def make_loader(rows: list[Row], processor, frames: int, batch_size: int, seed: int, workers: int,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The training DataLoader: rows shuffled by ``seed``. With workers, each decodes and tokenises
    whole batches ahead of the step (two each), keeps its own clip cache and lives as long as the
    run. Workers on or off, the batches and their order are the same."""
    if workers:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the workers are forked from a process that tokenised
    dataset = VideoQADataset(rows, processor, frames, cache_bytes=CLIP_CACHE_BYTES // max(1, workers))
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed),
        collate_fn=partial(collate, pad_token_id=processor.tokenizer.pad_token_id, stand_in=visual_stand_in(processor)),
        num_workers=workers,
        persistent_workers=workers > 0, prefetch_factor=2 if workers else None, pin_memory=pin_memory,
        worker_init_fn=decoding_worker)


def decoding_worker(_worker_id: int) -> None:
    decode_on_one_core()  # the workers are the parallelism (torch's own threads there are 1 already)
    quiet_abandoned_hand_overs()  # Ctrl-C: the main process's "interrupted" is the only line


def take_problems(batch: dict, bad_videos: dict[int, str], strict: bool, report: Callable[[str], None]) -> None:
    """Report (once) the rows the loader skipped for ``batch`` because their video does not decode,
    and take them out of it; stop the run under --strict, or when no readable video was found."""
    problems = batch.pop("problems")
    for line, problem in problems:
        if line not in bad_videos:
            bad_videos[line] = problem
            if strict:
                raise UserError(f"line {line}: {problem}; fix or remove the video, or drop --strict")
            report(f"skipped line {line}: {problem}")
    if batch.pop("unreadable", False):
        line, problem = problems[0]
        raise UserError(f"no readable video in {len(problems)} rows in a row (first: line {line}: {problem}); "
                        "check the folder's videos")
