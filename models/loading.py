"""Save and load CrossLMM checkpoints (Hugging Face directories, safetensors only), optionally with
the LLM's decoder linears quantised by bitsandbytes (NF4 or 8-bit)."""

from __future__ import annotations

import copy
import os

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BitsAndBytesConfig

from .configuration import CrossLMMConfig
from .generation import stop_token_ids
from .model_card import write_model_card
from .modeling import CrossLMMForConditionalGeneration, renamed_legacy_keys
from .processing import CrossLMMProcessor

QUANTIZE_MODES = ("nf4", "int8", "none")

# Never quantised: the vision tower, projector, DCALs (gates included), separator, embeddings and
# lm_head. Passing a skip list drops transformers' automatic lm_head skip, so it is listed here.
# Patterns match a module name from its start, as a suffix, or as a regex (transformers' rules).
KEEP_FULL_PRECISION = ["vision_tower", "multi_modal_projector", r".*\.cross_attn", "video_separator", "lm_head"]


def quantization_config(mode: str, compute_dtype: torch.dtype = torch.bfloat16) -> BitsAndBytesConfig | None:
    """NF4 with double quantisation (or LLM.int8) on the LLM decoder linears only; None for "none"."""
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {mode!r}")
    if mode == "none":
        return None
    if mode == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=KEEP_FULL_PRECISION,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=KEEP_FULL_PRECISION)


def saved_quantization(config: CrossLMMConfig) -> str | None:
    """"nf4" or "int8" for a checkpoint saved from a quantised model, else None."""
    saved = getattr(config, "quantization_config", None)
    if saved is None:
        return None
    saved = saved if isinstance(saved, dict) else saved.to_dict()
    return "nf4" if saved.get("load_in_4bit") else "int8"


def _saved_dtype(config: CrossLMMConfig) -> torch.dtype:
    """The dtype a quantised model was saved in (its unquantised parts and the compute dtype)."""
    name = str(getattr(config, "dtype", None) or "bfloat16")
    return getattr(torch, name.removeprefix("torch."))


def save_checkpoint(model: CrossLMMForConditionalGeneration, processor: CrossLMMProcessor, path: str | os.PathLike,
                    max_shard_size: str | int | None = None) -> None:
    """Write ``config.json``, ``generation_config.json``, the safetensors weights (sharded as
    transformers shards them, or at ``max_shard_size``), the processor's files and a model card
    (README.md: how to load it) to ``path``."""
    os.makedirs(path, exist_ok=True)
    stops = sorted(stop_token_ids(processor.tokenizer, model.config))
    model.generation_config.eos_token_id = stops  # so that a plain generate() ends at <|im_end|>
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.save_pretrained(path, **({} if max_shard_size is None else {"max_shard_size": max_shard_size}))
    processor.save_pretrained(path)
    write_model_card(model.config, path)


def load_model(
    path: str | os.PathLike,
    quantize: str = "none",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    **config_overrides,
) -> CrossLMMForConditionalGeneration:
    """Load the model of a checkpoint directory (or hub id) written by :func:`save_checkpoint`.

    ``config_overrides`` replace config fields (e.g. ``tokens_per_frame``: pooling has no weights).
    Quantised models are placed with ``device_map`` (never moved afterwards). Only safetensors
    weights are read; no remote code is run."""
    config = CrossLMMConfig.from_pretrained(path, **config_overrides)
    config.validate_crosslmm()  # an override (e.g. tokens_per_frame) may be out of range
    if config.base_checkpoint is not None:
        return _load_partial(path, config, quantize, device, dtype)
    saved = saved_quantization(config)
    if saved is not None:
        # quantised when saved: transformers applies the saved quantisation, in its compute dtype
        if quantize not in ("none", saved):
            raise ValueError(f"{path} holds weights already quantised as {saved}; load it with quantize={saved!r} or 'none'")
        quant, dtype = None, dtype or _saved_dtype(config)
    else:
        quant = quantization_config(quantize, compute_dtype=dtype or torch.bfloat16)
        if quant is not None and dtype is None:
            dtype = torch.bfloat16
    model = CrossLMMForConditionalGeneration.from_pretrained(
        path,
        dtype=dtype or torch.float32,
        quantization_config=quant,
        device_map={"": str(device)},
        use_safetensors=True,
        config=config,  # read once above, overrides applied
    )
    return model.eval()


