"""The one model behind the server: requests become jobs (checked, media located), their media are
decoded once and encoded once (:class:`EncodedVideo`, kept in a memory-bounded LRU), and the answers
of all running jobs are generated together (continuous batching, ``crosslmm.batched_generation``) by
one scheduler thread that owns the GPU, reusing cached prompt prefixes. A bounded number of jobs may
wait; a client that leaves stops its job at the next step."""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import astuple, dataclass, field, replace

import numpy as np

from crosslmm import SamplingSettings
from crosslmm.batched_generation import ContinuousBatch, Sequence
from crosslmm.cross_attention import VisualMemory

from ..ask import MAX_SIDE, encode_video_frames
from ..errors import UserError
from ..video import SamplingRequest, read_frames
from ..budget_lru import BudgetLru
from .media import Media, MediaResolver, image_frames
from .metrics import ServeMetrics
from .prefix_cache import PrefixCache
from .protocol import ApiError, ChatCompletionRequest
from .settings import ServeSettings

log = logging.getLogger("crosslmm.serve")


@dataclass
class EncodedVideo:
    """A request's video: its decoded frames until the scheduler encodes them, then the encoded memory."""

    num_frames: int
    frames: np.ndarray | None = None  # (T, H, W, 3) uint8 RGB
    memory: VisualMemory | None = None

    def nbytes(self) -> int:
        if self.memory is None:
            return self.frames.nbytes
        return self.memory.nbytes()


@dataclass
class Job:
    """One chat-completion request on its way through the engine."""

    messages: list[dict]  # rendered by the processor's chat template; a media part is {"type": "video"}
    media: Media | None
    frames_request: SamplingRequest | None
    sampling: SamplingSettings
    n: int
    logprobs: int | None = None  # top log-probabilities per token (0: the chosen token's only); None: none
    cancelled: threading.Event = field(default_factory=threading.Event)
    # filled by Engine.load
    video_key: tuple | None = None
    video: EncodedVideo | None = None
    video_cache_hit: bool | None = None
    inputs: dict | None = None
    video_end: int = 0  # the prompt position after the last video token
    prompt_ids: list[int] = field(default_factory=list)  # inputs' ids as a list (prefix matching)
    timings: dict = field(default_factory=dict)
    # filled by the scheduler
    sequences: list[Sequence] = field(default_factory=list)  # one per choice
    cached_tokens: int = 0  # prompt tokens the prefix cache held (the first choice's)
    logprobs_sent: dict[int, int] = field(default_factory=dict)  # per choice: tokens whose log-probabilities went out
    began: float = 0.0
    last_piece_at: float | None = None
    _ticket: Ticket | None = None
    _emit: object = None


@dataclass
class Started:
    """The job joined the batch: a stream sends its first chunk now, not while the job waits."""


@dataclass
class Piece:
    index: int  # the choice
    text: str
    logprobs: tuple[list[int], list] | None = None  # the tokens since the choice's last piece, and their log-probabilities


@dataclass
class Finished:
    answers: list[tuple[str, str, int]]  # (text, finish_reason, tokens) per choice
    prompt_tokens: int
    cached_tokens: int
    logprobs: list[tuple[list[int], list]] | None = None  # per choice: its token ids and their log-probabilities


@dataclass
class Failed:
    error: ApiError


class Ticket:
    """A place in the engine's bounded queue, given back once (when the job ends or is refused);
    its request counts as waiting until the scheduler starts it, then as running."""

    def __init__(self, engine: Engine):
        self.engine, self.released, self.running = engine, False, False
        self.admitted_at = time.perf_counter()

    def start(self) -> None:
        with self.engine._lock:
            if not self.released and not self.running:
                self.running = True
                self.engine.running += 1

    def release(self) -> None:
        with self.engine._lock:
            if not self.released:
                self.released = True
                self.engine.admitted -= 1
                self.engine.running -= self.running


