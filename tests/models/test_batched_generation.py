"""Continuous batching against transformers' own ``generate()`` one conversation at a time (through
:class:`AnswerStream`): the same tokens for greedy and seeded sampling, whatever the neighbours, when
they join or leave, and whatever their videos and frame counts."""

from __future__ import annotations

import pytest
import torch

from crosslmm import AnswerStream, SamplingSettings
from crosslmm.batched_generation import ContinuousBatch, Sequence, generate_all
from tests.helpers import question, random_video

# (question, frames: 0 for a text-only conversation, settings)
CONVERSATIONS = [
    ("short", 2, SamplingSettings(max_new_tokens=12)),
    ("a much longer question about the whole video", 4, SamplingSettings(max_new_tokens=20)),
    ("what?", 1, SamplingSettings(max_new_tokens=7, temperature=1.0, seed=3)),
    ("hello there", 0, SamplingSettings(max_new_tokens=15)),
    ("colour?", 3, SamplingSettings(max_new_tokens=9, temperature=0.8, top_p=0.9, top_k=20, seed=5,
                                    repetition_penalty=1.3)),
    ("and then?", 6, SamplingSettings(max_new_tokens=16, repetition_penalty=1.2)),
]


def prepared(model, processor, text: str, frames: int, seed: int):
    if not frames:
        return processor.chat_inputs([{"role": "user", "content": text}], None), None
    inputs = processor(question(text), [random_video(frames, seed=seed)])
    return inputs, model.encode_video(inputs["pixel_values_videos"], cache_kv=True)


@pytest.fixture
def conversations(tiny_open, device):
    model, processor = tiny_open
    model.to(device)
    return [(*prepared(model, processor, text, frames, seed), settings)
            for seed, (text, frames, settings) in enumerate(CONVERSATIONS)]


def alone(model, processor, inputs, memory, settings) -> AnswerStream:
    stream = AnswerStream(model, processor, inputs, memory, settings)
    list(stream)
    return stream


@pytest.mark.parametrize("max_batch_size", [1, 3, 16])
def test_batched_answers_equal_generate_one_at_a_time(tiny_open, conversations, max_batch_size):
    """With 3, half the conversations join while the others are mid-answer; with 16, all run together."""
    model, processor = tiny_open
    expected = [alone(model, processor, *conversation) for conversation in conversations]
    batch = ContinuousBatch(model, processor.tokenizer, max_batch_size=max_batch_size)
    sizes = []
    done = {sequence.tag: sequence for sequence in generate_all(
        batch, [Sequence(inputs["input_ids"], memory, settings, tag=i)
                for i, (inputs, memory, settings) in enumerate(conversations)],
        on_event=lambda *_: sizes.append(len(batch.rows)))}
    assert max(sizes) == min(max_batch_size, len(conversations))
    for i, stream in enumerate(expected):
        assert (done[i].token_ids, done[i].text, done[i].finish_reason) == (
            stream.token_ids, stream.text, stream.finish_reason), f"conversation {i}"


def test_a_seeded_sample_is_the_same_alone_and_beside_others(tiny_open, conversations):
    model, processor = tiny_open
    inputs, memory, _ = conversations[1]
    sampled = SamplingSettings(max_new_tokens=12, temperature=1.2, top_k=30, seed=11)

    def run(neighbours) -> list[int]:
        batch = ContinuousBatch(model, processor.tokenizer)
        sequences = [Sequence(inputs["input_ids"], memory, sampled, tag="mine")] + [
            Sequence(i["input_ids"], m, s) for i, m, s in neighbours]
        return next(s for s in generate_all(batch, sequences) if s.tag == "mine").token_ids

    assert run([]) == run(conversations) == run(conversations[::-1])
    assert run([]) == alone(model, processor, inputs, memory, sampled).token_ids


def test_a_cancelled_sequence_leaves_at_once_and_the_others_do_not_change(tiny_open, conversations):
    model, processor = tiny_open
    expected = [alone(model, processor, *conversation) for conversation in conversations]
    batch = ContinuousBatch(model, processor.tokenizer)
    sequences = [Sequence(i["input_ids"], m, s, tag=n) for n, (i, m, s) in enumerate(conversations)]
    for sequence in sequences:
        batch.add(sequence)
    batch.step()
    batch.step()
    victim = sequences[1]
    victim.cancel()
    batch.step()
    assert victim.finish_reason == "cancelled" and victim not in batch.rows
    assert len(victim.token_ids) <= 3
    while len(batch):
        batch.step()
    for n, sequence in enumerate(sequences):
        if sequence is not victim:
            assert sequence.token_ids == expected[n].token_ids, f"conversation {n}"


