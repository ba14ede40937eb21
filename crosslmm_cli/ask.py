"""`crosslmm ask`: decode a video, encode it once, stream answers to one question or a chat."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from crosslmm import QUANTIZE_MODES, AnswerStream, SamplingSettings
from crosslmm.cross_attention import VisualMemory
from crosslmm.kv_compression import KV_CACHE_DTYPES

from .errors import UserError
from .model_source import open_model, pick_device
from .video import MAX_SIDE, SamplingRequest, SampledFrames, VideoInfo, read_frames


@dataclass
class AskSettings:
    model: str = "crosslmm-ov-0.5b"  # preset name, checkpoint directory or hub id
    frames: int = 32  # frames to sample
    fps: float | None = None  # at most this many sampled frames per second
    start: float | None = None  # seconds
    end: float | None = None  # seconds
    seek: str = "auto"  # auto | exact | keyframe (see crosslmm_cli.video.reader)
    tokens_per_frame: int | None = None  # override the checkpoint's pooled tokens per frame
    quantize: str | None = None  # nf4 | int8 | none; nf4 on CUDA and none on CPU by default
    device: str | None = None  # cuda | cpu | cuda:N; cuda when present
    kv_cache_dtype: str = "auto"  # how the cross-attention keys/values of the video are stored (crosslmm.kv_compression)
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()  # strings that end an answer
    seed: int | None = None
    system: str | None = None  # system prompt; the chat template's default when None
    time_instruction: bool = False  # tell the model the video length and frame timestamps
    json_output: bool = False
    stream: bool = True
    verbose: bool = False
    chat: bool = False
    sampling: SamplingSettings = field(init=False)
    request: SamplingRequest = field(init=False)

    def __post_init__(self):
        if self.chat and self.json_output:
            raise UserError("--chat and --json cannot be combined: --json prints one answer as one JSON object")
        if self.quantize is not None and self.quantize not in QUANTIZE_MODES:
            raise UserError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, got {self.quantize!r}")
        check_kv_cache_dtype(self.kv_cache_dtype)
        try:
            self.sampling = SamplingSettings(self.max_new_tokens, self.temperature, self.top_p, self.top_k,
                                             self.repetition_penalty, tuple(self.stop), self.seed)
        except ValueError as error:
            message = str(error)
            for name in ("max_new_tokens", "top_p", "top_k", "repetition_penalty", "temperature"):
                message = message.replace(name, "--" + name.replace("_", "-"))
            raise UserError(message.replace("a stop string", "a --stop string")) from None
        self.request = SamplingRequest(self.frames, self.fps, self.start, self.end, self.seek, max_side=MAX_SIDE)


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    generated_tokens: int
    time_to_first_token: float  # seconds from the start of prefill
    decode_seconds: float  # seconds after the first token

    @property
    def tokens_per_second(self) -> float:
        return (self.generated_tokens - 1) / self.decode_seconds if self.generated_tokens > 1 and self.decode_seconds > 0 else 0.0


def time_instruction(info: VideoInfo, frames: SampledFrames) -> str:
    """LLaVA-Video's instruction telling the model how long the video is and when frames were taken."""
    stamps = ",".join(f"{t:.2f}s" for t in frames.timestamps)
    return (
        f"The video lasts for {info.duration:.2f} seconds, and {len(frames.timestamps)} frames are uniformly sampled "
        f"from it. These frames are located at {stamps}. Please answer the following questions related to this video.\n"
    )


