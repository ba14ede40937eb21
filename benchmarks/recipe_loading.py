"""Does a recipe run wait on its data? `crosslmm finetune RECIPE.yaml` over a mixed image + video
recipe in webdataset tar shards, with the tiny model, under two loaders alternated run by run in this
one process (A, B, A, B, ...):

- default: today's defaults (DataLoader workers read the shards, decode and tokenise ahead);
- pre-decoded: every sample of the run already read, decoded and tokenised in memory (the rate the
  data can at best let the model reach), through the same loader.

Each run is `finetune()` itself (stage 2 LoRA, batch 2, 8 frames); its rate is the samples over the
summed step times of metrics.jsonl, the first step (the workers' start) included. Also timed: the
time outside the steps of a short run on a large source (1 M annotation rows, read lazily), and
the time a resumed process takes to place the order again up to sample 900,000.

    python benchmarks/recipe_loading.py --samples 2000 --rounds 2   # writes benchmarks/results/recipe_loading_cpu.json and .png

Target (issue 25): default >= 0.9x pre-decoded.
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
from crosslmm_cli.synthetic_shards import write_image_shards, write_video_shards  # noqa: E402
from crosslmm_cli.training_data.dataset import MixtureDataset  # noqa: E402
from crosslmm_cli.training_data.workers import default_workers  # noqa: E402

FRAMES, BATCH = 8, 2
LOADERS = ("default", "pre-decoded")
SOURCES = [{"path": "images/*.tar", "weight": 1.0, "media": None}, {"path": "videos/*.tar", "weight": 1.0, "media": None}]


def make_corpus(root: Path, samples: int) -> Path:
    per_shard = 100
    shards = max(1, samples // (2 * per_shard))
    write_image_shards(root / "images", shards, per_shard)
    write_video_shards(root / "videos", shards, per_shard, distinct_clips=16)
    recipe = root / "recipe.yaml"
    recipe.write_text("sources:\n  - path: images/*.tar\n  - path: videos/*.tar\n")
    return recipe


def settings(recipe: Path, model: Path, output: Path, steps: int, **more) -> FinetuneSettings:
    return FinetuneSettings(folder=recipe, sources=SOURCES, output=output, model=str(model), frames=FRAMES,
                            batch_size=BATCH, max_steps=steps, save_every=10 * steps, device="cpu", **more)


def run_rate(recipe: Path, model: Path, output: Path, steps: int) -> float:
    finetune(settings(recipe, model, output, steps))
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return steps * BATCH / sum(BATCH / row["samples_per_s"] for row in rows)


class PreDecoded:
    """Every sample of the run made once, before the runs; the workers (forked) find them in memory."""

    def __init__(self, recipe: Path, model: Path, root: Path, steps: int):
        self.items: dict[int, dict] = {}
        self.make = MixtureDataset.__getitem__

        def keep(dataset, sample):
            self.items[sample] = self.make(dataset, sample)
            return self.items[sample]

        MixtureDataset.__getitem__ = keep  # one run that keeps what its loader made (in the main process)
        try:
            finetune(settings(recipe, model, root / "pre-decode", steps, workers=0))
        finally:
            MixtureDataset.__getitem__ = self.make

    def __enter__(self):
        MixtureDataset.__getitem__ = lambda dataset, sample: self.items[sample]

    def __exit__(self, *_):
        MixtureDataset.__getitem__ = self.make


def first_step_seconds(root: Path, model: Path) -> dict:
    """On a 1 M-row annotation source: finetune()'s seconds outside its steps (model load, the order's
    first windows, the final save), and the seconds to place a sample deep in the source."""
    (root / "big").mkdir()
    from crosslmm_cli.synthetic_shards import jpeg

    (root / "big" / "x.jpg").write_bytes(jpeg(0))
    row = '{"image": "x.jpg", "caption": "a caption of some forty characters...."}\n'
    with open(root / "big" / "rows.jsonl", "w") as f:
        for _ in range(1000):
            f.write(row * 1000)
    recipe = root / "big.yaml"
    recipe.write_text("sources:\n  - path: big/rows.jsonl\n")
    sources = [{"path": "big/rows.jsonl", "weight": 1.0, "media": None}]
    began = time.perf_counter()
    run = FinetuneSettings(folder=recipe, sources=sources, output=root / "big-run", model=str(model), frames=1,
                           batch_size=1, max_steps=50, save_every=100, device="cpu", workers=0)
    finetune(run)
    total = time.perf_counter() - began
    rows = [json.loads(line) for line in (root / "big-run" / "metrics.jsonl").read_text().splitlines()]
    timings = {"finetune_s_outside_its_steps": round(total - sum(1 / r["samples_per_s"] for r in rows), 2),
               "finetune_total_s_for_50_steps": round(total)}
    # a process resuming deep into the source places the order again up to there: its shards are counted
    from crosslmm_cli.training_data.order import SampleOrder
    from crosslmm_cli.training_data.sources import open_source

    order = SampleOrder([open_source("big/rows.jsonl", None, root)], [1.0], seed=0)
    began = time.perf_counter()
    order.locate(*order.source_position(900_000))
    timings["placing_sample_900000_in_a_fresh_process_s"] = round(time.perf_counter() - began, 2)
    timings["rows"] = 1_000_000
    timings["file_mb"] = round((root / "big" / "rows.jsonl").stat().st_size / 2**20, 1)
    return timings


def plot(report: dict, png: Path) -> None:
    medians = {name: report["loaders"][name]["median_samples_per_s"] for name in LOADERS}
    rate_bars(medians, ["#55a868", "#c44e52"], "samples/s (median of rounds)",
              f"tiny model, {report['samples']} samples (images + videos in tar shards), {FRAMES} frames, "
              f"{report['cores']} cores", png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "recipe_loading_cpu.json")
    args = parser.parse_args()
    if "OMP_NUM_THREADS" in os.environ:
        sys.exit("unset OMP_NUM_THREADS: the loaders share the cores out themselves")
    quiet_libraries()
    steps = args.samples // BATCH
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        recipe = make_corpus(root, args.samples)
        model, processor = build_tiny()
        save_checkpoint(model, processor, root / "tiny")
        began = time.perf_counter()
        pre_decoded = PreDecoded(recipe, root / "tiny", root, steps)
        print(f"pre-decoded {len(pre_decoded.items)} samples in {time.perf_counter() - began:.0f} s", flush=True)
        runs: dict[str, list[float]] = {name: [] for name in LOADERS}
        for round_ in range(args.rounds):
            for name in LOADERS:  # alternated: A, B, A, B, ...
                output = root / f"{name}-{round_}"
                if name == "pre-decoded":
                    with pre_decoded:
                        rate = run_rate(recipe, root / "tiny", output, steps)
                else:
                    rate = run_rate(recipe, root / "tiny", output, steps)
                runs[name].append(rate)
                print(f"round {round_ + 1}: {name:12s} {rate:6.2f} samples/s", flush=True)
        first_step = first_step_seconds(root, root / "tiny")
    medians = {name: statistics.median(rates) for name, rates in runs.items()}
    report = {
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()})", "cores": os.cpu_count(),
        "torch": torch.__version__, "samples": steps * BATCH, "frames": FRAMES, "batch_size": BATCH,
        "default_workers": default_workers(),
        "command": " ".join(["python", "benchmarks/recipe_loading.py", *sys.argv[1:]]),
        "loaders": {name: {"samples_per_s": [round(r, 3) for r in rates], "median_samples_per_s": round(medians[name], 3)}
                    for name, rates in runs.items()},
        "default_over_pre_decoded": round(medians["default"] / medians["pre-decoded"], 3),
        "per_round_default_over_pre_decoded": [round(d / p, 3) for d, p in zip(runs["default"], runs["pre-decoded"])],
        "large_source": first_step,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.output.with_suffix(".png"))
    print(json.dumps({k: report[k] for k in ("default_over_pre_decoded", "large_source")}))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
