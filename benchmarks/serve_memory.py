"""Does `crosslmm serve` keep growing? The real command with the tiny model and small caches
(video cache and prefix cache 16 MB each, so they fill early and then only evict), asked
``--requests`` distinct questions over 4 videos one after another; the server's resident memory
(/proc/PID/status) and its caches' bytes (/health) are sampled every ``--every`` requests.

    python benchmarks/serve_memory.py --requests 2000 --every 200   # writes benchmarks/results/serve_memory_cpu.json

Growth that the caches do not explain, once they are full, is what this looks for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.serve_benchmark import Server  # noqa: E402
from crosslmm_cli.synthetic_video import index_frames, write_video  # noqa: E402


def resident_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "serve_memory_cpu.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint, media = root / "tiny", root / "media"
        media.mkdir()
        subprocess.run([sys.executable, "-m", "crosslmm_cli.app", "init", "tiny", str(checkpoint)], check=True,
                       capture_output=True)
        for number in range(4):
            write_video(media / f"v{number}.mp4", index_frames(24 + number, 64, 64), (64, 64), 8, "libx264", 4)
        server = Server(checkpoint, media, "cpu", root / "serve.log", "--video-cache-mb", "16", "--prefix-cache-mb", "16")
        samples = []
        try:
            for request in range(args.requests + 1):
                if request % args.every == 0:
                    health = server.health()
                    samples.append({"requests": request, "resident_mb": round(resident_mb(server.process.pid), 1),
                                    "video_cache_mb": health["video_cache"]["mb"],
                                    "prefix_cache_mb": health["prefix_cache"]["mb"],
                                    "prefix_entries": health["prefix_cache"]["entries"]})
                    print(samples[-1], flush=True)
                if request < args.requests:
                    server.ask(f"v{request % 4}.mp4", f"Question {request}: what is in frame {request % 24}?", 4, 4)
        finally:
            server.stop()
    first_full = next((s for s in samples if s["prefix_cache_mb"] > 12), samples[1])
    report = {
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()})", "cores": os.cpu_count(),
        "command": " ".join(["python", "benchmarks/serve_memory.py", *sys.argv[1:]]),
        "samples": samples,
        "growth_mb_after_caches_full": round(samples[-1]["resident_mb"] - first_full["resident_mb"], 1),
        "requests_after_caches_full": samples[-1]["requests"] - first_full["requests"],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
