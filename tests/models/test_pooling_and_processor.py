"""Pooling operators, presets' parameter counts, and the processor's prompt layout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from crosslmm import PRESETS, build_random, parameter_counts
from crosslmm.pooling import pool_frames
from crosslmm.processing import VIDEO_TOKEN
from tests.helpers import question, random_video


def test_area_pooling_is_the_block_mean():
    tokens = torch.randn(2, 27 * 27, 8)
    pooled = pool_frames(tokens, 27, 3, "area")  # 9x9 blocks
    grid = tokens.view(2, 27, 27, 8)
    assert pooled.shape == (2, 9, 8)
    torch.testing.assert_close(pooled[:, 0], grid[:, :9, :9].mean(dim=(1, 2)))
    torch.testing.assert_close(pooled[:, 5], grid[:, 9:18, 18:27].mean(dim=(1, 2)))  # row 1, column 2


def test_area_pooling_uses_every_token_when_the_grid_does_not_divide():
    tokens = torch.zeros(1, 27 * 27, 1)
    for index in range(27 * 27):
        tokens[0, index] = 1.0
        assert pool_frames(tokens, 27, 4, "area").abs().sum() > 0, index  # 27 -> 4: adaptive blocks
        tokens[0, index] = 0.0


def test_bilinear_pooling_is_llava_onevisions_interpolate():
    tokens = torch.randn(3, 27 * 27, 5)
    maps = tokens.view(3, 27, 27, 5).permute(0, 3, 1, 2)
    expected = F.interpolate(maps, size=(14, 14), mode="bilinear").permute(0, 2, 3, 1).reshape(3, 196, 5)
    torch.testing.assert_close(pool_frames(tokens, 27, 14, "bilinear"), expected)


def test_one_token_per_frame_is_the_frame_mean():
    tokens = torch.randn(4, 16, 6)
    torch.testing.assert_close(pool_frames(tokens, 4, 1, "area")[:, 0], tokens.mean(1))


def test_parameter_counts_match_a_built_model():
    config = PRESETS["tiny"].reference_config()
    counts = parameter_counts(config)
    model = build_random(config)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    stage1 = sum(p.numel() for p in model.multi_modal_projector.parameters()) + model.video_separator.weight.numel()
    v2v = [layer.cross_attn.v2v for layer in model.cross_attention_layers()]
    assert v2v[-1] is None and all(module is not None for module in v2v[:-1])  # the last decoder layer (3) has none
    stage1 += sum(p.numel() for module in v2v[:-1] for p in module.parameters())
    assert counts["stage1"] == stage1


def test_crosslmm_2b_stage_one_is_the_papers_43m_less_the_last_layers_v2v():
    config = PRESETS["crosslmm-2b"].reference_config()
    counts = parameter_counts(config)
    # projector 4.1 M + 7 DCAL layers x one Qwen2-shaped GQA cross-attention 5.5 M = the paper's 43 M (Table 3);
    # here the 7th, in the last decoder layer (27), has no V2V: its update would reach nothing
    assert config.cross_attn_layers[-1] == config.text_config.num_hidden_layers - 1
    one_v2v = counts["v2v"] / (len(config.cross_attn_layers) - 1)
    assert counts["stage1"] + one_v2v == pytest.approx(43e6, rel=0.02)
    assert counts["total"] == pytest.approx(2.02e9, rel=0.01)


@pytest.mark.parametrize("separator,per_video", [("none", 0), ("frame", 5), ("video", 1)])
def test_processor_expands_the_placeholder(tiny, separator, per_video):
    model, processor = tiny
    processor.frame_separator = separator
    batch = processor(question("hi"), [random_video(5, height=50, width=70)])
    assert int((batch["input_ids"] == processor.video_token_id).sum()) == 5 * 4 + per_video
    assert batch["pixel_values_videos"].shape == (1, 5, 3, 32, 32)
    assert batch["num_frames"].tolist() == [5]
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    assert text.count(VIDEO_TOKEN) == 5 * 4 + per_video


def test_processor_pads_videos_and_text(tiny):
    _, processor = tiny
    batch = processor([question("a"), question("bbbbbbbb")], [random_video(2), random_video(6)])
    assert batch["pixel_values_videos"].shape[:2] == (2, 6)
    assert batch["pixel_values_videos"][0, 2:].abs().sum() == 0
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][1].all()  # left padding


def test_pixels_are_normalised_to_the_vision_range(tiny):
    _, processor = tiny
    white = processor.preprocess_frames(torch.full((1, 10, 10, 3), 255, dtype=torch.uint8).numpy())
    black = processor.preprocess_frames(torch.zeros((1, 10, 10, 3), dtype=torch.uint8).numpy())
    assert math.isclose(white.max().item(), 1.0, abs_tol=1e-5) and math.isclose(black.min().item(), -1.0, abs_tol=1e-5)


def test_a_prompt_without_exactly_one_video_is_refused(tiny):
    _, processor = tiny
    with pytest.raises(ValueError):
        processor([{"role": "user", "content": "no video here"}], [random_video(2)])
