"""FLOP counts of each part against a count by hand for the tiny config."""

from __future__ import annotations

import pytest

from crosslmm import PRESETS
from crosslmm.flops import full_token_baseline, prefill_flops


def hand_count(config, frames: int, text: int) -> dict[str, int]:
    """Matmul FLOPs (2 per multiply-add) of one prefill; attention counted over the full L×L."""
    vision, text_config = config.vision_config, config.text_config
    width, hidden, mlp = text_config.hidden_size, vision.hidden_size, vision.intermediate_size
    kv_width = text_config.num_key_value_heads * (width // text_config.num_attention_heads)
    patches = config.vision_grid ** 2
    conv = 2 * patches * 3 * vision.patch_size**2 * hidden
    vision_layer = 2 * patches * hidden * hidden * 4 + 2 * 2 * patches * hidden * mlp + 4 * patches**2 * hidden
    counts = {"vision": frames * (conv + vision.num_hidden_layers * vision_layer)}
    counts["projector"] = frames * patches * 2 * (hidden * width + width * width)
    length = text + config.video_positions(frames)
    layer = (2 * 2 * length * width * width + 2 * 2 * length * width * kv_width
             + 3 * 2 * length * width * text_config.intermediate_size + 4 * length**2 * width)
    counts["llm"] = text_config.num_hidden_layers * layer + 2 * width * text_config.vocab_size  # last logits only
    pooled, originals = frames * config.tokens_per_frame, frames * patches
    v2v = 2 * 2 * pooled * width * width + 2 * 2 * originals * width * kv_width + 4 * pooled * patches * width
    t2v = 2 * 2 * text * width * width + 2 * 2 * originals * width * kv_width + 4 * text * originals * width
    # every DCAL layer has T2V; all but the last decoder layer have V2V
    v2v_layers = [i for i in config.cross_attn_layers if i < text_config.num_hidden_layers - 1]
    counts["dcal"] = len(v2v_layers) * (v2v if config.v2v else 0) + len(config.cross_attn_layers) * (t2v if config.t2v else 0)
    return counts


@pytest.mark.parametrize("frames,text", [(1, 8), (3, 10)])
def test_flops_of_each_part_match_the_hand_count(frames, text):
    config = PRESETS["tiny"].reference_config()
    counted = prefill_flops(config, frames, text)
    expected = hand_count(config, frames, text)
    for part in ("vision", "projector", "llm", "dcal"):
        assert counted[part] == expected[part], part
    assert counted["total"] == sum(expected.values())


def test_baseline_has_no_cross_attention_and_196_tokens_per_frame():
    config = PRESETS["crosslmm-2b"].reference_config()
    baseline = full_token_baseline(config)
    assert baseline.tokens_per_frame == 196 and baseline.pool_mode == "bilinear"
    counted = prefill_flops(baseline, 2, 16)
    assert counted["dcal"] == 0


def test_crosslmm_2b_at_256_frames_is_under_a_quarter_of_the_baseline():
    config = PRESETS["crosslmm-2b"].reference_config()
    ours, baseline = prefill_flops(config, 256, 64), prefill_flops(full_token_baseline(config), 256, 64)
    assert ours["total"] <= 0.25 * baseline["total"]
    assert ours["total"] / 1e12 == pytest.approx(178, rel=0.02)
    assert baseline["total"] / 1e12 == pytest.approx(731, rel=0.02)
