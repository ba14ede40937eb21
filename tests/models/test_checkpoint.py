"""Save -> load round trips, config knobs, and 4-bit loading (bitsandbytes runs on CPU)."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from torch import nn

from crosslmm import CrossLMMConfig, CrossLMMForConditionalGeneration, load_checkpoint, save_checkpoint
from tests.helpers import question, random_video


@pytest.fixture
def saved(tiny_open, tmp_path):
    model, processor = tiny_open
    save_checkpoint(model, processor, tmp_path)
    return model, processor, tmp_path


def test_round_trip_gives_identical_logits(saved):
    model, processor, path = saved
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in path.iterdir()}
    assert not list(path.glob("*.bin"))  # safetensors only
    loaded, loaded_processor = load_checkpoint(path)
    batch = processor(question(), [random_video(3)])
    assert torch.equal(batch["input_ids"], loaded_processor(question(), [random_video(3)])["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_config_round_trip_keeps_every_knob(tmp_path, tiny):
    model, _ = tiny
    config = model.config
    config.v2v_scope, config.frame_separator, config.t2v = "video", "frame", False
    config.save_pretrained(tmp_path)
    loaded = CrossLMMConfig.from_pretrained(tmp_path)
    for name in ("tokens_per_frame", "pool_mode", "cross_attn_every", "v2v", "t2v", "v2v_scope", "frame_separator",
                 "video_token_id", "needs_training"):
        assert getattr(loaded, name) == getattr(config, name), name
    assert loaded.text_config.hidden_size == config.text_config.hidden_size
    assert loaded.vision_config.patch_size == config.vision_config.patch_size


def test_tokens_per_frame_override_at_load(saved):
    _, _, path = saved
    model, processor = load_checkpoint(path, tokens_per_frame=1)
    assert model.config.tokens_per_frame == 1
    batch = processor(question(), [random_video(3)])
    assert int((batch["input_ids"] == model.config.video_token_id).sum()) == 3 * 1 + 1
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


@pytest.mark.parametrize("bad", [dict(tokens_per_frame=5), dict(pool_mode="max"), dict(v2v_scope="clip"),
                                 dict(frame_separator="line"), dict(cross_attn_every=0), dict(tokens_per_frame=25)])
def test_bad_knobs_are_refused(tiny, bad):
    model, _ = tiny
    with pytest.raises(ValueError):
        CrossLMMConfig(vision_config=model.config.vision_config, text_config=model.config.text_config, **bad)


@pytest.mark.parametrize("mode,linear_class", [("nf4", bnb.nn.Linear4bit), ("int8", bnb.nn.Linear8bitLt)])
def test_quantised_loading_touches_only_the_llm_decoder_linears(saved, mode, linear_class):
    model, processor, path = saved
    quantised, _ = load_checkpoint(path, quantize=mode)
    kinds = {name: type(module) for name, module in quantised.named_modules()}
    decoder = [n for n, k in kinds.items() if n.startswith("language_model.model.layers") and "cross_attn" not in n
               and n.endswith(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))]
    assert decoder and all(kinds[n] is linear_class for n in decoder)
    kept = [n for n, k in kinds.items() if issubclass(k, nn.Linear) and n not in decoder]
    assert any("cross_attn" in n for n in kept) and "language_model.lm_head" in kept
    assert all(kinds[n] is nn.Linear for n in kept), [n for n in kept if kinds[n] is not nn.Linear]
    batch = processor(question(), [random_video(3)])
    with torch.no_grad():
        reference = model(**batch).logits
        logits = quantised(**batch).logits.float()
    assert torch.isfinite(logits).all()
    # quantisation error is small next to the logits' own spread
    assert (logits - reference).abs().mean() < 0.25 * reference.std()


def test_open_gates_survive_the_round_trip(saved):
    model, _, path = saved
    loaded, _ = load_checkpoint(path)
    gates = [layer.cross_attn.t2v.gate.scale.item() for layer in loaded.cross_attention_layers()]
    assert gates == pytest.approx([0.7] * len(gates))
    assert isinstance(loaded, CrossLMMForConditionalGeneration)
