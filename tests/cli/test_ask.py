"""`crosslmm ask` end to end on CPU with a tiny checkpoint and generated videos."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from crosslmm_cli.app import app
from crosslmm_cli.ask import AskSettings, prepare
from crosslmm import CrossLMMConfig, CrossLMMForConditionalGeneration
from tests.cli.conftest import BAD_VIDEOS

runner = CliRunner()


def ask(*args: str, input: str | None = None):
    return runner.invoke(app, ["ask", *args], input=input)


def test_ask_answers(videos, tiny_checkpoint, device):
    result = ask(str(videos["mp4"]), "What is shown?", "--model", str(tiny_checkpoint), "--max-new-tokens", "8",
                 "--frames", "4", "--device", device, "--quantize", "none", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["device"].startswith(device) and len(report["answer"]) > 0


def test_streamed_and_unstreamed_answers_agree(videos, tiny_checkpoint):
    common = [str(videos["webm"]), "Describe it.", "--model", str(tiny_checkpoint), "--max-new-tokens", "10"]
    streamed, whole = ask(*common), ask(*common, "--no-stream")
    assert streamed.exit_code == whole.exit_code == 0
    assert streamed.stdout == whole.stdout


def test_answer_is_streamed_piece_by_piece(videos, tiny_checkpoint):
    session = prepare(videos["mp4"], AskSettings(model=str(tiny_checkpoint), frames=3, max_new_tokens=6))
    pieces = []
    answer = session.ask("Go on", on_piece=pieces.append)
    assert len(pieces) >= 2 and "".join(pieces) == answer.text
    assert answer.generated_tokens == 6


def test_json_is_valid_and_complete(videos, tiny_checkpoint):
    result = ask(str(videos["avi"]), "What is shown?", "--model", str(tiny_checkpoint), "--max-new-tokens", "5",
                 "--frames", "6", "--json", "--time-instruction")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["question"] == "What is shown?" and isinstance(report["answer"], str)
    frames = report["frames"]
    assert len(frames["indices"]) == len(frames["timestamps"]) == len(frames["requested"]) == 6
    assert frames["seek"] in ("exact", "keyframe")
    assert report["video"]["frame_count"] == 100 and report["video"]["fps"] == 25.0
    assert set(report["timings"]) >= {"decode_s", "vision_s", "time_to_first_token_s", "generate_s", "tokens_per_s"}
    assert report["tokens"]["video_positions"] == 6 * 4 + 1
    assert report["tokens"]["generated"] == 5
    assert report["tokens"]["prompt"] > report["tokens"]["video_positions"]
    assert report["device"] == "cpu" and report["quantize"] == "none"


def test_chat_encodes_the_video_once(videos, tiny_checkpoint, monkeypatch):
    calls = []
    original = CrossLMMForConditionalGeneration.encode_frames

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CrossLMMForConditionalGeneration, "encode_frames", counting)
    result = ask(str(videos["mp4"]), "first?", "--model", str(tiny_checkpoint), "--max-new-tokens", "4", "--chat",
                 "--frames", "4", input="second?\nthird?\n")
    assert result.exit_code == 0, result.output
    assert len(calls) == 1
    assert len([line for line in result.stdout.splitlines() if line.strip()]) >= 3


def test_chat_keeps_the_conversation(videos, tiny_checkpoint):
    session = prepare(videos["mp4"], AskSettings(model=str(tiny_checkpoint), frames=2, max_new_tokens=3,
                                                 time_instruction=True, system="Be brief."))
    first = session.ask("one")
    second = session.ask("two")
    roles = [m["role"] for m in session.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert second.prompt_tokens > first.prompt_tokens
    prompt = session.processor.render_messages(session.messages)
    assert "The video lasts for 4.00 seconds, and 2 frames" in prompt and prompt.count("<video>") == 1
    assert "Be brief." in prompt


def test_quantised_generation_works(videos, tiny_checkpoint, device):
    # bitsandbytes' NF4 kernels run on the CPU too (measured), so --quantize nf4 is allowed there
    result = ask(str(videos["mp4"]), "What?", "--model", str(tiny_checkpoint), "--max-new-tokens", "3",
                 "--quantize", "nf4", "--json", "--frames", "2", "--device", device)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["quantize"] == "nf4" and report["device"].startswith(device)


@pytest.mark.parametrize("kind,message", BAD_VIDEOS)
def test_bad_videos_get_one_line(videos, tiny_checkpoint, kind, message):
    result = ask(str(videos[kind]), "q", "--model", str(tiny_checkpoint))
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--start", "100"], "past the end of the video"),
        (["--frames", "0"], "--frames must be at least 1"),
        (["--chat", "--json"], "cannot be combined"),
        (["--quantize", "fp3"], "--quantize must be one of"),
        (["--top-p", "0"], "--top-p must be in"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
        (["--tokens-per-frame", "7"], "perfect square"),
        (["--device", "cuda"], "no CUDA GPU"),
        (["--start", "3", "--end", "1"], "must come after --start"),
        (["--exact", "--seek", "keyframe"], "contradicts"),
    ],
)
def test_bad_flags_get_one_line(videos, tiny_checkpoint, flags, message):
    if "--device" in flags and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = ask(str(videos["mp4"]), "q", "--model", str(tiny_checkpoint), *flags)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_untrained_models_are_refused(videos, tiny_checkpoint, tmp_path):
    config = CrossLMMConfig.from_pretrained(tiny_checkpoint)
    config.needs_training = True
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    for file in tiny_checkpoint.iterdir():
        (untrained / file.name).write_bytes(file.read_bytes())
    config.save_pretrained(untrained)
    for model in (str(untrained), "crosslmm-2b", "crosslmm-7b"):
        result = ask(str(videos["mp4"]), "q", "--model", model)
        assert result.exit_code == 1 and "crosslmm finetune" in result.output, model


def test_unreachable_hub_is_one_line(videos, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise socket.gaierror("no network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    result = ask(str(videos["mp4"]), "q", "--model", "someone/some-model")
    assert result.exit_code == 1 and "unreachable" in result.output and "--model" in result.output


def test_a_directory_that_is_not_a_checkpoint(videos, tmp_path):
    result = ask(str(videos["mp4"]), "q", "--model", str(tmp_path))
    assert result.exit_code == 1 and "not a crosslmm checkpoint" in result.output


def test_a_preset_name_is_built_once_into_the_cache(videos, tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSLMM_HOME", str(tmp_path))
    for _ in range(2):
        result = ask(str(videos["mp4"]), "q", "--model", "tiny", "--max-new-tokens", "2", "--frames", "2")
        assert result.exit_code == 0, result.output
    assert (tmp_path / "tiny" / "model.safetensors").is_file()
    assert not (tmp_path / "tiny.partial").exists()


def test_ctrl_c_stops_cleanly(videos, tiny_checkpoint, monkeypatch):
    from crosslmm_cli.ask import VideoChat

    def interrupted(self, question, on_piece=None):
        on_piece("partial ")
        raise KeyboardInterrupt

    monkeypatch.setattr(VideoChat, "ask", interrupted)
    result = ask(str(videos["mp4"]), "q", "--model", str(tiny_checkpoint), "--frames", "2")
    assert result.exit_code == 130
    assert "interrupted" in result.output and "Traceback" not in result.output