class VideoChat:
    """One video, encoded once, and a conversation about it."""

    def __init__(self, model, processor, info: VideoInfo, frames: SampledFrames, settings: AskSettings, quantize: str):
        self.model, self.processor, self.info, self.frames, self.settings = model, processor, info, frames, settings
        self.quantize = quantize
        self.messages: list[dict] = []
        if settings.system is not None:
            self.messages.append({"role": "system", "content": settings.system})
        self.memory, self.vision_seconds = encode_video_frames(model, processor, frames.pixels, settings.kv_cache_dtype)
        self.video_positions = model.config.video_positions(len(frames.timestamps))

    def ask(self, question: str, on_piece: Callable[[str], None] | None = None) -> Answer:
        """Answer ``question`` in the context of the conversation so far; pieces go to ``on_piece``."""
        self.messages.append(self._user_message(question))
        try:
            inputs = self._within_context(self._inputs())
        except UserError:
            self.messages.pop()
            raise
        pieces: list[str] = []
        began = time.perf_counter()
        stream = AnswerStream(self.model, self.processor, inputs, self.memory, self.settings.sampling)
        try:
            for piece in stream:
                pieces.append(piece)
                if on_piece is not None:
                    on_piece(piece)
        finally:
            text = "".join(pieces)
            self.messages.append({"role": "assistant", "content": text})
        ended = time.perf_counter()
        first_token_at = stream.first_token_at or ended
        return Answer(
            text, int(inputs["input_ids"].shape[1]), len(stream.token_ids), first_token_at - began, ended - first_token_at
        )

    def ask_alone(self, question: str) -> Answer:
        """Answer ``question`` as the first question about the video, outside the conversation."""
        conversation = self.messages
        self.messages = [m for m in conversation if m["role"] == "system"]
        try:
            return self.ask(question)
        finally:
            self.messages = conversation

    def first_question_inputs(self, question: str) -> dict[str, torch.Tensor]:
        """The model inputs of ``question`` asked as the first question about the video, outside the
        conversation (what :meth:`ask_alone` answers; batched evaluation answers many of them together)."""
        system = [m for m in self.messages if m["role"] == "system"]
        messages = system + [self._user_message(question, first=True)]
        return self._within_context(self.processor.chat_inputs(messages, len(self.frames.timestamps)))

    def _within_context(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        context = self.model.config.text_config.max_position_embeddings
        if inputs["input_ids"].shape[1] > context:
            raise UserError(f"the question with the video and the conversation so far is {inputs['input_ids'].shape[1]:,} "
                            f"tokens; the model reads at most {context:,}: shorten the question or sample fewer --frames")
        return inputs

    def _user_message(self, question: str, first: bool | None = None) -> dict:
        if first is None:
            first = not any(m["role"] == "user" for m in self.messages)
        content = [{"type": "text", "text": question}]
        if first:  # the video belongs to the first question
            prefix = time_instruction(self.info, self.frames) if self.settings.time_instruction else ""
            content = [{"type": "video"}, {"type": "text", "text": prefix + question}]
        return {"role": "user", "content": content}

    def _inputs(self) -> dict[str, torch.Tensor]:
        return self.processor.chat_inputs(self.messages, len(self.frames.timestamps))


def check_kv_cache_dtype(value: str) -> None:
    if value not in KV_CACHE_DTYPES:
        raise UserError(f"--kv-cache-dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {value!r}")


def encode_video_frames(model, processor, frames: np.ndarray, kv_cache: str = "auto",
                        frames_per_chunk: int = 32) -> tuple[VisualMemory, float]:
    """One video's frames (T, H, W, 3) uint8 RGB -> its encoded memory (the cross-attentions' keys and
    values, stored as ``kv_cache`` says, made a chunk of frames at a time: no pixels or original
    tokens of the whole video are ever held) and the vision seconds."""
    device = model.get_input_embeddings().weight.device
    dtype = model.multi_modal_projector.linear_1.weight.dtype
    chunks = (processor.preprocess_frames(frames[start:start + frames_per_chunk]).to(device=device, dtype=dtype)
              for start in range(0, len(frames), frames_per_chunk))
    synchronize(device)
    began = time.perf_counter()
    with torch.inference_mode():
        memory = model.encode_video_chunks(chunks, len(frames), kv_cache)
    synchronize(device)
    return memory, time.perf_counter() - began


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gpu_memory_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def prepare_model(settings: AskSettings, status: Callable[[str], None] = lambda _: None):
    """Load the model the settings name on the device they pick: (model, processor, quantize)."""
    device = pick_device(settings.device)
    quantize = settings.quantize or ("nf4" if device.startswith("cuda") else "none")
    status(f"loading {settings.model}")
    model, processor = open_model(
        settings.model, device=device, quantize=quantize,
        dtype=torch.bfloat16 if device.startswith("cuda") or quantize != "none" else torch.float32,
        tokens_per_frame=settings.tokens_per_frame, require_trained=True,
    )
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    return model, processor, quantize


def prepare(video: Path, settings: AskSettings, status: Callable[[str], None] = lambda _: None,
            warn: Callable[[str], None] = lambda _: None) -> VideoChat:
    """Validate the flags, decode the video (before any weight is loaded), load the model, encode;
    problems with the video that still leave frames to answer from (a truncated file) go to ``warn``."""
    pick_device(settings.device)
    status("decoding video")
    info, frames = read_frames(video, settings.request)
    for warning in info.warnings:
        warn(warning)
    model, processor, quantize = prepare_model(settings, status)
    status("encoding video")
    return VideoChat(model, processor, info, frames, settings, quantize)


def report(chat: VideoChat, answer: Answer, question: str) -> dict:
    """The --json object: the answer, the frames used, timings and token counts."""
    device = chat.model.device
    return {
        "question": question,
        "answer": answer.text,
        "model": chat.settings.model,
        "video": chat.info.summary(),
        "frames": chat.frames.summary(),
        "timings": {
            "decode_s": round(chat.frames.seconds, 4),
            "vision_s": round(chat.vision_seconds, 4),
            "time_to_first_token_s": round(answer.time_to_first_token, 4),
            "generate_s": round(answer.decode_seconds, 4),
            "tokens_per_s": round(answer.tokens_per_second, 2),
        },
        "tokens": {
            "prompt": answer.prompt_tokens,
            "video_positions": chat.video_positions,
            "tokens_per_frame": chat.model.config.tokens_per_frame,
            "generated": answer.generated_tokens,
        },
        "peak_gpu_memory_mb": peak_gpu_memory_mb(device),
        "device": str(device),
        "quantize": chat.quantize,
    }


def verbose_lines(chat: VideoChat, answer: Answer) -> Iterable[str]:
    frames = chat.frames
    yield (f"frames: {len(frames.indices)} via {frames.seek} ({frames.backend}); positions {frames.indices}; "
           f"timestamps {[round(t, 2) for t in frames.timestamps]}")
    yield (f"decode {frames.seconds:.2f}s | vision {chat.vision_seconds:.2f}s | time to first token "
           f"{answer.time_to_first_token:.2f}s | {answer.tokens_per_second:.1f} tokens/s | "
           f"{answer.prompt_tokens} prompt tokens ({chat.video_positions} video)")
    memory = peak_gpu_memory_mb(chat.model.device)
    if memory is not None:
        yield f"peak GPU memory {memory:,.0f} MB"


def read_questions(prompt: str) -> Iterable[str]:
    """Follow-up questions from stdin until EOF, an empty line or `exit`."""
    while True:
        try:
            line = input(prompt) if sys.stdin.isatty() else sys.stdin.readline()
        except EOFError:
            return
        if not line or line.strip() in ("", "exit", "quit"):
            return
        yield line.strip()
