"""The builders load real checkpoints through the same code path users take (hub ids are local
directories here: a tiny SigLIP, a tiny Qwen2 and a tiny LLaVA-OneVision saved to disk)."""

from __future__ import annotations

import torch
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from crosslmm import from_llava_onevision, from_parts, load_checkpoint, save_checkpoint
from crosslmm.processing import VIDEO_TOKEN, build_byte_tokenizer
from tests.helpers import question, random_video

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)


def text_config(vocab_size: int) -> Qwen2Config:
    return Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=vocab_size, tie_word_embeddings=False)


def test_from_parts_loads_vision_and_llm_weights(tmp_path):
    torch.manual_seed(0)
    vision = SiglipVisionModel(SiglipVisionConfig(**VISION))
    vision.save_pretrained(tmp_path / "vision")
    tokenizer = build_byte_tokenizer()
    language = Qwen2ForCausalLM(text_config(len(tokenizer) - 1))  # one row short: <video> forces a resize
    language.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")

    model, processor = from_parts(str(tmp_path / "vision"), str(tmp_path / "llm"), dtype=torch.float32,
                                  tokens_per_frame=4, cross_attn_every=2)
    assert model.config.needs_training
    assert model.config.video_token_id == processor.tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    assert model.get_input_embeddings().num_embeddings >= len(processor.tokenizer)
    torch.testing.assert_close(model.vision_tower.state_dict()["embeddings.patch_embedding.weight"],
                               vision.state_dict()["embeddings.patch_embedding.weight"])
    wrapped = model.language_model.model.layers[1].self_attn.q_proj.weight
    torch.testing.assert_close(wrapped, language.model.layers[1].self_attn.q_proj.weight)
    assert all(layer.cross_attn.t2v.gate.scale.item() == 0 for layer in model.cross_attention_layers())
    batch = processor(question(), [random_video(2)])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()
    # what init writes, ask reads
    save_checkpoint(model, processor, tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config.needs_training


def test_from_llava_onevision_by_path(tmp_path):
    tokenizer = build_byte_tokenizer()
    video_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**VISION), text_config=text_config(len(tokenizer)),
        video_token_index=video_id, image_token_index=0, vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    torch.manual_seed(0)
    original = LlavaOnevisionForConditionalGeneration(config).eval()
    original.save_pretrained(tmp_path / "ov")
    tokenizer.save_pretrained(tmp_path / "ov")

    model, processor = from_llava_onevision(str(tmp_path / "ov"), dtype=torch.float32, pool_mode="bilinear",
                                            tokens_per_frame=4, cross_attn_every=2)
    assert not model.config.needs_training
    batch = processor(question(), [random_video(3)])
    with torch.no_grad():
        expected = original(input_ids=batch["input_ids"], pixel_values_videos=batch["pixel_values_videos"]).logits
        actual = model(**batch).logits
    assert (expected - actual).abs().max() <= 1e-4
