"""The training run: the paper's two stages on the same model core, driven by accelerate (DDP over
torchrun / ``accelerate launch``, gloo on CPU), with periodic checkpoints and exact resumption. The
data, a training folder or a recipe's sources, is read by crosslmm_cli.training_data."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from crosslmm import save_checkpoint
from crosslmm.loading import save_partial_checkpoint

from ..checkpoint_files import check_training_state, needs_code, read_config
from ..errors import UserError
from ..interrupts import remembered_interrupts
from ..jsonl_files import append_row, read_rows
from ..model_source import cache_home, is_checkpoint_dir, open_model, pick_device
from ..output_paths import refuse_output_over_input
from ..training_data.loader import Mixture, open_sources, report_damage
from ..training_data.workers import default_workers, share_cores
from .sharding import check_sharding, unsharded_model

STAGE_LR = {1: 1e-3, 2: 1e-5}  # paper Table 3 (connector & LLM); the vision tower gets --vision-lr
LLM_LINEARS = r".*language_model\.model\.layers\.\d+\.(self_attn|mlp)\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


# Settings a --resume may change: they alter neither the model, nor the data order, nor the schedule.
RESUME_MAY_CHANGE = ("save_every", "strict", "merge", "resume", "gradient_checkpointing", "device", "workers")


@dataclass
class FinetuneSettings:
    folder: Path  # the data: a training folder, or the recipe file that lists the sources
    output: Path
    model: str = "crosslmm-ov-0.5b"
    stage: int = 2  # 1: projector + V2V (vision tower and LLM frozen, T2V off); 2: end to end, T2V on
    full: bool = False  # stage 2: train all LLM weights instead of LoRA adapters
    train_vision: bool = False  # stage 2: train the vision tower too, at vision_lr
    v2v: bool = True
    t2v: bool = True  # stage 2 only; stage 1 always trains without T2V
    lora: bool = True  # stage 2 without --full: LoRA adapters on the LLM (False: the LLM stays frozen)
    lora_rank: int = 16
    lora_alpha: int = 32
    lr: float | None = None  # default: 1e-3 for stage 1, 1e-5 for stage 2
    vision_lr: float = 2e-6
    batch_size: int = 1
    grad_accum: int = 1
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; overrides epochs (a recipe run needs it)
    warmup_ratio: float = 0.03
    frames: int = 8
    tokens_per_frame: int | None = None
    seed: int = 0
    save_every: int = 100  # optimizer steps between checkpoints
    strict: bool = False  # a damaged file, a bad row or an unusable sample stops the run instead of being skipped
    merge: bool = False  # write full weights even where trained-only + base pointer is smaller
    resume: bool = False
    gradient_checkpointing: bool = True
    quantize: str = "none"  # "nf4": QLoRA, the LLM's decoder linears in 4 bits under LoRA adapters
    gate_init: float | None = None  # set the trained gates' tanh argument first (None: keep them, 0 when new)
    memory_position: bool = False  # give a base without one the (zero-initialised) memory position, and train it
    device: str | None = None
    workers: int | None = None  # DataLoader worker processes decoding ahead (None: one per core, at most 8)
    sources: list[dict] | None = None  # a recipe's sources ({"path", "weight", "media"}); None: the folder
    global_batch: int | None = None  # samples per optimizer step over all processes

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise UserError(f"--stage must be 1 or 2, got {self.stage}")
        if self.stage == 1 and (self.full or self.train_vision):
            raise UserError("--full and --train-vision belong to stage 2; stage 1 trains the projector and V2V only")
        if self.stage == 1 and not self.v2v:
            raise UserError("stage 1 trains the projector and V2V; --no-v2v leaves it only the projector: use stage 2")
        if self.quantize not in ("nf4", "none"):
            raise UserError(f"--quantize must be nf4 or none, got {self.quantize!r}")
        if self.quantize == "nf4" and (self.stage == 1 or self.full or not self.lora):
            raise UserError("--quantize nf4 is QLoRA: stage 2 with LoRA adapters (no --full: 4-bit weights do not train)")
        if self.sources is None and not self.folder.is_dir():
            raise UserError(f"{self.folder} is not a folder; give the folder with the videos and annotations.jsonl "
                            "(or a recipe .yaml)")
        if self.sources is not None and self.max_steps is None:
            raise UserError("a recipe run needs max_steps (in the recipe or as --max-steps): its sources are streamed, "
                            "never counted whole")
        if self.global_batch is not None and self.global_batch < 1:
            raise UserError("--global-batch must be >= 1")
        for name in ("batch_size", "grad_accum", "epochs", "frames", "save_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError("--max-steps must be >= 1")
        if self.workers is not None and self.workers < 0:
            raise UserError(f"--workers must be >= 0 (0 decodes in the training process), got {self.workers}")
        self.lr = self.lr or STAGE_LR[self.stage]
        self.device = pick_device(self.device)
        inputs = {"the data folder" if self.sources is None else "the recipe": self.folder}
        if Path(self.model).exists():
            inputs["--model"] = Path(self.model)
        for name, path in inputs.items():
            refuse_output_over_input(self.output, path, name)

    def run_settings(self) -> dict:
        """What a resumed run must share with the run it continues (see RESUME_MAY_CHANGE)."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in RESUME_MAY_CHANGE}
        values["folder"] = str(self.folder.resolve())
        values["model"] = str(Path(self.model).resolve()) if Path(self.model).exists() else self.model
        values.pop("output")
        values.pop("grad_accum")  # the micro-batches per step follow from the global batch and the processes
        return values

    def fit_global_batch(self, processes: int) -> None:
        """The global batch (default: batch size x accumulation x processes) is what a run keeps when
        resumed on another number of processes; the accumulation follows from it."""
        self.global_batch = self.global_batch or self.batch_size * self.grad_accum * processes
        if self.global_batch % (self.batch_size * processes):
            raise UserError(f"--global-batch {self.global_batch} is not a multiple of --batch-size {self.batch_size} x "
                            f"{processes} processes; choose a batch size and process count that divide it")
        self.grad_accum = self.global_batch // (self.batch_size * processes)

    @property
    def checkpoints(self) -> Path:
        return self.output / "checkpoints"


