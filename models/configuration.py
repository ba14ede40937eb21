"""CrossLMM configuration: the vision and text backbone configs plus every CrossLMM knob."""

from __future__ import annotations

import copy
import math

from transformers import AutoConfig, PretrainedConfig

POOL_MODES = ("area", "bilinear")
V2V_SCOPES = ("frame", "video")
FRAME_SEPARATORS = ("none", "frame", "video")


class CrossLMMConfig(PretrainedConfig):
    """Configuration of :class:`CrossLMMForConditionalGeneration`.

    The backbones keep their own Hugging Face configs (``vision_config``, ``text_config``); the
    fields below are CrossLMM's own. Round-trips through ``save_pretrained`` / ``from_pretrained``.
    """

    model_type = "crosslmm"
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        vision_config: dict | PretrainedConfig | None = None,
        text_config: dict | PretrainedConfig | None = None,
        tokens_per_frame: int = 9,  # g², the pooled tokens each frame keeps in the LLM
        native_tokens_per_frame: int | None = None,  # what the weights were trained to see (196 for LLaVA-OneVision) ...
        native_pool_mode: str | None = None,  # ... pooled this way (LLaVA-OneVision: "bilinear")
        pool_mode: str = "area",  # "area": mean over blocks (adaptive); "bilinear": LLaVA-OV interpolate
        cross_attn_every: int = 4,  # K: decoder layers (i+1) % K == 0 carry a dual cross-attention
        v2v: bool = True,  # pooled visual tokens read the original tokens
        t2v: bool = True,  # text tokens read the original tokens
        v2v_scope: str = "frame",  # "frame": each pooled token reads its own frame; "video": all frames
        memory_position: bool = False,  # a learned (zero-initialised) patch and frame-index embedding on the memory
        frame_separator: str = "video",  # "none" | "frame" (one per frame) | "video" (one per video)
        video_token_id: int = 151647,  # the placeholder id the processor expands per LLM video position
        vision_feature_layer: int = -1,  # which hidden_states entry of the vision tower to use
        vision_feature_select_strategy: str = "full",  # "full" | "default" (drop a CLS token)
        projector_hidden_act: str = "gelu",
        projector_bias: bool = True,
        image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        image_std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        needs_training: bool = False,  # True for from-parts models whose projector is still random
        base_checkpoint: str | None = None,  # set in checkpoints that hold only trained tensors: the rest's source
        initializer_range: float = 0.02,
        **kwargs,
    ):
        if isinstance(vision_config, dict):
            vision_config = dict(vision_config)
            vision_config = AutoConfig.for_model(vision_config.pop("model_type", "siglip_vision_model"), **vision_config)
        if isinstance(text_config, dict):
            text_config = dict(text_config)
            text_config = AutoConfig.for_model(text_config.pop("model_type", "qwen2"), **text_config)
        vision_config = copy.deepcopy(vision_config) if vision_config is not None else AutoConfig.for_model("siglip_vision_model")
        if vision_config.model_type == "siglip_vision_model":
            vision_config.vision_use_head = False  # SigLIP's attention-pooling head: unused, 16 M parameters
        self.vision_config = vision_config
        self.text_config = text_config if text_config is not None else AutoConfig.for_model("qwen2")

        self.tokens_per_frame = tokens_per_frame
        self.native_tokens_per_frame = native_tokens_per_frame
        self.native_pool_mode = native_pool_mode
        self.pool_mode = pool_mode
        self.cross_attn_every = cross_attn_every
        self.v2v = v2v
        self.t2v = t2v
        self.v2v_scope = v2v_scope
        self.memory_position = memory_position
        self.frame_separator = frame_separator
        self.video_token_id = video_token_id
        self.vision_feature_layer = vision_feature_layer
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.projector_hidden_act = projector_hidden_act
        self.projector_bias = projector_bias
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.needs_training = needs_training
        self.base_checkpoint = base_checkpoint
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self.validate_crosslmm()

    def validate_crosslmm(self) -> None:
        """Raise ``ValueError`` naming the first CrossLMM knob that is out of range."""
        for name in ("pool_mode", "native_pool_mode"):
            if getattr(self, name) not in (*POOL_MODES, *([None] if name == "native_pool_mode" else [])):
                raise ValueError(f"{name} must be one of {POOL_MODES}, got {getattr(self, name)!r}")
        if self.v2v_scope not in V2V_SCOPES:
            raise ValueError(f"v2v_scope must be one of {V2V_SCOPES}, got {self.v2v_scope!r}")
        if self.frame_separator not in FRAME_SEPARATORS:
            raise ValueError(f"frame_separator must be one of {FRAME_SEPARATORS}, got {self.frame_separator!r}")
        if self.cross_attn_every < 1:
            raise ValueError(f"cross_attn_every must be >= 1, got {self.cross_attn_every}")
        grid = math.isqrt(self.tokens_per_frame)
        if grid * grid != self.tokens_per_frame or grid < 1:
            raise ValueError(f"tokens_per_frame must be a perfect square (1, 4, 9, 16, ...), got {self.tokens_per_frame}")
        if grid > self.vision_grid:
            raise ValueError(
                f"tokens_per_frame={self.tokens_per_frame} needs a {grid}x{grid} grid, but the vision tower "
                f"only gives {self.vision_grid}x{self.vision_grid}"
            )

    @property
    def vision_grid(self) -> int:
        """Side of the vision tower's patch grid (27 for SigLIP-so400m at 384 px)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def pooled_grid(self) -> int:
        """Side g of the pooled grid, tokens_per_frame = g²."""
        return math.isqrt(self.tokens_per_frame)

    @property
    def cross_attn_layers(self) -> list[int]:
        """Indices of the decoder layers that carry a dual cross-attention."""
        every = self.cross_attn_every
        return [i for i in range(self.text_config.num_hidden_layers) if (i + 1) % every == 0]

    def video_positions(self, num_frames: int) -> int:
        """LLM positions one video of ``num_frames`` frames takes (pooled tokens plus separators)."""
        return video_positions(num_frames, self.tokens_per_frame, self.frame_separator)


def video_positions(num_frames: int, tokens_per_frame: int, frame_separator: str) -> int:
    """LLM positions of a video: g² pooled tokens per frame, plus the separators (none for a sample
    without frames: a text-only training row)."""
    separators = {"none": 0, "frame": num_frames, "video": min(num_frames, 1)}[frame_separator]
    return num_frames * tokens_per_frame + separators
