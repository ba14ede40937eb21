"""Sample number -> model inputs, in a loader worker: read the record, decode its media with
crosslmm's own decoder (an image is a one-frame video, several images a multi-image sample; images
keep their aspect-aware downscale as frames do), render and tokenise the conversation.

A row with a conversation but no image or video (LLaVA mixtures keep the LLM's language skills with
them) trains with no frames: no visual placeholder, and the cross-attention reads nothing for it.

Decoded clips of files on disk are kept, least recently used first out, up to a byte budget per
worker (a folder's videos come back every epoch, and decoding, not the model, is what a small model
waits on); a file found not to decode is not decoded again by that worker.

A sample that cannot be used (media that do not decode, a malformed row, a missing file) is skipped:
the next position of the same source's stream stands in for it, so the order stays a function of the
data alone and every process gets full batches. What was skipped travels with the batch, as
(source, "<shard>/<key>", what is wrong), for the training process to count and report."""

from __future__ import annotations

import tempfile
from pathlib import Path

import av
import torch

from ..budget_lru import BudgetLru
from ..errors import UserError
from ..video import SamplingRequest, read_frames
from .collate import no_frames
from .order import SampleOrder
from .records import Media, conversation
from .tokens import tokenize_conversation

# After this many unusable samples in a row, the source is wrong, not one file.
GIVE_UP_AFTER = 64
UNUSABLE = (UserError, OSError, ValueError, KeyError, TypeError, av.FFmpegError)


def sampling_request(count: int, processor) -> SamplingRequest:
    """How a sample's video (``count`` frames) or image (1) is read for training; distillation's
    teacher reads its inputs the same way, so that teacher and student see the same pixels."""
    return SamplingRequest(count, max_side=2 * processor.image_size)


class MixtureDataset(torch.utils.data.Dataset):
    def __init__(self, order: SampleOrder, processor, frames: int, cache_bytes: int = 2 << 30):
        self.order, self.processor, self.frames = order, processor, frames
        self.clips: BudgetLru[torch.Tensor] = BudgetLru(cache_bytes, lambda pixels: pixels.nbytes)
        self.bad: dict[Path, str] = {}  # files found not to decode, and why

    def __len__(self) -> int:  # the stream has no end; the batch sampler says which numbers are read
        return 2**62

    def frames_of(self, media: Media, count: int) -> torch.Tensor:
        request = sampling_request(count, self.processor)
        if media.path is not None:
            return self.file_frames(media.path, request)
        # bytes from a shard: the decoder reads files, so the member goes through a temporary one
        with tempfile.NamedTemporaryFile(suffix="-" + media.name) as file:
            file.write(media.data)
            file.flush()
            try:
                _, sampled = read_frames(file.name, request)
            except UserError as error:  # named as the shard names it, not by the temporary file
                raise ValueError(str(error).replace(file.name, media.name)) from None
        return self.processor.preprocess_frames(sampled.pixels)

    def file_frames(self, path: Path, request: SamplingRequest) -> torch.Tensor:
        key = (path, request.num_frames)
        if (pixels := self.clips.get(key)) is not None:
            return pixels
        if path in self.bad:
            raise ValueError(self.bad[path])
        try:
            _, sampled = read_frames(path, request)
        except UNUSABLE as error:
            self.bad[path] = str(error) or type(error).__name__
            raise
        pixels = self.processor.preprocess_frames(sampled.pixels)
        self.clips.put(key, pixels)
        return pixels

    def __getitem__(self, sample: int) -> dict:
        item = self.from_stream(*self.order.source_position(sample))
        if "name" in item:
            item["sample"] = (sample, item.pop("name"))
        return item

    def from_stream(self, source: int, position: int) -> dict:
        """The first usable sample of ``source``'s stream from ``position`` on, with the unusable ones
        before it in ``problems``; ``{"pixels": None, "problems"}`` after GIVE_UP_AFTER in a row."""
        problems = []
        for attempt in range(GIVE_UP_AFTER):
            shard, row = self.order.locate(source, position + attempt)
            reader = self.order.sources[source]
            key = reader.row_key(shard, row)
            try:
                record = reader.read(shard, row)
                key = record.key
                kind = record.media[0].kind if record.media else None
                messages = conversation(record.fields, kind)
                count = self.frames if kind == "video" else 1
                pixels = torch.cat([self.frames_of(media, count) for media in record.media]) if record.media else \
                    no_frames(self.processor)
            except UNUSABLE as error:
                problems.append((source, key, str(error) or type(error).__name__))
                continue
            ids, labels = tokenize_conversation(self.processor, messages, len(pixels))
            return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "pixels": pixels,
                    "name": f"{source}:{key}", "problems": problems}
        return {"pixels": None, "problems": problems}
