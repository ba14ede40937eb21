"""Continuous batching: many answers generated together, one decoding step for all of them at a time.

A :class:`Sequence` is one answer to generate (a prompt, its video's :class:`VisualMemory`, its
sampling settings). :class:`ContinuousBatch` runs them the way vLLM's V0 scheduler does (and
transformers' ``PrefillFirstScheduler``), with transformers' ``DynamicCache`` as the key/value
store. A step is one of two kinds:

* **A prefill step**, when sequences are waiting and the batch has room (``max_batch_size`` rows,
  about ``prefill_tokens`` prompt tokens per step): the waiting ones are prefilled together, in one
  forward (two when some have their video in the tokens to compute and others in a cached prefix),
  each row's cached prefix and new tokens left-padded; their first tokens are chosen and they join
  the batch. Alone, a sequence is prefilled exactly as ``generate()`` prefills it.
* **A decoding step** otherwise, for every running sequence: the rows' caches are left-padded to one
  length and the attention mask hides the padding; each row gets its own positions (RoPE is applied
  before keys are cached, so padding moves nothing). The videos are stacked with
  :meth:`VisualMemory.stack`: a row's T2V reads only its own video's tokens, the padding of shorter
  videos is masked.

A row that ends (end of answer, stop string, length, cancelled) leaves the batch in the step it
ends, and padding columns no remaining row needs are cut. Logits are processed per row by the
processors ``generate()`` builds for the row's settings, and a seeded row samples from its own
generator, so a seeded answer does not depend on its neighbours."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LogitsProcessorList
from transformers.generation.logits_process import SuppressTokensLogitsProcessor

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
    and of every answer token but the last, for a prefix cache).

    With ``logprobs`` (a count k, 0 included), ``token_logprobs`` holds for each of ``token_ids`` its
    log-probability and the k likeliest tokens' ``(id, log-probability)``, from the distribution it was
    drawn from (the logits after the row's processors, as generate()'s ``scores``)."""

    def __init__(self, input_ids: torch.Tensor, memory: VisualMemory | None, settings: SamplingSettings,
                 prefix_cache=None, tag=None, logprobs: int | None = None):
        self.input_ids, self.memory, self.settings, self.prefix_cache = input_ids, memory, settings, prefix_cache
        self.tag = tag  # the caller's own (a job and a choice, a question)
        self.logprobs = logprobs
        self.token_logprobs: list[tuple[float, list[tuple[int, float]]]] = []
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
        self._picked_with: tuple | None = None  # rows with the same key are picked together (see _choose)
        self._generator: torch.Generator | None = None
        self._chosen_logprobs: tuple | None = None  # the token being recorded's entry of token_logprobs

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
        """Prefill the waiting sequences that fit (their first tokens), or, when none is waiting or
        fits, one decoding step for every running sequence: ``(sequence, new text)`` for each
        sequence that produced text or ended (check ``sequence.finished``). A prefill step does not
        decode, so a new arrival's first token is not held back by a decoding forward."""
        events: list[tuple[Sequence, str]] = []
        if not self._admit(events) and self.rows:
            self._decode(events)
        self._retire()
        return events

    # ---- admission ------------------------------------------------------------------------------
    def _admit(self, events: list) -> bool:
        """Prefill what fits; whether anything was prefilled."""
        newcomers, budget = [], self.prefill_tokens
        while len(self.rows) + len(newcomers) < self.max_batch_size:
            with self._lock:
                if not self.waiting:
                    break
                sequence = self.waiting[0]
                length = sequence.prompt_length - _cached_length(sequence.prefix_cache)
                if newcomers and length > budget:
                    break  # the next step takes it; at least one prefill per step
                self.waiting.popleft()
            budget -= length
            if sequence.cancelled.is_set():
                self._finish(sequence, "cancelled", events)
            else:
                newcomers.append(sequence)
        # a forward fills the video placeholders of every row or of none: rows whose video is in the
        # tokens to compute go together, rows whose video is cached (or that have none) apart
        video_id = self.model.config.video_token_id
        with_video = [s for s in newcomers if bool((s.input_ids[0, _cached_length(s.prefix_cache):] == video_id).any())]
        for group in (with_video, [s for s in newcomers if s not in with_video]):
            if group:
                cache, mask = self._prefill(group, events)
                self._join(group, cache, mask)
        return bool(newcomers)

    def _prefill(self, group: list[Sequence], events: list) -> tuple[DynamicCache, torch.Tensor]:
        """One forward over the prompts of ``group`` (the part their prefix caches do not hold), each
        row laid out as [cache, left-padded to the longest][new tokens, left-padded to the longest];
        alone, a sequence is prefilled exactly as ``generate()`` prefills it. The rows' first tokens
        are chosen; the group's cache and (rows, columns) mask are returned."""
        began = time.perf_counter()
        for sequence in group:
            sequence.prefill_began_at = began
            self._prepare(sequence)
        cached = [_cached_length(s.prefix_cache) for s in group]
        new = [s.prompt_length - c for s, c in zip(group, cached)]
        width, longest = max(cached), max(new)
        cache = self._stacked_prefix(group, width)
        pad = min(self.eos) if self.eos else 0
        input_ids = torch.full((len(group), longest), pad, dtype=torch.long)
        positions = torch.zeros(len(group), longest, dtype=torch.long)
        mask = torch.zeros(len(group), width + longest, dtype=torch.long)
        for row, (sequence, c, n) in enumerate(zip(group, cached, new)):
            input_ids[row, longest - n:] = sequence.input_ids[0, c:]
            positions[row, longest - n:] = torch.arange(c, c + n)
            mask[row, width - c:width] = 1
            mask[row, width + longest - n:] = 1
        memories = [s.memory for s in group]
        for memory in memories:
            if memory is not None:
                memory.cache_kv = True  # its T2V keys/values, computed here, serve every later step
        memory = memories[0] if len(group) == 1 else (
            VisualMemory.stack(memories) if any(m is not None for m in memories) else None)
        mask = mask.to(self.device)
        output = self.model(input_ids=input_ids.to(self.device), attention_mask=mask,
                            position_ids=positions.to(self.device), visual_memory=memory, use_cache=True,
                            logits_to_keep=1, **cache_argument(cache))
        if len(group) > 1 and memory is not None:
            memory.hand_t2v_kv_to(memories)  # so later batches need not project these videos again
        self._choose(group, output.logits[:, -1], events)
        return output_cache(output), mask

    def _prepare(self, sequence: Sequence) -> None:
        settings = sequence.settings
        config = settings.generation_config(self.model.generation_config, self.eos)
        # generate()'s own logits processors for these settings (repetition penalty, the suppressed
        # video placeholder, temperature, top-k, top-p), so a row's choice matches generate()'s
        sequence._processors = self.model._get_logits_processor(
            generation_config=config, input_ids_seq_length=sequence.prompt_length,
            logits_processor=LogitsProcessorList(), device=str(self.device), model_kwargs={})
        if settings.seed is not None and settings.temperature > 0:
            sequence._generator = torch.Generator(self.device).manual_seed(settings.seed)
        if settings.temperature == 0 and all(isinstance(p, SuppressTokensLogitsProcessor) for p in sequence._processors):
            # greedy, and its processors read the scores only: picked with the rows suppressing the same tokens
            sequence._picked_with = tuple(tuple(p.suppress_tokens.tolist()) for p in sequence._processors)
        sequence._pieces = TextPieces(self.tokenizer)

    def _stacked_prefix(self, group: list[Sequence], width: int) -> DynamicCache:
        """The group's prefix caches as one, each left-padded to ``width`` (rows without one: all padding)."""
        caches = [sequence.prefix_cache for sequence in group]
        for sequence in group:
            sequence.prefix_cache = None  # consumed: generation extends it
        if len(group) == 1:
            return caches[0] if caches[0] is not None else DynamicCache()
        if width == 0:
            return DynamicCache()
        template = next(c for c in caches if _cached_length(c))
        layers = []
        for index, layer in enumerate(template.layers):
            keys, values = [], []
            for cache in caches:
                if _cached_length(cache):
                    keys.append(_left_pad(cache.layers[index].keys, width))
                    values.append(_left_pad(cache.layers[index].values, width))
                else:
                    keys.append(layer.keys.new_zeros(1, layer.keys.shape[1], width, layer.keys.shape[3]))
                    values.append(layer.values.new_zeros(1, layer.values.shape[1], width, layer.values.shape[3]))
            layers.append((torch.cat(keys), torch.cat(values)))
        return DynamicCache(layers)

    def _join(self, group: list[Sequence], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Add prefilled rows (their cache and mask) to the batch's, left-padding the narrower; rows
        that their first token already ended keep their own cache and do not join."""
        for row, sequence in enumerate(group):
            if sequence.finished:
                sequence.cache = _row_cache(cache, mask, row)
        keep = [row for row, sequence in enumerate(group) if not sequence.finished]
        if not keep:
            return
        if len(keep) < len(group):
            index = torch.tensor(keep, device=self.device)
            mask = mask[index]
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[index], layer.values[index]
        if not self.rows:
            self._cache, self._mask = cache, mask
        else:
            width = max(mask.shape[1], self._mask.shape[1])
            for ours, theirs in zip(self._cache.layers, cache.layers):
                ours.keys = torch.cat([_left_pad(ours.keys, width), _left_pad(theirs.keys, width)])
                ours.values = torch.cat([_left_pad(ours.values, width), _left_pad(theirs.values, width)])
            self._mask = torch.cat([F.pad(self._mask, (width - self._mask.shape[1], 0)),
                                    F.pad(mask, (width - mask.shape[1], 0))])
        self.rows += [group[row] for row in keep]
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
        """Pick each row's next token from its logits (B, V) as generate() does, and record it.
        Greedy rows whose processors do not read the ids (only the suppressed placeholder: the
        common case) are picked together, with one transfer of their tokens; the others one by one."""
        logits = logits.float()
        chosen: dict[int, int] = {}
        together: dict[tuple, list[int]] = {}  # suppressed tokens -> the rows picked together
        for i, row in enumerate(rows):
            if not row.finished and row._picked_with is not None:
                together.setdefault(row._picked_with, []).append(i)
        processed: dict[int, torch.Tensor] = {}  # the scores of rows that report log-probabilities
        for indices in together.values():
            scores = logits[indices]
            for processor in rows[indices[0]]._processors:
                scores = processor(None, scores)
            chosen.update(zip(indices, scores.argmax(dim=-1).tolist()))
            processed.update((i, row_scores) for i, row_scores in zip(indices, scores) if rows[i].logprobs is not None)
        for i, (row, scores) in enumerate(zip(rows, logits)):
            if row.finished or i in chosen:
                continue
            ids, scores = torch.tensor([row._ids], device=self.device), scores[None]
            for processor in row._processors:  # as LogitsProcessorList does, without its per-call signature check
                scores = processor(ids, scores)
            if row.settings.temperature > 0:
                chosen[i] = int(torch.multinomial(F.softmax(scores, dim=-1), 1, generator=row._generator))
            else:
                chosen[i] = int(scores.argmax(dim=-1))
            if row.logprobs is not None:
                processed[i] = scores[0]
        for i, row in enumerate(rows):
            if i in chosen:
                if i in processed:
                    row._chosen_logprobs = token_logprobs(processed[i], chosen[i], row.logprobs)
                self._record(row, chosen[i], events)

    def _record(self, row: Sequence, token: int, events: list) -> None:
        row._ids.append(token)
        if row.first_token_at is None:
            row.first_token_at = time.perf_counter()
        if row.cancelled.is_set():
            return self._finish(row, "cancelled", events)
        if token in self.eos:
            return self._finish(row, "stop", events)
        row.token_ids.append(token)
        if row._chosen_logprobs is not None:
            row.token_logprobs.append(row._chosen_logprobs)
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
            if row.finished and row.finish_reason != "cancelled":
                row.cache = _row_cache(self._cache, self._mask, i)
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


def token_logprobs(scores: torch.Tensor, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The chosen token's log-probability under ``scores`` (V,) and the ``top`` likeliest tokens'."""
    log_probs = F.log_softmax(scores.float(), dim=-1)
    values, ids = log_probs.topk(top) if top else (log_probs[:0], log_probs[:0].long())
    return float(log_probs[token]), list(zip(ids.tolist(), values.tolist()))


def _cached_length(cache) -> int:
    return cache.get_seq_length() if cache is not None else 0


def _row_cache(cache: DynamicCache, mask: torch.Tensor, row: int) -> DynamicCache:
    """Row ``row``'s keys/values without its padding, as a batch-1 cache."""
    columns = mask[row].bool()
    return DynamicCache([(layer.keys[row:row + 1, :, columns], layer.values[row:row + 1, :, columns])  # copies
                         for layer in cache.layers])


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
