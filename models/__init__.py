"""CrossLMM model core: torch + transformers only (no CLI, no printing)."""

from .hub_kernels import keep_hub_kernels_off

keep_hub_kernels_off()  # before transformers imports its models (see hub_kernels.py)

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor
# the module's own class: transformers' top-level name is a placeholder that demands torchvision
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

from .builders import build_preset, build_random, build_random_preset, build_tiny, from_llava_onevision, from_parts, parameter_counts
from .configuration import CrossLMMConfig
from .cross_attention import CrossAttention, CrossAttentionDecoderLayer, DualCrossAttention, TanhGate, VisualMemory
from .generation import AnswerStream, SamplingSettings, stop_token_ids, stream_answer
from .loading import QUANTIZE_MODES, load_checkpoint, load_model, quantization_config, save_checkpoint
from .modeling import CrossLMMForConditionalGeneration
from .presets import PRESETS, Preset, get_preset
from .processing import CrossLMMProcessor
from .video_processing import CrossLMMVideoProcessor

# importing the package makes checkpoints loadable by transformers' Auto classes (never remote code)
AutoConfig.register("crosslmm", CrossLMMConfig, exist_ok=True)
AutoModel.register(CrossLMMConfig, CrossLMMForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(CrossLMMConfig, CrossLMMForConditionalGeneration, exist_ok=True)
AutoProcessor.register(CrossLMMConfig, CrossLMMProcessor, exist_ok=True)
# processors load their video processor through this registry (transformers >= 5.25)
AutoVideoProcessor.register(CrossLMMConfig, CrossLMMVideoProcessor, exist_ok=True)

__all__ = [
    "AnswerStream",
    "PRESETS",
    "QUANTIZE_MODES",
    "CrossAttention",
    "CrossAttentionDecoderLayer",
    "CrossLMMConfig",
    "CrossLMMForConditionalGeneration",
    "CrossLMMProcessor",
    "CrossLMMVideoProcessor",
    "DualCrossAttention",
    "Preset",
    "SamplingSettings",
    "TanhGate",
    "VisualMemory",
    "build_preset",
    "build_random",
    "build_random_preset",
    "build_tiny",
    "from_llava_onevision",
    "from_parts",
    "get_preset",
    "load_checkpoint",
    "load_model",
    "parameter_counts",
    "quantization_config",
    "save_checkpoint",
    "stop_token_ids",
    "stream_answer",
]
