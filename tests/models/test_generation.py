"""transformers' ``generate()`` on CrossLMM equals recomputing everything at every step (video and
T2V included), for greedy decoding, seeded sampling and beams; answers stream as they are made."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import GenerationMixin, TextIteratorStreamer

from crosslmm import AnswerStream, SamplingSettings
from tests.helpers import question, random_video


def full_logits(model, batch, input_ids) -> torch.Tensor:
    """nanoGPT-style oracle: the whole forward (video included), no cache; the last position's
    logits (B, V) in float32, with the video placeholder ruled out as an answer."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values_videos=batch["pixel_values_videos"],
                       num_frames=batch["num_frames"]).logits[:, -1].float()
    logits[:, model.config.video_token_id] = -torch.inf
    return logits


def recompute(model, batch, steps: int, temperature: float = 0.0, seed: int = 0) -> list[int]:
    """Greedy (temperature 0) or plain temperature sampling from ``torch.multinomial`` seeded with ``seed``."""
    torch.manual_seed(seed)
    input_ids, tokens = batch["input_ids"], []
    for _ in range(steps):
        logits = full_logits(model, batch, input_ids)
        if temperature == 0:
            token = logits.argmax(-1)
        else:
            token = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1).squeeze(1)
        tokens.append(int(token))
        input_ids = torch.cat([input_ids, token[:, None]], dim=1)
    return tokens


def log_probability(model, batch, tokens: list[int]) -> float:
    """Sum of log p(token) of an answer under the oracle."""
    total, input_ids = 0.0, batch["input_ids"]
    for token in tokens:
        total += float(torch.log_softmax(full_logits(model, batch, input_ids), -1)[0, token])
        input_ids = torch.cat([input_ids, torch.tensor([[token]])], dim=1)
    return total


