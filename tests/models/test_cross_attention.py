"""The dual cross-attention is real: it changes outputs, learns, respects its scope and masks."""

from __future__ import annotations

import pytest
import torch

from crosslmm import build_tiny
from crosslmm.cross_attention import CrossAttentionInputs, DualCrossAttention, VisualMemory
from tests.helpers import open_gates, question, random_video


@pytest.mark.parametrize("v2v,t2v", [(True, False), (False, True)])
def test_each_cross_attention_changes_the_output(tiny, v2v, t2v):
    model, processor = tiny
    batch = processor(question(), [random_video(4)])
    with torch.no_grad():
        closed = model(**batch).logits
        open_gates(model, 0.8, v2v=v2v, t2v=t2v)
        opened = model(**batch).logits
    assert (closed - opened).abs().max() > 1e-3


def test_switched_off_cross_attention_changes_nothing(tiny_open):
    model, processor = tiny_open
    batch = processor(question(), [random_video(4)])
    model.set_cross_attention(v2v=False, t2v=False)
    with torch.no_grad():
        off = model(**batch).logits
        open_gates(model, 0.0)
        closed = model(**batch).logits
    torch.testing.assert_close(off, closed, rtol=0, atol=1e-6)


def test_gradients_reach_both_cross_attentions_and_gates(tiny_open):
    model, processor = tiny_open
    model.train()
    batch = processor(question(), [random_video(3)])
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    for layer in model.cross_attention_layers():
        for name in ("v2v", "t2v"):
            module = getattr(layer.cross_attn, name)
            if module is None:  # the last decoder layer's V2V
                continue
            for parameter in (module.q_proj.weight, module.k_proj.weight, module.v_proj.weight, module.o_proj.weight):
                assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
            assert module.gate.scale.grad.abs().item() > 0, name


def test_closed_gates_still_receive_gradient(tiny):
    model, processor = tiny
    batch = processor(question(), [random_video(3)])
    model(**batch, labels=batch["input_ids"]).loss.backward()
    gates = [layer.cross_attn.v2v.gate.scale.grad for layer in model.cross_attention_layers() if layer.cross_attn.v2v]
    assert all(g is not None and g.abs().item() > 0 for g in gates)


def dcal_update(scope: str, originals: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The V2V update of one DCAL for a batch of one video (T2V off)."""
    model, _ = build_tiny(v2v_scope=scope, t2v=False)
    dcal: DualCrossAttention = model.cross_attention_layers()[0].cross_attn
    dcal.v2v.gate.scale.data.fill_(1.0)
    memory = VisualMemory(pooled=originals[:, :4], originals=originals, num_frames=torch.tensor([originals.shape[0]]))
    text_mask = torch.zeros(hidden.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        return dcal(hidden, CrossAttentionInputs(memory, text_mask, positions))


@pytest.mark.parametrize("scope,frame_i_changes", [("frame", False), ("video", True)])
def test_v2v_scope(scope, frame_i_changes):
    frames, grid_tokens, width = 3, 16, 64
    generator = torch.Generator().manual_seed(0)
    originals = torch.randn(frames, grid_tokens, width, generator=generator)
    hidden = torch.randn(1, 20, width, generator=generator)
    positions = torch.arange(2, 2 + frames * 4).view(frames, 4)  # (F, g²) flat indices
    before = dcal_update(scope, originals, hidden, positions)
    changed = originals.clone()
    changed[2] = torch.randn(grid_tokens, width, generator=generator)  # frame j = 2
    after = dcal_update(scope, changed, hidden, positions)
    frame_i = positions[0]  # frame i = 0
    assert before[0, frame_i].abs().max() > 0
    if frame_i_changes:
        assert (before[0, frame_i] - after[0, frame_i]).abs().max() > 1e-4
    else:
        assert torch.equal(before[0, frame_i], after[0, frame_i])
    # positions that are neither pooled nor text get no update
    assert before[0, :2].abs().max() == 0 and before[0, 14:].abs().max() == 0


@pytest.mark.parametrize("scope", ["frame", "video"])
def test_padding_frames_change_nothing(scope):
    model, processor = build_tiny(v2v_scope=scope)
    open_gates(model, 0.8)
    short, long = random_video(2, seed=3), random_video(5, seed=4)
    batch = processor([question("short"), question("long one")], [short, long], padding_side="right")
    alone = processor(question("short"), [short], padding_side="right")
    garbage = batch["pixel_values_videos"].clone()
    garbage[0, 2:] = torch.randn_like(garbage[0, 2:]) * 100  # the short video's padding frames
    with torch.no_grad():
        batched = model(**batch).logits
        single = model(**alone).logits
        noisy = model(**{**batch, "pixel_values_videos": garbage}).logits
    length = alone["input_ids"].shape[1]
    torch.testing.assert_close(batched[0, :length], single[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(noisy, batched, rtol=0, atol=0)


def test_stacked_gqa_equals_repeated_key_value_heads():
    from transformers import Qwen2Config

    from crosslmm.cross_attention import CrossAttention

    torch.manual_seed(0)
    module = CrossAttention(Qwen2Config(hidden_size=64, num_attention_heads=8, num_key_value_heads=2))
    module.gate.scale.data.fill_(1.0)
    hidden, memory = torch.randn(3, 5, 64), torch.randn(3, 11, 64)
    mask = torch.rand(3, 11) > 0.3
    mask[:, 0] = True
    key, value = module.project_memory(memory)
    query = module.q_proj(module.query_norm(hidden)).view(3, 5, 8, 8).transpose(1, 2)
    reference = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(4, 1), value.repeat_interleave(4, 1), attn_mask=mask[:, None, None, :]
    )
    reference = module.o_proj(reference.transpose(1, 2).reshape(3, 5, 64)) * torch.tanh(torch.tensor(1.0))
    torch.testing.assert_close(module(hidden, key, value, mask), reference, rtol=1e-5, atol=1e-6)


def test_a_v2v_in_the_last_decoder_layer_would_change_nothing_scored_or_sampled():
    """Why the last layer has no V2V: given one (open gate, random weights), it changes the logits
    of visual positions only (which no loss scores and generation never samples), not one text
    position's, and receives no gradient from an answer's loss. Without it a 256-frame prefill of
    crosslmm-ov-0.5b spends 1.267 instead of 1.366 TFLOPs in the DCALs (``crosslmm bench --flops-only``)."""
    from crosslmm.cross_attention import CrossAttention

    model, processor = build_tiny(seed=1)
    last = model.cross_attention_layers()[-1].cross_attn
    assert last.layer_idx == model.config.text_config.num_hidden_layers - 1 and last.v2v is None
    batch = processor(question(), [random_video(3)])
    text = batch["input_ids"][0] != model.config.video_token_id
    labels = batch["input_ids"].masked_fill(~text[None], -100)
    open_gates(model, 0.7)
    without = model(**batch, labels=labels)
    last.v2v = CrossAttention(model.config.text_config)
    model._init_weights(last.v2v)
    with torch.no_grad():
        last.v2v.gate.scale.fill_(0.7)
    with_v2v = model(**batch, labels=labels)
    with_v2v.loss.backward()
    assert (with_v2v.logits[0, ~text] - without.logits[0, ~text]).abs().max() > 1e-3  # it does run
    torch.testing.assert_close(with_v2v.logits[0, text], without.logits[0, text], rtol=0, atol=0)
    assert with_v2v.loss.item() == without.loss.item()
    assert all(p.grad is None or not p.grad.any() for p in last.v2v.parameters())