def test_a_finished_sequence_hands_back_its_cache_and_a_follow_up_extends_it(tiny_open, conversations):
    """The cache a finished answer leaves (prompt and answer, padding removed) lets a follow-up
    compute only its own tokens and still answer as generate() over the whole conversation does."""
    model, processor = tiny_open
    inputs, memory, _ = conversations[1]
    settings = SamplingSettings(max_new_tokens=6)
    batch = ContinuousBatch(model, processor.tokenizer)
    first, neighbour = Sequence(inputs["input_ids"], memory, settings), Sequence(
        conversations[3][0]["input_ids"], None, SamplingSettings(max_new_tokens=30))
    list(generate_all(batch, [neighbour, first]))  # the neighbour's longer prompt pads this one
    assert first.cache.get_seq_length() == inputs["input_ids"].shape[1] + len(first.token_ids) - 1
    follow = torch.cat([inputs["input_ids"], torch.tensor([first.token_ids[:-1]]),
                        processor.tokenizer("And then?", return_tensors="pt")["input_ids"]], dim=1)
    extended = Sequence(follow, memory, settings, prefix_cache=first.cache)
    list(generate_all(ContinuousBatch(model, processor.tokenizer), [extended]))
    whole = {"input_ids": follow, "attention_mask": torch.ones_like(follow)}
    assert extended.token_ids == alone(model, processor, whole, memory, settings).token_ids


def test_stop_strings_cut_the_answer_as_they_do_alone(tiny_open, conversations):
    model, processor = tiny_open
    inputs, memory, settings = conversations[3]  # its answer runs to the length limit
    whole = alone(model, processor, inputs, memory, settings)
    stop = whole.text[4:7]
    cut = SamplingSettings(max_new_tokens=20, stop=(stop,))
    sequence = Sequence(inputs["input_ids"], memory, cut)
    pieces = []
    list(generate_all(ContinuousBatch(model, processor.tokenizer), [sequence],
                      on_event=lambda s, text: pieces.append(text)))
    expected = alone(model, processor, inputs, memory, cut)
    assert "".join(pieces) == sequence.text == expected.text == whole.text[:whole.text.find(stop)]
    assert sequence.finish_reason == expected.finish_reason == "stop"


def test_waiting_sequences_are_prefilled_together_with_and_without_cached_prefixes(tiny_open, conversations):
    """Follow-ups whose prefixes are cached (the video in the cache) and fresh questions (the video
    in the tokens to compute) arrive at once: the first step is two prefill forwards, and every
    answer is generate()'s over its whole conversation."""
    model, processor = tiny_open
    settings = SamplingSettings(max_new_tokens=8)
    firsts = [Sequence(inputs["input_ids"], memory, settings) for inputs, memory, _ in conversations]
    list(generate_all(ContinuousBatch(model, processor.tokenizer), firsts))
    follow_ups, expected = [], []
    for n, (first, (inputs, memory, _)) in enumerate(zip(firsts, conversations)):
        question_ids = processor.tokenizer(f"And then{'?' * n}", return_tensors="pt")["input_ids"]
        follow = torch.cat([inputs["input_ids"], torch.tensor([first.token_ids[:-1]], dtype=torch.long),
                            question_ids], dim=1)
        follow_ups.append(Sequence(follow, memory, settings, prefix_cache=first.cache))
        expected.append(alone(model, processor, {"input_ids": follow, "attention_mask": torch.ones_like(follow)},
                              memory, settings).token_ids)
    fresh = [Sequence(inputs["input_ids"], memory, settings) for inputs, memory, _ in conversations]
    expected += [alone(model, processor, inputs, memory, settings).token_ids for inputs, memory, _ in conversations]
    forwards = []
    hook = model.register_forward_hook(lambda *_: forwards.append(1))
    batch = ContinuousBatch(model, processor.tokenizer)
    for sequence in follow_ups + fresh:
        batch.add(sequence)
    batch.step()
    hook.remove()
    assert len(forwards) == 2 and len(batch.rows) == len(follow_ups + fresh)
    while len(batch):
        batch.step()
    assert [s.token_ids for s in follow_ups + fresh] == expected