def new_tokens(sequences: torch.Tensor, batch) -> list[list[int]]:
    return sequences[:, batch["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize(
    "text,frames,scope",
    [("What happens?", 1, "frame"), ("Describe the video in detail.", 4, "frame"), ("Who?", 7, "video")],
)
def test_greedy_generate_equals_recompute_with_t2v_on_every_step(tiny_open, text, frames, scope, device):
    model, processor = tiny_open
    model.to(device)
    for layer in model.cross_attention_layers():
        layer.cross_attn.v2v_scope = scope
    batch = {k: v.to(device) for k, v in processor(question(text), [random_video(frames, seed=frames)]).items()}
    steps = 10
    sequences = model.generate(**batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    assert new_tokens(sequences, batch)[0] == recompute(model, batch, steps)


def test_the_oracle_sees_a_generate_that_drops_the_video_after_prefill(tiny_open):
    """What transformers does to video inputs by default (they reach the prefill only): T2V is lost
    from the second token on, and the comparison above would fail."""
    model, processor = tiny_open
    batch = processor(question("Describe the video in detail."), [random_video(4, seed=4)])
    steps = 10
    dropped = GenerationMixin.generate(model, **batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    assert new_tokens(dropped, batch)[0] != recompute(model, batch, steps)


def test_seeded_sampling_equals_recompute(tiny_open):
    model, processor = tiny_open
    batch = processor(question(), [random_video(3, seed=3)])
    steps = 12
    torch.manual_seed(7)
    sequences = model.generate(**batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=True,
                               temperature=0.8, top_k=0, top_p=1.0)
    assert new_tokens(sequences, batch)[0] == recompute(model, batch, steps, temperature=0.8, seed=7)


def test_beam_search_finds_a_likelier_answer_than_greedy(tiny_open):
    model, processor = tiny_open
    steps, found = 8, 0
    for seed in range(4):  # on some videos greedy is already the likeliest answer
        batch = processor(question(), [random_video(3, seed=seed)])
        greedy = new_tokens(model.generate(**batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False), batch)[0]
        beams = model.generate(**batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, num_beams=2,
                               num_return_sequences=2, early_stopping=True)
        best = new_tokens(beams, batch)
        assert len(best) == 2
        # with every answer the same length, beam search ranks by the summed log-probability
        assert log_probability(model, batch, best[0]) >= log_probability(model, batch, greedy) - 1e-4
        assert log_probability(model, batch, best[0]) >= log_probability(model, batch, best[1]) - 1e-4
        if best[0] != greedy:
            assert log_probability(model, batch, best[0]) > log_probability(model, batch, greedy)
            found += 1
    assert found


def test_several_answers_per_prompt_each_see_their_own_video(tiny_open):
    model, processor = tiny_open
    conversations, videos = [question("a"), question("b")], [random_video(2, seed=1), random_video(3, seed=2)]
    batch = processor(conversations, videos)
    steps = 5
    sequences = model.generate(**batch, max_new_tokens=steps, min_new_tokens=steps, num_beams=2,
                               num_return_sequences=2, do_sample=False)
    assert sequences.shape[0] == 4
    for row, (conversation, video) in enumerate(zip(conversations, videos)):
        alone = processor(conversation, [video])
        expected = model.generate(**alone, max_new_tokens=steps, min_new_tokens=steps, num_beams=2,
                                  num_return_sequences=2, do_sample=False)
        assert new_tokens(sequences, batch)[2 * row:2 * row + 2] == new_tokens(expected, alone)


def test_left_padded_batch_generates_like_single_rows(tiny_open):
    model, processor = tiny_open
    conversations = [question("short"), question("a much longer question about it")]
    videos = [random_video(2, seed=5), random_video(4, seed=6)]
    batch = processor(conversations, videos)
    batched = new_tokens(model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False), batch)
    for row, (conversation, video) in enumerate(zip(conversations, videos)):
        single = processor(conversation, [video])
        assert batched[row] == new_tokens(model.generate(**single, max_new_tokens=6, min_new_tokens=6,
                                                         do_sample=False), single)[0]


def test_an_encoded_video_is_reused_and_its_t2v_keys_values_computed_once(tiny_open, monkeypatch):
    model, processor = tiny_open
    batch = processor(question(), [random_video(3)])
    memory = model.encode_video(batch["pixel_values_videos"], batch["num_frames"])
    calls = []
    for layer in model.cross_attention_layers():
        original = layer.cross_attn.t2v.project_memory
        monkeypatch.setattr(layer.cross_attn.t2v, "project_memory", lambda m, f=original: calls.append(1) or f(m))
    text = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    first = model.generate(**text, visual_memory=memory, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    again = model.generate(**text, visual_memory=memory, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert len(calls) == len(model.cross_attention_layers())  # once, at the first prefill
    assert first.tolist() == again.tolist() == model.generate(**batch, max_new_tokens=6, min_new_tokens=6,
                                                              do_sample=False).tolist()


def test_text_iterator_streamer_gives_the_returned_text(tiny_open):
    model, processor = tiny_open
    batch = processor(question(), [random_video(2)])
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=model.generate(**batch, max_new_tokens=12,
                                                                              do_sample=False, streamer=streamer)))
    worker.start()
    streamed = "".join(streamer)
    worker.join()
    assert streamed == processor.tokenizer.decode(new_tokens(result["out"], batch)[0], skip_special_tokens=True)


def test_answer_stream_pieces_make_the_answer_and_stop_strings_cut_it(tiny_open):
    model, processor = tiny_open
    batch = processor(question(), [random_video(2)])
    memory = model.encode_video(batch["pixel_values_videos"])
    stream = AnswerStream(model, processor, batch, memory, SamplingSettings(max_new_tokens=16))
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == stream.text == processor.decode(stream.token_ids)
    stop = stream.text[5:8]  # three characters from the middle of the answer
    cut = AnswerStream(model, processor, batch, memory, SamplingSettings(max_new_tokens=16, stop=(stop,)))
    assert "".join(cut) == stream.text[: stream.text.find(stop)]


def test_leaving_an_answer_early_stops_generation(tiny_open):
    model, processor = tiny_open
    batch = processor(question(), [random_video(2)])
    stream = iter(AnswerStream(model, processor, batch, None, SamplingSettings(max_new_tokens=10_000)))
    next(stream)
    before = threading.active_count()
    stream.close()  # what a Ctrl-C or a client that hangs up does
    assert not any(thread.name == "crosslmm-generate" for thread in threading.enumerate())
    assert threading.active_count() <= before


def test_sampling_is_seeded(tiny_open):
    model, processor = tiny_open
    batch = processor(question(), [random_video(2)])

    def sample(seed):
        settings = SamplingSettings(max_new_tokens=8, temperature=1.5, top_p=0.95, top_k=40, seed=seed)
        return "".join(AnswerStream(model, processor, batch, None, settings))

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_generation_stops_at_eos(tiny_open):
    model, processor = tiny_open
    batch = processor(question(), [random_video(2)])
    first = new_tokens(model.generate(**batch, max_new_tokens=1, do_sample=False), batch)[0][0]
    sequences = model.generate(**batch, max_new_tokens=9, do_sample=False, eos_token_id=first, pad_token_id=first)
    assert new_tokens(sequences, batch)[0] == [first]


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5),
                                 dict(top_k=-1), dict(repetition_penalty=0.0), dict(stop=("",))])
def test_bad_sampling_settings_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingSettings(**bad)
