"""Build CrossLMM models: random (from a config), from a LLaVA-OneVision checkpoint, from parts
(vision tower + LLM, as the paper), or by preset name. Every builder returns (model, processor)."""

from __future__ import annotations

import copy
import math

import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from .configuration import CrossLMMConfig
from .cross_attention import CrossAttention, TanhGate
from .modeling import CrossLMMForConditionalGeneration
from .pooling import MultiModalProjector
from .presets import get_preset
from .processing import CrossLMMProcessor, build_byte_tokenizer, ensure_video_token


def build_random(config: CrossLMMConfig, seed: int = 0) -> CrossLMMForConditionalGeneration:
    """A randomly initialised model (float32, CPU), reproducible from ``seed``."""
    torch.manual_seed(seed)
    return CrossLMMForConditionalGeneration(config).eval()


def build_random_preset(name: str, seed: int = 0, **options) -> tuple[CrossLMMForConditionalGeneration, CrossLMMProcessor]:
    """A random-weight preset (``tiny``, ``small``) with the offline byte-level tokenizer."""
    tokenizer = build_byte_tokenizer()
    options["video_token_id"] = ensure_video_token(tokenizer)
    config = get_preset(name).reference_config(**options)
    if len(tokenizer) > config.text_config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, the {name} LLM only {config.text_config.vocab_size}")
    return build_random(config, seed), CrossLMMProcessor.for_model(tokenizer, config)


def build_tiny(seed: int = 0, **options) -> tuple[CrossLMMForConditionalGeneration, CrossLMMProcessor]:
    """The ``tiny`` preset: tests and smoke runs."""
    return build_random_preset("tiny", seed, **options)


INIT_TYPES = (CrossAttention, TanhGate, MultiModalProjector)


def _assemble(config: CrossLMMConfig, state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None):
    """Create the model without allocating its weights, adopt ``state_dict`` tensors as they are,
    and initialise only what the state dict lacks (the DCALs, and for parts the projector)."""
    with init_empty_weights(include_buffers=False):  # buffers (rotary tables) are computed for real
        model = CrossLMMForConditionalGeneration(config)
    result = model.load_state_dict(state_dict, strict=False, assign=True)
    if result.unexpected_keys:
        raise ValueError(f"weights the CrossLMM layout has no place for: {result.unexpected_keys[:5]}")
    missing = {name for name, p in model.named_parameters() if p.is_meta}
    for module in model.modules():
        if any(p.is_meta for p in module.parameters(recurse=False)):
            module.to_empty(device="cpu", recurse=False)
    initialised = set()
    if "video_separator.weight" in missing:  # drawn first, as it always was
        model._init_weights(model.video_separator)
        initialised.add("video_separator.weight")
    for prefix, module in model.named_modules():
        own = {f"{prefix}.{name}" if prefix else name for name, _ in module.named_parameters()}
        if isinstance(module, INIT_TYPES) and own & missing:
            model._init_weights(module)
            initialised |= own
    if missing - initialised:
        raise RuntimeError(f"neither loaded nor initialised: {sorted(missing - initialised)[:5]}")
    if config.text_config.tie_word_embeddings:
        model.language_model.lm_head.weight = model.get_input_embeddings().weight
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def _prefixed(prefix: str, state_dict: dict) -> dict:
    # SigLIP's pooling head is dropped from CrossLMM (vision_use_head=False): skip its weights
    return {prefix + key: value for key, value in state_dict.items() if not key.startswith("head.")}


