"""`crosslmm serve` on a loopback port, talked to with the official `openai` client (and raw HTTP
where the client cannot send the mistake). Answers are checked against `crosslmm ask` and against
transformers' own generate() over the whole conversation, never against the server itself."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import openai
import pytest
from openai import OpenAI
from transformers import AutoModelForImageTextToText, AutoProcessor
from typer.testing import CliRunner

from crosslmm_cli.app import app
from crosslmm_cli.ask import MAX_SIDE, AskSettings, prepare_model
from crosslmm_cli.budget_lru import BudgetLru
from crosslmm_cli.serve.engine import Engine
from crosslmm_cli.serve.media import MediaResolver
from crosslmm_cli.serve.protocol import ApiError, parse_request
from crosslmm_cli.serve.server import create_app
from crosslmm_cli.serve.settings import ServeSettings
from crosslmm_cli.synthetic_video import index_frames, write_video
from crosslmm_cli.video import SamplingRequest, read_frames
from tests.helpers import free_port

KEY = "test-key"
FRAMES = 4
TOKENS = 10


@pytest.fixture(scope="module")
def checkpoint(tiny_open_checkpoint):
    return tiny_open_checkpoint


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    write_video(root / "a.mp4", index_frames(50), (128, 128), 25, "libx264", 10)
    (root / "sub").mkdir()
    write_video(root / "sub" / "b.mp4", index_frames(40, 96, 128), (128, 96), 25, "libx264", 10)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(root / "still.png"), image)
    (root / "notes.mp4").write_text("not a video\n")
    outside = tmp_path_factory.mktemp("outside")
    write_video(outside / "secret.mp4", index_frames(20), (64, 64), 25, "libx264")
    (root / "escape.mp4").symlink_to(outside / "secret.mp4")
    return root


@contextmanager
def running(engine: Engine):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=engine.settings.port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{engine.settings.port}"
    finally:
        server.should_exit = True
        thread.join(10)


def make_engine(checkpoint, media, **options) -> Engine:
    settings = ServeSettings(model=str(checkpoint), media_root=media, port=free_port(), frames=FRAMES, **options)
    model, processor, _ = prepare_model(AskSettings(model=str(checkpoint)))
    return Engine(model, processor, settings)


@pytest.fixture(scope="module")
def server(checkpoint, media):
    engine = make_engine(checkpoint, media, api_key=KEY)
    calls = {"forward": 0}
    engine.model.register_forward_hook(lambda *_: calls.__setitem__("forward", calls["forward"] + 1))
    with running(engine) as url:
        yield url, engine, calls


@pytest.fixture
def client(server):
    return OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(checkpoint):
    """transformers' own route, no server: AutoProcessor, generate() over the whole conversation."""
    processor = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()

    def answer(messages: list[dict], frames: np.ndarray, max_new_tokens: int = TOKENS) -> str:
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=prompt, videos=[frames])
        sequences = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return processor.batch_decode(sequences[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]

    return answer


def video_part(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


def ask_video(url: str, text: str) -> list[dict]:
    return [{"role": "user", "content": [video_part(url), {"type": "text", "text": text}]}]


def as_template(messages: list[dict]) -> list[dict]:
    """The same conversation as the processor's chat template takes it."""
    return [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else [
        {"type": "video"} if part["type"] != "text" else part for part in m["content"]]} for m in messages]


def frames_of(path: Path, count: int = FRAMES) -> np.ndarray:
    return read_frames(path, SamplingRequest(count, max_side=MAX_SIDE))[1].pixels


# ---- answers --------------------------------------------------------------------------------------

def test_models_lists_the_served_model(client):
    assert [model.id for model in client.models.list().data] == ["tiny"]


def test_a_video_question_is_answered_as_crosslmm_ask(client, checkpoint, media):
    result = CliRunner().invoke(app, ["ask", str(media / "sub" / "b.mp4"), "What is shown?", "--model", str(checkpoint),
                                      "--frames", str(FRAMES), "--max-new-tokens", str(TOKENS), "--json"])
    assert result.exit_code == 0, result.output
    expected = json.loads(result.stdout)
    response = client.chat.completions.create(model="tiny", messages=ask_video("sub/b.mp4", "What is shown?"),
                                              max_tokens=TOKENS, temperature=0)
    assert response.choices[0].message.content == expected["answer"]
    assert response.usage.prompt_tokens == expected["tokens"]["prompt"]
    assert response.usage.completion_tokens == expected["tokens"]["generated"]


def test_a_streamed_answer_equals_the_whole_answer(client):
    messages = ask_video("a.mp4", "Describe it.")
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=TOKENS)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=TOKENS, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_a_follow_up_reuses_the_encoded_video_and_the_prefix(client, server, media, reference):
    _, engine, _ = server
    first_messages = ask_video(f"file://{media / 'a.mp4'}", "What happens first?")
    first = client.chat.completions.with_raw_response.create(
        model="tiny", messages=first_messages, max_tokens=TOKENS,
        extra_body={"video_sampling": {"frames": 3}})  # a sampling no other test uses: not yet encoded
    assert first.headers["x-crosslmm-video-cache"] == "miss"
    answer = first.parse().choices[0].message.content
    assert answer == reference(as_template(first_messages), frames_of(media / "a.mp4", 3))

    follow_messages = first_messages + [{"role": "assistant", "content": answer},
                                        {"role": "user", "content": "And then?"}]
    follow = client.chat.completions.with_raw_response.create(
        model="tiny", messages=follow_messages, max_tokens=TOKENS, extra_body={"video_sampling": {"frames": 3}})
    assert follow.headers["x-crosslmm-video-cache"] == "hit"
    parsed = follow.parse()
    video_end = 1 + max(i for i, t in enumerate(engine.processor(as_template(follow_messages),
                        [frames_of(media / "a.mp4", 3)])["input_ids"][0].tolist()) if t == engine.model.config.video_token_id)
    assert parsed.usage.prompt_tokens_details.cached_tokens >= video_end  # the video was not prefilled again
    assert parsed.model_extra["crosslmm"]["video_cache"] == "hit"
    assert parsed.choices[0].message.content == reference(as_template(follow_messages), frames_of(media / "a.mp4", 3))


