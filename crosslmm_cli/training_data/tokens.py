"""A conversation as the model trains on it: chat-templated token ids, with labels that keep the
assistant answers only."""

from __future__ import annotations

IGNORE_INDEX = -100


def tokenize_conversation(processor, messages: list[dict], num_frames: int) -> tuple[list[int], list[int]]:
    """Token ids of the chat-templated conversation and labels that keep only the assistant answers
    (each answer's tokens and its end-of-turn token); the video placeholder goes in the first user
    turn. Each template segment is tokenised on its own, so the answer spans are exact."""
    conversation = [dict(m) for m in messages]
    if num_frames:  # a text-only row has no video part
        conversation[0] = {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": conversation[0]["content"]}]}
    tokenizer = processor.tokenizer
    ids, labels, rendered = [], [], ""
    for index, message in enumerate(conversation):
        text = processor.render_messages(conversation[: index + 1], add_generation_prompt=False)
        segment, rendered = text[len(rendered):], text
        if index == 0 and num_frames:
            segment = processor.expand_video_placeholder(segment, num_frames)
        if message["role"] != "assistant":
            pieces = [(segment, False)]
        else:
            # "<|im_start|>assistant\n" + answer + "<|im_end|>" + "\n": learn the answer and its end
            header_end = segment.index("\n") + 1
            body_end = segment.rindex(message["content"]) + len(message["content"])
            end_token = segment[body_end:].rstrip("\n")
            pieces = [(segment[:header_end], False), (segment[header_end:body_end] + end_token, True),
                      (segment[body_end + len(end_token):], False)]
        for piece, learn in pieces:
            if piece:
                piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += piece_ids
                labels += piece_ids if learn else [IGNORE_INDEX] * len(piece_ids)
    return ids, labels
