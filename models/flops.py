"""FLOPs of one prefill, counted by torch's FLOP counter on the meta device (no memory, no GPU),
broken down into vision tower, projector, LLM and DCAL; and the full-token baseline config."""

from __future__ import annotations

import copy
import math
import re

import torch
from torch.utils.flop_counter import FlopCounterMode

from .configuration import CrossLMMConfig
from .cross_attention import CrossAttentionInputs, VisualMemory
from .modeling import CrossLMMForConditionalGeneration
from .pooling import pool_frames


def full_token_baseline(config: CrossLMMConfig) -> CrossLMMConfig:
    """The same backbones fed the LLaVA-OneVision way: each frame's grid bilinearly pooled to
    ceil(grid/2)² tokens (196 for 27×27), one separator per video, no cross-attention."""
    baseline = copy.deepcopy(config)
    side = math.ceil(config.vision_grid / 2)
    baseline.tokens_per_frame, baseline.pool_mode, baseline.frame_separator = side * side, "bilinear", "video"
    baseline.v2v = baseline.t2v = False
    return baseline


def prompt_layout(config: CrossLMMConfig, num_frames: int, text_tokens: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """A single-video prompt: half the text before the video, half after. Returns its length L,
    the text mask (1, L) and the pooled-token positions (T, g²)."""
    before = text_tokens // 2
    video = config.video_positions(num_frames)
    length = text_tokens + video
    text_mask = torch.ones(1, length, dtype=torch.bool)
    text_mask[0, before: before + video] = False
    per_frame = config.tokens_per_frame + (1 if config.frame_separator == "frame" else 0)
    starts = before + torch.arange(num_frames) * per_frame
    pooled_positions = starts[:, None] + torch.arange(config.tokens_per_frame)[None]
    return length, text_mask, pooled_positions


def prefill_flops(config: CrossLMMConfig, num_frames: int, text_tokens: int = 64) -> dict[str, float]:
    """FLOPs of encoding ``num_frames`` frames and prefilling a prompt of ``text_tokens`` text tokens
    around them (logits for the last position only, as generation needs): keys ``vision``,
    ``projector``, ``llm`` (decoder, norms and lm_head, DCAL excluded), ``dcal`` and ``total``."""
    with torch.device("meta"):
        model = CrossLMMForConditionalGeneration(config)
    size = config.vision_config.image_size
    pixels = torch.empty(num_frames, 3, size, size, device="meta")
    counts = {}
    with FlopCounterMode(display=False) as counter:
        layer = config.vision_feature_layer
        features = model.vision_tower(pixel_values=pixels, output_hidden_states=layer).hidden_states[layer]
    counts["vision"] = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        originals = model.multi_modal_projector(features)  # (T, N, D)
        pooled = pool_frames(originals, config.vision_grid, config.pooled_grid, config.pool_mode)
    counts["projector"] = counter.get_total_flops()

    memory = VisualMemory(pooled, originals, torch.tensor([num_frames]))
    length, text_mask, pooled_positions = prompt_layout(config, num_frames, text_tokens)
    embeddings = torch.empty(1, length, config.text_config.hidden_size, device="meta")
    with FlopCounterMode(display=False) as counter:
        model.language_model(
            inputs_embeds=embeddings,
            cross_attention=CrossAttentionInputs(memory, text_mask, pooled_positions),
            logits_to_keep=1,
        )
    per_module = counter.get_flop_counts()
    dcal = sum(sum(ops.values()) for name, ops in per_module.items() if re.search(r"\.cross_attn$", name))
    counts["dcal"] = dcal
    counts["llm"] = counter.get_total_flops() - dcal
    counts["total"] = counts["vision"] + counts["projector"] + counts["llm"] + counts["dcal"]
    return {key: float(value) for key, value in counts.items()}