def test_a_changed_file_is_read_again(client, media, tmp_path):
    moving = media / "moving.mp4"
    write_video(moving, index_frames(30), (64, 64), 25, "libx264")
    messages = ask_video("moving.mp4", "What?")
    assert client.chat.completions.with_raw_response.create(
        model="tiny", messages=messages, max_tokens=2).headers["x-crosslmm-video-cache"] == "miss"
    write_video(moving, index_frames(36, 64, 80), (80, 64), 25, "libx264")
    assert client.chat.completions.with_raw_response.create(
        model="tiny", messages=messages, max_tokens=2).headers["x-crosslmm-video-cache"] == "miss"


@pytest.mark.parametrize("as_data_url", [True, False])
def test_an_image_is_a_one_frame_video(client, media, reference, as_data_url):
    url = "still.png"
    if as_data_url:
        url = "data:image/png;base64," + base64.b64encode((media / "still.png").read_bytes()).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "What colour?"}]}]
    response = client.chat.completions.create(model="tiny", messages=messages, max_tokens=TOKENS)
    frame = cv2.cvtColor(cv2.imread(str(media / "still.png")), cv2.COLOR_BGR2RGB)[None]
    assert response.choices[0].message.content == reference(as_template(messages), frame)
    assert response.model_extra["crosslmm"]["frames"] == 1


def test_a_system_message_and_n_answers(client, media):
    messages = [{"role": "system", "content": "Answer briefly."}] + ask_video("a.mp4", "Why?")
    response = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, n=2, temperature=0.9,
                                              seed=3)
    again = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, n=2, temperature=0.9, seed=3)
    assert [c.index for c in response.choices] == [0, 1]
    assert [c.message.content for c in response.choices] == [c.message.content for c in again.choices]
    assert response.choices[0].finish_reason == "length"


def test_a_stop_string_ends_the_answer_before_it(client, media, reference):
    messages = ask_video("a.mp4", "Count.")
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=TOKENS).choices[0]
    assert whole.message.content == reference(as_template(messages), frames_of(media / "a.mp4"))
    assert len(whole.message.content) >= 2
    stop = whole.message.content[1]
    cut = client.chat.completions.create(model="tiny", messages=messages, max_tokens=TOKENS, stop=[stop]).choices[0]
    assert cut.message.content == whole.message.content[:whole.message.content.find(stop)]
    assert cut.finish_reason == "stop"


