"""Host memory per process when full fine-tuning starts on 2 processes: DDP, FSDP2 as
crosslmm_cli/finetune/fsdp.yaml configures it (only rank 0 reads the base: accelerate's
cpu_ram_efficient_loading), and FSDP2 with every process reading the base (the setting before).

The model is a random real-size preset (`crosslmm init crosslmm-ov-0.5b --random`, 914 M parameters,
3.7 GB in float32). Each process records its resident memory once accelerate has prepared the model
(and, for DDP, built its gradient buckets) and its peak so far, then stops: on this 24 GB machine a
full step of DDP (weights, gradients and AdamW state whole in both processes, about 15 GB each)
does not fit. FSDP runs on CPU through tests/fsdp_on_cpu.py, as its tests do.

    python benchmarks/fsdp_memory.py   # writes benchmarks/results/fsdp_memory_cpu.json
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

SETUPS = {
    "DDP": ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "{port}"],
    "FSDP2, rank 0 reads the base (fsdp.yaml)": [
        "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "crosslmm_cli/finetune/fsdp.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", "{port}"],
    "FSDP2, every process reads the base": [
        "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "crosslmm_cli/finetune/fsdp.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", "{port}",
        "--fsdp_cpu_ram_efficient_loading", "false"],
}


def probe() -> None:
    """Run as a training process: `crosslmm finetune`, stopped right after accelerate.prepare."""
    import resource

    import accelerate

    from tests.fsdp_on_cpu import AcceleratorState, fsdp_on_cpu

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        AcceleratorState.__init__ = fsdp_on_cpu
    prepare = accelerate.Accelerator.prepare

    def resident_mb() -> int:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) // 1024

    def prepare_then_report(self, *objects):
        loaded, loaded_peak = resident_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        prepare(self, *objects)
        Path(os.environ["PROBE_OUT"], f"rank{self.process_index}.json").write_text(json.dumps(
            {"rank": self.process_index, "rss_loaded_mb": loaded, "peak_rss_loading_mb": loaded_peak,
             "rss_after_prepare_mb": resident_mb(),
             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
        self.wait_for_everyone()
        os._exit(0)

    accelerate.Accelerator.prepare = prepare_then_report
    from crosslmm_cli.app import main

    main()


def make_folder(root: Path) -> Path:
    from crosslmm_cli.synthetic_video import index_frames, write_video

    folder = root / "data"
    folder.mkdir()
    write_video(folder / "a.mp4", index_frames(8, 64, 64), (64, 64), 8, "libx264", 4)
    (folder / "annotations.jsonl").write_text(json.dumps({"video": "a.mp4", "question": "q?", "answer": "a."}) + "\n")
    return folder


def measure(model: Path, folder: Path, root: Path) -> dict:
    """Each setup's per-process figures (see the module docstring) for one base."""
    from tests.helpers import free_port

    results = {}
    for name, launcher in SETUPS.items():
        out = root / str(len(results))
        out.mkdir(parents=True)
        command = [sys.executable, *[a.format(port=free_port()) for a in launcher], str(HERE / "fsdp_memory.py"),
                   "--probe", "finetune", str(folder), "--output", str(out / "run"), "--model", str(model),
                   "--full", "--frames", "2", "--workers", "0", "--max-steps", "1"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=ROOT,
                              env={**os.environ, "PROBE_OUT": str(out), "OMP_NUM_THREADS": "1",
                                   "PYTHONPATH": str(ROOT)})
        if done.returncode != 0:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
        results[name] = ranks
        print(name, ranks, flush=True)
    return results


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = make_folder(root)
        for dtype in ("fp32", "bf16"):
            model = root / f"ov05b-{dtype}"
            subprocess.run([sys.executable, "-m", "crosslmm_cli.app", "init", "crosslmm-ov-0.5b", str(model), "--random",
                            "--dtype", dtype], check=True, capture_output=True)
            results[f"{dtype} base"] = measure(model, folder, root / dtype)
    report = {
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()})", "cores": os.cpu_count(),
        "model": "crosslmm-ov-0.5b --random, written in fp32 and in bf16 (trained in fp32)", "processes": 2,
        "command": "python benchmarks/fsdp_memory.py",
        "measured": "resident memory (MB) of each process with the base loaded (before accelerate.prepare) and the "
                    "peak until then, then right after prepare and the peak until then",
        "results": results,
    }
    path = HERE / "results" / "fsdp_memory_cpu.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        sys.argv = [sys.argv[0], *sys.argv[2:]]
        probe()
    else:
        main()
