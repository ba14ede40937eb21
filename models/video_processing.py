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

    def sample_to_pixels(self, sample) -> torch.Tensor:
        """One sample's visual input -> (T, 3, S, S): a video as (T, H, W, 3) or channels-first
        (T, 3, H, W) uint8 RGB frames, or a list of images (PIL images or (H, W, 3) arrays, of any
        sizes), taken as the frames of a multi-image sample (one image: a one-frame video)."""
        if isinstance(sample, (list, tuple)):
            if not sample:
                raise ValueError("an image list must hold at least one image")
            return torch.cat([self.frames_to_pixels(image_array(image)[None]) for image in sample])
        if np.ndim(sample) != 4 or 3 not in (np.shape(sample)[-1], np.shape(sample)[1]):
            raise ValueError(f"a video must be (frames, height, width, 3) or (frames, 3, height, width) RGB frames, "
                             f"got shape {tuple(np.shape(sample))}")
        if np.shape(sample)[-1] != 3:  # channels first
            sample = np.asarray(sample).transpose(0, 2, 3, 1) if isinstance(sample, np.ndarray) else sample.permute(0, 2, 3, 1)
        return self.frames_to_pixels(sample)

    def preprocess(self, videos, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """A video, or a list of them (one per prompt; see :meth:`sample_to_pixels`) ->
        ``pixel_values_videos`` (B, T_max, 3, S, S), zero-padded, and ``num_frames`` (B,)."""
        if isinstance(videos, (np.ndarray, torch.Tensor)) and np.ndim(videos) == 4:
            videos = [videos]
        if not videos:
            raise ValueError("no video given")
        batch, num_frames = pad_videos([self.sample_to_pixels(video) for video in videos])
        return BatchFeature({"pixel_values_videos": batch, "num_frames": num_frames}, tensor_type=return_tensors)


def pad_videos(videos: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Videos (T_i, 3, S, S) -> one batch (B, T_max, 3, S, S), zero frames after each video's own,
    and num_frames (B,)."""
    num_frames = torch.tensor([len(video) for video in videos], dtype=torch.long)
    batch = videos[0].new_zeros(len(videos), int(num_frames.max()), *videos[0].shape[1:])
    for row, video in zip(batch, videos):
        row[: len(video)] = video
    return batch, num_frames


def image_array(image) -> np.ndarray:
    """A PIL image, or an (H, W, 3) / (3, H, W) array -> (H, W, 3) uint8 RGB."""
    if hasattr(image, "convert"):  # PIL
        return np.array(image.convert("RGB"))  # a copy: torch takes no read-only arrays
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] != 3 and array.shape[0] == 3:
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"an image must be a PIL image or (height, width, 3) RGB, got shape {array.shape}")
    return array
