"""Parity with the models CrossLMM wraps: the bare LLM (closed gates) and LLaVA-OneVision."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
)

from crosslmm import from_llava_onevision
from tests.helpers import open_gates, question, random_video


def bare_llm_from(model) -> Qwen2ForCausalLM:
    """A plain Qwen2ForCausalLM holding the same weights as CrossLMM's language model."""
    state = {
        key: value
        for key, value in model.language_model.state_dict().items()
        if ".cross_attn." not in key
    }
    bare = Qwen2ForCausalLM(model.config.text_config).eval()
    bare.load_state_dict(state, strict=True)
    return bare


def capture_llm_inputs(model) -> dict:
    captured = {}

    def hook(_module, _args, kwargs):
        captured.update(kwargs)

    model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    return captured


# float32 on the CPU; bf16 on CUDA, where both models run the same bf16 kernels
PARITY_DTYPE = {"cpu": (torch.float32, 1e-5), "cuda": (torch.bfloat16, 1e-2)}


def test_closed_gates_equal_the_bare_llm(tiny, device):
    model, processor = tiny
    dtype, tolerance = PARITY_DTYPE[device]
    batch = processor([question("first"), question("a longer second question")], [random_video(3), random_video(5, seed=1)])
    batch = {k: v.to(device, dtype if v.is_floating_point() else v.dtype) for k, v in batch.items()}
    bare_model = bare_llm_from(model).to(device, dtype)
    model.to(device, dtype)
    captured = capture_llm_inputs(model)
    with torch.no_grad():
        ours = model(**batch).logits
        bare = bare_model(inputs_embeds=captured["inputs_embeds"], attention_mask=batch["attention_mask"]).logits
    mask = batch["attention_mask"].bool()
    assert (ours - bare)[mask].abs().max() <= tolerance


def test_hidden_states_and_attentions_are_the_bare_llms_layer_by_layer(tiny):
    """One hidden state per decoder layer plus the embeddings, the layers with a DCAL included, and
    one attention map per layer: with closed gates, each equal to the bare LLM's."""
    model, processor = tiny
    model.set_attn_implementation("eager")  # attention maps need eager attention
    batch = processor(question(), [random_video(3)])
    captured = capture_llm_inputs(model)
    bare_model = bare_llm_from(model)
    bare_model.set_attn_implementation("eager")
    with torch.no_grad():
        ours = model(**batch, output_hidden_states=True, output_attentions=True)
        bare = bare_model(inputs_embeds=captured["inputs_embeds"], output_hidden_states=True, output_attentions=True)
    layers = model.config.text_config.num_hidden_layers
    assert model.config.cross_attn_layers  # some of them carry a DCAL
    assert len(ours.hidden_states) == len(bare.hidden_states) == layers + 1
    assert len(ours.attentions) == len(bare.attentions) == layers
    for mine, theirs in zip([*ours.hidden_states, *ours.attentions], [*bare.hidden_states, *bare.attentions]):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def test_open_gates_differ_from_the_bare_llm(tiny):
    model, processor = tiny
    open_gates(model, 0.5)
    batch = processor(question(), [random_video(3)])
    captured = capture_llm_inputs(model)
    with torch.no_grad():
        ours = model(**batch).logits
        bare = bare_llm_from(model)(inputs_embeds=captured["inputs_embeds"]).logits
    assert (ours - bare).abs().max() > 1e-3


def tiny_llava_onevision(tie_word_embeddings: bool) -> LlavaOnevisionForConditionalGeneration:
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    text = Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=300, tie_word_embeddings=tie_word_embeddings,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=text, video_token_index=299, image_token_index=298,
        vision_feature_layer=-1, vision_feature_select_strategy="full",
    )
    torch.manual_seed(0)
    return LlavaOnevisionForConditionalGeneration(config).eval()


@pytest.mark.parametrize("tie_word_embeddings", [False, True])
def test_llava_onevision_parity(tie_word_embeddings):
    original = tiny_llava_onevision(tie_word_embeddings)
    # LLaVA-OneVision's own video pooling: bilinear to ceil(grid/2)² = 2x2, one newline per video
    converted, _ = from_llava_onevision(
        original, pool_mode="bilinear", tokens_per_frame=4, frame_separator="video", cross_attn_every=2
    )
    frames = 3
    positions = converted.config.video_positions(frames)
    assert positions == frames * 4 + 1
    input_ids = torch.tensor([[1, 2, 3] + [299] * positions + [4, 5, 6]] * 2)
    pixels = torch.randn(2, frames, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = original(input_ids=input_ids, pixel_values_videos=pixels).logits
        actual = converted(input_ids=input_ids, pixel_values_videos=pixels).logits
    assert (expected - actual).abs().max() <= 1e-4
    # and the conversion is not vacuous: opening the gates changes the answer
    open_gates(converted, 1.0)
    with torch.no_grad():
        opened = converted(input_ids=input_ids, pixel_values_videos=pixels).logits
    assert (expected - opened).abs().max() > 1e-3
