"""Does `crosslmm finetune` wait on data? The first epoch over a folder of short 360p clips with the
tiny model, under three loaders, alternated round by round in this one process (A, B, C, A, B, C, ...):

- before: what the loader did until issue 15, decoding in the training process (`--workers 0`,
  torch on all cores), every video probed before step 1 (that up-front probe was removed; it is
  timed here with the same `probe` and added to the epoch);
- default: today's defaults (decoding in DataLoader workers, ahead of the step);
- pre-decoded: every clip already decoded in memory, the rate the data can at best let the model
  reach; twice: through the default loader, and in the training process (`--workers 0`) with torch
  on one thread (`OMP_NUM_THREADS=1`), the faster for this model on 2 cores. The better of the two
  is the reference.

Each run is `finetune()` itself (stage 2 LoRA, batch 1, 8 frames, one epoch = one step per clip);
its rate is the clips over the summed step times of metrics.jsonl, the first step (the workers'
start) included. Clips: 640x360, 3 s at 30 fps, H.264 with a keyframe each second.

    python benchmarks/data_loading.py --clips 50 --rounds 3   # writes benchmarks/results/data_loading_cpu.json and .png

Targets (issue 15): default >= 3x before, and within 10 % of pre-decoded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from benchmarks.rate_bars import rate_bars  # noqa: E402

from crosslmm import save_checkpoint  # noqa: E402
from crosslmm.builders import build_tiny  # noqa: E402
from crosslmm_cli.app import quiet_libraries  # noqa: E402
from crosslmm_cli.finetune.train import FinetuneSettings, finetune  # noqa: E402
from crosslmm_cli.synthetic_video import moving_pattern_frames, write_video  # noqa: E402
from crosslmm_cli.training_data.dataset import MixtureDataset  # noqa: E402
from crosslmm_cli.training_data.folder import FolderRows  # noqa: E402
from crosslmm_cli.training_data.order import SampleOrder  # noqa: E402
from crosslmm_cli.training_data.workers import default_workers  # noqa: E402
from crosslmm_cli.video import SamplingRequest, probe  # noqa: E402

FRAMES = 8
LOADERS = ("before", "default", "pre-decoded", "pre-decoded, no workers")


def make_folder(root: Path, clips: int) -> Path:
    folder = root / "clips"
    folder.mkdir()
    rows = []
    for i in range(clips):
        write_video(folder / f"c{i:03d}.mp4", moving_pattern_frames(90, 360, 640, seed=i), (640, 360), 30, "libx264", 30)
        rows.append(json.dumps({"video": f"c{i:03d}.mp4", "question": "What moves?", "answer": f"A square, clip {i}."}))
    (folder / "annotations.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def epoch_rate(folder: Path, model: Path, output: Path, clips: int, loader: str) -> tuple[float, float]:
    """(samples/s of the epoch, seconds of the up-front probe) for one run."""
    probe_s = 0.0
    if loader == "before":
        began = time.perf_counter()
        for video in sorted(folder.glob("*.mp4")):
            probe(video)
        probe_s = time.perf_counter() - began
    settings = FinetuneSettings(folder=folder, output=output, model=str(model), frames=FRAMES, max_steps=clips,
                                save_every=10 * clips, device="cpu", workers=None if loader in ("default", "pre-decoded") else 0)
    if loader == "pre-decoded, no workers":
        os.environ["OMP_NUM_THREADS"] = "1"  # read by finetune's share_cores, which then leaves the threads alone
        torch.set_num_threads(1)
    try:
        finetune(settings)
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)
    seconds = sum(1 / row["samples_per_s"] for row in map(json.loads, (output / "metrics.jsonl").read_text().splitlines()))
    return clips / (seconds + probe_s), probe_s


class PreDecoded:
    """Every clip decoded once, before the runs; the workers (forked) find them in memory."""

    def __init__(self, folder: Path, processor):
        source = FolderRows(folder.name, folder)
        source.survey()
        dataset = MixtureDataset(SampleOrder([source], [1.0], seed=0), processor, FRAMES)
        request = SamplingRequest(FRAMES, max_side=2 * processor.image_size)
        self.pixels = {path: dataset.file_frames(path, request) for path in sorted(folder.glob("*.mp4"))}
        self.decode = MixtureDataset.file_frames

    def __enter__(self):
        MixtureDataset.file_frames = lambda dataset, path, request: self.pixels[path]

    def __exit__(self, *_):
        MixtureDataset.file_frames = self.decode


def plot(report: dict, png: Path) -> None:
    medians = {name: report["loaders"][name]["median_samples_per_s"] for name in LOADERS}
    rate_bars(medians, ["#4c72b0", "#55a868", "#c44e52", "#dd8452"], "samples/s, first epoch (median of rounds)",
              f"tiny model, {report['clips']} clips 640x360, {FRAMES} frames, {report['cores']} cores", png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "data_loading_cpu.json")
    args = parser.parse_args()
    if "OMP_NUM_THREADS" in os.environ:
        sys.exit("unset OMP_NUM_THREADS: the loaders differ in how they share the cores out")
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = make_folder(root, args.clips)
        model, processor = build_tiny()
        save_checkpoint(model, processor, root / "tiny")
        pre_decoded = PreDecoded(folder, processor)
        runs: dict[str, list[float]] = {name: [] for name in LOADERS}
        probes = []
        for round_ in range(args.rounds):
            for name in LOADERS:  # alternated: A, B, C, A, B, C, ...
                output = root / f"{name}-{round_}"
                if name.startswith("pre-decoded"):
                    with pre_decoded:
                        rate, _ = epoch_rate(folder, root / "tiny", output, args.clips, name)
                else:
                    rate, probe_s = epoch_rate(folder, root / "tiny", output, args.clips, name)
                    probes += [probe_s] if name == "before" else []
                runs[name].append(rate)
                print(f"round {round_ + 1}: {name:24s} {rate:6.2f} samples/s", flush=True)
    medians = {name: statistics.median(rates) for name, rates in runs.items()}
    best = max(("pre-decoded", "pre-decoded, no workers"), key=medians.get)
    report = {
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()})", "cores": os.cpu_count(),
        "torch": torch.__version__, "clips": args.clips, "frames": FRAMES, "default_workers": default_workers(),
        "command": " ".join(["python", "benchmarks/data_loading.py", *sys.argv[1:]]),
        "up_front_probe_s": probes,
        "loaders": {name: {"samples_per_s": [round(r, 3) for r in rates], "median_samples_per_s": round(medians[name], 3)}
                    for name, rates in runs.items()},
        "default_over_before": round(medians["default"] / medians["before"], 3),
        "pre_decoded_reference": best,
        "default_over_pre_decoded": round(medians["default"] / medians[best], 3),
        "per_round_default_over_pre_decoded": [round(d / p, 3) for d, p in zip(runs["default"], runs[best])],
        "pre_decoded_over_before": round(medians[best] / medians["before"], 3),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.output.with_suffix(".png"))
    print(json.dumps({k: report[k] for k in ("default_over_before", "default_over_pre_decoded", "pre_decoded_over_before")}))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
