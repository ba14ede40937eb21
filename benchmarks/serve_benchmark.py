"""`crosslmm serve` benchmark: what encoding a video once and reusing prompt prefixes buys.

1. Time to first token (a 1-token answer, timed by the client) of a first question about a video
   (decode + vision tower + prefill) and of a second, different question about the same video (the
   encoded video and the system-prompt-and-video prefix are reused), at each frame count; first and
   second questions alternate round by round, each round on a fresh copy of the video file.
2. 8 concurrent clients x 4 questions over 2 videos against the caching server, compared with the
   same 32 questions asked one at a time of a server with both caches off: every answer returned and
   equal (greedy); throughput and the video-cache hit rate.

Both servers are the real `crosslmm serve` command, talked to with the official `openai` client.

    python benchmarks/serve_benchmark.py --frames 32,64 --rounds 3   # writes benchmarks/results/serve_<device>.json

Target (issue 14): the second question's time to first token <= 5 % of the first's at >= 32 frames.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from openai import OpenAI  # noqa: E402

from crosslmm_cli.synthetic_video import write_test_pattern  # noqa: E402

MODEL = "bench"  # the name the servers answer to
QUESTIONS = ["What is shown?", "Which colours appear?", "Is anything moving?", "How many shapes are there?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`crosslmm serve` in a child process, up once /health answers."""

    def __init__(self, checkpoint: Path, media: Path, device: str, log: Path, *flags: str):
        self.port = free_port()
        command = [sys.executable, "-m", "crosslmm_cli.app", "serve", "--model", str(checkpoint), "--media-root",
                   str(media), "--port", str(self.port), "--device", device, "--max-queue", "64",
                   "--served-model-name", MODEL, *flags]
        self.log = log.open("w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env=os.environ | {"OMP_WAIT_POLICY": "PASSIVE"})
        deadline = time.monotonic() + 600
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"crosslmm serve exited; see {log}")
            try:
                self.health()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"crosslmm serve did not come up; see {log}")
                time.sleep(0.5)
        self.client = OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none", max_retries=0, timeout=3600)

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
            return json.loads(response.read())

    def ask(self, video: str, question: str, frames: int, max_tokens: int):
        messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video}},
                                                 {"type": "text", "text": question}]}]
        return self.client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens,
                                                   temperature=0, extra_body={"video_sampling": {"frames": frames}})

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        self.log.close()


def timed(call, *args) -> tuple[float, object]:
    began = time.perf_counter()
    result = call(*args)
    return time.perf_counter() - began, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--frames", default="32,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--questions", type=int, default=4, help="questions per client")
    parser.add_argument("--concurrent-frames", type=int, default=32)
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    counts = [int(f) for f in args.frames.split(",")]

    work = Path(tempfile.mkdtemp(prefix="crosslmm-serve-bench-"))
    media, logs = work / "media", work / "logs"
    media.mkdir()
    logs.mkdir()
    checkpoint = work / "checkpoint"
    subprocess.run([sys.executable, "-m", "crosslmm_cli.app", "init", args.preset, str(checkpoint), "--random"],
                   check=True, env=os.environ | {"OMP_WAIT_POLICY": "PASSIVE"})
    for name, seconds in (("one.mp4", 40), ("two.mp4", 30)):
        write_test_pattern(media / name, seconds, (640, 360), 25, 50)
    report = {"preset": args.preset, "device": args.device, "machine": f"{platform.node()} ({platform.processor() or platform.machine()})",
              "cpu_count": os.cpu_count(),
              "command": " ".join(["python", "benchmarks/serve_benchmark.py", *sys.argv[1:]])}

    server = Server(checkpoint, media, args.device, logs / "caching.log")
    try:
        # 1. first vs second question, alternated
        ttft = {}
        server.ask("one.mp4", QUESTIONS[0], counts[0], 1)  # warm-up: imports, allocator, kernels
        for frames in counts:
            rows = []
            for round_ in range(args.rounds):
                copy = f"copy_{frames}_{round_}.mp4"
                shutil.copy(media / "one.mp4", media / copy)
                first, _ = timed(server.ask, copy, QUESTIONS[0], frames, 1)
                second, answer = timed(server.ask, copy, QUESTIONS[1], frames, 1)
                rows.append({"first_s": round(first, 4), "second_s": round(second, 4), "ratio": round(second / first, 4),
                             "second_cached_tokens": answer.usage.prompt_tokens_details.cached_tokens,
                             "prompt_tokens": answer.usage.prompt_tokens,
                             "second_video_cache": answer.model_extra["crosslmm"]["video_cache"]})
                print(f"{frames} frames, round {round_}: first {first:.3f}s, second {second:.3f}s "
                      f"({100 * second / first:.1f} %)", flush=True)
            ratios = [row["ratio"] for row in rows]
            ttft[str(frames)] = {"rounds": rows, "median_first_s": statistics.median(r["first_s"] for r in rows),
                                 "median_second_s": statistics.median(r["second_s"] for r in rows),
                                 "median_ratio": statistics.median(ratios), "max_ratio": max(ratios),
                                 "target_met": max(ratios) <= 0.05}
        report["time_to_first_token"] = ttft

        # 2. concurrent clients against the caching server
        jobs = [(("one.mp4", "two.mp4")[(c + q) % 2], QUESTIONS[q % len(QUESTIONS)])
                for c in range(args.clients) for q in range(args.questions)]
        frames = args.concurrent_frames
        before = server.health()
        per_client = [jobs[c * args.questions:(c + 1) * args.questions] for c in range(args.clients)]

        def client_run(questions):
            return [server.ask(video, text, frames, args.answer_tokens).choices[0].message.content
                    for video, text in questions]

        began = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            together = [answer for answers in pool.map(client_run, per_client) for answer in answers]
        seconds = time.perf_counter() - began
        after = server.health()
    finally:
        server.stop()

    # the reference: the same questions one at a time, no caches
    plain = Server(checkpoint, media, args.device, logs / "uncached.log", "--video-cache-mb", "0", "--prefix-cache-mb", "0")
    try:
        began = time.perf_counter()
        alone = [plain.ask(video, text, frames, args.answer_tokens).choices[0].message.content for video, text in jobs]
        alone_seconds = time.perf_counter() - began
    finally:
        plain.stop()
    hits = after["video_cache_hits"] - before["video_cache_hits"]
    misses = after["video_cache_misses"] - before["video_cache_misses"]
    report["concurrent"] = {
        "clients": args.clients, "questions_per_client": args.questions, "videos": 2, "frames": frames,
        "answer_tokens": args.answer_tokens, "answers_returned": len(together), "answers_expected": len(jobs),
        "equal_to_one_at_a_time_uncached": sum(a == b for a, b in zip(together, alone)),
        "seconds": round(seconds, 2), "requests_per_s": round(len(jobs) / seconds, 3),
        "completion_tokens_per_s": round((after["completion_tokens"] - before["completion_tokens"]) / seconds, 2),
        "video_cache_hit_rate": round(hits / (hits + misses), 4),
        "videos_decoded": after["videos_decoded"] - before["videos_decoded"],
        "videos_encoded": after["videos_encoded"] - before["videos_encoded"],
        "cached_prompt_token_share": round((after["cached_prompt_tokens"] - before["cached_prompt_tokens"])
                                           / (after["prompt_tokens"] - before["prompt_tokens"]), 4),
        "one_at_a_time_uncached_seconds": round(alone_seconds, 2),
    }
    print(json.dumps(report["concurrent"], indent=2))
    output = args.output or HERE / "results" / f"serve_{args.device.split(':')[0]}.json"
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