def from_llava_onevision(
    model_or_id, dtype: torch.dtype | None = None, tokenizer: PreTrainedTokenizerBase | None = None, **options
) -> tuple[CrossLMMForConditionalGeneration, CrossLMMProcessor | None]:
    """A CrossLMM whose SigLIP, projector, separator and Qwen2 come from a LLaVA-OneVision model
    (a ``LlavaOnevisionForConditionalGeneration`` or its hub id); DCALs are new with closed gates,
    so the model answers like the original re-pooled to ``tokens_per_frame``.

    The processor is returned when the tokenizer is known (hub id, or ``tokenizer`` given)."""
    if isinstance(model_or_id, str):
        from transformers import LlavaOnevisionForConditionalGeneration

        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_or_id)
        source = LlavaOnevisionForConditionalGeneration.from_pretrained(model_or_id, dtype=dtype or torch.bfloat16)
    else:
        source = model_or_id
    ov = source.config
    if isinstance(ov.vision_feature_layer, list):
        raise ValueError("LLaVA-OneVision checkpoints with several vision feature layers are not supported")
    settings = dict(
        video_token_id=ov.video_token_index,
        vision_feature_layer=ov.vision_feature_layer,
        vision_feature_select_strategy=ov.vision_feature_select_strategy,
        projector_hidden_act=ov.projector_hidden_act,
        projector_bias=getattr(ov, "multimodal_projector_bias", True),
        frame_separator="video",
        # LLaVA-OneVision pools each frame's grid bilinearly to ceil(grid / 2)² tokens (27x27 -> 196):
        # at that count with its gates closed, the converted model is the original (distillation's teacher)
        native_tokens_per_frame=math.ceil(ov.vision_config.image_size // ov.vision_config.patch_size / 2) ** 2,
        native_pool_mode="bilinear",
    )
    settings.update(options)
    config = CrossLMMConfig(vision_config=ov.vision_config, text_config=ov.text_config, **settings)

    inner = source.model
    language = _prefixed("model.", inner.language_model.state_dict())
    language["lm_head.weight"] = source.lm_head.weight
    state = {
        **_prefixed("vision_tower.", inner.vision_tower.state_dict()),
        **_prefixed("multi_modal_projector.", inner.multi_modal_projector.state_dict()),
        "video_separator.weight": inner.image_newline,
        **_prefixed("language_model.", language),
    }
    model = _assemble(config, {k: v.detach() for k, v in state.items()}, dtype)
    processor = None
    if tokenizer is not None:
        ensure_video_token(tokenizer)
        processor = CrossLMMProcessor.for_model(tokenizer, config)
    return model, processor


def drop_unused_vision_layers(vision_config, state_dict: dict, feature_layer: int) -> tuple[object, dict]:
    """Features taken from an earlier layer (LLaVA's -2) make the layers after it dead weight:
    keep only the layers up to it, so ``vision_feature_layer`` becomes -1 (as LLaVA-OneVision's
    Hugging Face conversion does). Returns the shortened config and state dict."""
    total = vision_config.num_hidden_layers
    kept = total + 1 + feature_layer if feature_layer < 0 else feature_layer
    if not 0 < kept <= total:
        raise ValueError(f"vision_feature_layer {feature_layer} does not exist in a {total}-layer vision tower")
    vision_config = copy.deepcopy(vision_config)
    vision_config.num_hidden_layers = kept
    dropped = tuple(f"encoder.layers.{i}." for i in range(kept, total))
    return vision_config, {k: v for k, v in state_dict.items() if not k.startswith(dropped)}


def from_parts(
    vision_id: str, text_id: str, dtype: torch.dtype | None = torch.bfloat16, **options
) -> tuple[CrossLMMForConditionalGeneration, CrossLMMProcessor]:
    """The paper's recipe: a SigLIP(2) vision tower and an instruct LLM from the hub; the projector,
    separator and DCALs are new, so the model needs Stage I/II training (``needs_training=True``).
    ``vision_feature_layer`` (default -2, LLaVA's choice) picks the vision layer whose output is used;
    the layers after it are dropped."""
    vision_config = AutoConfig.from_pretrained(vision_id)
    vision_config = getattr(vision_config, "vision_config", vision_config)  # a full SigLIP: keep its tower
    vision_class = MODEL_MAPPING[type(vision_config)]
    vision = vision_class.from_pretrained(vision_id, config=vision_config, dtype=dtype)
    vision_config, vision_state = drop_unused_vision_layers(
        vision_config, vision.state_dict(), options.pop("vision_feature_layer", -2)
    )
    language = AutoModelForCausalLM.from_pretrained(text_id, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(text_id)
    video_token_id = ensure_video_token(tokenizer)
    if video_token_id >= language.get_input_embeddings().num_embeddings:
        language.resize_token_embeddings(len(tokenizer))
    config = CrossLMMConfig(
        vision_config=vision_config,
        text_config=language.config,
        video_token_id=video_token_id,
        vision_feature_layer=-1,
        needs_training=True,
        **options,
    )
    state = {
        **_prefixed("vision_tower.", vision_state),
        **_prefixed("language_model.", language.state_dict()),
    }
    return _assemble(config, state, dtype), CrossLMMProcessor.for_model(tokenizer, config)


def build_preset(name: str, dtype: torch.dtype | None = None, **options):
    """Build the named preset (downloads its parts from the hub, except ``tiny``)."""
    preset = get_preset(name)
    options = {**preset.options, **options}
    if preset.source == "random":
        return build_random_preset(name, **options)
    if preset.source == "llava_onevision":
        return from_llava_onevision(preset.llava_id, dtype=dtype, **options)
    options.pop("video_token_id", None)  # decided by the tokenizer
    return from_parts(preset.vision_id, preset.text_id, dtype=dtype or torch.bfloat16, **options)


def parameter_counts(config: CrossLMMConfig) -> dict[str, int]:
    """Parameter counts of the architecture, taken on the meta device (no memory, no download):
    total; Stage I trainable (projector + separator + V2V, as paper §6.1); Stage II (everything)."""
    with torch.device("meta"):
        model = CrossLMMForConditionalGeneration(config)

    def count(modules: list[nn.Module]) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    total = sum(p.numel() for p in model.parameters())
    v2v = count([layer.cross_attn.v2v for layer in model.cross_attention_layers() if layer.cross_attn.v2v is not None])
    t2v = count([layer.cross_attn.t2v for layer in model.cross_attention_layers()])
    projector = count([model.multi_modal_projector]) + model.video_separator.weight.numel()
    return {
        "total": total,
        "vision": count([model.vision_tower]),
        "projector": projector,
        "v2v": v2v,
        "t2v": t2v,
        "stage1": projector + v2v,
        "stage2": total,
    }