PARTIAL_WEIGHTS = "trained.safetensors"


def save_partial_checkpoint(
    model: CrossLMMForConditionalGeneration, processor: CrossLMMProcessor, path: str | os.PathLike,
    names: list[str], base_checkpoint: str,
) -> None:
    """Save only the tensors ``names`` (never quantised ones) and a pointer to the checkpoint that
    holds the rest (a hub id, or a local path, relative to ``path`` as "./…" or "../…" so that both
    can move together); :func:`load_model` puts the two together."""
    os.makedirs(path, exist_ok=True)
    state = model.state_dict()
    save_file({name: state[name].detach().contiguous().cpu() for name in names}, os.path.join(path, PARTIAL_WEIGHTS),
              metadata={"format": "pt"})
    config = copy.deepcopy(model.config)
    config.base_checkpoint = str(base_checkpoint)
    config.save_pretrained(path)
    processor.save_pretrained(path)
    write_model_card(config, path)


def base_location(path: str | os.PathLike, base_checkpoint: str) -> str:
    """Where a trained-only checkpoint's base is: a hub id as it is; a local path ("./…", "../…" or
    absolute) resolved against the checkpoint's own folder, so the two can move together."""
    if base_checkpoint.startswith(("./", "../")):
        return os.path.normpath(os.path.join(path, base_checkpoint))
    return base_checkpoint


def _load_partial(path, config: CrossLMMConfig, quantize: str, device, dtype) -> CrossLMMForConditionalGeneration:
    model = load_model(base_location(path, config.base_checkpoint), quantize=quantize, device=device, dtype=dtype,
                       tokens_per_frame=config.tokens_per_frame)
    if config.memory_position:  # trained on a base that had none: its weights are among the trained tensors
        model.add_memory_position()
    trained = renamed_legacy_keys(load_file(os.path.join(path, PARTIAL_WEIGHTS), device=str(device)))
    state = model.state_dict()
    unknown = sorted(set(trained) - set(state))
    if unknown:
        raise ValueError(f"{path} holds tensors the base model has no place for: {unknown[:3]}")
    model.load_state_dict({k: v.to(state[k].dtype) for k, v in trained.items()}, strict=False)
    model.set_cross_attention(v2v=config.v2v, t2v=config.t2v)
    model.config.needs_training = config.needs_training
    return model.eval()


def unread_model(path: str | os.PathLike, dtype: torch.dtype | None = None, **config_overrides) -> CrossLMMForConditionalGeneration:
    """The model of a checkpoint with its parameters allocated on the CPU but not read (memory never
    written costs no resident memory): for the processes of a sharded run, which receive their
    shards from rank 0. Buffers (rotary tables) are computed, as they are not sent."""
    from accelerate import init_empty_weights

    config = CrossLMMConfig.from_pretrained(path, **config_overrides)
    config.validate_crosslmm()
    with init_empty_weights(include_buffers=False):
        model = CrossLMMForConditionalGeneration(config)
    if dtype is not None:
        model.to(dtype)  # while the parameters are on the meta device, this allocates nothing
    for module in model.modules():
        if any(p.is_meta for p in module.parameters(recurse=False)):
            module.to_empty(device="cpu", recurse=False)
    model.tie_weights()
    return model.eval()


def load_checkpoint(
    path: str | os.PathLike,
    quantize: str = "none",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    read_weights: bool = True,
    **config_overrides,
) -> tuple[CrossLMMForConditionalGeneration, CrossLMMProcessor]:
    """:func:`load_model` (or, without ``read_weights``, :func:`unread_model`) and the checkpoint's
    processor."""
    model = load_model(path, quantize, device, dtype, **config_overrides) if read_weights else unread_model(
        path, dtype, **config_overrides)
    # the tokenizer saved with it; the rest from the model's config (overrides included)
    return model, CrossLMMProcessor.for_model(AutoTokenizer.from_pretrained(path), model.config)
