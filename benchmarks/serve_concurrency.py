"""`crosslmm serve` under concurrent clients: what continuous batching buys.

Two real `crosslmm serve` servers on the same checkpoint: the default (up to ``--max-batch-size 16``
answers generated together) and ``--max-batch-size 1`` (one answer at a time, as the server was
before). At each level of 1, 4 and 16 concurrent clients, ``--requests`` streamed questions over 4
videos (each question distinct, every video encoded before timing starts), through the official
`openai` client (its async client, in one event loop); levels and servers alternate round by round (A B, then B A, ...). Per server and level:
requests/s and generated tokens/s, p50 latency and p50 time to first token (the first content chunk,
timed by the client). Every answer must equal the one-at-a-time server's (greedy).

    python benchmarks/serve_concurrency.py --rounds 2          # writes benchmarks/results/serve_concurrency_<device>.json/.png

Targets (issue 26), on the 2-core CPU with the tiny model: 16 clients >= 3x the throughput of one
client, p50 time to first token <= 4x one client's; on a GPU, 16 clients >= 8x one client with
``--preset crosslmm-ov-0.5b`` (random weights).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from openai import AsyncOpenAI  # noqa: E402

from benchmarks.serve_benchmark import MODEL, Server  # noqa: E402
from crosslmm_cli.synthetic_video import index_frames, write_video  # noqa: E402

VIDEOS = 4


async def stream_one(client: AsyncOpenAI, number: int, frames: int, max_tokens: int) -> dict:
    """One streamed question (the ``number``-th): its answer, tokens, latency and time to first token."""
    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"v{number % VIDEOS}.mp4"}},
                                             {"type": "text", "text": f"Question {number}: what happens next?"}]}]
    began, first, text, tokens = time.perf_counter(), None, [], 0
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"video_sampling": {"frames": frames}})
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text.append(chunk.choices[0].delta.content)
    ended = time.perf_counter()
    return {"number": number, "answer": "".join(text), "tokens": tokens, "latency_s": ended - began,
            "first_token_s": (first or ended) - began}


def run_level(server: Server, clients: int, requests: int, frames: int, max_tokens: int, offset: int) -> dict:
    """``requests`` questions from ``clients`` concurrent clients, each asking its share in turn (one
    asyncio loop with the official async client, as vLLM's serving benchmark drives its server: no
    client threads competing for the interpreter while they time chunks)."""
    numbers = list(range(offset, offset + requests))
    shares = [numbers[i::clients] for i in range(clients)]

    async def run() -> list[dict]:
        async with AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="none", max_retries=0,
                               timeout=3600) as client:
            async def ask_in_turn(share: list[int]) -> list[dict]:
                return [await stream_one(client, number, frames, max_tokens) for number in share]

            return [r for done in await asyncio.gather(*map(ask_in_turn, shares)) for r in done]

    began = time.perf_counter()
    results = asyncio.run(run())
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "requests_per_s": requests / seconds,
            "tokens_per_s": sum(r["tokens"] for r in results) / seconds,
            "p50_latency_s": statistics.median(r["latency_s"] for r in results),
            "p50_first_token_s": statistics.median(r["first_token_s"] for r in results),
            "answers": {r["number"]: r["answer"] for r in results}}


def plot(summary: dict, levels: list[int], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rate, first) = plt.subplots(1, 2, figsize=(10, 4))
    for name, style in (("batched", "o-"), ("one_at_a_time", "s--")):
        rate.plot(levels, [summary[name][str(c)]["tokens_per_s"] for c in levels], style, label=name.replace("_", " "))
        first.plot(levels, [summary[name][str(c)]["p50_first_token_s"] for c in levels], style,
                   label=name.replace("_", " "))
    rate.set(xlabel="concurrent clients", ylabel="generated tokens/s (median of rounds)", xscale="log", xticks=levels)
    first.set(xlabel="concurrent clients", ylabel="p50 time to first token (s)", xscale="log", xticks=levels)
    for axis in (rate, first):
        axis.set_xticklabels(levels)
        axis.legend()
        axis.grid(alpha=0.3)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--requests", type=int, default=64, help="questions per level")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    output = args.output or HERE / "results" / f"serve_concurrency_{args.device.split(':')[0]}.json"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint, media = root / "model", root / "media"
        media.mkdir()
        init = [sys.executable, "-m", "crosslmm_cli.app", "init", args.preset, str(checkpoint)]
        subprocess.run(init + (["--random"] if args.preset != "tiny" else []), check=True, capture_output=True)
        for number in range(VIDEOS):
            write_video(media / f"v{number}.mp4", index_frames(24 + number, 64, 64), (64, 64), 8, "libx264", 4)
        servers = {"batched": Server(checkpoint, media, args.device, root / "batched.log"),
                   "one_at_a_time": Server(checkpoint, media, args.device, root / "single.log", "--max-batch-size", "1")}
        runs: dict = {name: {str(c): [] for c in levels} for name in servers}
        try:
            for server in servers.values():  # every video encoded, every code path warm
                run_level(server, 4, 2 * VIDEOS, args.frames, args.max_tokens, offset=10**6)
            for round_number in range(args.rounds):
                for clients in levels:
                    offset = (round_number * len(levels) + levels.index(clients)) * args.requests
                    pairs = list(servers.items())
                    for name, server in pairs if round_number % 2 == 0 else pairs[::-1]:  # alternated: A B, B A, ...
                        result = run_level(server, clients, args.requests, args.frames, args.max_tokens, offset)
                        runs[name][str(clients)].append(result)
                        print(f"round {round_number} {name:14s} {clients:2d} clients: {result['requests_per_s']:.2f} req/s "
                              f"{result['tokens_per_s']:.1f} tok/s p50 latency {result['p50_latency_s']:.2f}s "
                              f"p50 TTFT {result['p50_first_token_s']:.3f}s", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    reference = {n: a for level in runs["one_at_a_time"].values() for result in level for n, a in result["answers"].items()}
    mismatched = sum(answer != reference[number] for level in runs["batched"].values() for result in level
                     for number, answer in result["answers"].items())
    summary = {name: {level: {key: statistics.median(r[key] for r in results)
                              for key in ("requests_per_s", "tokens_per_s", "p50_latency_s", "p50_first_token_s")}
                      for level, results in by_level.items()} for name, by_level in runs.items()}
    one, most = str(levels[0]), str(levels[-1])
    batched = summary["batched"]
    report = {
        "command": " ".join(["python", "benchmarks/serve_concurrency.py", *sys.argv[1:]]),
        "machine": {"cpu_count": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "device": args.device},
        "preset": args.preset, "frames": args.frames, "max_tokens": args.max_tokens, "requests_per_level": args.requests,
        "rounds": args.rounds, "summary_medians": summary,
        "throughput_ratio": {name: s[most]["tokens_per_s"] / s[one]["tokens_per_s"] for name, s in summary.items()},
        "first_token_ratio": {name: s[most]["p50_first_token_s"] / s[one]["p50_first_token_s"] for name, s in summary.items()},
        "batched_over_one_at_a_time": {level: batched[level]["tokens_per_s"] / summary["one_at_a_time"][level]["tokens_per_s"]
                                       for level in batched},
        "answers_compared": sum(len(r["answers"]) for level in runs["batched"].values() for r in level),
        "answers_differing_from_one_at_a_time": mismatched,
        "rounds_detail": {name: {level: [{k: v for k, v in r.items() if k != "answers"} for r in results]
                                 for level, results in by_level.items()} for name, by_level in runs.items()},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1))
    plot(summary, levels, output.with_suffix(".png"),
         f"crosslmm serve, {args.preset} on {args.device}: {args.requests} streamed questions per level over {VIDEOS} videos, "
         f"{args.frames} frames, max_tokens {args.max_tokens}")
    print(json.dumps({k: report[k] for k in ("throughput_ratio", "first_token_ratio", "batched_over_one_at_a_time",
                                             "answers_compared", "answers_differing_from_one_at_a_time")}, indent=1))


if __name__ == "__main__":
    main()
