"""`crosslmm bench`: prefill latency, decode speed, memory and FLOPs of CrossLMM against the
full-token baseline (the same backbones fed the LLaVA-OneVision way: 196 tokens per frame, no
cross-attention), on random weights of a preset's real architecture (no download)."""

from __future__ import annotations

import importlib.metadata
import math
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import DynamicCache
from transformers.generation.streamers import BaseStreamer

from crosslmm import PRESETS, CrossLMMForConditionalGeneration
from crosslmm.cache_keyword import cache_argument
from crosslmm.loading import load_model
from crosslmm.flops import full_token_baseline, prefill_flops, prompt_layout

from .ask import synchronize
from .errors import UserError
from .model_source import DTYPES, pick_device

SYSTEMS = ("crosslmm", "baseline")
MEASURED = ("prefill_ms", "prefill_ms_runs", "decode_tokens_per_s", "peak_memory_mb", "activation_memory_mb")
MEMORY_HEADROOM = 0.9  # plan to use at most this share of the free memory


@dataclass
class BenchSettings:
    preset: str | None = None  # default: crosslmm-2b on CUDA, the scaled-down "small" on CPU
    frames: list[int] = field(default_factory=list)  # default: 32,64,128,256 on CUDA, 4,8,16,32 on CPU
    quantize: str = "none"  # nf4 | none
    dtype: str | None = None  # bf16 | fp16 | fp32; bf16 on CUDA, fp32 on CPU
    device: str | None = None
    text_tokens: int = 64  # text tokens around the video in the prompt
    runs: int = 3  # timed prefills per point (median reported)
    warmup: int = 1
    decode_tokens: int = 16
    flops_only: bool = False  # count FLOPs on the meta device only: no weights, no timing

    def __post_init__(self):
        self.device = pick_device(self.device)
        on_cuda = self.device.startswith("cuda")
        self.preset = self.preset or ("crosslmm-2b" if on_cuda else "small")
        if self.preset not in PRESETS:
            raise UserError(f"unknown preset {self.preset!r}; run `crosslmm models` to list the presets")
        self.frames = self.frames or ([32, 64, 128, 256] if on_cuda else [4, 8, 16, 32])
        if any(f < 1 for f in self.frames):
            raise UserError(f"--frames must be positive frame counts, got {self.frames}")
        self.dtype = self.dtype or ("bf16" if on_cuda else "fp32")
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.quantize not in ("nf4", "none"):
            raise UserError(f"--quantize must be nf4 or none, got {self.quantize!r}")
        if self.quantize == "nf4" and self.dtype == "fp32":
            raise UserError("--quantize nf4 computes in bf16 or fp16; drop --dtype fp32")
        if self.runs < 1 or self.warmup < 0 or self.decode_tokens < 1:
            raise UserError("--runs and --decode-tokens must be >= 1 and --warmup >= 0")


def system_config(preset: str, system: str):
    config = PRESETS[preset].reference_config()
    if system == "baseline":
        config = full_token_baseline(config)
        config.cross_attn_every = config.text_config.num_hidden_layers + 1  # no DCAL layers, no DCAL weights
    return config


def build_system(settings: BenchSettings, system: str) -> CrossLMMForConditionalGeneration:
    """Random weights of the preset's architecture, on the device, in the dtype (NF4 through the
    same save -> load path users take)."""
    config = system_config(settings.preset, system)
    dtype = DTYPES[settings.dtype]
    if settings.quantize == "none":
        with torch.device(settings.device):
            model = CrossLMMForConditionalGeneration._from_config(config, dtype=dtype)
        return model.eval()
    with tempfile.TemporaryDirectory() as directory:
        CrossLMMForConditionalGeneration._from_config(config, dtype=dtype).save_pretrained(directory)
        return load_model(directory, quantize="nf4", device=settings.device, dtype=dtype)


# ---- memory -------------------------------------------------------------------------------------
class MemoryMeter:
    """Peak memory of a block: the CUDA allocator on GPU; resident set size on CPU (Linux VmHWM,
    reset through /proc/self/clear_refs)."""

    def __init__(self, device: str):
        self.device = torch.device(device)

    def current_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 2**20
        return _proc_status("VmRSS") / 1024

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return _proc_status("VmHWM") / 1024

    def free_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.mem_get_info(self.device)[0] / 2**20
        return _proc_meminfo("MemAvailable") / 1024


def _proc_status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])  # kB
    raise RuntimeError(f"{key} not in /proc/self/status")


def _proc_meminfo(key: str) -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/meminfo")


