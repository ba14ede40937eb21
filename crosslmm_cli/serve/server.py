"""The HTTP side of `crosslmm serve` (FastAPI on uvicorn): OpenAI's ``POST /v1/chat/completions``
(JSON or server-sent events), ``GET /v1/models``, ``GET /health`` and ``GET /metrics`` (Prometheus);
API-key checks, bounded request bodies, and every error as OpenAI-shaped JSON."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import Engine, Failed, Finished, Job, Piece, Started
from .protocol import ApiError, chunk, completion, completion_id, logprobs_block, parse_request, usage

log = logging.getLogger("crosslmm.serve")


def create_app(engine: Engine) -> FastAPI:
    settings = engine.settings
    app = FastAPI(title="crosslmm", docs_url=None, redoc_url=None, openapi_url=None)
    max_body = int(settings.max_request_mb * 2**20)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        message = "no such endpoint" if error.status_code == 404 else str(error.detail)
        return JSONResponse(ApiError(error.status_code, f"{message}: {request.method} {request.url.path}").body(),
                            status_code=error.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        log.exception("request failed")
        return JSONResponse(ApiError(500, f"internal error ({type(error).__name__}); see the server log",
                                     type="server_error").body(), status_code=500)

    def planned_and_loaded(chat):
        job = engine.plan(chat)
        engine.load(job)
        return job

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise ApiError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                           type="authentication_error", code="invalid_api_key")

    @app.get("/health")
    async def health():
        return engine.health()

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(engine.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": 0, "owned_by": "crosslmm"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = await read_body(request, max_body)
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ApiError(400, f"the request body is not valid JSON ({error})") from None
        chat = parse_request(data)
        ticket = engine.admit()
        try:  # in a thread (one hop: each costs a wait for the event loop): paths checked on disk, media decoded
            job = await run_in_threadpool(planned_and_loaded, chat)
        except BaseException:
            ticket.release()
            raise
        headers = {"X-Crosslmm-Video-Cache": cache_header(job)}
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        engine.submit(job, ticket, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        if chat.stream:
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            return StreamingResponse(stream(job, events, include_usage), media_type="text/event-stream",
                                     headers=headers | {"Cache-Control": "no-cache"})
        return await answer(request, job, events, headers)

    async def answer(request: Request, job: Job, events: asyncio.Queue, headers: dict) -> JSONResponse:
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), timeout=0.5)
                except TimeoutError:
                    if await request.is_disconnected():
                        job.cancelled.set()
                        return JSONResponse({}, status_code=499)
                    continue
                if isinstance(event, Failed):
                    raise event.error
                if isinstance(event, Finished):  # pieces (and the start) are for streams; the answers come whole
                    return JSONResponse(completion_body(engine, job, event), headers=headers)
        finally:
            job.cancelled.set()  # a no-op once the job ended; stops it when this handler is cancelled

    async def stream(job: Job, events: asyncio.Queue, include_usage: bool):
        id, created = completion_id(), int(time.time())

        def sse(payload: dict) -> str:
            return f"data: {json.dumps(payload)}\n\n"

        tokenizer, streamed = engine.processor.tokenizer, [0] * job.n  # per choice: tokens whose logprobs went out

        def logprobs(index: int, ids: list[int], entries: list) -> dict | None:
            streamed[index] += len(ids)
            return logprobs_block(tokenizer, ids, entries) if job.logprobs is not None else None

        try:
            while True:
                event = await events.get()
                if isinstance(event, Started):  # the role goes out when generation starts, not while queued
                    for index in range(job.n):
                        yield sse(chunk(id, engine.name, created, index, {"role": "assistant", "content": ""}))
                elif isinstance(event, Piece):
                    yield sse(chunk(id, engine.name, created, event.index, {"content": event.text},
                                    logprobs=logprobs(event.index, *event.logprobs) if event.logprobs else None))
                elif isinstance(event, Failed):  # headers are sent: the error goes in the stream
                    yield sse(event.error.body())
                    break
                else:
                    for index, (_, reason, _) in enumerate(event.answers):
                        rest = None  # the tokens no piece carried (a stop string's, held-back bytes)
                        if event.logprobs is not None:
                            ids, entries = event.logprobs[index]
                            rest = logprobs(index, ids[streamed[index]:], entries[streamed[index]:])
                        yield sse(chunk(id, engine.name, created, index, {}, finish_reason=reason, logprobs=rest))
                    if include_usage:
                        final = chunk(id, engine.name, created, usage_block=usage_of(event))
                        yield sse(final | {"crosslmm": extension(job)})
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()  # the client left (or the stream ended): stop generating

    return app


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (announced or actual)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {int(declared):,} bytes; this server takes at most {limit:,}",
                       code="request_too_large")
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise ApiError(413, f"the request body is over {limit:,} bytes, the most this server takes",
                           code="request_too_large")
        chunks.append(part)
    return b"".join(chunks)


def cache_header(job: Job) -> str:
    return "none" if job.video_cache_hit is None else ("hit" if job.video_cache_hit else "miss")


def completion_body(engine: Engine, job: Job, event: Finished) -> dict:
    """The ``chat.completion`` a finished job answers (``serve``'s response body, ``run-batch``'s line body)."""
    answers = [(text, reason) for text, reason, _ in event.answers]
    logprobs = [logprobs_block(engine.processor.tokenizer, ids, entries) for ids, entries in event.logprobs] \
        if event.logprobs is not None else None
    return completion(completion_id(), engine.name, answers, usage_of(event), extension(job), logprobs)


def usage_of(event: Finished) -> dict:
    return usage(event.prompt_tokens, sum(tokens for _, _, tokens in event.answers), event.cached_tokens)


def extension(job: Job) -> dict:
    """crosslmm's own fields in a response: whether the encoded video was reused, and timings."""
    return {"video_cache": cache_header(job), "frames": job.video.num_frames if job.video else 0, **job.timings}


def run(engine: Engine) -> None:
    """Serve until interrupted (uvicorn handles Ctrl-C and SIGTERM gracefully)."""
    import uvicorn

    settings = engine.settings
    uvicorn.run(create_app(engine), host=settings.host, port=settings.port, log_level="info",
                timeout_graceful_shutdown=5)
