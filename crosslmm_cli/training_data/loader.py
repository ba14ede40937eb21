"""The batches of each process: optimizer step ``s`` consumes samples ``s * G`` to ``(s + 1) * G - 1``
of the order (G the global batch), whatever the number of processes. They are ordered by source
(length-aware), and each micro-batch of a step takes the next ``batch_size * processes`` of them,
process ``r`` the r-th ``batch_size``; so two processes with one micro-batch each and one process
accumulating two read the same samples into the same step, and a run resumed at step s on any
number of processes goes on where it stopped."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..output_paths import refuse_output_over_input
from .collate import collate, visual_stand_in
from .dataset import GIVE_UP_AFTER, MixtureDataset
from .folder import FolderRows
from .order import SampleOrder
from .sources import Source, open_source
from .workers import CLIP_CACHE_BYTES, decoding_worker

INDEX_DIR = ".json-index"  # under the output: the indexes of JSON and JSON-lines files


class StepSampler(torch.utils.data.Sampler):
    """Sample numbers of this process's micro-batches, from optimizer step ``start`` to ``total``.

    Length-aware: with ``source_of`` (sample number -> its source, known from the mixture's draws
    without reading anything), a step's samples are ordered by source before they are cut into
    micro-batches, so a micro-batch mostly holds one source's kind of sample (images of 1 frame,
    videos of many) and pads little; a step still trains on the same samples however many processes
    share it."""

    def __init__(self, start: int, total: int, global_batch: int, batch_size: int, rank: int, processes: int,
                 source_of: Callable[[int], int] | None = None):
        self.start, self.total, self.global_batch = start, total, global_batch
        self.batch_size, self.rank, self.processes = batch_size, rank, processes
        self.accumulate = global_batch // (batch_size * processes)
        self.source_of = source_of

    def __len__(self) -> int:
        return (self.total - self.start) * self.accumulate

    def __iter__(self):
        for step in range(self.start, self.total):
            samples = list(range(step * self.global_batch, (step + 1) * self.global_batch))
            if self.source_of is not None:
                samples.sort(key=lambda sample: (self.source_of(sample), sample))
            for micro in range(self.accumulate):
                first = (micro * self.processes + self.rank) * self.batch_size
                yield samples[first:first + self.batch_size]


def make_mixture_loader(dataset: MixtureDataset, sampler: StepSampler, pad_token_id: int, workers: int,
                        pin_memory: bool = False, stand_in: dict | None = None) -> torch.utils.data.DataLoader:
    """Workers decode whole micro-batches ahead of the step (two each); with or without them the
    batches are the same."""
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=partial(collate, pad_token_id=pad_token_id, stand_in=stand_in),
        num_workers=workers,
        persistent_workers=workers > 0, prefetch_factor=2 if workers else None, pin_memory=pin_memory,
        worker_init_fn=decoding_worker)


def check_sources(dataset: MixtureDataset) -> None:
    """Before step 1: each source yields a usable sample (its first, or one of the next few of its
    stream), read as training reads it; :class:`UserError` naming the source otherwise."""
    for number, source in enumerate(dataset.order.sources):
        item = dataset.from_stream(number, 0)
        if item["pixels"] is None:
            _, key, what = item["problems"][0]
            tried = len({key for _, key, _ in item["problems"]})
            raise UserError(f"source {number} ({source.spec}): none of its samples could be read ({tried} tried; "
                            f"first: {key}: {what}); fix the data or remove the source")


class Skips:
    """The samples the workers skipped: each counted once per source; the first few of a source
    reported in full, with shard and key."""

    IN_FULL = 5

    def __init__(self, report: Callable[[str], None], strict: bool = False):
        self.report, self.strict, self.seen, self.counts = report, strict, set(), Counter()

    def take(self, batch: dict) -> None:
        problems = batch.pop("problems")
        for source, key, what in problems:
            if (source, key) in self.seen:
                continue
            if self.strict:
                raise UserError(f"source {source}, {key}: {what}; fix or remove the sample, or drop --strict")
            self.seen.add((source, key))
            self.counts[source] += 1
            if self.counts[source] <= self.IN_FULL:
                self.report(f"skipped source {source}, {key}: {what}")
            elif self.counts[source] == self.IN_FULL + 1:
                self.report(f"source {source}: more samples skipped; they are counted at the end")
        if batch.pop("unreadable", False):
            source, key, what = problems[-1]
            raise UserError(f"source {source}: {GIVE_UP_AFTER} unusable samples in a row (last: {key}: {what}); "
                            "check its data")


def micro_batch_seed(seed: int, first_sample: int) -> int:
    """The random state a micro-batch trains under (dropout): a function of the run's seed and its
    first sample, so it is the same however the steps are spread over processes."""
    return int(np.random.SeedSequence([seed, first_sample]).generate_state(1)[0])


def open_sources(specs: list[dict], base: Path, output: Path) -> list[Source]:
    """The sources (paths relative to ``base``), surveyed; :class:`UserError` for one that names
    nothing, or one the output would write over."""
    sources = []
    for spec in specs:
        source = open_source(spec["path"], spec["media"], base)
        if isinstance(source, FolderRows):
            refuse_output_over_input(output, source.media_root, f"the data folder {spec['path']!r}")
        for file in source.files():
            if file.resolve() == output.resolve() or file.resolve().is_relative_to(output.resolve()):
                raise UserError(f"--output {output} holds {file}, an input of source {spec['path']!r}; training never "
                                "writes over its inputs: choose an --output outside it")
        source.index_dir = output / INDEX_DIR  # a file's indexes, found once for every process
        source.survey()
        sources.append(source)
    return sources


def report_damage(sources: list[Source], strict: bool, report: Callable[[str], None]) -> dict[int, tuple[int, int]]:
    """Report each missing or damaged file and each bad row of the sources, with what it costs;
    under ``strict`` any of them stops the run (after all are listed), and so does a source left
    with nothing to train on. Returns (damaged files, bad rows) per source."""
    found, first = {}, None
    for number, source in enumerate(sources):
        files, rows = source.damage(), source.bad_rows
        for line in files + rows:
            report(f"source {number} ({source.spec}): {line}")
            first = first or f"source {number} ({source.spec}): {line}"
        if files or rows:
            found[number] = (len(files), len(rows))
        if isinstance(source, FolderRows) and not source.count(0):
            bad = f" ({len(rows)} bad rows, listed above)" if rows else ""
            raise UserError(f"source {number} ({source.spec}): {source.path.name} holds no row to train on{bad}; "
                            "fix its rows")
    if strict and first:
        count = sum(files + rows for files, rows in found.values())
        raise UserError(f"{count} damaged files or bad rows (first: {first}); fix or remove them, or drop --strict")
    return found


class Mixture:
    """A run's data on one process (a folder's or a recipe's): the order, the dataset its loader
    workers read, and the samples skipped so far."""

    def __init__(self, sources: list[Source], weights: list[float], processor, settings, workers: int,
                 pin_memory: bool, rank: int, processes: int):
        self.order = SampleOrder(sources, weights, settings.seed)
        self.dataset = MixtureDataset(self.order, processor, settings.frames, CLIP_CACHE_BYTES // max(1, workers))
        self.settings, self.workers, self.pin_memory = settings, workers, pin_memory
        self.rank, self.processes = rank, processes
        self.pad_token_id = processor.tokenizer.pad_token_id
        self.stand_in = visual_stand_in(processor)
        self.skips: Skips | None = None
        self.text_only: set[str] = set()  # the text-only samples trained (their names)

    def check(self) -> None:
        check_sources(self.dataset)

    def batches(self, start: int, total: int) -> torch.utils.data.DataLoader:
        sampler = StepSampler(start, total, self.settings.global_batch, self.settings.batch_size, self.rank,
                              self.processes, source_of=lambda sample: self.order.source_position(sample)[0])
        return make_mixture_loader(self.dataset, sampler, self.pad_token_id, self.workers, self.pin_memory,
                                   self.stand_in)

    def take(self, batch: dict, report: Callable[[str], None], device) -> tuple[dict, list[tuple[int, str]]]:
        """The micro-batch ready for the model (its skipped samples reported, the random state set)
        and its (sample number, "source:key") list."""
        self.skips = self.skips or Skips(report, self.settings.strict)
        self.skips.take(batch)
        samples = batch.pop("samples")
        self.text_only.update(batch.pop("text_only_samples"))
        torch.manual_seed(micro_batch_seed(self.settings.seed, samples[0][0]))
        return {name: value.to(device) if isinstance(value, torch.Tensor) else value
                for name, value in batch.items()}, samples

    def text_only_counts(self, gather_object) -> Counter:
        """Text-only samples trained per source, over all processes (each counted once)."""
        return Counter(int(name.split(":", 1)[0]) for name in set(gather_object(sorted(self.text_only))))

    def skipped_counts(self, gather_object) -> Counter:
        """Unusable samples per source, over all processes (each counted once)."""
        seen = set(gather_object(sorted(self.skips.seen if self.skips else ())))
        return Counter(source for source, _ in seen)
