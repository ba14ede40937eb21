"""Test helpers: tiny inputs made on the fly, a free loopback port."""

from __future__ import annotations

import socket

import numpy as np
import torch


def open_gates(model, value: float = 1.0, v2v: bool = True, t2v: bool = True) -> None:
    """Set every DCAL gate parameter (tanh(value) is the gate)."""
    with torch.no_grad():
        for layer in model.cross_attention_layers():
            if v2v and layer.cross_attn.v2v is not None:
                layer.cross_attn.v2v.gate.scale.fill_(value)
            if t2v:
                layer.cross_attn.t2v.gate.scale.fill_(value)


def random_video(frames: int, height: int = 24, width: int = 40, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8 noise."""
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def question(text: str = "What happens in the video?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
