"""The cached generation loop equals recomputing everything, and sampling behaves."""

from __future__ import annotations

import pytest
import torch

from models import SamplingSettings, generate_tokens, stream_answer
from models.generation import next_tokens
from tests.helpers import question, random_video


def recompute_greedy(model, batch, steps: int) -> list[int]:
    """nanoGPT-style oracle: re-run the full forward (video included) for every new token."""
    input_ids, tokens = batch["input_ids"], []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(
                input_ids=input_ids, pixel_values_videos=batch["pixel_values_videos"], num_frames=batch["num_frames"]
            ).logits[:, -1]
            token = logits.argmax(-1)
            tokens.append(int(token))
            input_ids = torch.cat([input_ids, token[:, None]], dim=1)
    return tokens


@pytest.mark.parametrize(
    "text,frames,scope",
    [("What happens?", 1, "frame"), ("Describe the video in detail.", 4, "frame"), ("Who?", 7, "video")],
)
def test_cached_generation_equals_recompute(tiny_open, text, frames, scope, device):
    model, processor = tiny_open
    model.to(device)
    for layer in model.cross_attention_layers():
        layer.cross_attn.v2v_scope = scope
    batch = {k: v.to(device) for k, v in processor(question(text), [random_video(frames, seed=frames)]).items()}
    memory = model.encode_video(batch["pixel_values_videos"], batch["num_frames"])
    steps = 10
    cached = [
        int(token[0])
        for token in generate_tokens(
            model, batch["input_ids"], batch["attention_mask"], memory, SamplingSettings(max_new_tokens=steps), set()
        )
    ]
    assert cached == recompute_greedy(model, batch, steps)
    # the T2V keys/values were computed once per DCAL layer and kept
    assert sorted(memory.t2v_kv) == model.config.cross_attn_layers


def test_t2v_keys_values_are_not_recomputed_while_decoding(tiny_open, monkeypatch):
    model, processor = tiny_open
    batch = processor(question(), [random_video(3)])
    memory = model.encode_video(batch["pixel_values_videos"], batch["num_frames"])
    calls = []
    for layer in model.cross_attention_layers():
        original = layer.cross_attn.t2v.project_memory
        monkeypatch.setattr(layer.cross_attn.t2v, "project_memory", lambda m, f=original: calls.append(1) or f(m))
    list(generate_tokens(model, batch["input_ids"], batch["attention_mask"], memory, SamplingSettings(max_new_tokens=6), set()))
    assert len(calls) == len(model.cross_attention_layers())


def test_left_padded_batch_generates_like_single_rows(tiny_open):
    model, processor = tiny_open
    conversations = [question("short"), question("a much longer question about it")]
    videos = [random_video(2, seed=5), random_video(4, seed=6)]
    batch = processor(conversations, videos)
    memory = model.encode_video(batch["pixel_values_videos"], batch["num_frames"])
    settings = SamplingSettings(max_new_tokens=6)
    batched = torch.stack(list(generate_tokens(model, batch["input_ids"], batch["attention_mask"], memory, settings, set())), 1)
    for row, (conversation, video) in enumerate(zip(conversations, videos)):
        single = processor(conversation, [video])
        single_memory = model.encode_video(single["pixel_values_videos"])
        tokens = torch.stack(
            list(generate_tokens(model, single["input_ids"], single["attention_mask"], single_memory, settings, set())), 1
        )
        assert batched[row].tolist() == tokens[0].tolist()


def test_sampling_is_seeded(tiny_open):
    model, processor = tiny_open
    batch = processor(question(), [random_video(2)])

    def sample(seed):
        memory = model.encode_video(batch["pixel_values_videos"])
        settings = SamplingSettings(max_new_tokens=8, temperature=1.5, top_p=0.95, seed=seed)
        return "".join(stream_answer(model, processor, batch, memory, settings))

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_top_p_keeps_the_nucleus_only():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    settings = SamplingSettings(temperature=1.0, top_p=0.7)
    generator = torch.Generator().manual_seed(0)
    drawn = {int(next_tokens(logits, settings, generator)) for _ in range(200)}
    assert drawn == {0, 1}
    assert int(next_tokens(logits, SamplingSettings(), None)) == 0


def test_generation_stops_at_eos(tiny_open):
    model, processor = tiny_open
    batch = processor(question(), [random_video(2)])
    memory = model.encode_video(batch["pixel_values_videos"])
    first = next(iter(generate_tokens(model, batch["input_ids"], batch["attention_mask"], memory, SamplingSettings(), set())))
    tokens = list(
        generate_tokens(model, batch["input_ids"], batch["attention_mask"], memory, SamplingSettings(max_new_tokens=9), {int(first[0])})
    )
    assert len(tokens) == 1


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_sampling_settings_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingSettings(**bad)
