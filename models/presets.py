"""Named presets: where each model's parts come from and its real-size architecture.

``reference_config`` builds the architecture from the sizes recorded here, with no download, so
parameter counts and FLOPs of real-size models can be taken on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import Qwen2Config, SiglipVisionConfig

from .configuration import CrossLMMConfig

# SigLIP(2)-so400m-patch14-384 without its last layer: features come from the second-to-last layer
# (LLaVA's choice), so the last one is dropped (LLaVA-OneVision's Hugging Face checkpoints do the same)
SIGLIP_SO400M = dict(
    hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
    image_size=384, patch_size=14,
)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    source: str  # "random" | "llava_onevision" | "parts"
    vision: dict  # SigLIP vision config fields (real size)
    text: dict  # Qwen2 config fields (real size)
    options: dict = field(default_factory=dict)  # CrossLMM knobs
    llava_id: str | None = None  # hub id of the LLaVA-OneVision checkpoint
    vision_id: str | None = None  # hub id of the vision tower (from parts)
    text_id: str | None = None  # hub id of the LLM (from parts)

    @property
    def needs_training(self) -> bool:
        """From-parts models have a random projector and answer nothing useful before training."""
        return self.source == "parts"

    def reference_config(self, **overrides) -> CrossLMMConfig:
        options = {**self.options, **overrides}
        return CrossLMMConfig(
            vision_config=SiglipVisionConfig(**self.vision),
            text_config=Qwen2Config(**self.text),
            needs_training=self.needs_training,
            **options,
        )


TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
TINY_TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=272, max_position_embeddings=4096, tie_word_embeddings=False,
)

# <video> in the offline byte-level tokenizer (256 bytes, <|endoftext|>, <|im_end|>, <|im_start|>, <video>)
BYTE_VIDEO_TOKEN_ID = 259

SMALL_VISION = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                    image_size=384, patch_size=14)
SMALL_TEXT = dict(
    hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
    vocab_size=272, max_position_embeddings=131072, tie_word_embeddings=False,
)

# what LLaVA-OneVision was trained to see: 27x27 patches pooled bilinearly to 14x14 (its teacher in distillation)
OV_NATIVE = dict(native_tokens_per_frame=196, native_pool_mode="bilinear")

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in [
        Preset(
            "tiny",
            "random weights, 4x4 patch grid, 4-layer LLM: tests and smoke runs, works offline",
            "random",
            TINY_VISION,
            TINY_TEXT,
            dict(tokens_per_frame=4, cross_attn_every=2, frame_separator="video", video_token_id=BYTE_VIDEO_TOKEN_ID),
        ),
        Preset(
            "small",
            "random weights, the real token geometry (384 px, 27x27 patches) on narrow backbones: CPU benchmarks",
            "random",
            SMALL_VISION,
            SMALL_TEXT,
            dict(tokens_per_frame=9, cross_attn_every=4, frame_separator="video", video_token_id=BYTE_VIDEO_TOKEN_ID),
        ),
        Preset(
            "crosslmm-ov-0.5b",
            "LLaVA-OneVision-0.5B re-pooled to 9 tokens/frame, DCALs added with closed gates",
            "llava_onevision",
            SIGLIP_SO400M,
            dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=152000, tie_word_embeddings=True),
            dict(tokens_per_frame=9, cross_attn_every=4, frame_separator="video", video_token_id=151647, **OV_NATIVE),
            llava_id="llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        ),
        Preset(
            "crosslmm-ov-7b",
            "LLaVA-OneVision-7B re-pooled to 9 tokens/frame, DCALs added with closed gates",
            "llava_onevision",
            SIGLIP_SO400M,
            dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, vocab_size=152128, tie_word_embeddings=False),
            dict(tokens_per_frame=9, cross_attn_every=4, frame_separator="video", video_token_id=151647, **OV_NATIVE),
            llava_id="llava-hf/llava-onevision-qwen2-7b-ov-hf",
        ),
        Preset(
            "crosslmm-2b",
            "the paper's CrossLMM-2B: SigLIP2-so400m + Qwen2.5-1.5B-Instruct (needs Stage I/II training)",
            "parts",
            SIGLIP_SO400M,
            dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
            dict(tokens_per_frame=9, cross_attn_every=4, frame_separator="video", video_token_id=151665),
            vision_id="google/siglip2-so400m-patch14-384",
            text_id="Qwen/Qwen2.5-1.5B-Instruct",
        ),
        Preset(
            "crosslmm-7b",
            "the paper's CrossLMM-7B: SigLIP2-so400m + Qwen2.5-7B-Instruct (needs Stage I/II training)",
            "parts",
            SIGLIP_SO400M,
            dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
            dict(tokens_per_frame=9, cross_attn_every=4, frame_separator="video", video_token_id=151665),
            vision_id="google/siglip2-so400m-patch14-384",
            text_id="Qwen/Qwen2.5-7B-Instruct",
        ),
    ]
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ``KeyError`` listing the known names otherwise."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]
