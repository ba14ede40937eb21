"""`crosslmm distill` on CPU: a tiny base, a generated folder of videos and an image; the teacher's
targets checked against Hugging Face's LLaVA-OneVision, the loss against one written over the full
logits, and runs killed with SIGKILL against runs never stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, SiglipVisionConfig
from typer.testing import CliRunner

from crosslmm import load_checkpoint, save_checkpoint
from crosslmm.builders import from_llava_onevision
from crosslmm.loading import load_model
from crosslmm.presets import BYTE_VIDEO_TOKEN_ID
from crosslmm.processing import build_byte_tokenizer
from crosslmm_cli.app import app
from crosslmm_cli.distill.cache import TargetCache, answer_targets, shard_answers
from crosslmm_cli.distill.loss import distillation_loss, fold_top_k
from crosslmm_cli.distill.student import DistillLoss, TeacherTargets
from crosslmm_cli.synthetic_video import index_frames, write_video
from crosslmm_cli.training_data.collate import collate
from crosslmm_cli.training_data.dataset import MixtureDataset, sampling_request
from crosslmm_cli.training_data.order import SampleOrder
from crosslmm_cli.training_data.tokens import IGNORE_INDEX, tokenize_conversation
from crosslmm_cli.video import read_frames
from tests.helpers import free_port

runner = CliRunner()
TEACHER = ["--teacher-tokens-per-frame", "16", "--tokens-per-frame", "1", "--teacher-max-new-tokens", "6"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three clips and an image; prompts.jsonl asks c0 twice; annotations.jsonl holds answers the
    distillation must never read."""
    root = tmp_path_factory.mktemp("distill")
    (root / "clips").mkdir()
    for i in range(3):
        write_video(root / "clips" / f"c{i}.mp4", index_frames(12 + i, 64, 64), (64, 64), 10, "libx264", 4)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "photo.png")
    rows = [{"video": "clips/c0.mp4", "prompt": "What moves?"}, {"video": "clips/c0.mp4", "prompt": "Which colour?"}]
    (root / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "annotations.jsonl").write_text(json.dumps({"video": "clips/c1.mp4", "question": "q", "answer": "a"}) + "\n")
    return root


def distill(data, output, *flags):
    return runner.invoke(app, ["distill", str(data), "--output", str(output), "--frames", "2", "--workers", "0",
                               *TEACHER, *flags])


def targets(output: Path) -> list[dict]:
    """Every shard of a run's cache: its tensors and its metadata."""
    return [{"tensors": load_file(path), "answers": shard_answers(path)} for path in sorted((output / "teacher").glob("shard-*"))]


def same_targets(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["answers"] == y["answers"] and x["tensors"].keys() == y["tensors"].keys()
        and all(torch.equal(x["tensors"][name], y["tensors"][name]) for name in x["tensors"]) for x, y in zip(a, b))


def weights(output: Path) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in load_model(output).state_dict().items()}


def test_the_student_learns_the_teachers_answers_without_reading_any_label(data, tiny_checkpoint, tmp_path):
    opened = []

    def audit(event, args):
        if event == "open" and opened is not None and isinstance(args[0], (str, Path)):
            opened.append(Path(args[0]).name)

    sys.addaudithook(audit)
    result = distill(data, tmp_path / "out", "--model", str(tiny_checkpoint), "--max-steps", "3")
    seen, opened = opened, None  # the hook stays installed; it records nothing from here on
    assert result.exit_code == 0, result.output
    assert "annotations.jsonl" not in seen and "prompts.jsonl" in seen
    assert "teacher answered 5 of 5 prompts" in result.output
    answers, left_out = shard_answers(tmp_path / "out" / "teacher" / "shard-00000.safetensors")
    assert left_out == []
    # the folder's own prompts for c0, one built-in instruction for each other file, in name order
    assert [(a["media"], a["prompt"]) for a in answers][:2] == [("clips/c0.mp4", "What moves?"), ("clips/c0.mp4", "Which colour?")]
    assert [a["media"] for a in answers][2:] == ["clips/c1.mp4", "clips/c2.mp4", "photo.png"]
    # the output is a checkpoint like finetune's: trained-only tensors over the base, loaded by ask
    base, student = weights(tiny_checkpoint), weights(tmp_path / "out")
    trained = {name for name in student if name not in base or not torch.equal(base[name], student[name])}
    learners = ("cross_attn", "multi_modal_projector", "memory_position", "video_separator")  # the LLM and vision: frozen
    assert trained and all(any(part in name for part in learners) for name in trained)
    assert any("memory_position" in name for name in trained) and any(".t2v." in name for name in trained)
    asked = runner.invoke(app, ["ask", str(data / "clips" / "c1.mp4"), "Hi?", "--model", str(tmp_path / "out"),
                                "--frames", "2", "--max-new-tokens", "3", "--device", "cpu"])
    assert asked.exit_code == 0, asked.output


