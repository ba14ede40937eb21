"""What `crosslmm run-batch` buys over the other ways to answer a corpus (issue 37): requests/s of

- **run-batch**: one `crosslmm run-batch` process over the whole file (process start and model
  loading included), and the same answered in this process by a model loaded before timing
  (**run-batch, loaded**: what compares with a server already up);
- **an ask loop**: `crosslmm ask` once per request, as a shell loop would (model and video loaded
  every time; timed on the first ``--ask-requests`` requests only, the rate is per request);
- **serve**: `crosslmm serve` already up, ``--clients`` concurrent clients of the official `openai`
  client sending the same requests (the server's start-up not counted).

The corpus is ``--videos`` videos x ``--questions`` questions, with the tiny checkpoint; the three
alternate round by round (A B C, then C B A, ...). Every method's answers must be equal (greedy).

    python benchmarks/run_batch_speed.py --rounds 2     # writes benchmarks/results/run_batch_speed_cpu.json

Targets: run-batch >= 10x the ask loop and >= 1x the server.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.serve_benchmark import MODEL, Server  # noqa: E402
from crosslmm_cli.synthetic_video import index_frames, write_video  # noqa: E402

CROSSLMM = [sys.executable, "-m", "crosslmm_cli.app"]
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


def corpus(media: Path, videos: int, questions: int, max_tokens: int) -> list[dict]:
    for v in range(videos):
        write_video(media / f"v{v}.mp4", index_frames(40 + v), (128, 96), 25, "libx264", 10)
    return [{"custom_id": f"v{v}-q{q}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": [
                 {"type": "video_url", "video_url": {"url": f"v{v}.mp4"}},
                 {"type": "text", "text": f"Question {q}: what happens in the video?"}]}]}}
            for q in range(questions) for v in range(videos)]


def run_batch(lines: list[dict], checkpoint: Path, media: Path, frames: int, work: Path) -> tuple[float, dict]:
    requests, output = work / "requests.jsonl", work / "out.jsonl"
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    output.unlink(missing_ok=True)
    began = time.perf_counter()
    subprocess.run([*CROSSLMM, "run-batch", "-i", str(requests), "-o", str(output), "--model", str(checkpoint),
                    "--served-model-name", MODEL, "--media-root", str(media), "--frames", str(frames), "--device", "cpu"],
                   check=True, capture_output=True, env=ENV)
    seconds = time.perf_counter() - began
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    return seconds, {row["custom_id"]: row["response"]["body"]["choices"][0]["message"]["content"] for row in rows}


def run_batch_loaded(lines: list[dict], engine, work: Path) -> tuple[float, dict]:
    """run-batch's own loop (crosslmm_cli.run_batch) on an engine loaded before timing."""
    from crosslmm_cli.run_batch import batch_line, run_batch as answer_all

    output = work / "loaded.jsonl"
    output.unlink(missing_ok=True)
    parsed = [batch_line(number, json.dumps(line), {}) for number, line in enumerate(lines, 1)]
    began = time.perf_counter()
    answer_all(engine, parsed, output)
    seconds = time.perf_counter() - began
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    return seconds, {row["custom_id"]: row["response"]["body"]["choices"][0]["message"]["content"] for row in rows}


def ask_loop(lines: list[dict], checkpoint: Path, media: Path, frames: int) -> tuple[float, dict]:
    answers, began = {}, time.perf_counter()
    for line in lines:
        body = line["body"]
        parts = body["messages"][0]["content"]
        done = subprocess.run([*CROSSLMM, "ask", str(media / parts[0]["video_url"]["url"]), parts[1]["text"], "--model",
                               str(checkpoint), "--frames", str(frames), "--max-new-tokens", str(body["max_tokens"]),
                               "--device", "cpu", "--no-stream", "--json"], check=True, capture_output=True, text=True,
                              env=ENV)
        answers[line["custom_id"]] = json.loads(done.stdout)["answer"]
    return time.perf_counter() - began, answers


def served(lines: list[dict], server: Server, frames: int, clients: int) -> tuple[float, dict]:
    def one(line: dict):
        body = line["body"]
        parts = body["messages"][0]["content"]
        reply = server.ask(parts[0]["video_url"]["url"], parts[1]["text"], frames, body["max_tokens"])
        return line["custom_id"], reply.choices[0].message.content

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = dict(pool.map(one, lines))
    return time.perf_counter() - began, answers


def loaded_engine(checkpoint: Path, media: Path, frames: int):
    from crosslmm_cli.ask import AskSettings, prepare_model
    from crosslmm_cli.serve.engine import Engine
    from crosslmm_cli.serve.settings import ServeSettings

    model, processor, _ = prepare_model(AskSettings(model=str(checkpoint), device="cpu"))
    return Engine(model, processor, ServeSettings(model=str(checkpoint), media_root=media, served_model_name=MODEL,
                                                  frames=frames, device="cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--ask-requests", type=int, default=16)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "run_batch_speed_cpu.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        media = work / "media"
        media.mkdir()
        checkpoint = work / "tiny"
        subprocess.run([*CROSSLMM, "init", "tiny", str(checkpoint)], check=True, capture_output=True, env=ENV)
        lines = corpus(media, args.videos, args.questions, args.max_tokens)
        server = Server(checkpoint, media, "cpu", work / "serve.log", "--frames", str(args.frames))
        engine = loaded_engine(checkpoint, media, args.frames)
        seconds = {"run-batch": [], "run-batch, loaded": [], "ask loop": [], "serve": []}
        answers = {}
        methods = {
            "run-batch": lambda: run_batch(lines, checkpoint, media, args.frames, work),
            "run-batch, loaded": lambda: run_batch_loaded(lines, engine, work),
            "ask loop": lambda: ask_loop(lines[:args.ask_requests], checkpoint, media, args.frames),
            "serve": lambda: served(lines, server, args.frames, args.clients),
        }
        try:
            for round_ in range(args.rounds):
                for name in (list(methods) if round_ % 2 == 0 else list(reversed(methods))):
                    took, got = methods[name]()
                    seconds[name].append(took)
                    answers.setdefault(name, got)
                    print(f"round {round_ + 1} {name}: {len(got) / took:.2f} requests/s", flush=True)
        finally:
            server.stop()
            engine.close()
    reference = answers["run-batch"]
    agree = {name: all(reference[key] == text for key, text in got.items()) for name, got in answers.items()}
    counts = {"run-batch": len(lines), "run-batch, loaded": len(lines), "ask loop": min(args.ask_requests, len(lines)),
              "serve": len(lines)}
    rate = {name: round(counts[name] / statistics.median(values), 3) for name, values in seconds.items()}
    report = {
        "corpus": f"{args.videos} videos x {args.questions} questions, {args.frames} frames, {args.max_tokens} new tokens, "
                  "tiny checkpoint",
        "requests_per_s": rate,
        "run_batch_over_ask_loop": round(rate["run-batch"] / rate["ask loop"], 2),
        "run_batch_over_serve": round(rate["run-batch"] / rate["serve"], 2),
        "loaded_run_batch_over_serve": round(rate["run-batch, loaded"] / rate["serve"], 2),
        "answers_equal_to_run_batch": agree,
        "seconds": {name: [round(v, 2) for v in values] for name, values in seconds.items()},
        "notes": "run-batch includes its process start and model loading, 'run-batch, loaded' and the server do not; "
                 "the ask loop starts and loads per request",
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}), {os.cpu_count()} cores",
        "command": "python benchmarks/run_batch_speed.py " + " ".join(sys.argv[1:]),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
