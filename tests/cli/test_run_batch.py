"""`crosslmm run-batch` on CPU with the tiny checkpoint: its answers against `crosslmm serve`'s on the
same bodies (asked with the official openai client), its output lines parsed with the client's own
types, bad lines, and a run killed with SIGKILL against one never stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import openai
import pytest
import torch
from openai import OpenAI
from openai.types.chat import ChatCompletion
from transformers import AutoModelForImageTextToText, AutoProcessor
from typer.testing import CliRunner

from crosslmm_cli.app import app
from crosslmm_cli.synthetic_video import index_frames, write_video
from tests.cli.test_serve import as_template, frames_of, make_engine, running
from tests.helpers import free_port

runner = CliRunner()
FRAMES = 4  # as make_engine's engine samples


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch_media")
    write_video(root / "a.mp4", index_frames(30), (96, 96), 25, "libx264", 10)
    write_video(root / "b.mp4", index_frames(30, 64, 96), (96, 64), 25, "libx264", 10)
    (root / "broken.mp4").write_text("not a video\n")
    return root


def request(custom_id: str, url: str, text: str, **body) -> dict:
    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": text}]}]
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "tiny", "messages": messages, "max_tokens": 6, **body}}


GOOD = [request(f"{video}-{n}", f"{video}.mp4", question) for video in "ab"
        for n, question in enumerate(["What is shown?", "What happens next?", "Which colour?"])]
BAD = [  # (what its output line is known by, the line, its response's status: None for a line that is no request)
    ("outside", json.dumps(request("outside", "../secret.mp4", "Hi?")), 403),
    ("broken", json.dumps(request("broken", "broken.mp4", "Hi?")), 400),
    ("too long", json.dumps(request("too long", "a.mp4", "Hi?", max_tokens=10**6)), 400),
    ("streamed", json.dumps(request("streamed", "a.mp4", "Hi?", stream=True)), 400),
    ("other url", json.dumps({**request("other url", "a.mp4", "Hi?"), "url": "/v1/embeddings"}), None),
    ("line 12", json.dumps(request("a-0", "a.mp4", "Again?")), None),  # a custom_id used on line 1
    ("line 13", "{not json", None),
]


@pytest.fixture(scope="module")
def requests_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("batch") / "requests.jsonl"
    lines = [json.dumps(row) for row in GOOD] + [line for _, line, _ in BAD]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def whole(requests_file, media, tiny_open_checkpoint, tmp_path_factory):
    """One run never stopped, in this process: (its output, its summary line)."""
    output = tmp_path_factory.mktemp("whole") / "out.jsonl"
    result = run_batch(requests_file, output, media, tiny_open_checkpoint)
    assert result.exit_code == 0, result.output
    return output, result.output


def run_batch(requests_file, output, media, checkpoint):
    return runner.invoke(app, ["run-batch", "-i", str(requests_file), "-o", str(output), "--model", str(checkpoint),
                               "--media-root", str(media), "--frames", str(FRAMES), "--device", "cpu"])


def outputs(path) -> dict[str, dict]:
    """Output lines by custom_id (by line for a line without one); each key must come once."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    keys = [row["custom_id"] if row["custom_id"] is not None else row["error"]["line"] for row in rows]
    assert len(keys) == len(set(keys)), "a request answered twice"
    return dict(zip(keys, rows))


def answers(rows: dict[str, dict]) -> dict[str, object]:
    return {key: (row["response"] or {}).get("status_code") if not row["response"] or row["response"]["status_code"] != 200
            else [choice["message"]["content"] for choice in row["response"]["body"]["choices"]] for key, row in rows.items()}


def test_a_batch_answers_as_serve_does_and_every_bad_line_gets_one_error(whole, media, tiny_open_checkpoint):
    output, summary = whole
    rows = outputs(output)
    assert len(rows) == len(GOOD) + len(BAD)
    engine = make_engine(tiny_open_checkpoint, media)
    try:
        with running(engine) as url:
            client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
            for line in GOOD:
                body = line["body"]
                served = client.chat.completions.create(model=body["model"], messages=body["messages"],
                                                        max_tokens=body["max_tokens"])
                batched = ChatCompletion.model_validate(rows[line["custom_id"]]["response"]["body"])
                assert batched.choices[0].message.content == served.choices[0].message.content
                assert batched.usage.prompt_tokens == served.usage.prompt_tokens
    finally:
        engine.close()
    for key, _, status in BAD:
        row = rows[key]
        if status is None:
            assert row["response"] is None and row["error"]["message"], row
        else:
            assert row["response"]["status_code"] == status and row["response"]["body"]["error"]["message"], row
    assert "is on line 1 already" in rows["line 12"]["error"]["message"]
    assert "6 answered, 4 refused, 3 invalid lines" in summary


def test_a_rerun_skips_what_is_done_and_repairs_a_half_written_line(whole, requests_file, media, tiny_open_checkpoint,
                                                                      tmp_path):
    output = tmp_path / "out.jsonl"
    lines = whole[0].read_text().splitlines(keepends=True)
    output.write_text("".join(lines[:5]) + lines[5][:40])  # five whole lines and half of the sixth
    again = run_batch(requests_file, output, media, tiny_open_checkpoint)
    assert again.exit_code == 0 and "5 already in" in again.output
    assert answers(outputs(output)) == answers(outputs(whole[0]))