def test_concurrent_clients_get_the_answers_of_one_at_a_time_generated_together(server, media):
    url = server[0]
    questions = [(video, text) for video in ("a.mp4", "sub/b.mp4") for text in ("Who?", "Where is it?")]
    alone = OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)

    def ask(job):
        video, text = job
        return alone.chat.completions.create(model="tiny", messages=ask_video(video, text), max_tokens=6,
                                             extra_body={"video_sampling": {"frames": 2}}).choices[0].message.content

    expected = [ask(q) for q in questions]
    sizes, done = [], threading.Event()

    def watch():
        while not done.is_set():
            sizes.append(server[1].health()["batch_size"])
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(ask, questions * 3))
    done.set()
    watcher.join()
    assert together == expected * 3
    assert max(sizes) > 1  # they were generated together


def test_a_client_that_leaves_stops_its_generation(server, media):
    url, engine, calls = server
    request = urllib.request.Request(url + "/v1/chat/completions", method="POST", headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}, data=json.dumps({
            "model": "tiny", "messages": ask_video("a.mp4", "Tell a long story."), "max_tokens": 3000,
            "stream": True, "repetition_penalty": 1.0}).encode())
    before = calls["forward"]
    with urllib.request.urlopen(request, timeout=30) as response:
        for _ in range(3):
            response.readline()
    deadline = time.monotonic() + 20
    while engine.admitted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.admitted == 0
    assert not any(t.name == "crosslmm-generate" and t.is_alive() for t in threading.enumerate())
    assert calls["forward"] - before < 3000 / 2  # stopped long before max_tokens


def test_a_client_that_leaves_mid_batch_stops_only_its_own_answer(server, media, reference):
    """Two long answers generated together; one client hangs up after a few chunks: its answer
    leaves the batch and the other's is transformers' generate()'s."""
    url, engine, _ = server
    alone = OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    kept_request = dict(model="tiny", messages=ask_video("sub/b.mp4", "Describe it all."), max_tokens=200,
                        extra_body={"video_sampling": {"frames": 2}})
    answered = alone.chat.completions.create(**kept_request)
    assert answered.usage.completion_tokens == 200  # long enough to outlast the hang-up
    expected = reference(as_template(kept_request["messages"]), frames_of(media / "sub" / "b.mp4", 2), 200)
    assert answered.choices[0].message.content == expected
    request = urllib.request.Request(url + "/v1/chat/completions", method="POST", headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}, data=json.dumps({
            "model": "tiny", "messages": ask_video("a.mp4", "Tell a long story."), "max_tokens": 3000,
            "stream": True}).encode())
    with ThreadPoolExecutor(1) as pool:
        with urllib.request.urlopen(request, timeout=30) as leaving:
            leaving.readline()  # its role chunk: it is in the batch
            kept = pool.submit(alone.chat.completions.create, **kept_request)
            deadline = time.monotonic() + 30
            while engine.health()["batch_size"] < 2 and time.monotonic() < deadline:
                time.sleep(0.005)
            assert engine.health()["batch_size"] == 2
        deadline = time.monotonic() + 20  # hung up
        while engine.health()["batch_size"] == 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not kept.done()  # the long story left while the other answer was still being generated
        assert kept.result().choices[0].message.content == expected
    assert engine.admitted == 0


def test_a_full_queue_answers_429_with_retry_after(server, client):
    _, engine, _ = server
    tickets = []
    try:
        while True:
            tickets.append(engine.admit())
    except ApiError:
        pass
    try:
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="tiny", messages=ask_video("a.mp4", "Hi?"), max_tokens=2)
        assert int(refused.value.response.headers["retry-after"]) >= 1
        assert refused.value.body["code"] == "queue_full"
    finally:
        for ticket in tickets:
            ticket.release()
    assert client.chat.completions.create(model="tiny", messages=ask_video("a.mp4", "Hi?"), max_tokens=2).choices


