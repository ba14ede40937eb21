"""Resident memory of one process reading a big JSON-list annotation file (LLaVA-Video-178K,
LLaVA-665K, ShareGPT4V and M4-Instruct ship one list), as a loader worker reads it: the old way
(the whole list parsed in the process) against the recipe source's way (the items' byte spans,
found once and memory-mapped, and each item parsed from its own bytes). Each way runs in a fresh
process that reads ``--reads`` items spread over the list; the ways alternate (A B, then B A).

    python benchmarks/json_list_memory.py --rows 1000000   # writes benchmarks/results/json_list_memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# one process's way of reading items; prints its resident memory (MB) after reading them
READER = r"""
import json, sys
from pathlib import Path
from crosslmm_cli.training_data.sources import AnnotationRows  # both ways pay for the import
way, path, index, reads, rows = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def resident_mb():
    status = Path("/proc/self/status").read_text()
    return int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmRSS:"))) / 1024
before = resident_mb()
if way == "whole list":
    items = json.loads(path.read_text(encoding="utf-8-sig"))
    read = [items[n] for n in range(0, rows, rows // reads)]
else:
    source = AnnotationRows(path.name, [path], path.parent)
    source.index_dir = index
    read = [source.read(0, n).fields for n in range(0, rows, rows // reads)]
print(json.dumps({"before_mb": before, "after_mb": resident_mb(), "read": len(read)}))
"""


def write_list(path: Path, rows: int) -> None:
    """LLaVA-style rows: an id, a video, a two-turn conversation (about 170 bytes each)."""
    with open(path, "w") as f:
        f.write("[")
        for n in range(rows):
            row = {"id": f"v{n:07d}", "video": f"videos/{n % 5000:05d}.mp4", "conversations": [
                {"from": "human", "value": "<image>\nWhat happens in this video?"},
                {"from": "gpt", "value": f"Clip {n}: a person walks to the door and opens it."}]}
            f.write(("," if n else "") + json.dumps(row))
        f.write("]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "json_list_memory_cpu.json")
    args = parser.parse_args()
    from crosslmm_cli.training_data.json_list import cached_spans

    with tempfile.TemporaryDirectory() as tmp:
        path, index = Path(tmp) / "annotations.json", Path(tmp) / "index"
        write_list(path, args.rows)
        began = time.perf_counter()
        cached_spans(path, index)  # what the training process does once, before step 1
        index_seconds = time.perf_counter() - began
        runs = []
        for order in (("whole list", "item spans"), ("item spans", "whole list")):
            for way in order:
                done = subprocess.run([sys.executable, "-c", READER, way, str(path), str(index), str(args.reads),
                                       str(args.rows)], capture_output=True, text=True, check=True, cwd=HERE.parent)
                runs.append({"way": way, **json.loads(done.stdout)})
        size_mb = path.stat().st_size / 2**20
    result = {
        "rows": args.rows, "file_mb": round(size_mb, 1), "reads": args.reads,
        "index_seconds": round(index_seconds, 2),
        "resident_mb": {way: sorted(round(r["after_mb"], 1) for r in runs if r["way"] == way)
                        for way in ("whole list", "item spans")},
        "added_by_reading_mb": {way: sorted(round(r["after_mb"] - r["before_mb"], 1) for r in runs if r["way"] == way)
                                for way in ("whole list", "item spans")},
        "machine": platform.platform(), "python": platform.python_version(),
        "command": f"python benchmarks/json_list_memory.py --rows {args.rows} --reads {args.reads}",
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