@pytest.mark.parametrize(("case", "message"), [
    ("same file", "is the input file"),
    ("no input", "cannot read it"),
    ("no media root", "no such folder"),
])
def test_bad_invocations_are_one_line_before_the_model_loads(requests_file, media, tmp_path, case, message):
    given = {"same file": (requests_file, requests_file, media), "no input": (tmp_path / "none.jsonl", tmp_path / "o.jsonl", media),
             "no media root": (requests_file, tmp_path / "o.jsonl", tmp_path / "nowhere")}[case]
    result = runner.invoke(app, ["run-batch", "-i", str(given[0]), "-o", str(given[1]), "--media-root", str(given[2]),
                                 "--model", "no-such-model"])
    assert result.exit_code == 1 and message in result.output, result.output


def test_logprobs_are_log_softmax_of_generates_scores_in_serve_and_run_batch(media, tiny_open_checkpoint, tmp_path):
    """``logprobs``/``top_logprobs`` against transformers' own generate() (AutoModel, output_scores),
    asked of `serve` with the official client (whole and streamed) and of `run-batch`, parsed with the
    client's types."""
    processor = AutoProcessor.from_pretrained(tiny_open_checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(tiny_open_checkpoint).eval()
    body = request("lp", "a.mp4", "What is shown?", logprobs=True, top_logprobs=3)
    prompt = processor.apply_chat_template(as_template(body["body"]["messages"]), add_generation_prompt=True)
    inputs = processor(text=prompt, videos=[frames_of(media / "a.mp4", FRAMES)])
    generated = model.generate(**inputs, max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    tokens = generated.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    expected = [torch.log_softmax(scores[0].float(), dim=-1) for scores in generated.scores]

    def check(content) -> None:
        kept = [t for t in tokens if t not in processor.tokenizer.all_special_ids]  # the end of turn is no content
        assert len(content) == len(kept) > 0
        for entry, token, log_probs in zip(content, kept, expected):
            assert entry.token == processor.tokenizer.decode([token])
            assert abs(entry.logprob - float(log_probs[token])) <= 1e-4
            top = log_probs.topk(3)
            assert [t.token for t in entry.top_logprobs] == [processor.tokenizer.decode([i]) for i in top.indices.tolist()]
            assert all(abs(t.logprob - v) <= 1e-4 for t, v in zip(entry.top_logprobs, top.values.tolist()))

    requests = tmp_path / "lp.jsonl"
    requests.write_text(json.dumps(body) + "\n")
    assert run_batch(requests, tmp_path / "out.jsonl", media, tiny_open_checkpoint).exit_code == 0
    check(ChatCompletion.model_validate(outputs(tmp_path / "out.jsonl")["lp"]["response"]["body"]).choices[0].logprobs.content)
    engine = make_engine(tiny_open_checkpoint, media)
    try:
        with running(engine) as url:
            client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
            served = client.chat.completions.create(model="tiny", messages=body["body"]["messages"], max_tokens=6,
                                                    logprobs=True, top_logprobs=3)
            check(served.choices[0].logprobs.content)
            stream = client.chat.completions.create(model="tiny", messages=body["body"]["messages"], max_tokens=6,
                                                    logprobs=True, top_logprobs=3, stream=True)
            check([entry for part in stream for choice in part.choices if choice.logprobs
                   for entry in choice.logprobs.content or []])
            with pytest.raises(openai.BadRequestError, match="at most 20"):
                client.chat.completions.create(model="tiny", messages=body["body"]["messages"], logprobs=True,
                                               top_logprobs=21)
    finally:
        engine.close()


def test_two_processes_answer_as_one_and_a_killed_pair_is_finished_by_one(whole, requests_file, media, tiny_open_checkpoint,
                                                                       tmp_path):
    """torchrun with 2 processes, the videos dealt out, each process writing its own part, SIGKILLed
    after 2 lines each: what they wrote is what one process answers; the same command on one process
    finishes the run, merges the parts, every custom_id once and as a run never stopped answered it."""
    def launch(output, processes=1, kill_after=None):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if kill_after is not None:
            env["CROSSLMM_TEST_KILL_AFTER_LINES"] = str(kill_after)
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
                    str(free_port())] if processes > 1 else []
        return subprocess.run([sys.executable, *launcher, "-m", "tests.killed_at_step", "run-batch", "-i",
                               str(requests_file), "-o", str(output), "--model", str(tiny_open_checkpoint), "--media-root",
                               str(media), "--frames", str(FRAMES), "--device", "cpu"], capture_output=True, text=True,
                              timeout=300, env=env)

    single, killed = whole[0], tmp_path / "killed.jsonl"
    assert launch(killed, processes=2, kill_after=2).returncode != 0
    parts = [json.loads(line) for part in tmp_path.glob("killed.jsonl.rank*") for line in part.read_text().splitlines()]
    assert len(parts) == 4  # 2 lines each, written by the two processes
    rows = outputs(single)
    assert all(answers({"x": part})["x"] == answers({"x": rows[part["custom_id"] or part["error"]["line"]]})["x"]
               for part in parts)
    resumed = launch(killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert answers(outputs(killed)) == answers(outputs(single)) and not list(tmp_path.glob("killed.jsonl.rank*"))