def test_a_queued_stream_gets_its_first_chunk_when_its_generation_starts(checkpoint, media):
    """The role chunk goes out when the job joins the batch, not while it waits: with room for one
    answer, a stream queued behind a long answer receives nothing until that answer is done."""
    engine = make_engine(checkpoint, media, max_batch_size=1)
    with running(engine) as url:
        alone = OpenAI(base_url=url + "/v1", max_retries=0, timeout=120, api_key="-")

        def long_answer():
            return alone.chat.completions.create(model="tiny", messages=ask_video("a.mp4", "Tell a long story."),
                                                 max_tokens=400, extra_body={"video_sampling": {"frames": 2}})

        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(long_answer)
            deadline = time.monotonic() + 30
            while engine.running == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            stream = alone.chat.completions.create(model="tiny", messages=ask_video("sub/b.mp4", "Who?"), max_tokens=2,
                                                   stream=True, extra_body={"video_sampling": {"frames": 2}})
            chunks = iter(stream)
            role = next(chunks)
            done_when_role_came = engine.stats["completion_tokens"]
            assert role.choices[0].delta.role == "assistant"
            list(chunks)
            answer = first.result()
    engine.close()
    assert answer.usage.completion_tokens >= 50  # long enough that a role sent at once would come mid-answer
    assert done_when_role_came == answer.usage.completion_tokens


def test_a_stream_joins_a_running_batch_and_both_answers_equal_their_sequential_ones(server, media, reference):
    """With room in the batch, a request that arrives while a long answer is being generated starts
    at once (its role chunk comes mid-answer) and both answers are transformers' generate()'s."""
    url, engine, _ = server
    alone = OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    long_request = dict(model="tiny", messages=ask_video("a.mp4", "Tell a long story."), max_tokens=300,
                        extra_body={"video_sampling": {"frames": 2}})
    short_request = dict(model="tiny", messages=ask_video("sub/b.mp4", "Who is it?"), max_tokens=8,
                         extra_body={"video_sampling": {"frames": 3}})
    long_alone = reference(as_template(long_request["messages"]), frames_of(media / "a.mp4", 2), 300)
    short_alone = reference(as_template(short_request["messages"]), frames_of(media / "sub" / "b.mp4", 3), 8)
    before = engine.stats["completion_tokens"]
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(alone.chat.completions.create, **long_request)
        deadline = time.monotonic() + 30
        while engine.running == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        chunks = iter(alone.chat.completions.create(**short_request, stream=True))
        assert next(chunks).choices[0].delta.role == "assistant"
        done_when_role_came = engine.stats["completion_tokens"] - before
        short_together = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        long_together = first.result()
    assert done_when_role_came == 0  # the long answer was still being generated
    assert long_together.usage.completion_tokens == 300
    assert (long_together.choices[0].message.content, short_together) == (long_alone, short_alone)


def test_metrics_parse_as_prometheus_text_in_vllms_names(server, client):
    """/metrics read with Prometheus' own text parser; its counters move as the client's usage says."""
    from prometheus_client.parser import text_string_to_metric_families

    url, engine, _ = server

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
        return {sample.name: sample.value for family in text_string_to_metric_families(text)
                for sample in family.samples if sample.name != "vllm:request_success_total"} | {
            "answered": sum(sample.value for family in text_string_to_metric_families(text)
                            for sample in family.samples if sample.name == "vllm:request_success_total")}

    messages = ask_video("a.mp4", "What?")
    client.chat.completions.create(model="tiny", messages=messages, max_tokens=3)
    before = scrape()
    answer = client.chat.completions.create(model="tiny", messages=messages, max_tokens=3)  # the prefix is cached now
    after = scrape()
    moved = {name: after[name] - before.get(name, 0.0) for name in after}
    assert moved["vllm:prompt_tokens_total"] == moved["vllm:prefix_cache_queries_total"] == answer.usage.prompt_tokens
    assert moved["vllm:prefix_cache_hits_total"] == answer.usage.prompt_tokens_details.cached_tokens > 0
    assert moved["vllm:generation_tokens_total"] == answer.usage.completion_tokens
    assert moved["vllm:time_to_first_token_seconds_count"] == moved["vllm:e2e_request_latency_seconds_count"] == 1
    assert moved["answered"] == 1 and moved["crosslmm:video_cache_hits_total"] == 1
    assert after["vllm:num_requests_running"] == 0 and after["vllm:num_requests_waiting"] == 0
    assert {"running", "waiting", "batch_size"} <= set(engine.health())


def test_a_failed_step_answers_500_and_the_server_goes_on(server, client):
    """A model error fails the requests it touched with an OpenAI-shaped 500; the scheduler lives."""
    _, engine, _ = server

    def fail(*_):
        raise RuntimeError("a device error")

    hook = engine.model.register_forward_pre_hook(fail)
    try:
        with pytest.raises(openai.InternalServerError) as failed:
            client.chat.completions.create(model="tiny", messages=ask_video("a.mp4", "Hi?"), max_tokens=2)
        assert failed.value.body["code"] == "internal_error" and "RuntimeError" in failed.value.body["message"]
    finally:
        hook.remove()
    assert client.chat.completions.create(model="tiny", messages=ask_video("a.mp4", "Hi?"), max_tokens=2).choices
    assert engine.admitted == 0 and engine.scheduler.is_alive()


