"""The OpenAI chat-completions wire format: what a request may hold (validated with pydantic), the
errors a client gets (``{"error": {"message", "type", "code"}}`` with a 4xx status) and the shapes
of answers and streamed chunks."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ApiError(Exception):
    """An error the client gets as OpenAI-shaped JSON with ``status``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


class MediaUrl(BaseModel):
    url: str = Field(min_length=1)
    detail: str | None = None  # OpenAI's image detail; every frame is read at the vision tower's size


class ContentPart(BaseModel):
    type: Literal["text", "video_url", "image_url"]
    text: str | None = None
    video_url: MediaUrl | None = None
    image_url: MediaUrl | None = None

    def payload(self):
        value = getattr(self, self.type)
        if value is None:
            raise ValueError(f"a {self.type!r} part needs a {self.type!r} field")
        return value


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    @field_validator("content")
    @classmethod
    def parts_are_complete(cls, content):
        for part in content if isinstance(content, list) else ():
            part.payload()
        return content


class VideoSampling(BaseModel):
    """Frame sampling for the request's video (an extension field, ``video_sampling``); what is
    left out takes the server's defaults, which are ``crosslmm ask``'s."""

    model_config = ConfigDict(extra="forbid")
    frames: int | None = Field(None, ge=1, le=1024)
    fps: float | None = Field(None, gt=0)
    start: float | None = Field(None, ge=0)
    end: float | None = Field(None, gt=0)
    seek: Literal["auto", "exact", "keyframe"] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields of OpenAI's request that this server honours, plus vLLM's ``top_k`` and
    ``repetition_penalty`` and crosslmm's ``video_sampling``. Other fields are ignored, except those
    whose meaning cannot be honoured (refused with 400 rather than silently dropped)."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)  # left out: greedy, as `crosslmm ask`
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # vLLM's; 0 or -1: no cut
    repetition_penalty: float | None = Field(None, gt=0)  # vLLM's
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=8)
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0)
    tools: list | None = None
    video_sampling: VideoSampling | None = None

    @field_validator("stop")
    @classmethod
    def stop_strings(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4:
            raise ValueError("at most 4 stop strings")
        if any(not s for s in stops):
            raise ValueError("a stop string must not be empty")
        return stops

    def refuse_unsupported(self) -> None:
        if self.frequency_penalty or self.presence_penalty:
            raise ApiError(400, "frequency_penalty and presence_penalty are not supported; use repetition_penalty "
                                "(> 1 discourages repeats)", param="frequency_penalty")
        if self.top_logprobs is not None and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if self.tools:
            raise ApiError(400, "tools (function calling) are not supported by this model", param="tools")


def parse_request(data) -> ChatCompletionRequest:
    """A decoded JSON body -> a request, or :class:`ApiError` 400 naming the first bad field."""
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        request = ChatCompletionRequest.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError(400, f"{where}: {first['msg']}", param=where) from None
    request.refuse_unsupported()
    return request


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    """OpenAI's usage block; ``cached_tokens`` counts the prompt tokens whose keys/values were reused."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def completion(id: str, model: str, answers: list[tuple[str, str]], usage_block: dict, extension: dict,
               logprobs: list[dict] | None = None) -> dict:
    """A ``chat.completion`` with one choice per (text, finish_reason), and each one's ``logprobs``
    block (see :func:`logprobs_block`) when they were asked for."""
    return {
        "id": id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                     "logprobs": logprobs[i] if logprobs else None} for i, (text, reason) in enumerate(answers)],
        "usage": usage_block,
        "crosslmm": extension,
    }


def logprobs_block(tokenizer, token_ids: list[int], entries: list[tuple[float, list[tuple[int, float]]]]) -> dict:
    """OpenAI's ``choices[i].logprobs``: per answer token its text, log-probability, UTF-8 bytes and
    the likeliest tokens' (a token that is part of a character shows as the replacement character, as
    vLLM shows it)."""
    def token(id_: int, logprob: float) -> dict:
        text = tokenizer.decode([id_])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**token(id_, logprob), "top_logprobs": [token(i, lp) for i, lp in top]}
                        for id_, (logprob, top) in zip(token_ids, entries)], "refusal": None}


def chunk(id: str, model: str, created: int, index: int | None = None, delta: dict | None = None,
          finish_reason: str | None = None, usage_block: dict | None = None, logprobs: dict | None = None) -> dict:
    """A ``chat.completion.chunk``: a delta of one choice (with the log-probabilities of its tokens),
    or (``index`` None) the final usage."""
    choices = [] if index is None else [{"index": index, "delta": delta or {}, "finish_reason": finish_reason,
                                         "logprobs": logprobs}]
    body = {"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if usage_block is not None:
        body["usage"] = usage_block
    return body
