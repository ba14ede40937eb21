"""Gradient checkpointing, reentrant or not, gives the gradients of a plain backward pass: the
original visual tokens reach the checkpointed DCAL layers as a positional tensor, so the projector
and the vision tower keep the cross-attention's gradient; a batch of videos with different frame
counts (padded memory) recomputes exactly what its forward did."""

from __future__ import annotations

import pytest
import torch

from crosslmm import build_tiny
from tests.helpers import open_gates, question, random_video


def gradients(scope: str, reentrant: bool | None, frames: tuple[int, ...]) -> dict[str, torch.Tensor]:
    model, processor = build_tiny(seed=0)
    open_gates(model, 0.7)
    for layer in model.cross_attention_layers():
        layer.cross_attn.v2v_scope = scope
    model.train()
    if reentrant is not None:
        model.checkpoint_activations(use_reentrant=reentrant)
    batch = processor([question()] * len(frames), [random_video(count, seed=count) for count in frames], padding=True)
    model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("frames", [(3,), (1, 3)], ids=["one video", "videos of 1 and 3 frames"])
@pytest.mark.parametrize("scope", ["frame", "video"])
@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpointed_gradients_equal_plain_ones(scope, reentrant, frames):
    plain = gradients(scope, None, frames)
    checkpointed = gradients(scope, reentrant, frames)
    assert any(name.startswith("vision_tower.") for name in plain)
    assert any(name.startswith("multi_modal_projector.") for name in plain)
    assert checkpointed.keys() == plain.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-4, msg=name)
