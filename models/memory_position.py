"""Where each original token sits, for the cross-attentions that read them.

The memory of V2V and T2V is the projected full-resolution tokens of every frame. Nothing in it says
which patch of its frame a token is, or which frame it came from, beyond what the vision features
happen to carry; T2V reads all frames at once. :class:`MemoryPosition` adds a learned embedding of the
token's patch (one vector per cell of the vision grid) and of its frame's index in the video
(sinusoidal features of the index through a learned linear map) to the memory, before any key/value
projection. Both start at zero, so a model gains it without changing a single output (a converted
LLaVA-OneVision stays exactly itself); training moves it with the cross-attention it serves. The
pooled tokens that enter the LLM are made before it and never see it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

FREQUENCIES = 16  # sinusoidal features of the frame index: 2 x this many


def frame_index_features(index: torch.Tensor, frequencies: int = FREQUENCIES) -> torch.Tensor:
    """index (F,) -> (F, 2 * frequencies): sin and cos of the index at periods from 2π to 2π·10⁴."""
    rates = torch.exp(-math.log(10_000.0) * torch.arange(frequencies, device=index.device) / frequencies)
    angles = index.to(torch.float32)[:, None] * rates[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class MemoryPosition(nn.Module):
    """originals (F, N, D) of videos of ``num_frames`` frames each -> the same plus each token's patch
    embedding and its frame's index embedding. Zero-initialised."""

    def __init__(self, grid: int, width: int):
        super().__init__()
        # plain parameters, made at zero: no random draw, so adding the module leaves a seed's weights as they were
        self.patch = nn.Parameter(torch.zeros(grid * grid, width))
        self.frame = nn.Parameter(torch.zeros(2 * FREQUENCIES, width))  # frame-index features -> width

    def forward(self, originals: torch.Tensor, num_frames: torch.Tensor, first_frame: int = 0) -> torch.Tensor:
        """``first_frame``: the index of the first of one video's frames (a chunk of it)."""
        index = torch.cat([torch.arange(int(count), device=originals.device) for count in num_frames.tolist()])
        index = index + first_frame
        frame = frame_index_features(index).to(self.frame.dtype) @ self.frame  # (F, D)
        return originals + (self.patch[None] + frame[:, None]).to(originals.dtype)
