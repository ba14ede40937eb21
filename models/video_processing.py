"""Frames -> the vision tower's pixels, as a transformers video processor (``AutoVideoProcessor``;
saved as ``video_preprocessor_config.json``). Decoding and frame sampling are the caller's: the
CLI decodes with PyAV (``crosslmm_cli.video``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers.feature_extraction_utils import BatchFeature
from transformers.video_processing_utils import VideoProcessorMixin


class CrossLMMVideoProcessor(VideoProcessorMixin):
    """(T, H, W, 3) uint8 RGB frames -> (T, 3, S, S) float32: resized (bicubic, antialiased) to the
    vision tower's square input, scaled to [0, 1] and normalised with its mean and std."""

    model_input_names = ["pixel_values_videos", "num_frames"]

    def __init__(
        self,
        size: int = 384,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        **kwargs,
    ):
        kwargs.pop("video_processor_type", None)  # written by to_dict, not a setting
        super().__init__(**kwargs)
        self.size = int(size)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]

    def frames_to_pixels(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """One video (T, H, W, 3) uint8 RGB -> (T, 3, S, S) float32."""
        pixels = torch.as_tensor(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
        if pixels.shape[-2:] != (self.size, self.size):
            pixels = F.interpolate(pixels, size=(self.size, self.size), mode="bicubic", antialias=True)
        pixels = pixels.clamp(0, 255) / 255.0
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def preprocess(self, videos, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """A video (T, H, W, 3) or a list of them -> ``pixel_values_videos`` (B, T_max, 3, S, S),
        zero-padded, and ``num_frames`` (B,)."""
        if isinstance(videos, (np.ndarray, torch.Tensor)) and np.ndim(videos) == 4:
            videos = [videos]
        if not videos or any(np.ndim(video) != 4 or np.shape(video)[-1] != 3 for video in videos):
            raise ValueError("videos must be (frames, height, width, 3) RGB arrays, one per prompt")
        batch, num_frames = pad_videos([self.frames_to_pixels(video) for video in videos])
        return BatchFeature({"pixel_values_videos": batch, "num_frames": num_frames}, tensor_type=return_tensors)


def pad_videos(videos: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Videos (T_i, 3, S, S) -> one batch (B, T_max, 3, S, S), zero frames after each video's own,
    and num_frames (B,)."""
    num_frames = torch.tensor([len(video) for video in videos], dtype=torch.long)
    batch = videos[0].new_zeros(len(videos), int(num_frames.max()), *videos[0].shape[1:])
    for row, video in zip(batch, videos):
        row[: len(video)] = video
    return batch, num_frames