# ---- what trains ------------------------------------------------------------------------------------
def configure_stage(model, settings: FinetuneSettings):
    """Freeze everything, then open what the stage trains. Returns (model, parameter groups); with
    LoRA the model comes back wrapped by peft."""
    model.requires_grad_(False)
    model.set_cross_attention(v2v=settings.v2v, t2v=settings.t2v and settings.stage == 2)
    if settings.stage == 2 and not settings.full and settings.lora:
        from peft import LoraConfig, get_peft_model

        with warnings.catch_warnings():
            # peft 0.21 reads transformers' old name (is_gradient_checkpointing), deprecated in 5.25
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            model = get_peft_model(model, LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha,
                                                     lora_dropout=0.05, target_modules=LLM_LINEARS))
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    new_parts = [core.multi_modal_projector]
    for layer in core.cross_attention_layers():
        if settings.v2v and layer.cross_attn.v2v is not None:  # the last layer has none
            new_parts.append(layer.cross_attn.v2v)
        if settings.t2v and settings.stage == 2:
            new_parts.append(layer.cross_attn.t2v)
    for part in new_parts:
        part.requires_grad_(True)
    if settings.gate_init is not None:
        # closed gates keep a pretrained LLM intact at step 0; a model trained from scratch learns
        # faster with them open (a closed gate gives its attention no consistent gradient to start from)
        with torch.no_grad():
            for part in new_parts[1:]:
                part.gate.scale.fill_(settings.gate_init)
    core.video_separator.requires_grad_(True)
    if core.memory_position is not None:  # where each original token sits: learned with the cross-attentions
        core.memory_position.requires_grad_(True)
    if settings.stage == 2 and settings.full:
        core.language_model.requires_grad_(True)
        core.get_input_embeddings().requires_grad_(False)  # embeddings stay (tied lm_head included)
        if not settings.t2v:
            for layer in core.cross_attention_layers():
                layer.cross_attn.t2v.requires_grad_(False)
    for layer in core.cross_attention_layers():
        for part in (layer.cross_attn.v2v, layer.cross_attn.t2v):
            if part is not None and part.k_proj.bias is not None:
                part.k_proj.bias.requires_grad_(False)  # cancelled by the softmax (see the vision tower's below)
    groups = [{"params": [p for n, p in model.named_parameters() if p.requires_grad and "vision_tower" not in n],
               "lr": settings.lr}]
    if settings.train_vision:
        core.vision_tower.requires_grad_(True)
        for unused in vision_parts_after_the_features(core):  # they never get a gradient
            unused.requires_grad_(False)
        for name, p in core.vision_tower.named_parameters():
            # a key bias without position encoding adds one constant to every score of a query, which the
            # softmax cancels: its gradient is zero but for rounding, which Adam would blow up to lr-sized steps
            if name.endswith("self_attn.k_proj.bias"):
                p.requires_grad_(False)
        groups.append({"params": [p for p in core.vision_tower.parameters() if p.requires_grad], "lr": settings.vision_lr})
    return model, groups