def test_the_teacher_is_hugging_faces_llava_onevision(data, tmp_path):
    """A tiny random LLaVA-OneVision converted by crosslmm to 1 token per frame: the teacher pass runs
    it at its native count (4 per frame, bilinear) with the gates closed, and its cached top-k equal
    those of the Hugging Face model's own logits on the same tokens and pixels."""
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=32, patch_size=8)
    text = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=272, tie_word_embeddings=False)
    torch.manual_seed(0)
    original = LlavaOnevisionForConditionalGeneration(LlavaOnevisionConfig(
        vision_config=vision, text_config=text, video_token_index=BYTE_VIDEO_TOKEN_ID, image_token_index=271,
        vision_feature_layer=-1, vision_feature_select_strategy="full")).eval()
    converted, processor = from_llava_onevision(original, tokenizer=build_byte_tokenizer(), tokens_per_frame=1,
                                                cross_attn_every=2)
    assert converted.config.native_tokens_per_frame == 4 and converted.config.native_pool_mode == "bilinear"
    save_checkpoint(converted, processor, tmp_path / "base")
    result = runner.invoke(app, ["distill", str(data), "--output", str(tmp_path / "out"), "--model", str(tmp_path / "base"),
                                 "--frames", "2", "--workers", "0", "--teacher-max-new-tokens", "6", "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    shard = tmp_path / "out" / "teacher" / "shard-00000.safetensors"
    teacher, teacher_processor = load_checkpoint(tmp_path / "base", tokens_per_frame=4, pool_mode="bilinear")
    for place, answer in enumerate(shard_answers(shard)[0]):
        frames = 2 if answer["kind"] == "video" else 1
        _, sampled = read_frames(data / answer["media"], sampling_request(frames, teacher_processor))
        pixels = teacher_processor.preprocess_frames(sampled.pixels)
        ids, labels = tokenize_conversation(teacher_processor, [{"role": "user", "content": answer["prompt"]},
                                                                {"role": "assistant", "content": answer["text"]}], len(pixels))
        with torch.no_grad():
            logits = original(input_ids=torch.tensor([ids]), pixel_values_videos=pixels[None]).logits[0, :-1]
        predicting = torch.tensor(labels[1:]) != IGNORE_INDEX
        expected_ids, expected = fold_top_k(logits[predicting], 64, 2.0)
        cached = answer_targets(shard, place)
        assert torch.equal(cached["tokens"], torch.tensor(ids[1:])[predicting])
        assert torch.equal(cached["ids"].long(), expected_ids)
        torch.testing.assert_close(cached["log_probs"], expected, rtol=1e-4, atol=1e-4)


def test_the_loss_over_answer_positions_equals_one_over_the_full_logits(data, tiny_checkpoint, tmp_path):
    output = tmp_path / "out"
    assert distill(data, output, "--model", str(tiny_checkpoint), "--max-steps", "1").exit_code == 0
    model, processor = load_checkpoint(output)
    cache = TargetCache(output / "teacher", 5)
    source = TeacherTargets(cache, data)
    dataset = MixtureDataset(SampleOrder([source], [1.0], seed=0), processor, frames=2)
    items = [dataset[n] for n in range(3)]
    batch = collate(items, processor.tokenizer.pad_token_id)
    samples = batch.pop("samples")
    for name in ("problems", "text_only_samples", "stand_in"):
        batch.pop(name)
    labels = batch["labels"]
    with torch.no_grad():
        got = DistillLoss(cache, alpha=0.3, temperature=2.0)(model, dict(batch), samples)
        full = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1]
    rows = labels[:, 1:] != IGNORE_INDEX
    cached = [DistillLoss(cache, 0.3, 2.0).targets(name) for _, name in samples]
    expected = distillation_loss(full[rows], labels[:, 1:][rows], torch.cat([c["ids"] for c in cached]).long(),
                                 torch.cat([c["log_probs"] for c in cached]), alpha=0.3, temperature=2.0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def run(data, output, *flags, processes: int = 1, kill_at_shard: int | None = None, kill_at_step: int | None = None):
    """``crosslmm distill`` in fresh processes, shards of 2 prompts, optionally SIGKILLed."""
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(free_port())] \
        if processes > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CROSSLMM_TEST_SHARD_PROMPTS": "2"}
    for name, value in (("CROSSLMM_TEST_KILL_AT_SHARD", kill_at_shard), ("CROSSLMM_TEST_KILL_AT_STEP", kill_at_step)):
        if value is not None:
            env[name] = str(value)
    command = [sys.executable, *launcher, "-m", "tests.killed_at_step", "distill", str(data), "--output", str(output),
               "--frames", "2", "--workers", "0", *TEACHER, *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env=env)


def resume_flags(tiny_checkpoint) -> list[str]:
    return ["--model", str(tiny_checkpoint), "--max-steps", "4", "--save-every", "1", "--batch-size", "2"]


@pytest.fixture(scope="module")
def whole(data, tiny_checkpoint, tmp_path_factory):
    """A run never stopped, in a fresh process with shards of 2 prompts."""
    output = tmp_path_factory.mktemp("whole") / "out"
    assert run(data, output, *resume_flags(tiny_checkpoint)).returncode == 0
    assert len(targets(output)) == 3  # 5 prompts in shards of 2
    return output


def test_killed_in_either_pass_and_on_any_number_of_processes_it_ends_as_a_run_never_stopped(data, tiny_checkpoint,
                                                                                            whole, tmp_path):
    """SIGKILLed in the teacher pass on 2 processes, resumed on 1 and SIGKILLed again in training,
    resumed once more: the targets byte for byte, and the weights, of a run never stopped."""
    flags = resume_flags(tiny_checkpoint)
    killed = tmp_path / "killed"
    cut = run(data, killed, *flags, processes=2, kill_at_shard=0)  # process 0 dies before its second shard (2)
    assert cut.returncode != 0 and len(targets(killed)) < 3
    cut = run(data, killed, *flags, "--resume", kill_at_step=2)  # the rest of the teacher pass, then 2 steps
    assert cut.returncode == -9, cut.stderr[-3000:]
    assert same_targets(targets(killed), targets(whole))
    resumed = run(data, killed, *flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step-000001" in resumed.stderr  # killed after step 2 was logged, before it was saved
    reference, after = weights(whole), weights(killed)
    assert all(torch.equal(reference[name], after[name]) for name in reference)


def test_a_resume_with_other_teacher_settings_is_refused(data, tiny_checkpoint, tmp_path):
    output = tmp_path / "out"
    assert distill(data, output, "--model", str(tiny_checkpoint), "--max-steps", "1").exit_code == 0
    again = distill(data, output, "--model", str(tiny_checkpoint), "--max-steps", "1", "--resume", "--top-k", "8")
    assert again.exit_code == 1 and "top_k was 64, now 8" in again.output
    fresh = distill(data, output, "--model", str(tiny_checkpoint), "--max-steps", "1")
    assert fresh.exit_code == 1 and "--resume" in fresh.output


@pytest.mark.parametrize(("setup", "flags", "message"), [
    ("bad prompts", [], "prompts.jsonl line 2: malformed JSON"),
    ("escaping prompts", [], "is not an image or video under"),
    ("no media", [], "holds no image or video"),
    (None, ["--alpha", "1.5"], "--alpha must be in [0, 1]"),
    (None, ["--full"], "No such option"),
    (None, ["--tokens-per-frame", "3"], "perfect square"),
])
def test_bad_input_is_one_line_before_the_teacher_loads(tmp_path, tiny_checkpoint, data, setup, flags, message):
    folder = tmp_path / "data"
    folder.mkdir()
    if setup != "no media":
        write_video(folder / "a.mp4", index_frames(6, 64, 64), (64, 64), 10, "libx264", 4)
    if setup == "bad prompts":
        (folder / "prompts.jsonl").write_text(json.dumps({"video": "a.mp4", "prompt": "ok"}) + "\n{oops\n")
    if setup == "escaping prompts":
        (folder / "prompts.jsonl").write_text(json.dumps({"video": "../a.mp4", "prompt": "ok"}) + "\n")
    result = runner.invoke(app, ["distill", str(folder), "--output", str(tmp_path / "out"), "--model",
                                 str(tiny_checkpoint), "--frames", "2", "--device", "cpu", *TEACHER, *flags])
    assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "out" / "teacher").exists()


def test_a_base_that_does_not_say_its_native_token_count_is_refused(data, tiny_checkpoint, tmp_path):
    result = runner.invoke(app, ["distill", str(data), "--output", str(tmp_path / "out"), "--model", str(tiny_checkpoint)])
    assert result.exit_code == 1 and "--teacher-tokens-per-frame" in result.output
