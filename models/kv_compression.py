"""The cross-attention cache stored compressed: the keys and values a video's original tokens give
every cross-attention layer are most of what a long video costs (the floor, see docs/performance.md),
and they are read far more often than they are written.

``int8``: each key or value vector (one head, one token) stored as int8 with its own scale (its
largest magnitude / 127), a float16 number: 1 + 2/head_dim bytes per value instead of 2 (bf16) or 4
(fp32). ``bf16``: stored in bfloat16 (halves an fp32 model's cache; nothing for a bf16 one). Each
layer's keys and values are restored to the model's dtype when a forward reads them. The error is
measured in benchmarks/kv_cache_error.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

KV_CACHE_DTYPES = ("auto", "bf16", "int8")  # auto: the model's own dtype, lossless


@dataclass
class Int8Tensor:
    """A tensor (..., head_dim) as int8 values and one float16 scale per vector."""

    values: torch.Tensor  # int8 (..., head_dim)
    scale: torch.Tensor  # float16 (..., 1)
    dtype: torch.dtype  # what it restores to

    @classmethod
    def of(cls, tensor: torch.Tensor) -> "Int8Tensor":
        scale = tensor.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / 127
        values = torch.round(tensor.float() / scale).clamp(-127, 127).to(torch.int8)
        return cls(values, scale.to(torch.float16), tensor.dtype)

    def restore(self) -> torch.Tensor:
        return (self.values.float() * self.scale.float()).to(self.dtype)

    def apply(self, function: Callable[[torch.Tensor], torch.Tensor]) -> "Int8Tensor":
        """The same layout operation (cat, pad, index, slice) on values and scales alike."""
        return Int8Tensor(function(self.values), function(self.scale), self.dtype)

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.scale.nbytes


def compress(tensor: torch.Tensor, mode: str) -> torch.Tensor | Int8Tensor:
    if mode == "int8":
        return Int8Tensor.of(tensor)
    if mode == "bf16":
        return tensor.to(torch.bfloat16)
    return tensor


def restore(stored: torch.Tensor | Int8Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Keys or values as a forward reads them, in ``dtype``."""
    return stored.restore().to(dtype) if isinstance(stored, Int8Tensor) else stored.to(dtype)


def apply(stored: torch.Tensor | Int8Tensor, function: Callable[[torch.Tensor], torch.Tensor]):
    return stored.apply(function) if isinstance(stored, Int8Tensor) else function(stored)


def cat(parts: list, dim: int = 0):
    """torch.cat of stored keys or values, compressed or not (all alike)."""
    if isinstance(parts[0], Int8Tensor):
        return Int8Tensor(torch.cat([p.values for p in parts], dim), torch.cat([p.scale for p in parts], dim), parts[0].dtype)
    return torch.cat(parts, dim)