# ---- one system, one frame count ----------------------------------------------------------------
def prompt_inputs(model, num_frames: int, text_tokens: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    config = model.config
    length, text_mask, _ = prompt_layout(config, num_frames, text_tokens)
    generator = torch.Generator().manual_seed(num_frames)
    input_ids = torch.randint(0, 256, (1, length), generator=generator)
    input_ids[~text_mask] = config.video_token_id
    size = config.vision_config.image_size
    pixels = torch.randn(1, num_frames, 3, size, size, generator=generator)
    dtype = model.multi_modal_projector.linear_1.weight.dtype
    return input_ids.to(device), pixels.to(device=device, dtype=dtype)


@torch.inference_mode()
def prefill(model, input_ids: torch.Tensor, pixels: torch.Tensor):
    """Vision tower + projector + pooling + LLM prefill (last position's logits)."""
    memory = model.encode_video(pixels, cache_kv=True)
    cache = DynamicCache(config=model.config.text_config)
    logits = model(input_ids=input_ids, visual_memory=memory, **cache_argument(cache), use_cache=True,
                   logits_to_keep=1).logits
    return memory, cache, logits


def timed_prefills(models: dict, num_frames: int, settings: BenchSettings) -> dict[str, list[float]]:
    """Prefill milliseconds of each system, the systems alternated run by run (A, B, A, B, ...) so that
    a noisy machine slows them alike; warm-up prefills first, likewise alternated."""
    device = torch.device(settings.device)
    inputs = {name: prompt_inputs(model, num_frames, settings.text_tokens, device) for name, model in models.items()}
    for _ in range(settings.warmup):
        for name, model in models.items():
            prefill(model, *inputs[name])
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(settings.runs):
        for name, model in models.items():
            synchronize(device)
            began = time.perf_counter()
            outputs = prefill(model, *inputs[name])
            synchronize(device)
            times[name].append((time.perf_counter() - began) * 1000)
            del outputs
    return times


class TokenTimes(BaseStreamer):
    """When each new token was produced (the device synchronised first)."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.prompt_seen = device, [], False

    def put(self, value) -> None:
        if self.prompt_seen:  # the first call carries the prompt
            synchronize(self.device)
            self.times.append(time.perf_counter())
        self.prompt_seen = True

    def end(self) -> None:
        pass


def measure_generation(model, num_frames: int, settings: BenchSettings, meter: MemoryMeter, others_mb: float) -> dict:
    """One generation: its peak memory (prefill dominates; the other systems' weights, resident
    meanwhile, taken out) and its decode speed after the first token."""
    device = torch.device(settings.device)
    input_ids, pixels = prompt_inputs(model, num_frames, settings.text_tokens, device)
    baseline_mb = meter.current_mb()
    meter.reset_peak()
    with torch.inference_mode():
        memory = model.encode_video(pixels)
    stamps = TokenTimes(device)
    model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), visual_memory=memory,
                   max_new_tokens=settings.decode_tokens + 1, min_new_tokens=settings.decode_tokens + 1,
                   do_sample=False, streamer=stamps)
    stamps = stamps.times
    peak = meter.peak_mb()
    del memory
    return {
        "decode_tokens_per_s": round((len(stamps) - 1) / (stamps[-1] - stamps[0]), 2),
        "peak_memory_mb": round(peak - others_mb, 1),
        "activation_memory_mb": round(max(0.0, peak - baseline_mb), 1),
        "llm_positions": int(input_ids.shape[1]),
    }


def weights_mb(model) -> float:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20


def activation_budget(model, settings: BenchSettings, meter: MemoryMeter, probe_frames: tuple[int, int]) -> tuple[float, float]:
    """Activation memory (MB) as a + b·frames, fitted on two small prefills."""
    device = torch.device(settings.device)
    points = []
    for frames in probe_frames:
        input_ids, pixels = prompt_inputs(model, frames, settings.text_tokens, device)
        prefill(model, input_ids, pixels)  # warm the allocator
        before = meter.current_mb()
        meter.reset_peak()
        outputs = prefill(model, input_ids, pixels)
        points.append(max(0.0, meter.peak_mb() - before))
        del outputs
    (f1, m1), (f2, m2) = zip(probe_frames, points)
    slope = max((m2 - m1) / (f2 - f1), 1e-3)
    return m1 - slope * f1, slope


def check_fits(system: str, fit: tuple[float, float], frames: list[int], free_mb: float, device: str) -> None:
    intercept, slope = fit
    budget = free_mb * MEMORY_HEADROOM
    largest = max(0, math.floor((budget - intercept) / slope))
    too_big = [f for f in frames if intercept + slope * f > budget]
    if too_big:
        need = intercept + slope * max(too_big)
        raise UserError(
            f"--frames {max(too_big)} would need about {need / 1024:.1f} GB of activations for {system} on {device} "
            f"({free_mb / 1024:.1f} GB free); the largest frame count that fits is {largest}"
        )


# ---- the whole run ------------------------------------------------------------------------------
def run_bench(settings: BenchSettings, status: Callable[[str], None] = lambda _: None) -> dict:
    """Both systems built, checked to fit and then measured side by side, frame count by frame count."""
    meter = MemoryMeter(settings.device)
    configs = {system: system_config(settings.preset, system) for system in SYSTEMS}
    models = {}
    if not settings.flops_only:
        for system in SYSTEMS:
            status(f"building {system} ({settings.preset}, random weights)")
            models[system] = build_system(settings, system)
        for system, model in models.items():
            status(f"{system}: checking memory")
            fit = activation_budget(model, settings, meter, (1, 2))
            check_fits(system, fit, settings.frames, meter.free_mb(), settings.device)
    sizes = {system: weights_mb(model) for system, model in models.items()}
    rows = {system: [] for system in SYSTEMS}
    for frames in settings.frames:
        status(f"{frames} frames")
        times = timed_prefills(models, frames, settings) if models else {}
        for system in SYSTEMS:
            config = configs[system]
            row = {"system": system, "frames": frames}
            if models:
                row.update(prefill_ms=round(statistics.median(times[system]), 2),
                           prefill_ms_runs=[round(t, 2) for t in times[system]],
                           **measure_generation(models[system], frames, settings, meter,
                                                sum(size for other, size in sizes.items() if other != system)))
            else:
                length, _, _ = prompt_layout(config, frames, settings.text_tokens)
                row.update(dict.fromkeys(MEASURED), llm_positions=length)
            flops = prefill_flops(config, frames, settings.text_tokens)
            row["tflops"] = flops["total"] / 1e12
            row["tflops_breakdown"] = {k: v / 1e12 for k, v in flops.items() if k != "total"}
            row["tokens_per_frame"] = config.tokens_per_frame
            rows[system].append(row)
    results = [row for system in SYSTEMS for row in rows[system]]
    return {
        "preset": settings.preset,
        "device": "meta device (FLOPs only)" if settings.flops_only else describe_device(settings.device),
        "dtype": settings.dtype,
        "quantize": settings.quantize,
        "text_tokens": settings.text_tokens,
        "runs": 0 if settings.flops_only else settings.runs,
        "timing": "prefills of the two systems alternated run by run (A, B, A, B, ...)",
        "versions": versions(),
        "results": results,
        "scaling": scaling(results),
    }


def scaling(results: list[dict]) -> dict:
    """Least-squares slope per added frame of prefill time and activation memory, with R²."""
    summary = {}
    for system in SYSTEMS:
        rows = [r for r in results if r["system"] == system]
        if len(rows) < 2 or rows[0]["prefill_ms"] is None:
            continue
        summary[system] = {
            "prefill_ms_per_frame": _fit([r["frames"] for r in rows], [r["prefill_ms"] for r in rows]),
            "activation_mb_per_frame": _fit([r["frames"] for r in rows], [r["activation_memory_mb"] for r in rows]),
        }
    return summary


def _fit(xs: list[float], ys: list[float]) -> dict:
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    residual = sum((y - (mean_y + slope * (x - mean_x))) ** 2 for x, y in zip(xs, ys))
    total = sum((y - mean_y) ** 2 for y in ys)
    return {"slope": round(slope, 4), "r2": round(1 - residual / total, 4) if total > 0 else 1.0}


def describe_device(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import os

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def versions() -> dict:
    import transformers

    found = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}
    try:  # read from its metadata: importing bitsandbytes costs a quarter of the start-up
        found["bitsandbytes"] = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        pass
    if torch.cuda.is_available():
        found["cuda"] = torch.version.cuda
    return found


def plot(report: dict, path: Path) -> None:
    """A PNG mirroring the paper's Figure 4: memory, TFLOPs and prefill time against frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("activation_memory_mb", "activation memory (MB)"), ("tflops", "prefill TFLOPs"), ("prefill_ms", "prefill (ms)")]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    labels = {"crosslmm": "CrossLMM", "baseline": "full-token baseline (LLaVA-OV style)"}
    for axis, (key, title) in zip(axes, panels):
        for system, marker in zip(SYSTEMS, ("o", "s")):
            rows = [r for r in report["results"] if r["system"] == system and r[key] is not None]
            axis.plot([r["frames"] for r in rows], [r[key] for r in rows], marker=marker, label=labels[system])
        axis.set_title(title)
        axis.set_xlabel("frames")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{report['preset']} on {report['device']} ({report['dtype']}, quantize {report['quantize']})")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
