"""The teacher's answer log-probabilities, with the head over the answers only, equal those cut out
of the model's full logits."""

from __future__ import annotations

import torch

from crosslmm_cli.distill.loss import fold_top_k
from crosslmm_cli.distill.teacher import answer_top_k
from crosslmm_cli.training_data.tokens import IGNORE_INDEX, tokenize_conversation
from tests.helpers import random_video


def test_answer_positions_only_equal_the_full_logits(tiny_open):
    model, processor = tiny_open
    rows = [("What moves?", "A red ball rolls.", 3), ("And the colour of the thing on the left?", "Green.", 2)]
    encoded, videos = [], []
    for question, answer, frames in rows:
        video = random_video(frames, seed=frames)
        ids, labels = tokenize_conversation(processor, [{"role": "user", "content": question},
                                                        {"role": "assistant", "content": answer}], frames)
        encoded.append((ids, labels))
        videos.append(processor.preprocess_frames(video))
    longest = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((2, longest), processor.tokenizer.pad_token_id)
    attention_mask = torch.zeros((2, longest), dtype=torch.long)
    for row, (ids, _) in enumerate(encoded):
        input_ids[row, :len(ids)], attention_mask[row, :len(ids)] = torch.tensor(ids), 1
    frames = max(len(v) for v in videos)
    pixels = torch.zeros(2, frames, *videos[0].shape[1:])
    for row, video in enumerate(videos):
        pixels[row, :len(video)] = video
    visual = {"pixel_values_videos": pixels, "num_frames": torch.tensor([len(v) for v in videos])}
    answers = []
    for _, labels in encoded:
        learned = [index for index, label in enumerate(labels) if label != IGNORE_INDEX]
        answers.append((learned[0], learned[-1] + 1))

    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda module, args, out: seen.append(out.shape[1]))
    got = answer_top_k(model, input_ids, attention_mask, answers, top_k=8, temperature=2.0, **visual)
    hook.remove()
    assert seen == [longest - min(start for start, _ in answers) + 1]  # the head ran over the answers, not the prompt
    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=attention_mask, **visual).logits  # the reference
    for row, (ids, labels) in enumerate(encoded):
        predicting = torch.tensor(labels[1:]) != IGNORE_INDEX  # positions whose next token is an answer token
        expected_ids, expected = fold_top_k(full[row, :len(ids) - 1][predicting[:len(ids) - 1]], 8, 2.0)
        assert torch.equal(got[row][0], expected_ids)
        torch.testing.assert_close(got[row][1], expected, rtol=1e-5, atol=1e-5)
