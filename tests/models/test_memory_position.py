"""The memory position (a zero-initialised patch and frame-index embedding on the cross-attention
memory) changes nothing until trained, reaches only the cross-attentions, counts each video's frames
from zero, learns, and is saved and loaded with the model."""

from __future__ import annotations

import math

import torch

from crosslmm import load_checkpoint, save_checkpoint
from crosslmm.memory_position import FREQUENCIES
from tests.helpers import question, random_video


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def test_a_new_memory_position_changes_no_output_and_is_saved_with_the_model(tiny_open, tmp_path):
    model, processor = tiny_open
    batch = processor(question(), [random_video(3)])
    before = logits(model, batch)
    model.add_memory_position()
    torch.testing.assert_close(logits(model, batch), before, rtol=0, atol=0)
    with torch.no_grad():
        model.memory_position.patch.normal_()
        model.memory_position.frame.normal_()
    trained = logits(model, batch)
    save_checkpoint(model, processor, tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config.memory_position and loaded.memory_position is not None
    torch.testing.assert_close(logits(loaded, batch), trained, rtol=0, atol=0)


def test_it_reaches_the_cross_attentions_and_not_the_llms_tokens(tiny_open):
    model, processor = tiny_open
    batch = processor(question(), [random_video(3)])
    model.set_cross_attention(v2v=False, t2v=False)
    without = logits(model, batch)
    model.add_memory_position()
    with torch.no_grad():
        model.memory_position.patch.normal_()
    torch.testing.assert_close(logits(model, batch), without, rtol=0, atol=0)  # the pooled tokens are made before it
    model.set_cross_attention(v2v=True, t2v=True)
    opened = logits(model, batch)
    with torch.no_grad():
        model.memory_position.patch.zero_()
    assert (opened - logits(model, batch)).abs().max() > 1e-3


def test_each_video_counts_its_frames_from_zero(tiny):
    """Reference: the sinusoid written out with Python's math, per video, for videos of 2 and 3 frames."""
    model, _ = tiny
    model.add_memory_position()
    position = model.memory_position
    with torch.no_grad():
        position.patch.normal_()
        position.frame.normal_()
    originals = torch.randn(5, position.patch.shape[0], position.patch.shape[1])
    out = position(originals, torch.tensor([2, 3]))
    for row, index in enumerate([0, 1, 0, 1, 2]):
        rates = [math.exp(-math.log(10_000.0) * k / FREQUENCIES) for k in range(FREQUENCIES)]
        features = torch.tensor([math.sin(index * r) for r in rates] + [math.cos(index * r) for r in rates])
        expected = originals[row] + position.patch + features @ position.frame
        torch.testing.assert_close(out[row], expected, rtol=1e-5, atol=1e-5)


def test_gradients_reach_it_through_open_gates(tiny_open):
    model, processor = tiny_open
    model.add_memory_position()
    model.train()
    batch = processor(question(), [random_video(3)])
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert model.memory_position.patch.grad.abs().sum() > 0 and model.memory_position.frame.grad.abs().sum() > 0