class Engine:
    def __init__(self, model, processor, settings: ServeSettings):
        self.model, self.processor, self.settings = model, processor, settings
        self.name = settings.served_model_name
        self.media = MediaResolver(settings.media_root, settings.allow_remote_media,
                                   int(settings.max_remote_media_mb * 2**20))
        self.videos: BudgetLru[EncodedVideo] = BudgetLru(int(settings.video_cache_mb * 2**20), EncodedVideo.nbytes)
        self.prefixes = PrefixCache(int(settings.prefix_cache_mb * 2**20))
        self.batch = ContinuousBatch(model, processor.tokenizer, settings.max_batch_size)
        self.inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()  # submitted jobs, in order
        self.active: list[Job] = []  # jobs whose answers are in the batch
        self._next: Job | None = None  # taken from the inbox, waiting for room in the batch
        self._closing = threading.Event()
        self.context = model.config.text_config.max_position_embeddings
        self.max_prompt_tokens = min(settings.max_prompt_tokens or self.context, self.context)
        self._lock = threading.Lock()
        self._decode_locks = [threading.Lock() for _ in range(64)]  # one video is decoded by one request at a time
        self.admitted = 0  # queued or running
        self.running = 0
        self.seconds_per_job = 1.0  # running mean of answered jobs, for Retry-After
        self.metrics = ServeMetrics(self.name)
        self.metrics.running.set_function(lambda: self.running)  # read when scraped, from the queue's counts
        self.metrics.waiting.set_function(lambda: self.admitted - self.running)
        self.stats = {"requests": 0, "video_cache_hits": 0, "video_cache_misses": 0, "videos_decoded": 0,
                      "videos_encoded": 0, "prompt_tokens": 0, "cached_prompt_tokens": 0, "completion_tokens": 0}
        self.scheduler = threading.Thread(target=self._schedule, name="crosslmm-scheduler", daemon=True)
        self.scheduler.start()

    # ---- admission ------------------------------------------------------------------------------
    def admit(self) -> Ticket:
        """A place in the queue, or 429 with a Retry-After estimate when it is full."""
        with self._lock:
            if self.admitted >= self.settings.max_queue:
                # jobs ahead, answered max_batch_size at a time
                ahead = self.admitted / self.settings.max_batch_size
                wait = max(1, min(120, math.ceil(self.seconds_per_job * ahead)))
                raise ApiError(429, f"the server is busy: {self.admitted} requests are queued or running; retry in "
                                    f"about {wait}s", type="rate_limit_error", code="queue_full",
                               headers={"Retry-After": str(wait)})
            self.admitted += 1
            self.stats["requests"] += 1
        return Ticket(self)

    # ---- a request becomes a job (no decoding yet) ----------------------------------------------
    def plan(self, request: ChatCompletionRequest) -> Job:
        if request.model not in (self.name, self.settings.model):
            raise ApiError(404, f"the model {request.model!r} does not exist on this server; it serves {self.name!r}",
                           code="model_not_found", param="model")
        messages, found = [], []
        for message in request.messages:
            role = "system" if message.role == "developer" else message.role
            content = message.content or ""
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.type == "text":
                        parts.append({"type": "text", "text": part.text or ""})
                        continue
                    if role != "user":
                        raise ApiError(400, f"a {part.type} part belongs in a user message, not a {message.role} one",
                                       param="messages")
                    found.append((part.type, part.payload().url))
                    parts.append({"type": "video"})
                content = parts
            messages.append({"role": role, "content": content})
        if len(found) > 1:
            raise ApiError(400, f"CrossLMM reads one video or image per conversation; this one has {len(found)}",
                           param="messages")
        frames_request = self._frames_request(request) if found and found[0][0] == "video_url" else None
        try:
            sampling = SamplingSettings(
                max_new_tokens=request.max_completion_tokens or request.max_tokens or self.settings.max_tokens,
                temperature=request.temperature or 0.0, top_p=request.top_p or 1.0,
                top_k=max(request.top_k or 0, 0), repetition_penalty=request.repetition_penalty or 1.0,
                stop=tuple(request.stop or ()), seed=request.seed,
            )
        except ValueError as error:
            raise ApiError(400, str(error)) from None
        media = None  # located last: a download is the slowest check
        if found:
            media = self.media.resolve(found[0][1], "video" if frames_request is not None else "image")
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        if logprobs is not None and logprobs > self.settings.max_logprobs:
            raise ApiError(400, f"top_logprobs is {logprobs}; this server gives at most {self.settings.max_logprobs}",
                           param="top_logprobs")
        return Job(messages, media, frames_request, sampling, request.n, logprobs=logprobs)

    def _frames_request(self, request: ChatCompletionRequest) -> SamplingRequest:
        options = request.video_sampling
        try:
            if options is None:
                return SamplingRequest(self.settings.frames, max_side=MAX_SIDE)
            return SamplingRequest(options.frames or self.settings.frames, options.fps, options.start, options.end,
                                   options.seek or "auto", max_side=MAX_SIDE)
        except UserError as error:
            raise ApiError(400, str(error).replace("--", "video_sampling."), param="video_sampling") from None

    # ---- decoding and the prompt (request threads, in parallel with the scheduler) -------------------
    def load(self, job: Job) -> None:
        """Decode the job's media unless encoded or decoded already, and tokenize its prompt."""
        if job.media is not None:
            key = (job.media.identity, job.frames_request and astuple(job.frames_request))
            began = time.perf_counter()
            try:
                with self._decode_locks[hash(key) % len(self._decode_locks)]:
                    video = self.videos.get(key)  # encoded, or decoded and waiting for the scheduler to encode it
                    job.video_cache_hit = video is not None
                    if video is None:
                        video = self._decode(job.media, job.frames_request)
                        self.videos.put(key, video)
                        with self._lock:
                            self.stats["videos_decoded"] += 1
            finally:
                if job.media.temporary:
                    job.media.path.unlink(missing_ok=True)
            with self._lock:
                self.stats["video_cache_hits" if job.video_cache_hit else "video_cache_misses"] += 1
            self.metrics.video_queries.inc()
            if job.video_cache_hit:
                self.metrics.video_hits.inc()
            job.timings["decode_s"] = 0.0 if job.video_cache_hit else round(time.perf_counter() - began, 4)
            job.video_key, job.video = key, video
        job.inputs = self.processor.chat_inputs(job.messages, job.video.num_frames if job.video else None)
        ids = job.inputs["input_ids"][0]
        job.prompt_ids = ids.tolist()
        length = len(ids)
        if length > self.max_prompt_tokens:
            raise ApiError(400, f"the prompt is {length:,} tokens (video included); this server takes at most "
                                f"{self.max_prompt_tokens:,}: shorten the conversation or sample fewer frames",
                           code="context_length_exceeded", param="messages")
        if length + job.sampling.max_new_tokens > self.context:
            raise ApiError(400, f"the prompt ({length:,} tokens) and max_tokens ({job.sampling.max_new_tokens:,}) exceed "
                                f"the model's context of {self.context:,} tokens; lower max_tokens",
                           code="context_length_exceeded", param="max_tokens")
        video_positions = (ids == self.model.config.video_token_id).nonzero()
        job.video_end = int(video_positions[-1]) + 1 if len(video_positions) else 0

    @staticmethod
    def _decode(media: Media, request: SamplingRequest | None) -> EncodedVideo:
        if media.kind == "image":
            frames = image_frames(media, MAX_SIDE)
        else:
            try:
                _, sampled = read_frames(media.path, request)
            except UserError as error:
                raise ApiError(400, f"cannot read the video: {error}", code="invalid_media") from None
            frames = sampled.pixels
        return EncodedVideo(num_frames=len(frames), frames=frames)

    # ---- generation (the scheduler thread) -------------------------------------------------------
    def submit(self, job: Job, ticket: Ticket, emit) -> None:
        """Queue ``job`` for the scheduler; ``emit`` gets :class:`Started`, :class:`Piece`s, then
        :class:`Finished` or :class:`Failed`."""
        job._ticket, job._emit = ticket, emit
        self.inbox.put(job)

    def _schedule(self) -> None:
        """The scheduler thread, the only one that runs the model: take waiting jobs while the batch
        has room for all their answers, run one step of the batch, hand out what it produced. An
        error fails the jobs it touched (500) and the scheduler goes on with the next ones."""
        while not self._closing.is_set():
            try:
                self._take_jobs(block=not len(self.batch))
                if not len(self.batch):
                    continue
                for sequence, text in self.batch.step():
                    self._handle(sequence, text)
            except Exception as error:  # every job in the batch fails; the next ones start afresh
                log.exception("generation failed")
                for job in list(self.active):
                    self._fail(job, ApiError(500, f"generation failed ({type(error).__name__}); see the server log",
                                             type="server_error", code="internal_error"))
                self.batch = ContinuousBatch(self.model, self.processor.tokenizer, self.settings.max_batch_size)
                continue
            for job in list(self.active):
                if job.cancelled.is_set():
                    for sequence in job.sequences:
                        sequence.cancel()

    def _take_jobs(self, block: bool) -> None:
        """Move waiting jobs into the batch while their answers fit (waiting for one when ``block``)."""
        while not self._closing.is_set():
            if self._next is None:
                try:
                    self._next = self.inbox.get(block=block)
                except queue.Empty:
                    return
            job = self._next
            if job is None:  # close() woke the scheduler
                self._next = None
                return
            if job.cancelled.is_set():
                self._next = None
                job._ticket.release()
                continue
            if len(self.batch) and len(self.batch) + job.n > self.settings.max_batch_size:
                return  # it waits until enough answers are done
            self._next, block = None, False
            self.active.append(job)  # before its sequences exist: a failure while starting it fails it too
            self._start(job)

    def _start(self, job: Job) -> None:
        job._ticket.start()
        job._emit(Started())
        job.began = time.perf_counter()
        memory = self._encoded(job)
        for index in range(job.n):
            sampling = job.sampling
            if sampling.seed is not None and index:
                sampling = replace(sampling, seed=sampling.seed + index)  # n samples, not n copies
            cache, cached = self.prefixes.lookup(job.video_key, job.prompt_ids, job.video_end)
            job.cached_tokens = job.cached_tokens if index else cached
            self.metrics.prefix_queries.inc(len(job.prompt_ids))
            self.metrics.prefix_hits.inc(cached)
            sequence = Sequence(job.inputs["input_ids"], memory, sampling, prefix_cache=cache, tag=(job, index),
                                logprobs=job.logprobs)
            job.sequences.append(sequence)
            self.batch.add(sequence)

    def _handle(self, sequence: Sequence, text: str) -> None:
        job, index = sequence.tag
        if job not in self.active:
            return
        if text:
            now = time.perf_counter()
            if job.last_piece_at is None:
                self.metrics.first_token.observe(now - job._ticket.admitted_at)
            else:
                self.metrics.inter_token.observe(now - job.last_piece_at)
            job.last_piece_at = now
            logprobs = None
            if job.logprobs is not None:
                sent = job.logprobs_sent.get(index, 0)
                logprobs = (sequence.token_ids[sent:], sequence.token_logprobs[sent:])
                job.logprobs_sent[index] = len(sequence.token_logprobs)
            job._emit(Piece(index, text, logprobs))
        if not all(s.finished for s in job.sequences):
            return
        self.active.remove(job)
        if any(s.finish_reason == "cancelled" for s in job.sequences):
            job._ticket.release()
            return
        for s in job.sequences:
            if s.cache is not None:
                self.prefixes.store(job.video_key, job.prompt_ids + s.token_ids, s.cache)
        if job.video is not None:
            self.videos.put(job.video_key, job.video)  # count the T2V keys/values it gained
        answers = [(s.text, s.finish_reason, len(s.token_ids)) for s in job.sequences]
        prompt_tokens, generated = len(job.prompt_ids), sum(tokens for _, _, tokens in answers)
        with self._lock:
            self.stats["prompt_tokens"] += prompt_tokens
            self.stats["cached_prompt_tokens"] += job.cached_tokens
            self.stats["completion_tokens"] += generated
            # a cancelled or failed job's near-zero time says nothing about the wait
            self.seconds_per_job = 0.8 * self.seconds_per_job + 0.2 * (time.perf_counter() - job.began)
        self.metrics.prompt_tokens.inc(prompt_tokens)
        self.metrics.generation_tokens.inc(generated)
        self.metrics.end_to_end.observe(time.perf_counter() - job._ticket.admitted_at)
        self.metrics.finished([reason for _, reason, _ in answers])
        job._ticket.release()
        logprobs = [(s.token_ids, s.token_logprobs) for s in job.sequences] if job.logprobs is not None else None
        job._emit(Finished(answers, prompt_tokens, job.cached_tokens, logprobs))

    def _fail(self, job: Job, error: ApiError) -> None:
        if job in self.active:
            self.active.remove(job)
        job._ticket.release()
        job._emit(Failed(error))

    def _encoded(self, job: Job) -> VisualMemory | None:
        video = job.video
        if video is None:
            return None
        if video.memory is None:  # the first job to reach the scheduler with this video encodes it
            video.memory, seconds = encode_video_frames(self.model, self.processor, video.frames,
                                                        self.settings.kv_cache_dtype)
            video.frames = None
            self.videos.put(job.video_key, video)
            with self._lock:
                self.stats["videos_encoded"] += 1
            job.timings["vision_s"] = round(seconds, 4)
        return video.memory

    def health(self) -> dict:
        with self._lock:
            stats, admitted, running = dict(self.stats), self.admitted, self.running
        looked_up = stats["video_cache_hits"] + stats["video_cache_misses"]
        return {
            "status": "ok", "model": self.name, "queued_or_running": admitted, "max_queue": self.settings.max_queue,
            "running": running, "waiting": admitted - running,
            "batch_size": len(self.batch.rows), "max_batch_size": self.settings.max_batch_size,
            **stats,
            "video_cache_hit_rate": round(stats["video_cache_hits"] / looked_up, 4) if looked_up else None,
            "video_cache": {"entries": len(self.videos), "mb": round(self.videos.total_bytes / 2**20, 2),
                            "evictions": self.videos.evictions},
            "prefix_cache": {"entries": len(self.prefixes), "mb": round(self.prefixes.total_bytes / 2**20, 2)},
        }

    def close(self) -> None:
        """Stop after the step in progress; jobs still running or waiting are dropped."""
        self._closing.set()
        self.inbox.put(None)  # wakes a scheduler waiting for work
        self.scheduler.join()
