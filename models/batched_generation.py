"""Continuous batching: many answers generated together, one decoding step for all of them at a time.

A :class:`Sequence` is one answer to generate (a prompt, its video's :class:`VisualMemory`, its
sampling settings). :class:`ContinuousBatch` runs them the way vLLM's scheduler does, with
transformers' ``DynamicCache`` as the key/value store:

* **Admission at step boundaries.** Each :meth:`ContinuousBatch.step` first prefills waiting
  sequences (up to ``max_batch_size`` running, and about ``prefill_tokens`` prompt tokens per step, so
  a burst of arrivals is spread over steps that also decode the running ones). A prefill runs alone
  (batch 1): its keys/values, first token and T2V keys/values are those ``generate()`` computes, and
  a cached prefix of its prompt (a follow-up, a shared video) is extended, not recomputed.
* **One decoding step for every running sequence.** The rows' caches are left-padded to one length
  and the attention mask hides the padding; each row gets its own positions (RoPE is applied before
  keys are cached, so padding moves nothing). The videos are stacked with :meth:`VisualMemory.stack`:
  a row's T2V reads only its own video's tokens, the padding of shorter videos is masked.
* **Retirement at once.** A row that ends (end of answer, stop string, length, cancelled) leaves
  the batch in the same step; padding columns no remaining row needs are cut.

Logits are processed per row by the processors ``generate()`` builds for the row's settings, and a
seeded row samples from its own generator, so a seeded answer does not depend on its neighbours."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LogitsProcessorList

from .cache_keyword import cache_argument, output_cache
from .cross_attention import VisualMemory
from .generation import SamplingSettings, StopCut, TextPieces, stop_token_ids


class Sequence:
    """One answer being generated. ``input_ids`` (1, L) is the prompt (the video placeholders
    included), ``memory`` its encoded video (or None), ``prefix_cache`` a private cache holding the
    keys/values of a prefix of the prompt (it is extended in place).

    Filled as it runs: ``token_ids`` (the answer's tokens, EOS excluded), ``text`` (a stop string and
    what follows cut), ``prefill_began_at`` and ``first_token_at`` (``time.perf_counter()``), and once ``finished``:
    ``finish_reason`` ("stop", "length" or "cancelled") and ``cache`` (the keys/values of the prompt
    and of every answer token but the last, for a prefix cache)."""

    def __init__(self, input_ids: torch.Tensor, memory: VisualMemory | None, settings: SamplingSettings,
                 prefix_cache=None, tag=None):
        self.input_ids, self.memory, self.settings, self.prefix_cache = input_ids, memory, settings, prefix_cache
        self.tag = tag  # the caller's own (a job and a choice, a question)
        self.token_ids: list[int] = []
        self.text = ""
        self.prefill_began_at: float | None = None
        self.first_token_at: float | None = None
        self.finish_reason: str | None = None
        self.cache = None
        self.cancelled = threading.Event()
        self._ids: list[int] = input_ids[0].tolist()  # prompt and every sampled token (EOS included)
        self._pieces: TextPieces | None = None
        self._stops = StopCut(settings.stop)
        self._processors: LogitsProcessorList | None = None
        self._generator: torch.Generator | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def prompt_length(self) -> int:
        return self.input_ids.shape[1]

    def cancel(self) -> None:
        """End this answer at the next step (safe from any thread)."""
        self.cancelled.set()


class ContinuousBatch:
    """The running batch and the sequences waiting to join it (see the module's docstring).
    ``add`` and ``Sequence.cancel`` may be called from any thread; ``step`` from one thread only."""

    def __init__(self, model, tokenizer, max_batch_size: int = 16, prefill_tokens: int = 4096):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.prefill_tokens = max_batch_size, prefill_tokens
        self.eos = stop_token_ids(tokenizer, model.config)
        self.device = model.get_input_embeddings().weight.device
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.rows: list[Sequence] = []
        self._lock = threading.Lock()
        self._cache: DynamicCache | None = None  # (B, kvh, L, hd) per layer, left-padded
        self._mask: torch.Tensor | None = None  # (B, L) long: 1 for real positions
        self._memory: VisualMemory | None = None  # the rows' videos, stacked

    def add(self, sequence: Sequence) -> None:
        with self._lock:
            self.waiting.append(sequence)

    def __len__(self) -> int:
        """Sequences running or waiting."""
        with self._lock:
            return len(self.rows) + len(self.waiting)

    @torch.inference_mode()
    def step(self) -> list[tuple[Sequence, str]]:
        """Admit what fits, then one decoding step for every running sequence: ``(sequence, new
        text)`` for each sequence that produced text or ended (check ``sequence.finished``)."""
        events: list[tuple[Sequence, str]] = []
        self._admit(events)
        if self.rows:  # those admitted just now included: their first token is fed with the others'
            self._decode(events)
        self._retire()
        return events

    # ---- admission ------------------------------------------------------------------------------
    def _admit(self, events: list) -> None:
        admitted, budget = 0, self.prefill_tokens
        while len(self.rows) < self.max_batch_size:
            with self._lock:
                if not self.waiting:
                    break
                sequence = self.waiting[0]
                length = sequence.prompt_length - (sequence.prefix_cache.get_seq_length() if sequence.prefix_cache else 0)
                if admitted and length > budget:
                    break  # the next step takes it; at least one prefill per step
                self.waiting.popleft()
            budget -= length
            if sequence.cancelled.is_set():
                self._finish(sequence, "cancelled", events)
                continue
            cache = self._prefill(sequence, events)
            admitted += 1
            if sequence.finished:  # its first token ended it
                sequence.cache = cache
            else:
                self._join(sequence, cache)

    def _prefill(self, sequence: Sequence, events: list) -> DynamicCache:
        sequence.prefill_began_at = time.perf_counter()
        settings = sequence.settings
        config = settings.generation_config(self.model.generation_config, self.eos)
        # generate()'s own logits processors for these settings (repetition penalty, the suppressed
        # video placeholder, temperature, top-k, top-p), so a row's choice matches generate()'s
        sequence._processors = self.model._get_logits_processor(
            generation_config=config, input_ids_seq_length=sequence.prompt_length,
            logits_processor=LogitsProcessorList(), device=str(self.device), model_kwargs={})
        if settings.seed is not None and settings.temperature > 0:
            sequence._generator = torch.Generator(self.device).manual_seed(settings.seed)
        sequence._pieces = TextPieces(self.tokenizer)
        cache = sequence.prefix_cache if sequence.prefix_cache is not None else DynamicCache()
        sequence.prefix_cache = None
        start, length = cache.get_seq_length(), sequence.prompt_length
        if sequence.memory is not None:
            sequence.memory.cache_kv = True  # its T2V keys/values, computed here, serve every later step
        output = self.model(
            input_ids=sequence.input_ids[:, start:].to(self.device),
            attention_mask=torch.ones(1, length, dtype=torch.long, device=self.device),
            position_ids=torch.arange(start, length, device=self.device)[None],
            visual_memory=sequence.memory, use_cache=True, logits_to_keep=1, **cache_argument(cache),
        )
        self._choose([sequence], output.logits[:, -1], events)
        return output_cache(output)

    def _join(self, sequence: Sequence, cache: DynamicCache) -> None:
        """Add a prefilled sequence's cache (1, kvh, L', hd) to the batch's, left-padding the shorter."""
        length = cache.get_seq_length()
        if not self.rows:
            self._cache, self._mask = cache, torch.ones(1, length, dtype=torch.long, device=self.device)
        else:
            width = max(length, self._mask.shape[1])
            for ours, theirs in zip(self._cache.layers, cache.layers):
                ours.keys = torch.cat([_left_pad(ours.keys, width), _left_pad(theirs.keys, width)])
                ours.values = torch.cat([_left_pad(ours.values, width), _left_pad(theirs.values, width)])
            new_row = torch.ones(1, length, dtype=torch.long, device=self.device)
            self._mask = torch.cat([F.pad(self._mask, (width - self._mask.shape[1], 0)), F.pad(new_row, (width - length, 0))])
        self.rows.append(sequence)
        self._restack()

    def _restack(self) -> None:
        memories = [row.memory for row in self.rows]
        self._memory = VisualMemory.stack(memories) if any(m is not None for m in memories) else None

    # ---- decoding -------------------------------------------------------------------------------
    def _decode(self, events: list) -> None:
        tokens = torch.tensor([[row._ids[-1]] for row in self.rows], device=self.device)
        positions = self._mask.sum(dim=1, keepdim=True)  # each row's real length: the new token's position
        self._mask = F.pad(self._mask, (0, 1), value=1)
        output = self.model(input_ids=tokens, attention_mask=self._mask, position_ids=positions,
                            visual_memory=self._memory, use_cache=True, logits_to_keep=1,
                            **cache_argument(self._cache))
        self._cache = output_cache(output)
        self._choose(self.rows, output.logits[:, -1], events)

    def _choose(self, rows: list[Sequence], logits: torch.Tensor, events: list) -> None:
        """Pick each row's next token from its logits (B, V) as generate() does, and record it."""
        logits = logits.float()
        for row, scores in zip(rows, logits):
            if row.finished:
                continue
            ids = torch.tensor([row._ids], device=self.device)
            scores = row._processors(ids, scores[None])
            if row.settings.temperature > 0:
                token = int(torch.multinomial(F.softmax(scores, dim=-1), 1, generator=row._generator))
            else:
                token = int(scores.argmax(dim=-1))
            self._record(row, token, events)

    def _record(self, row: Sequence, token: int, events: list) -> None:
        row._ids.append(token)
        if row.first_token_at is None:
            row.first_token_at = time.perf_counter()
        if row.cancelled.is_set():
            return self._finish(row, "cancelled", events)
        if token in self.eos:
            return self._finish(row, "stop", events)
        row.token_ids.append(token)
        ready, stopped = row._stops.feed(row._pieces.add([token]))
        row.text += ready
        if stopped:
            return self._finish(row, "stop", events, ready, stopped=True)
        if len(row.token_ids) >= row.settings.max_new_tokens:
            return self._finish(row, "length", events, ready)
        if ready:
            events.append((row, ready))

    def _finish(self, row: Sequence, reason: str, events: list, ready: str = "", stopped: bool = False) -> None:
        rest = ""
        if reason != "cancelled":
            if not stopped:  # half a character held back is shown as it is, as a streamer's end() does
                held, stopped = row._stops.feed(row._pieces.flush())
                ready += held
                row.text += held
            rest = row._stops.rest()
        row.text += rest
        row.finish_reason = reason
        events.append((row, ready + rest))

    def _retire(self) -> None:
        for row in self.rows:
            if not row.finished and row.cancelled.is_set():
                row.finish_reason = "cancelled"
        keep = [i for i, row in enumerate(self.rows) if not row.finished]
        if len(keep) == len(self.rows):
            return
        for i, row in enumerate(self.rows):
            if row.finished:
                row.cache = self._row_cache(i)
        if not keep:
            self.rows, self._cache, self._mask, self._memory = [], None, None, None
            return
        index = torch.tensor(keep, device=self.device)
        mask = self._mask[index]
        first = int(mask.any(dim=0).nonzero()[0])  # columns before it are padding in every remaining row
        self._mask = mask[:, first:]
        for layer in self._cache.layers:
            layer.keys, layer.values = layer.keys[index, :, first:], layer.values[index, :, first:]
        self.rows = [self.rows[i] for i in keep]
        self._restack()

    def _row_cache(self, i: int) -> DynamicCache | None:
        """Row ``i``'s keys/values without padding, as a batch-1 cache."""
        if self._cache is None or i >= self._mask.shape[0]:
            return None
        start = int(self._mask[i].argmax())  # its first real column
        return DynamicCache([(layer.keys[i:i + 1, :, start:].clone(), layer.values[i:i + 1, :, start:].clone())
                             for layer in self._cache.layers])


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """(B, H, L, D) -> (B, H, width, D) with zeros before."""
    return F.pad(tensor, (0, 0, width - tensor.shape[2], 0))


def generate_all(batch: ContinuousBatch, sequences: Iterable[Sequence],
                 on_event: Callable[[Sequence, str], None] = lambda sequence, text: None) -> Iterator[Sequence]:
    """Run ``sequences`` (drawn lazily: a video is decoded only when its question is about to join)
    through ``batch``, keeping it full, and yield each as it finishes (not in the order given)."""
    pending = iter(sequences)
    exhausted = False
    while True:
        while not exhausted and len(batch) < batch.max_batch_size:
            sequence = next(pending, None)
            if sequence is None:
                exhausted = True
            else:
                batch.add(sequence)
        if not len(batch):
            return
        for sequence, text in batch.step():
            on_event(sequence, text)
            if sequence.finished:
                yield sequence