def vision_parts_after_the_features(core) -> list[torch.nn.Module]:
    """The vision tower's modules that run after the layer whose output the model reads
    (``vision_feature_layer``): the final norm, the pooling head, and any encoder layer past it."""
    tower = core.vision_tower
    after = [getattr(tower, name) for name in ("post_layernorm", "head") if getattr(tower, name, None) is not None]
    layers = tower.encoder.layers if hasattr(tower, "encoder") else tower.vision_model.encoder.layers
    feature_layer = core.config.vision_feature_layer  # an index into hidden_states: the embeddings, then each layer
    used = feature_layer if feature_layer >= 0 else len(layers) + 1 + feature_layer
    return after + list(layers[used:])


def trained_tensor_names(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def keep_only(trained: set[str]) -> Callable:
    """An accelerate save-state hook: checkpoints hold the trained tensors (LoRA adapters, DCALs,
    projector, ...) with the optimizer state, not the frozen weights, which the base already holds."""

    def hook(models, weights: list[dict], output_dir) -> None:
        for index, state in enumerate(weights):
            weights[index] = {name: tensor for name, tensor in state.items() if name.removeprefix("module.") in trained}

    return hook


# ---- checkpoints ------------------------------------------------------------------------------------
CHECKPOINT_NAME = re.compile(r"step-(\d+)")
TRAINER_STATE = "trainer_state.json"  # written last, before the folder gets its step-N name


def complete_checkpoints(settings: FinetuneSettings) -> list[Path]:
    """The finished checkpoints, oldest first; a save cut short by an interrupt never has a step-N
    name, and other folders (say a ``step-backup`` made by hand) are not checkpoints."""
    found = [path for path in settings.checkpoints.glob("step-*")
             if CHECKPOINT_NAME.fullmatch(path.name) and (path / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda path: int(CHECKPOINT_NAME.fullmatch(path.name).group(1)))


def latest_checkpoint(settings: FinetuneSettings) -> Path | None:
    found = complete_checkpoints(settings)
    return found[-1] if found else None


def launched_as(accelerator) -> dict:
    """How the run is spread: sharded (FSDP) and whole (DDP) checkpoints do not read each other. The
    number of processes may change (the data order does not depend on it)."""
    from accelerate.utils import DistributedType

    return {"fsdp": accelerator.distributed_type == DistributedType.FSDP}


def saved_settings(checkpoint: Path) -> dict:
    """The run settings ``checkpoint`` was saved with."""
    return json.loads((checkpoint / TRAINER_STATE).read_text()).get("settings", {})


def check_resumable(checkpoint: Path, settings: FinetuneSettings, launch: dict) -> dict:
    """The trainer state of ``checkpoint``; :class:`UserError` when this run's settings differ from
    the ones it was saved with in a way that would change the model, the data order or the schedule,
    or when it is launched differently (see launched_as)."""
    state = json.loads((checkpoint / TRAINER_STATE).read_text())
    saved, now = state.get("settings", {}), settings.run_settings()
    if saved.get("global_batch") is None:  # a folder run of crosslmm before its folders became a source
        raise UserError(f"--resume: the run in {settings.output} was saved by an earlier crosslmm, which read a training "
                        "folder in another order; finish it with that version, or start a new --output")
    changed = [name for name in saved if name in now and saved[name] != now[name]]
    if changed:
        differences = "; ".join(f"--{n.replace('_', '-')} was {saved[n]!r}, now {now[n]!r}" for n in changed)
        allowed = ", ".join(f"--{n.replace('_', '-')}" for n in RESUME_MAY_CHANGE if n != "resume")
        raise UserError(f"--resume with other settings than the run in {settings.output} ({differences}); resume with "
                        f"the run's own settings (only {allowed} may change) or start a new --output")
    saved_launch = {key: value for key, value in state.get("launch", launch).items() if key in launch}
    if saved_launch != launch:
        def spread(how: dict) -> str:
            return "sharded (FSDP)" if how["fsdp"] else "whole copies (one process or DDP)"

        raise UserError(f"--resume: the run in {settings.output} was launched as {spread(saved_launch)}, this one as "
                        f"{spread(launch)}; launch it as it was, or start a new --output")
    return state


def resolve_base(spec: str, output: Path) -> str:
    """Where the weights not saved by a trained-only checkpoint live, as the output records it: a
    local base by its path relative to the output ("../base"), so moving both together keeps it; a
    preset built into the cache by its absolute path; a hub id as it is."""
    if is_checkpoint_dir(spec):
        relative = os.path.relpath(Path(spec).resolve(), output.resolve())
        return relative if relative.startswith("..") else f"./{relative}"
    if is_checkpoint_dir(cache_home() / spec):
        return str((cache_home() / spec).resolve())
    return spec


def weights_dtype(spec: str) -> torch.dtype:
    """The dtype of a checkpoint's weights (its config's), so that outputs keep it; float32 if unknown."""
    folder = Path(spec) if is_checkpoint_dir(spec) else cache_home() / spec
    if not is_checkpoint_dir(folder):
        return torch.float32
    name = read_config(folder).get("dtype") or "float32"
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(str(name), torch.float32)


def merge_into_full_precision(model, settings: FinetuneSettings):
    """QLoRA: a full-precision copy of the base with the LoRA deltas added to its weights and the
    other trained tensors (DCALs, projector, ...) copied in; 4-bit weights are never re-quantised."""
    from peft.tuners.lora import LoraLayer

    full, _ = open_model(settings.model, device="cpu", quantize="none", dtype=torch.float32,
                         tokens_per_frame=settings.tokens_per_frame)
    prefix = "base_model.model."
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer):
                target = full.get_submodule(name.removeprefix(prefix))
                target.weight += module.get_delta_weight("default").float().cpu()
        trained = {name.removeprefix(prefix): p for name, p in model.named_parameters()
                   if p.requires_grad and "lora_" not in name}
        full.load_state_dict({k: v.detach().float().cpu() for k, v in trained.items()}, strict=False)
    full.set_cross_attention(v2v=model.config.v2v, t2v=model.config.t2v)
    return full


def save_final(model, processor, settings: FinetuneSettings, trained: list[str]) -> str:
    """Trained-only + base pointer when no LLM weight was trained (stage 1, or stage 2 without LoRA),
    unless --merge; else full weights (LoRA merged in). Returns which was written."""
    if settings.quantize == "nf4":
        core = merge_into_full_precision(model, settings)
    else:
        core = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    core.config.needs_training = False
    core.to(weights_dtype(settings.model))  # trained in float32, written in the base's dtype
    trains_llm = settings.stage == 2 and (settings.full or settings.lora)
    if not trains_llm and not settings.merge:  # no quantisable weight trained
        save_partial_checkpoint(core, processor, settings.output, trained, resolve_base(settings.model, settings.output))
        return "trained tensors + base pointer"
    save_checkpoint(core, processor, settings.output)
    return "full weights"


def plot_loss(metrics_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(metrics_path)
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss (answer tokens)")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)


# ---- the run ----------------------------------------------------------------------------------------
def answer_loss(model, batch: dict, samples: list[tuple[int, str]]) -> torch.Tensor:
    """Cross-entropy on the answer tokens: the labels' (finetune's loss)."""
    return model(**batch).loss


def finetune(settings: FinetuneSettings, report: Callable[[str], None] = lambda _: None,
             progress: Callable[[int, int], Callable[[dict], None]] | None = None,
             loss_of: Callable[..., torch.Tensor] = answer_loss, sources: list | None = None) -> dict | None:
    """Train as ``settings`` say; ``loss_of(model, micro-batch, its (number, name) samples)`` is the
    loss (distillation gives its own), ``sources`` the data when the caller opened it (distillation's
    teacher targets), else the settings' folder or recipe."""
    from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
    from accelerate.utils import gather_object, set_seed
    from transformers import get_cosine_schedule_with_warmup

    on_cuda = settings.device.startswith("cuda")
    last_checkpoint = latest_checkpoint(settings)
    if settings.resume and settings.global_batch is None and last_checkpoint is not None:
        settings.global_batch = saved_settings(last_checkpoint).get("global_batch")  # what the run kept
    settings.fit_global_batch(PartialState(cpu=not on_cuda).num_processes)
    accelerator = Accelerator(
        gradient_accumulation_steps=settings.grad_accum, mixed_precision="bf16" if on_cuda else "no", cpu=not on_cuda,
        step_scheduler_with_optimizer=False,
        # configure_stage trains only what every forward reaches (a stage's unused parts stay frozen),
        # so DDP need not search the graph for unused parameters after each backward
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    sharded = check_sharding(accelerator, settings.full)  # before any slow work
    set_seed(settings.seed)
    if settings.resume and last_checkpoint is None:
        raise UserError(f"--resume: {settings.checkpoints} holds no checkpoint to resume from")
    if not settings.resume and last_checkpoint is not None:
        raise UserError(f"{settings.output} already holds a training run; pass --resume to continue it, or choose another --output")
    launch = launched_as(accelerator)
    resumed_state = check_resumable(last_checkpoint, settings, launch) if settings.resume else None
    if resumed_state is not None:
        check_training_state(last_checkpoint)
    if sources is not None:  # opened by the caller
        specs = [{"path": source.spec, "weight": 1.0, "media": None} for source in sources]
    elif settings.sources is None:  # a training folder: one source, whose size is known
        specs = [{"path": str(settings.folder), "weight": 1.0, "media": None}]
        sources = open_sources(specs, Path.cwd(), settings.output)
    else:
        specs = settings.sources
        sources = open_sources(specs, settings.folder.resolve().parent, settings.output)
    damaged = report_damage(sources, settings.strict, report if accelerator.is_main_process else lambda _: None)
    # a folder's rows (or the teacher's targets): an epoch; a recipe's sources are never counted whole
    rows = sum(sources[0].count(shard) for shard in range(len(sources[0].shards))) if settings.sources is None else None
    total_steps = settings.max_steps or math.ceil(rows * settings.epochs / settings.global_batch)

    workers = default_workers() if settings.workers is None else settings.workers
    if not on_cuda:
        share_cores(workers)
    quantized = settings.quantize == "nf4"
    # sharded with accelerate's cpu_ram_efficient_loading (fsdp.yaml): only rank 0 reads the base, the
    # others allocate it unread and get their shards from rank 0 when accelerate prepares the model
    receives_weights = sharded and accelerator.state.fsdp_plugin.cpu_ram_efficient_loading and not accelerator.is_main_process
    model, processor = open_model(settings.model, device=settings.device if quantized else "cpu",
                                  quantize=settings.quantize, dtype=torch.bfloat16 if quantized else torch.float32,
                                  tokens_per_frame=settings.tokens_per_frame, read_weights=not receives_weights)
    if settings.memory_position:
        model.add_memory_position()
    model.train()
    if settings.gradient_checkpointing:
        model.checkpoint_activations(use_reentrant=False)
    model, groups = configure_stage(model, settings)
    trained = trained_tensor_names(model)
    trained_parameters = sum(p.numel() for g in groups for p in g["params"])

    mixture = Mixture(sources, [s["weight"] for s in specs], processor, settings, workers, on_cuda,
                      accelerator.process_index, accelerator.num_processes)
    mixture.check()  # every source yields a sample, before step 1
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(settings.warmup_ratio * total_steps), total_steps)
    # the loader is the mixture's own: each process reads the samples of its place in each step
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    accelerator.register_save_state_pre_hook(keep_only(set(trained)))

    step = 0
    if resumed_state is not None:
        load_training_state(accelerator, last_checkpoint)
        step = resumed_state["step"]
        # accelerate restores its count of micro-batches and syncs gradients when the count is a
        # multiple of the accumulation: counted with this run's accumulation from the step resumed at
        # (the saved count is the old run's, which another number of processes accumulates differently)
        accelerator.step = step * settings.grad_accum
        report(f"resuming from {last_checkpoint.name} (step {step})")
    settings.output.mkdir(parents=True, exist_ok=True)
    metrics_path, samples_path = settings.output / "metrics.jsonl", settings.output / "samples.jsonl"
    if accelerator.is_main_process:  # keep the rows up to the step resumed from (an interrupt may have written
        # more, and a crash half a line)
        for path in (metrics_path, samples_path):
            kept = [row for row in read_rows(path) if settings.resume and row["step"] <= step]
            path.write_text("".join(json.dumps(row) + "\n" for row in kept))
    tick = progress(total_steps, step) if progress and accelerator.is_main_process else (lambda row: None)

    began, window_samples, losses, step_samples = time.perf_counter(), 0, [], []
    with remembered_interrupts() as interrupts:  # a Ctrl-C dropped by a finaliser is raised at the next batch
        for batch in mixture.batches(step, total_steps):
            interrupts.check()
            batch, samples = mixture.take(batch, report, accelerator.device)
            step_samples += gather_object(samples)
            stand_in = batch.pop("stand_in", 0)  # a row that learns nothing (see visual_stand_in)
            with interrupts.deferred(), accelerator.accumulate(model):  # Ctrl-C waits for the step's end
                loss = loss_of(model, batch, samples)
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients:
                    # the optimizer's parameters: under FSDP they are the shards that replaced the model's
                    trained_shards = [p for g in optimizer.param_groups for p in g["params"]]
                    grad_norm = accelerator.clip_grad_norm_(trained_shards, 1.0)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()  # once per optimizer step, on any number of processes
                optimizer.zero_grad()
            losses.append(accelerator.gather(loss.detach()[None]).mean().item())
            window_samples += (len(batch["input_ids"]) - stand_in) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            elapsed = time.perf_counter() - began
            row = {"step": step + 1, "epoch": step * settings.global_batch // rows if rows else None,
                   "loss": sum(losses) / len(losses), "lr": scheduler.get_last_lr()[0],
                   "grad_norm": float(grad_norm) if grad_norm is not None else None,
                   "samples_per_s": window_samples / elapsed if elapsed > 0 else 0.0}
            step += 1
            losses, window_samples, began = [], 0, time.perf_counter()
            if accelerator.is_main_process:
                append_row(metrics_path, row)
                append_row(samples_path, {"step": step, "samples": [name for _, name in sorted(step_samples)]})
            step_samples = []
            tick(row)
            if step % settings.save_every == 0 or step == total_steps:
                save_state(accelerator, settings, launch, step)

    accelerator.wait_for_everyone()
    skipped, text_only = mixture.skipped_counts(gather_object), mixture.text_only_counts(gather_object)
    gathered = accelerator.get_state_dict(model) if sharded else None  # every process sends its shards
    written = None
    if accelerator.is_main_process:
        plot_loss(metrics_path, settings.output / "loss.png")
        trained_model = unsharded_model(gathered, settings) if sharded else accelerator.unwrap_model(model)
        written = save_final(trained_model, processor, settings, trained)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    for number, spec in enumerate(specs):
        named = f"source {number} ({spec['path']})"
        if skipped[number]:
            report(f"{named}: {skipped[number]} unusable samples skipped")
        if text_only[number]:
            report(f"{named}: {text_only[number]} text-only samples trained (no image or video)")
        files, bad_rows = damaged.get(number, (0, 0))
        if files:
            report(f"{named}: {files} missing or damaged files (listed before step 1)")
        if bad_rows:
            report(f"{named}: {bad_rows} bad rows left out (listed before step 1)")
    return {"steps": step, "samples": step * settings.global_batch,
            "skipped": sum(skipped.values()) + sum(bad for _, bad in damaged.values()),
            "saved": written, "trained_parameters": trained_parameters}


def load_training_state(accelerator, checkpoint: Path) -> None:
    """accelerate's state from ``checkpoint`` (the trained tensors; the rest is the base's); a file
    torch's weights-only unpickler refuses (it would have to run code) is a :class:`UserError`."""
    import pickle

    try:
        accelerator.load_state(str(checkpoint), strict=False)
    except pickle.UnpicklingError as error:
        raise needs_code(checkpoint, error) from None


def save_state(accelerator, settings: FinetuneSettings, launch: dict, step: int) -> None:
    """accelerate's training state (trained tensors, optimizer, scheduler, RNG), the step and the
    run's settings, written under a temporary name and renamed when complete (an interrupt mid-save
    leaves the previous checkpoints as they were); the two newest are kept."""
    final = settings.checkpoints / f"step-{step:06d}"
    partial = settings.checkpoints / f".partial-step-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # what an earlier interrupted save left
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "settings": settings.run_settings(), "launch": launch}
        (partial / TRAINER_STATE).write_text(json.dumps(state, indent=1))
        shutil.rmtree(final, ignore_errors=True)  # a step saved again after resuming from an earlier one
        partial.rename(final)
        for old in complete_checkpoints(settings)[:-2]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