def test_retry_after_counts_only_answered_jobs(server):
    """A cancelled job ends in a moment; it must not pull the estimate of the wait towards zero."""
    _, engine, _ = server
    before = engine.seconds_per_job
    job = engine.plan(parse_request({"model": "tiny", "messages": ask_video("a.mp4", "Hi?"), "max_tokens": 2}))
    engine.load(job)
    job.cancelled.set()
    engine.submit(job, engine.admit(), lambda event: None)
    deadline = time.monotonic() + 30
    while engine.admitted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.admitted == 0
    assert engine.seconds_per_job == before


# ---- refusals -------------------------------------------------------------------------------------

def raw(url: str, body: bytes, key: str | None = KEY) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url + "/v1/chat/completions", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def assert_openai_error(body: dict, *words: str) -> None:
    assert set(body) == {"error"} and {"message", "type", "code"} <= set(body["error"])
    assert all(word in body["error"]["message"] for word in words), body


@pytest.mark.parametrize("url, status, words", [
    ("file:///etc/passwd", 403, ["outside the server's media root"]),
    ("../a.mp4", 403, ["'..' is not allowed"]),
    ("sub/../../a.mp4", 403, ["'..' is not allowed"]),
    ("escape.mp4", 403, ["symbolic link leading out"]),
    ("/etc/hostname", 403, ["outside the server's media root"]),
    ("notes.mp4", 400, ["cannot read the video", "not a readable video"]),
    ("missing.mp4", 400, ["no such file under the media root"]),
    ("sub", 400, ["a directory"]),
    ("https://example.com/v.mp4", 403, ["--allow-remote-media"]),
    ("ftp://example.com/v.mp4", 400, ["unsupported URL scheme"]),
])
def test_media_outside_the_root_or_unreadable_is_refused(server, url, status, words):
    code, body = raw(server[0], json.dumps({"model": "tiny", "messages": ask_video(url, "What?")}).encode())
    assert code == status
    assert_openai_error(body, *words)


@pytest.mark.parametrize("body, status, words", [
    (b'{"model": "tiny", "messages": [', 400, ["not valid JSON"]),
    (b'[1, 2]', 400, ["JSON object"]),
    (json.dumps({"model": "tiny", "messages": ask_video("a.mp4", "?"), "max_tokens": -5}).encode(), 400, ["max_tokens"]),
    (json.dumps({"model": "gpt-4o", "messages": ask_video("a.mp4", "?")}).encode(), 404, ["'gpt-4o' does not exist"]),
    (json.dumps({"model": "tiny", "messages": []}).encode(), 400, ["messages"]),
    (json.dumps({"model": "tiny", "messages": ask_video("a.mp4", "?"), "temperature": 7}).encode(), 400, ["temperature"]),
    (json.dumps({"model": "tiny", "messages": ask_video("a.mp4", "?"), "presence_penalty": 1}).encode(), 400,
     ["not supported"]),
    (json.dumps({"model": "tiny", "messages": ask_video("a.mp4", "?"), "video_sampling": {"start": 5, "end": 1}}).encode(),
     400, ["video_sampling.end"]),
    (json.dumps({"model": "tiny", "messages": ask_video("a.mp4", "?") + ask_video("sub/b.mp4", "?")}).encode(), 400,
     ["one video or image per conversation"]),
    (json.dumps({"model": "tiny", "messages": ask_video("a.mp4", "?"), "max_tokens": 10**6}).encode(), 400,
     ["context"]),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": [{"type": "video_url"}]}]}).encode(), 400,
     ["video_url"]),
])
def test_bad_requests_get_openai_shaped_4xx(server, body, status, words):
    code, answer = raw(server[0], body)
    assert code == status
    assert_openai_error(answer, *words)


def test_a_request_without_the_api_key_is_refused(server):
    for key in (None, "wrong"):
        code, body = raw(server[0], json.dumps({"model": "tiny", "messages": ask_video("a.mp4", "?")}).encode(), key)
        assert code == 401
        assert_openai_error(body, "API key")
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=server[0] + "/v1", api_key="wrong", max_retries=0).models.list()
    with urllib.request.urlopen(server[0] + "/health") as response:  # liveness stays open
        assert json.loads(response.read())["status"] == "ok"


