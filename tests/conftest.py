"""Shared fixtures: tiny random models built from configs, and the devices tests run on."""

from __future__ import annotations

import pytest
import torch

from crosslmm import build_tiny
from tests.helpers import open_gates


@pytest.fixture
def tiny():
    """(model, processor) of the tiny preset, float32, eval mode, closed gates."""
    torch.manual_seed(0)
    return build_tiny(seed=0)


@pytest.fixture
def tiny_open():
    """The tiny preset with both gates opened so the cross-attention contributes."""
    model, processor = build_tiny(seed=0)
    open_gates(model, 0.7)
    return model, processor


# Tests that exercise a device take it from this fixture: the CPU always, CUDA where there is one.
# The GPU suite (benchmarks/gpu_suite.py) selects the CUDA cases with `-k on-cuda`.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES, ids=lambda device: f"on-{device}")
def device(request) -> str:
    return request.param
