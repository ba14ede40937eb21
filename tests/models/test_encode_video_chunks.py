"""A video encoded for answering a chunk of frames at a time, its keys/values projected as it goes and
its original tokens dropped, answers as the whole-video path does: the same logits at the prefill and
at a decoding step, with the memory position, and stacked with another video in one batch."""

from __future__ import annotations

import pytest
import torch

from crosslmm.cache_keyword import cache_argument, output_cache
from crosslmm.cross_attention import VisualMemory
from tests.helpers import question, random_video


def prefill_and_step(model, batch: dict, memory: VisualMemory) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt's logits, then one decoding step's, reading ``memory``."""
    with torch.no_grad():
        first = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], visual_memory=memory,
                      use_cache=True)
        token = first.logits[:, -1:].argmax(dim=-1)
        mask = torch.cat([batch["attention_mask"], torch.ones_like(token)], dim=1)
        step = model(input_ids=token, attention_mask=mask, visual_memory=memory, use_cache=True,
                     **cache_argument(output_cache(first)))
    return first.logits, step.logits


@pytest.mark.parametrize("memory_position", [False, True], ids=["plain", "memory position"])
def test_chunked_projected_memory_gives_the_whole_video_paths_logits(tiny_open, memory_position):
    model, processor = tiny_open
    if memory_position:
        model.add_memory_position()
        with torch.no_grad():  # as if trained: a chunk must count its frames from the video's first
            model.memory_position.patch.normal_()
            model.memory_position.frame.normal_()
    frames = 7
    batch = processor(question(), [random_video(frames)])
    pixels = batch["pixel_values_videos"]
    whole = model.encode_video(pixels, cache_kv=True)
    chunked = model.encode_video_chunks(pixels[0].split(3), frames)  # chunks of 3, 3 and 1 frames
    assert chunked.originals is None and chunked.t2v_kv and chunked.v2v_kv
    expected, got = prefill_and_step(model, batch, whole), prefill_and_step(model, batch, chunked)
    for reference, result in zip(expected, got):
        torch.testing.assert_close(result, reference, rtol=0, atol=1e-5)


def test_projected_memories_stack_into_one_batch_as_their_videos_alone(tiny_open):
    model, processor = tiny_open
    memories, rows = [], []
    for frames in (2, 4):
        batch = processor(question(), [random_video(frames, seed=frames)])
        memories.append(model.encode_video_chunks(batch["pixel_values_videos"][0].split(3), frames))
        rows.append(batch)
    alone = [prefill_and_step(model, batch, memory)[0][0, -1] for batch, memory in zip(rows, memories)]
    longest = max(batch["input_ids"].shape[1] for batch in rows)
    input_ids = torch.full((2, longest), processor.tokenizer.pad_token_id)
    mask = torch.zeros((2, longest), dtype=torch.long)
    for row, batch in enumerate(rows):  # left-padded, as batched generation pads
        length = batch["input_ids"].shape[1]
        input_ids[row, longest - length:], mask[row, longest - length:] = batch["input_ids"][0], 1
    with torch.no_grad():
        together = model(input_ids=input_ids, attention_mask=mask, visual_memory=VisualMemory.stack(memories)).logits
    for row in range(2):
        torch.testing.assert_close(together[row, -1], alone[row], rtol=0, atol=1e-4)


@pytest.mark.parametrize(("kv_cache", "size", "tolerance"), [("bf16", 0.5, 2e-2), ("int8", 0.3, 2e-2)])
def test_a_compressed_cache_is_smaller_and_answers_within_its_rounding(tiny_open, kv_cache, size, tolerance):
    """int8 keys/values with a scale per vector, or bf16: against the fp32 cache of the same model,
    the logits move by rounding only and the stored keys/values shrink; compressed memories stack."""
    model, processor = tiny_open
    batch = processor(question(), [random_video(5)])
    pixels = batch["pixel_values_videos"][0]
    exact = model.encode_video_chunks(pixels.split(2), 5)
    compressed = model.encode_video_chunks(pixels.split(2), 5, kv_cache=kv_cache)
    for reference, result in zip(prefill_and_step(model, batch, exact), prefill_and_step(model, batch, compressed)):
        assert (result - reference).abs().max() <= tolerance
        assert (result - reference).abs().max() > 0  # it was compressed
    kv_bytes = lambda memory: memory.nbytes() - memory.pooled.nbytes  # noqa: E731
    assert kv_bytes(compressed) <= size * kv_bytes(exact)
    stacked = VisualMemory.stack([compressed, None, compressed])
    assert stacked.batch_size == 3 and len(stacked.t2v_kv) == len(compressed.t2v_kv)