def test_an_oversized_request_is_refused_before_its_body_is_read(server):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", int(server[0].rsplit(":", 1)[1]), timeout=30)
    connection.putrequest("POST", "/v1/chat/completions")
    for name, value in (("Authorization", f"Bearer {KEY}"), ("Content-Type", "application/json"),
                        ("Content-Length", str(33 * 2**20))):
        connection.putheader(name, value)
    connection.endheaders(b'{"model": "tiny", "messages": [')
    response = connection.getresponse()
    assert response.status == 413
    assert_openai_error(json.loads(response.read()), "at most")
    connection.close()


def test_an_unknown_endpoint_is_an_openai_shaped_404(server):
    request = urllib.request.Request(server[0] + "/v1/completions", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request)
    assert error.value.code == 404
    assert_openai_error(json.loads(error.value.read()), "no such endpoint")


# ---- parts ----------------------------------------------------------------------------------------

def test_remote_media_are_fetched_only_when_allowed_and_within_the_size_bound(media, tmp_path):
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(media))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/a.mp4"
    try:
        with pytest.raises(ApiError, match="--allow-remote-media"):
            MediaResolver(media).resolve(url, "video")
        fetched = MediaResolver(media, allow_remote=True).resolve(url, "video")
        assert fetched.path.read_bytes() == (media / "a.mp4").read_bytes() and fetched.temporary
        fetched.path.unlink()
        with pytest.raises(ApiError, match="larger than") as error:
            MediaResolver(media, allow_remote=True, max_remote_bytes=1000).resolve(url, "video")
        assert error.value.status == 413
    finally:
        httpd.shutdown()


def test_the_prefix_cache_index_finds_what_a_scan_of_every_entry_finds():
    """The block-hash index against the obvious reference: compare the prompt with every entry of
    its video and take the longest common prefix (of at least one block, leaving a token to compute)."""
    import torch
    from transformers import DynamicCache

    from crosslmm_cli.serve.prefix_cache import BLOCK, PrefixCache, common_length

    rng = np.random.default_rng(0)

    def kv(length: int):
        cache = DynamicCache()
        cache.update(torch.zeros(1, 1, length, 2), torch.zeros(1, 1, length, 2), 0)
        return cache

    stems = [rng.integers(0, 50, 40) for _ in range(4)]

    def prompt() -> np.ndarray:
        stem = stems[rng.integers(len(stems))][: rng.integers(0, 41)]
        return np.concatenate([stem, rng.integers(0, 50, rng.integers(1, 30))])

    cache, stored = PrefixCache(budget_bytes=1 << 30), {"v": [], "w": []}
    for _ in range(300):
        video, ids = ("v", "w")[rng.integers(2)], prompt()
        cache.store(video, ids.tolist(), kv(len(ids)))
        stored[video] = [old for old in stored[video] if common_length(old, ids) != len(old)] + (
            [ids] if len(ids) >= BLOCK else [])
    assert len(cache) == len(stored["v"]) + len(stored["w"])
    for _ in range(300):
        video, ids = ("v", "w")[rng.integers(2)], prompt()
        expected = max([min(common_length(old, ids), len(ids) - 1) for old in stored[video]], default=0)
        expected = expected if expected >= BLOCK else 0
        found, length = cache.lookup(video, ids.tolist(), 1)
        assert length == expected
        assert found is None if expected == 0 else found.get_seq_length() == length
    # a budget of a few entries: evicted entries leave the index, and lookups see what is kept
    small = PrefixCache(budget_bytes=16 * 40 * 2 * 4 * 8)
    for _ in range(200):
        ids = prompt()
        small.store("v", ids.tolist(), kv(len(ids)))
    kept = [prefix.ids for _, prefix in small._entries.items()]
    assert 0 < len(kept) < 100 and small._entries.evictions > 0
    assert {key for keys in small._index.values() for key in keys} == {key for key, _ in small._entries.items()}
    for _ in range(100):
        ids = prompt()
        expected = max([min(common_length(old, ids), len(ids) - 1) for old in kept], default=0)
        assert small.lookup("v", ids.tolist(), 1)[1] == (expected if expected >= BLOCK else 0)


