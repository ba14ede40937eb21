"""``crosslmm distill``: the teacher pass, cached under ``OUT/teacher``, then the student trained on
it by finetune's own loop (checkpoints, exact resume, any number of processes).

The student is the base at ``tokens_per_frame`` (the preset's 9 by default) training what the teacher
does not use: V2V, T2V, the projector and the memory position (Stage I's parts and the new one),
with the gates opened to tanh(``gate_init``) first; ``lora`` adds LoRA adapters on the LLM. The LLM
and the vision tower stay frozen, so the teacher (the same weights at the native tokens per frame,
cross-attention off; for LoRA, the adapters off) never changes, and its targets are computed once.
These defaults are what the miniature measured (docs/training.md, benchmarks/results/).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint_files import read_config
from ..errors import UserError
from ..finetune.train import FinetuneSettings, finetune, latest_checkpoint
from ..model_source import cache_home, is_checkpoint_dir
from .cache import TargetCache, shard_answers
from .prompts import BUILT_IN_PROMPTS, distill_prompts, read_instructions
from .student import DistillLoss, TeacherTargets
from .teacher_pass import run_teacher_pass

# The teacher's settings: a resume that changes any of them is refused (its targets would mix).
TEACHER_SETTINGS = ("model", "teacher_tokens_per_frame", "teacher_pool_mode", "frames", "top_k", "temperature",
                    "teacher_max_new_tokens", "teacher_temperature", "quantize")


@dataclass
class DistillSettings(FinetuneSettings):
    lora: bool = False
    lr: float | None = 1e-3  # what trains is new (Stage I's rate)
    gate_init: float | None = 0.5
    memory_position: bool = True
    teacher_tokens_per_frame: int | None = None  # None: the base's native count (196 for LLaVA-OneVision)
    teacher_pool_mode: str | None = None  # set from the base's native pooling
    teacher_max_new_tokens: int = 256
    teacher_temperature: float = 0.0  # 0: greedy answers; else sampled, seeded per prompt
    teacher_batch_size: int = 8
    top_k: int = 64
    temperature: float = 2.0  # τ of the KL
    alpha: float = 0.5  # the KL's weight; 1 − α goes to cross-entropy on the teacher's tokens
    prompts: Path | None = None  # instructions replacing the built-in set

    def __post_init__(self):
        if self.stage != 2:
            raise UserError("distill trains the cross-attention's reading (V2V and T2V): it is stage 2 only")
        if self.full or self.train_vision:
            raise UserError("distill keeps the LLM and the vision tower frozen: they are the teacher; use --lora to adapt the LLM")
        if not 0 <= self.alpha <= 1:
            raise UserError(f"--alpha must be in [0, 1], got {self.alpha}")
        if not self.temperature > 0:
            raise UserError(f"--temperature must be > 0, got {self.temperature}")
        if self.top_k < 1:
            raise UserError(f"--top-k must be >= 1, got {self.top_k}")
        if self.teacher_max_new_tokens < 1 or self.teacher_batch_size < 1:
            raise UserError("--teacher-max-new-tokens and --teacher-batch-size must be >= 1")
        if not self.teacher_temperature >= 0:
            raise UserError(f"--teacher-temperature must be >= 0, got {self.teacher_temperature}")
        for flag, count in (("--tokens-per-frame", self.tokens_per_frame), ("--teacher-tokens-per-frame",
                                                                           self.teacher_tokens_per_frame)):
            if count is not None and (count < 1 or math.isqrt(count) ** 2 != count):
                raise UserError(f"{flag} must be a perfect square (1, 4, 9, 16, ...), got {count}")
        super().__post_init__()
        if self.prompts is not None:
            self.prompts = Path(self.prompts)
        self.teacher_tokens_per_frame, self.teacher_pool_mode = teacher_pooling(self)

    def run_settings(self) -> dict:
        values = super().run_settings()
        values["prompts"] = str(self.prompts.resolve()) if self.prompts else None
        return values

    @property
    def cache(self) -> Path:
        return self.output / "teacher"


def teacher_pooling(settings: DistillSettings) -> tuple[int, str | None]:
    """The teacher's tokens per frame and pooling: as given, else what the base was trained to see."""
    from crosslmm.presets import PRESETS

    if settings.model in PRESETS:
        config = PRESETS[settings.model].options
    elif is_checkpoint_dir(settings.model) or is_checkpoint_dir(cache_home() / settings.model):
        config = read_config(Path(settings.model) if is_checkpoint_dir(settings.model) else cache_home() / settings.model)
    else:  # a hub id: its config alone
        from crosslmm.configuration import CrossLMMConfig

        config = CrossLMMConfig.from_pretrained(settings.model).to_dict()
    native = settings.teacher_tokens_per_frame or config.get("native_tokens_per_frame")
    if native is None:
        raise UserError(f"--model {settings.model} does not say how many tokens per frame it was trained to see; give the "
                        "teacher's count with --teacher-tokens-per-frame (196 for LLaVA-OneVision)")
    return native, config.get("native_pool_mode") if settings.teacher_tokens_per_frame is None else settings.teacher_pool_mode


def prompts_digest(prompts) -> str:
    text = json.dumps([[p.media, p.kind, p.prompt] for p in prompts])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def distill(settings: DistillSettings, report: Callable[[str], None] = lambda _: None,
            teacher_progress: Callable[[int, int], Callable[[int], None]] | None = None,
            progress: Callable[[int, int], Callable[[dict], None]] | None = None) -> dict | None:
    """The teacher pass (what is missing of it), then the student's training; the finetune summary
    with the teacher pass's counts (None on processes other than the main one)."""
    from accelerate import PartialState

    instructions = read_instructions(settings.prompts) if settings.prompts else BUILT_IN_PROMPTS
    prompts = distill_prompts(settings.folder, instructions)  # every bad row named before any model is loaded
    state = PartialState(cpu=not settings.device.startswith("cuda"))
    cache = TargetCache(settings.cache, len(prompts))
    teacher = {name: getattr(settings, name) for name in TEACHER_SETTINGS}
    teacher["prompts"] = prompts_digest(prompts)
    if state.is_main_process:
        cache.begin(teacher, settings.resume)
    state.wait_for_everyone()
    if state.num_processes > 1 and settings.device.startswith("cuda"):
        settings.device = str(state.device)
    to_do = sum(len(cache.prompt_range(shard)) for shard in cache.missing())
    tick = teacher_progress(len(prompts), len(prompts) - to_do) if teacher_progress and state.is_main_process else \
        (lambda count: None)
    run_teacher_pass(settings, settings.folder, prompts, cache, state.process_index, state.num_processes, report, tick)
    state.wait_for_everyone()
    left_out = [entry for shard in range(cache.shards) for entry in shard_answers(cache.shard_path(shard))[1]]
    if len(left_out) == len(prompts):
        raise UserError(f"the teacher answered none of the {len(prompts)} prompts (first: {left_out[0]['media']}: "
                        f"{left_out[0]['why']}); check the data")
    if settings.strict and left_out:
        raise UserError(f"{len(left_out)} prompts got no answer (first: {left_out[0]['media']}: {left_out[0]['why']}); "
                        "fix or remove the files, or drop --strict")
    if settings.resume and latest_checkpoint(settings) is None:
        settings.resume = False  # the teacher pass was cut short: the training never began
    summary = finetune(settings, report, progress, loss_of=DistillLoss(cache, settings.alpha, settings.temperature),
                       sources=[TeacherTargets(cache, settings.folder)])
    if summary is not None:
        summary.update(prompts=len(prompts), answered=len(prompts) - len(left_out), left_out=len(left_out))
    return summary
