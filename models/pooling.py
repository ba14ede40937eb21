"""The projector (vision width -> LLM width) and the per-frame pooling of its output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .configuration import CrossLMMConfig


class MultiModalProjector(nn.Module):
    """Linear -> GELU -> Linear, named as LLaVA-OneVision's so its weights load unchanged."""

    def __init__(self, config: CrossLMMConfig):
        super().__init__()
        vision_width, text_width = config.vision_config.hidden_size, config.text_config.hidden_size
        self.linear_1 = nn.Linear(vision_width, text_width, bias=config.projector_bias)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(text_width, text_width, bias=config.projector_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(..., Dv) -> (..., D)."""
        return self.linear_2(self.act(self.linear_1(features)))


def pool_frames(tokens: torch.Tensor, grid: int, pooled_grid: int, mode: str) -> torch.Tensor:
    """Pool each frame's ``grid``×``grid`` token map to ``pooled_grid``×``pooled_grid``.

    tokens: (F, grid², D) -> (F, pooled_grid², D), row-major like the input.
    ``area`` averages every input token into exactly one output cell (adaptive blocks when the grid
    does not divide); ``bilinear`` is LLaVA-OneVision's ``F.interpolate`` (no antialiasing).
    """
    frames, length, dim = tokens.shape
    if length != grid * grid:
        raise ValueError(f"expected {grid}x{grid}={grid * grid} tokens per frame, got {length}")
    maps = tokens.view(frames, grid, grid, dim).permute(0, 3, 1, 2)  # (F, D, grid, grid)
    if mode == "area":
        pooled = F.adaptive_avg_pool2d(maps, pooled_grid)
    elif mode == "bilinear":
        pooled = F.interpolate(maps.contiguous(), size=(pooled_grid, pooled_grid), mode="bilinear")
    else:
        raise ValueError(f"unknown pool mode {mode!r}")
    return pooled.permute(0, 2, 3, 1).reshape(frames, pooled_grid * pooled_grid, dim)  # (F, g², D)