def test_a_looked_up_prefix_shares_the_entrys_tensors_and_generating_from_it_leaves_the_entry_as_it_was(server):
    """The lookup hands out a new cache over the entry's own keys/values (no copy); generation
    extends and batches it (new tensors each time), so the entry still holds what was stored."""
    import torch
    from crosslmm import SamplingSettings
    from crosslmm.batched_generation import ContinuousBatch, Sequence, generate_all

    from crosslmm_cli.serve.prefix_cache import PrefixCache

    _, engine, _ = server
    model, processor = engine.model, engine.processor
    ids = processor.chat_inputs([{"role": "user", "content": "Tell me a story about a long journey."}], None)["input_ids"]
    first = Sequence(ids, None, SamplingSettings(max_new_tokens=6))
    list(generate_all(ContinuousBatch(model, processor.tokenizer), [first]))
    prefixes = PrefixCache(1 << 30)
    prefixes.store(None, ids[0].tolist() + first.token_ids, first.cache)
    stored = [(layer.keys.clone(), layer.values.clone()) for layer in first.cache.layers]
    question = processor.tokenizer(" And then?", return_tensors="pt")["input_ids"]
    follow = torch.cat([ids, torch.tensor([first.token_ids[:-1]]), question], dim=1)
    for _ in range(2):
        cache, length = prefixes.lookup(None, follow[0].tolist(), 1)
        assert length == first.cache.get_seq_length()
        assert cache.layers[0].keys is first.cache.layers[0].keys  # shared, not copied
        neighbour = Sequence(ids, None, SamplingSettings(max_new_tokens=9))  # batched beside it, padded
        list(generate_all(ContinuousBatch(model, processor.tokenizer),
                          [neighbour, Sequence(follow, None, SamplingSettings(max_new_tokens=9), prefix_cache=cache)]))
        for layer, (keys, values) in zip(first.cache.layers, stored):
            assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)


def test_the_lru_keeps_within_its_budget_and_evicts_the_least_recently_used():
    cache = BudgetLru(10, len)
    cache.put("a", "xxxx")
    cache.put("b", "xxxx")
    assert cache.get("a") == "xxxx"  # now b is the least recently used
    cache.put("c", "xxxx")
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ("xxxx", None, "xxxx")
    assert cache.total_bytes == 8 and cache.evictions == 1
    cache.put("d", "x" * 11)  # larger than the budget: not kept, nothing evicted for it
    assert cache.get("d") is None and len(cache) == 2


def test_a_small_video_cache_evicts_and_answers_stay_right(checkpoint, media, server, reference):
    one_video = max(video.nbytes() for _, video in server[1].videos.items() if video.memory is not None)
    engine = make_engine(checkpoint, media, video_cache_mb=1.5 * one_video / 2**20)  # room for one encoded video
    with running(engine) as url:
        client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)

        def ask(video):
            return client.chat.completions.with_raw_response.create(model="tiny", messages=ask_video(video, "?"),
                                                                    max_tokens=TOKENS)
        first = ask("a.mp4")
        ask("sub/b.mp4")
        again = ask("a.mp4")
        assert again.headers["x-crosslmm-video-cache"] == "miss"  # evicted by b
        expected = reference(as_template(ask_video("a.mp4", "?")), frames_of(media / "a.mp4"))
        assert first.parse().choices[0].message.content == again.parse().choices[0].message.content == expected
        assert len(engine.videos) == 1 and engine.videos.evictions >= 2
    engine.close()


# ---- the command ----------------------------------------------------------------------------------

def test_serve_refuses_bad_flags_in_one_line_before_loading(tmp_path, media):
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--media-root", str(tmp_path / "nope"), "--model", "/no/such"])
    assert result.exit_code == 1 and "--media-root" in result.output and "Traceback" not in result.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = runner.invoke(app, ["serve", "--media-root", str(media), "--port", str(taken.getsockname()[1])])
    assert result.exit_code == 1 and "in use" in result.output


def test_crosslmm_serve_starts_answers_and_stops(checkpoint, media):
    port = free_port()
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE"}
    process = subprocess.Popen([sys.executable, "-m", "crosslmm_cli.app", "serve", "--model", str(checkpoint),
                                "--media-root", str(media), "--port", str(port), "--frames", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        answer = client.chat.completions.create(model="tiny", messages=ask_video("a.mp4", "?"), max_tokens=3)
        assert answer.usage.completion_tokens >= 1
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert "Traceback" not in output
