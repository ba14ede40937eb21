"""`crosslmm finetune` on CPU with a tiny checkpoint and a generated folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from crosslmm_cli.app import app
from crosslmm_cli.finetune.sharding import FSDP_CONFIG
from crosslmm_cli.synthetic_video import index_frames, write_video
from crosslmm.loading import load_model
from tests.helpers import free_port

runner = CliRunner()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    (root / "clips").mkdir()
    for i in range(4):
        write_video(root / "clips" / f"c{i}.mp4", index_frames(12, 64, 64), (64, 64), 10, "libx264", 4)
    rows = [
        {"video": "clips/c0.mp4", "question": "What is it?", "answer": "A red ball."},
        {"video": "clips/c1.mp4", "conversations": [
            {"from": "human", "value": "<video>\nWho is there?"}, {"from": "gpt", "value": "A cat."},
            {"from": "human", "value": "And then?"}, {"from": "gpt", "value": "It sleeps."}]},
        {"video": "clips/c2.mp4", "caption": "Waves on a beach."},
        {"video": "clips/c3.mp4", "question": "Colour?", "answer": "Green."},
    ]
    lines = [json.dumps(row) for row in rows] + [
        "{not json",
        json.dumps({"video": "../outside.mp4", "question": "q", "answer": "a"}),
        json.dumps({"video": "clips/missing.mp4", "question": "q", "answer": "a"}),
    ]
    (root / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    return root


def train(folder, output, *flags):
    return runner.invoke(app, ["finetune", str(folder), "--output", str(output), "--frames", "2", *flags])


def metrics(output):
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def weights(path):
    return {name: tensor.clone() for name, tensor in load_model(path).state_dict().items()}


def changed(before: dict, after: dict) -> set[str]:
    return {name for name in before if not torch.equal(before[name], after[name])}


def test_a_few_steps_reduce_the_loss_and_the_output_answers(folder, tiny_checkpoint, tmp_path, videos, device):
    out = tmp_path / "out"  # on CUDA under bf16 autocast
    result = train(folder, out, "--model", str(tiny_checkpoint), "--full", "--max-steps", "24", "--lr", "2e-3",
                   "--batch-size", "2", "--device", device)
    assert result.exit_code == 0, result.output
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 25))
    assert set(rows[0]) == {"step", "epoch", "loss", "lr", "grad_norm", "samples_per_s"}
    first, last = sum(r["loss"] for r in rows[:4]) / 4, sum(r["loss"] for r in rows[-4:]) / 4
    assert last < 0.8 * first, (first, last)
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    answer = runner.invoke(app, ["ask", str(videos["mp4"]), "What is it?", "--model", str(out), "--frames", "2",
                                 "--max-new-tokens", "3"])
    assert answer.exit_code == 0, answer.output


def test_bad_rows_are_reported_with_their_lines(folder, tiny_checkpoint, tmp_path):
    result = train(folder, tmp_path / "o", "--model", str(tiny_checkpoint), "--stage", "1", "--max-steps", "1")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "annotations.jsonl line 5: malformed JSON" in text
    assert "annotations.jsonl line 6: media path '../outside.mp4' leaves" in text
    assert "annotations.jsonl line 7: video missing.mp4 is missing" in text
    assert "(3 skipped)" in text and "3 bad rows left out" in text
    strict = train(folder, tmp_path / "s", "--model", str(tiny_checkpoint), "--stage", "1", "--strict")
    assert strict.exit_code == 1 and "Traceback" not in strict.output
    assert "3 damaged files or bad rows (first: source 0" in " ".join(strict.output.split())


def test_stage_one_trains_only_the_projector_and_v2v(folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "stage1"
    assert train(folder, out, "--model", str(tiny_checkpoint), "--stage", "1", "--max-steps", "3").exit_code == 0
    assert (out / "trained.safetensors").exists() and not (out / "model.safetensors").exists()  # smaller: + base pointer
    touched = changed(weights(tiny_checkpoint), weights(out))
    assert touched and all(n.startswith("multi_modal_projector.") or ".cross_attn.v2v." in n or n == "video_separator.weight"
                           for n in touched), sorted(touched)
    assert any(n.startswith("multi_modal_projector.") for n in touched)
    assert any(".cross_attn.v2v." in n for n in touched)
    assert json.loads((out / "config.json").read_text())["t2v"] is False


def test_stage_two_lora_trains_adapters_dcal_and_projector(folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "stage2"
    result = train(folder, out, "--model", str(tiny_checkpoint), "--max-steps", "3", "--lr", "1e-3")
    assert result.exit_code == 0, result.output
    touched = changed(weights(tiny_checkpoint), weights(out))
    allowed = re.compile(r"multi_modal_projector\..*|video_separator\.weight|.*\.cross_attn\.(v2v|t2v)\..*|"
                         r"language_model\.model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight")
    assert all(allowed.fullmatch(n) for n in touched), sorted(n for n in touched if not allowed.fullmatch(n))
    assert any(".cross_attn.t2v." in n for n in touched)
    assert any(n.endswith("self_attn.q_proj.weight") and "cross_attn" not in n for n in touched)  # LoRA merged in
    assert not any("lora" in n for n in weights(out))


def test_lora_checkpoints_hold_the_trained_tensors_and_optimizer_state_only(folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "lora"
    result = train(folder, out, "--model", str(tiny_checkpoint), "--max-steps", "2", "--save-every", "2")
    assert result.exit_code == 0, result.output
    [checkpoint] = (out / "checkpoints").iterdir()
    saved = safe_open(str(checkpoint / "model.safetensors"), "pt")
    trained_bytes = sum(saved.get_tensor(name).numel() * 4 for name in saved.keys())
    assert any("lora_A" in name for name in saved.keys())
    assert not any(name.endswith("base_layer.weight") for name in saved.keys())  # frozen weights stay in the base
    # AdamW keeps two moments per trained value: weights + optimizer state = 3x the trained bytes
    size = sum(f.stat().st_size for f in checkpoint.iterdir())
    assert size <= 2 * 3 * trained_bytes
    base_bytes = sum(f.stat().st_size for f in tiny_checkpoint.glob("*.safetensors"))
    assert trained_bytes < base_bytes / 2


def test_train_vision_opens_the_vision_tower(folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "vision"
    result = train(folder, out, "--model", str(tiny_checkpoint), "--full", "--train-vision", "--vision-lr", "1e-3",
                   "--max-steps", "2")
    assert result.exit_code == 0, result.output
    assert any(n.startswith("vision_tower.") for n in changed(weights(tiny_checkpoint), weights(out)))


def stop_after_checkpoint(folder, output, flags, monkeypatch, step: int) -> None:
    """A run of ``flags`` stopped as Ctrl-C would, right after its checkpoint of ``step``."""
    from crosslmm_cli.finetune import train as train_module

    real_save = train_module.save_state

    def save_then_stop(accelerator, settings, launch, saved_step, *rest):
        real_save(accelerator, settings, launch, saved_step, *rest)
        if saved_step == step:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "save_state", save_then_stop)
        assert train(folder, output, *flags).exit_code == 130


def test_resume_drops_a_half_written_metrics_line(folder, tiny_checkpoint, tmp_path, monkeypatch):
    """A crash or a full disk mid-write leaves metrics.jsonl ending in half a line: --resume goes on
    with the complete rows and ends with the rows of a run never stopped."""
    common = ["--model", str(tiny_checkpoint), "--full", "--max-steps", "4", "--save-every", "2", "--lr", "1e-3",
              "--no-gradient-checkpointing"]
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert train(folder, straight, *common).exit_code == 0
    stop_after_checkpoint(folder, cut, common, monkeypatch, 2)
    with open(cut / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "epoch": 0, "loss": 5.1')
    resumed = train(folder, cut, *common, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert [r["step"] for r in metrics(cut)] == [1, 2, 3, 4]
    assert [r["loss"] for r in metrics(cut)] == pytest.approx([r["loss"] for r in metrics(straight)], rel=1e-5)


class _RunsCode:
    """Unpickling this calls os.system: what a planted checkpoint file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("name", ["optimizer.bin", "random_states_0.pkl"])
@pytest.mark.parametrize("layout", ["raw pickle", "torch archive"])
def test_planted_pickles_in_a_checkpoint_are_refused_unread(folder, tiny_checkpoint, tmp_path, monkeypatch, name, layout):
    import pickle

    common = ["--model", str(tiny_checkpoint), "--full", "--max-steps", "4", "--save-every", "2", "--workers", "0"]
    out, marker = tmp_path / "run", tmp_path / "code-ran"
    stop_after_checkpoint(folder, out, common, monkeypatch, 2)
    planted = out / "checkpoints" / "step-000002" / name
    if layout == "raw pickle":
        planted.write_bytes(pickle.dumps(_RunsCode(marker)))
    else:
        torch.save(_RunsCode(marker), planted)
    result = train(folder, out, *common, "--resume")
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert ("not a file crosslmm wrote" if layout == "raw pickle" else "cannot be read without running code") in errors[0]
    assert not marker.exists()


def test_resume_restores_the_random_states_it_saved(folder, tiny_checkpoint, tmp_path, monkeypatch):
    """accelerate skips random_states_0.pkl silently when it does not load: the resume must really
    put the saved states back (the file read with torch's weights-only reader is the reference)."""
    import numpy as np
    from accelerate import Accelerator

    from crosslmm_cli.finetune.train import load_training_state

    out = tmp_path / "run"
    stop_after_checkpoint(folder, out, ["--model", str(tiny_checkpoint), "--full", "--max-steps", "4", "--save-every", "2",
                                        "--workers", "0"], monkeypatch, 2)
    checkpoint = out / "checkpoints" / "step-000002"
    numpy_array = [np.ndarray, np.dtype, np._core.multiarray._reconstruct, type(np.dtype(np.uint32))]
    with torch.serialization.safe_globals(numpy_array):
        saved = torch.load(checkpoint / "random_states_0.pkl", weights_only=True)
    torch.manual_seed(12345)
    np.random.seed(12345)
    load_training_state(Accelerator(cpu=True), checkpoint)
    assert torch.equal(torch.get_rng_state(), saved["torch_manual_seed"])
    assert np.array_equal(np.random.get_state()[1], saved["numpy_random_seed"][1])


@pytest.mark.parametrize("stage", [["--full"], []], ids=["full", "lora"])
def test_resume_continues_from_the_saved_step_with_the_same_data_order(folder, tiny_checkpoint, tmp_path, monkeypatch,
                                                                      stage):
    common = ["--model", str(tiny_checkpoint), *stage, "--max-steps", "6", "--save-every", "3", "--lr", "1e-3",
              "--no-gradient-checkpointing"]
    straight = tmp_path / "straight"
    assert train(folder, straight, *common).exit_code == 0

    interrupted = tmp_path / "interrupted"
    stop_after_checkpoint(folder, interrupted, common, monkeypatch, 3)
    again = train(folder, interrupted, *common)
    assert again.exit_code == 1 and "--resume" in again.output
    resumed = train(folder, interrupted, *common, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming from step-000003" in resumed.output
    assert [r["step"] for r in metrics(interrupted)] == list(range(1, 7))
    assert [r["loss"] for r in metrics(interrupted)] == pytest.approx([r["loss"] for r in metrics(straight)], rel=1e-5)
    before, after = weights(straight), weights(interrupted)
    assert all(torch.allclose(before[n], after[n], atol=1e-6) for n in before)


def test_a_save_cut_short_is_never_resumed_from(folder, tiny_checkpoint, tmp_path, monkeypatch):
    """Killed while writing step 6: the later --resume starts from step 3, the last complete
    checkpoint, and ends with the weights of a run never interrupted; stray folders are ignored."""
    common = ["--model", str(tiny_checkpoint), "--full", "--max-steps", "6", "--save-every", "3", "--lr", "1e-3",
              "--no-gradient-checkpointing"]
    straight = tmp_path / "straight"
    assert train(folder, straight, *common).exit_code == 0

    from accelerate import Accelerator

    real_save = Accelerator.save_state

    def save_then_die(self, output_dir=None, **kwargs):
        real_save(self, output_dir, **kwargs)  # accelerate's files are all there ...
        if "step-000006" in str(output_dir):
            raise KeyboardInterrupt  # ... but the checkpoint was never completed

    monkeypatch.setattr(Accelerator, "save_state", save_then_die)
    interrupted = tmp_path / "interrupted"
    assert train(folder, interrupted, *common).exit_code == 130
    monkeypatch.setattr(Accelerator, "save_state", real_save)
    (interrupted / "checkpoints" / "step-backup").mkdir()  # made by hand
    (interrupted / "checkpoints" / "step-000009").mkdir()  # empty: not a checkpoint
    resumed = train(folder, interrupted, *common, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming from step-000003" in resumed.output
    before, after = weights(straight), weights(interrupted)
    assert all(torch.allclose(before[n], after[n], atol=1e-6) for n in before)
    assert sorted(p.name for p in (interrupted / "checkpoints").iterdir()) == [
        "step-000003", "step-000006", "step-000009", "step-backup"]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--lr", "1e-2"], "--lr was 0.001, now 0.01"),
        (["--lora-rank", "8"], "--lora-rank was 16, now 8"),
        (["--max-steps", "8"], "--max-steps was 6, now 8"),
        (["--frames", "3"], "--frames was 2, now 3"),
    ],
)
def test_resume_refuses_settings_that_change_the_run(folder, tiny_checkpoint, tmp_path, flags, message):
    def finetune(options: dict, *extra):
        flat = [item for pair in options.items() for item in pair]
        return runner.invoke(app, ["finetune", str(folder), "--output", str(tmp_path / "run"), "--full", *flat, *extra])

    options = {"--model": str(tiny_checkpoint), "--max-steps": "6", "--save-every": "3", "--lr": "1e-3", "--frames": "2"}
    assert finetune(options).exit_code == 0
    result = finetune({**options, **dict(zip(flags[::2], flags[1::2]))}, "--resume")
    assert result.exit_code == 1 and "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert "--resume with other settings" in text and message in text


def test_a_folder_run_saved_before_folders_became_a_source_is_not_resumed(folder, tiny_checkpoint, tmp_path):
    """Such a run read the folder in another order (its own loader); resuming it would train other rows."""
    common = ["--model", str(tiny_checkpoint), "--full", "--max-steps", "2", "--save-every", "1"]
    run = tmp_path / "run"
    assert train(folder, run, *common).exit_code == 0
    for state in (run / "checkpoints").glob("step-*/trainer_state.json"):  # as the folder loader saved it
        saved = json.loads(state.read_text())
        saved["settings"]["global_batch"] = None
        state.write_text(json.dumps(saved))
    result = train(folder, run, *common, "--resume")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "saved by an earlier crosslmm, which read a training folder in another order" in " ".join(result.output.split())


def test_resume_may_change_how_often_it_saves(folder, tiny_checkpoint, tmp_path):
    common = ["--model", str(tiny_checkpoint), "--full", "--max-steps", "4", "--lr", "1e-3"]
    run = tmp_path / "run"
    assert train(folder, run, *common, "--save-every", "3").exit_code == 0
    # the run ended at step 4; a resume with another --save-every is accepted and has nothing left to do
    result = train(folder, run, *common, "--save-every", "2", "--resume")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("where", ["model", "folder", "inside-folder", "holds-model"])
def test_output_never_overwrites_an_input(folder, tiny_checkpoint, tmp_path, where):
    import shutil

    model = tmp_path / "base"
    shutil.copytree(tiny_checkpoint, model)
    config = (model / "config.json").read_text()
    output = {"model": model, "folder": folder, "inside-folder": folder / "out", "holds-model": tmp_path}[where]
    result = train(folder, output, "--model", str(model), "--stage", "1", "--max-steps", "1")
    assert result.exit_code == 1 and "training never writes over its inputs" in result.output
    assert (model / "config.json").read_text() == config and not (folder / "out").exists()


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--stage", "3"], "--stage must be 1 or 2"),
        (["--stage", "1", "--full"], "belong to stage 2"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--resume"], "holds no checkpoint"),
    ],
)
def test_bad_finetune_flags(folder, tiny_checkpoint, tmp_path, flags, message):
    result = train(folder, tmp_path / "x", "--model", str(tiny_checkpoint), *flags)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def launch(launcher: list[str], module: str, folder, out, *flags, env: dict | None = None):
    """``crosslmm finetune`` in 2 CPU processes under ``launcher`` (torchrun or accelerate launch)."""
    command = [sys.executable, "-m", *launcher, "-m", module, "finetune", str(folder), "--output", str(out),
               "--frames", "2", "--workers", "0", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def torchrun() -> list[str]:
    return ["torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]


def accelerate_fsdp() -> list[str]:
    """accelerate's launcher with the FSDP config crosslmm ships, on 2 processes without GPUs."""
    return ["accelerate.commands.launch", "--config_file", FSDP_CONFIG, "--num_processes", "2",
            "--mixed_precision", "no", "--main_process_port", str(free_port())]


def test_two_gloo_processes_train_and_write_one_checkpoint(folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "ddp"
    flags = ["--model", str(tiny_checkpoint), "--full", "--max-steps", "3"]
    done = launch(torchrun(), "crosslmm_cli.app", folder, out, *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and len(metrics(out)) == 3
    assert done.stderr.count("trained 3 steps") == 1  # the summary comes from the main process only
    assert "find_unused_parameters" not in done.stderr  # DDP's warning: every trained parameter has a gradient
    load_model(out)
    # the learning-rate schedule is transformers', step for step, however many processes step it
    single = tmp_path / "single"
    assert train(folder, single, *flags, "--workers", "0").exit_code == 0
    assert [r["lr"] for r in metrics(out)] == pytest.approx([r["lr"] for r in metrics(single)])


@pytest.mark.parametrize("stage", [["--stage", "1"], ["--stage", "2"]], ids=["stage 1", "stage 2 with LoRA"])
def test_two_gloo_processes_train_each_stage_without_searching_for_unused_parameters(folder, tiny_checkpoint, tmp_path,
                                                                                    stage):
    """DDP is told that every trained parameter gets a gradient (no graph search after each
    backward, no warning): a stage that trained an unused one would stop at its second step."""
    done = launch(torchrun(), "crosslmm_cli.app", folder, tmp_path / "run", "--model", str(tiny_checkpoint), *stage,
                  "--max-steps", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "find_unused_parameters" not in done.stderr and "Traceback" not in done.stderr


def test_fsdp_on_two_gloo_processes_trains_as_ddp_and_resumes_from_its_shards(folder, tiny_checkpoint, tmp_path):
    """Full fine-tuning with the vision tower, sharded by accelerate's FSDP2 on 2 gloo processes
    (tests/fsdp_on_cpu.py lets accelerate shard on CPU as it does on GPUs): the weights of DDP,
    checkpoints written as one shard per process, and a run stopped after its step-2 checkpoint
    and resumed ends with the weights of the run never stopped."""
    flags = ["--model", str(tiny_checkpoint), "--full", "--train-vision", "--vision-lr", "1e-3", "--lr", "1e-3",
             "--max-steps", "4", "--save-every", "2"]
    ddp, fsdp, stopped = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "stopped"
    for launcher, module, out in ((torchrun(), "crosslmm_cli.app", ddp), (accelerate_fsdp(), "tests.fsdp_on_cpu", fsdp)):
        done = launch(launcher, module, folder, out, *flags)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "find_unused_parameters" not in done.stderr
    reference, sharded = weights(ddp), weights(fsdp)
    assert any(n.startswith("vision_tower.") for n in changed(weights(tiny_checkpoint), sharded))
    assert all(torch.allclose(reference[n], sharded[n], rtol=1e-4, atol=1e-6) for n in reference)
    shards = {p.name: p.stat().st_size for p in (fsdp / "checkpoints" / "step-000004" / "pytorch_model_fsdp_0").glob("*.distcp")}
    assert sorted(shards) == ["__0_0.distcp", "__1_0.distcp"]
    assert max(shards.values()) < 0.6 * sum(shards.values())  # each process wrote about half of the weights

    cut = launch(accelerate_fsdp(), "tests.fsdp_on_cpu", folder, stopped, *flags, env={"CROSSLMM_TEST_STOP_AT_STEP": "2"})
    assert cut.returncode != 0 and [r["step"] for r in metrics(stopped)] == [1, 2]
    resumed = launch(accelerate_fsdp(), "tests.fsdp_on_cpu", folder, stopped, *flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step-000002" in resumed.stderr
    assert [r["loss"] for r in metrics(stopped)] == pytest.approx([r["loss"] for r in metrics(fsdp)], rel=1e-5)
    after = weights(stopped)
    assert all(torch.allclose(sharded[n], after[n], atol=1e-6) for n in sharded)


def test_fsdp_refuses_what_it_cannot_shard(folder, tiny_checkpoint, tmp_path):
    # accelerate alone would run DDP under the FSDP config on CPU: refused before loading anything
    done = launch(accelerate_fsdp(), "crosslmm_cli.app", folder, tmp_path / "cpu", "--model", str(tiny_checkpoint), "--full")
    assert done.returncode != 0 and "asks for FSDP, which accelerate runs on CUDA GPUs only" in done.stderr
    assert 'crosslmm_cli/' not in done.stderr  # the launcher reports the failed processes; they print no traceback
    lora = launch(accelerate_fsdp(), "tests.fsdp_on_cpu", folder, tmp_path / "lora", "--model", str(tiny_checkpoint))
    assert lora.returncode != 0 and "FSDP shards full fine-tuning: add --full" in lora.stderr


def test_qlora_on_a_4bit_base_saves_merged_full_precision_weights(folder, tiny_checkpoint, tmp_path, device):
    out = tmp_path / "qlora"
    result = train(folder, out, "--model", str(tiny_checkpoint), "--quantize", "nf4", "--max-steps", "2", "--lr", "1e-2",
                   "--device", device)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # merged into full precision, loadable with or without 4-bit
    touched = changed(weights(tiny_checkpoint), weights(out))
    assert any(".cross_attn.t2v." in n for n in touched)
    assert any(n.endswith("mlp.down_proj.weight") for n in touched)
    bad = train(folder, tmp_path / "x", "--model", str(tiny_checkpoint), "--quantize", "nf4", "--full")
    assert bad.exit_code == 1 and "QLoRA" in bad.output


def test_gate_init_opens_the_trained_gates(folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "gates"
    result = train(folder, out, "--model", str(tiny_checkpoint), "--full", "--gate-init", "0.5", "--lr", "1e-7",
                   "--max-steps", "1", "--no-t2v")
    assert result.exit_code == 0, result.output
    model = load_model(out)
    for layer in model.cross_attention_layers()[:-1]:  # the last has no V2V
        assert layer.cross_attn.v2v.gate.scale.item() == pytest.approx(0.5, abs=1e-3)
    for layer in model.cross_attention_layers():
        assert layer.cross_attn.t2v.gate.scale.item() == 0.0  # not trained, left closed


def folder_dataset(folder, processor, cache_bytes: int = 2 << 30):
    """The folder as finetune reads it: one surveyed source, its samples decoded and tokenised."""
    from crosslmm_cli.training_data.dataset import MixtureDataset
    from crosslmm_cli.training_data.folder import FolderRows
    from crosslmm_cli.training_data.order import SampleOrder

    source = FolderRows(folder.name, folder)
    source.survey()
    return MixtureDataset(SampleOrder([source], [1.0], seed=0), processor, frames=2, cache_bytes=cache_bytes)


def test_decoded_clips_are_cached_up_to_a_byte_budget(folder, monkeypatch):
    from crosslmm.builders import build_tiny
    from crosslmm_cli.training_data import dataset as dataset_module

    decoded = []
    real_read_frames = dataset_module.read_frames

    def counting_read_frames(video, request):
        decoded.append(video.name)
        return real_read_frames(video, request)

    monkeypatch.setattr(dataset_module, "read_frames", counting_read_frames)
    _, processor = build_tiny()
    dataset = folder_dataset(folder, processor)
    source = dataset.order.sources[0]
    clips = {record.media[0].name: record.media[0] for record in (source.read(0, row) for row in range(source.count(0)))}
    clip_bytes = dataset.frames_of(clips["c0.mp4"], 2).nbytes
    dataset = folder_dataset(folder, processor, cache_bytes=2 * clip_bytes)  # room for two clips
    decoded.clear()
    for name in ["c0.mp4", "c1.mp4", "c0.mp4", "c2.mp4", "c0.mp4", "c1.mp4"]:
        dataset.frames_of(clips[name], 2)
    # c2 pushes out c1 (least recently used), not c0; c1 is then decoded again
    assert decoded == ["c0.mp4", "c1.mp4", "c2.mp4", "c1.mp4"]
    assert dataset.clips.total_bytes == 2 * clip_bytes


def test_memory_position_is_added_trained_and_loaded_with_a_trained_only_output(folder, tiny_checkpoint, tmp_path,
                                                                                 videos):
    out = tmp_path / "stage1"
    result = train(folder, out, "--model", str(tiny_checkpoint), "--stage", "1", "--max-steps", "2", "--gate-init", "0.5",
                   "--memory-position")
    assert result.exit_code == 0, result.output
    assert not (out / "model.safetensors").exists()  # trained tensors + base pointer: the base has no memory position
    model = load_model(out)
    assert model.config.memory_position and model.memory_position.patch.detach().abs().sum() > 0  # it trained
    ask = runner.invoke(app, ["ask", str(videos["mp4"]), "What?", "--model", str(out), "--frames", "2",
                              "--max-new-tokens", "2"])
    assert ask.exit_code == 0, ask.output


def test_outputs_keep_the_base_dtype(folder, tmp_path):
    from safetensors import safe_open

    base = tmp_path / "bf16"
    assert runner.invoke(app, ["init", "tiny", str(base), "--dtype", "bf16"]).exit_code == 0
    out = tmp_path / "out"
    result = train(folder, out, "--model", str(base), "--full", "--max-steps", "2")
    assert result.exit_code == 0, result.output
    with safe_open(str(out / "model.safetensors"), "pt") as weights:  # safetensors' own reader
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"BF16"}


def test_a_stage_one_output_moves_with_its_base_and_names_it_when_gone(folder, tiny_checkpoint, tmp_path, videos):
    import shutil

    project = tmp_path / "project"
    shutil.copytree(tiny_checkpoint, project / "base")
    assert train(folder, project / "stage1", "--model", str(project / "base"), "--stage", "1",
                 "--max-steps", "1").exit_code == 0
    assert json.loads((project / "stage1" / "config.json").read_text())["base_checkpoint"] == "../base"
    moved = tmp_path / "moved"
    project.rename(moved)  # both together: still loads
    ask = ["ask", str(videos["mp4"]), "What?", "--model", str(moved / "stage1"), "--frames", "2", "--max-new-tokens", "2"]
    result = runner.invoke(app, ask)
    assert result.exit_code == 0, result.output
    (moved / "base").rename(tmp_path / "elsewhere")  # the base alone moved away
    result = runner.invoke(app, ask)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output
    assert str(moved / "base") in errors[0] and "missing" in errors[0] and "hub" not in errors[0]


@pytest.fixture(scope="module")
def damaged_folder(tmp_path_factory):
    """Four good clips and, among them, two rows whose videos exist but do not decode."""
    root = tmp_path_factory.mktemp("damaged")
    for i in range(4):
        write_video(root / f"c{i}.mp4", index_frames(12, 64, 64), (64, 64), 10, "libx264", 4)
    (root / "notes.mp4").write_text("this is not a video\n")
    (root / "cut.mp4").write_bytes((root / "c0.mp4").read_bytes()[:600])
    videos = ["c0.mp4", "notes.mp4", "c1.mp4", "c2.mp4", "cut.mp4", "c3.mp4"]
    (root / "annotations.jsonl").write_text("".join(
        json.dumps({"video": name, "question": f"Which clip is {name}?", "answer": f"Clip {name}."}) + "\n"
        for name in videos))
    return root


def loader_batches(folder, workers: int, epochs: int = 2) -> list[dict]:
    """Every micro-batch the training loop would get, as finetune builds its loader (batches of 2)."""
    from crosslmm.builders import build_tiny
    from crosslmm_cli.training_data.collate import visual_stand_in
    from crosslmm_cli.training_data.loader import StepSampler, make_mixture_loader

    _, processor = build_tiny()
    dataset = folder_dataset(folder, processor)
    steps = epochs * dataset.order.sources[0].count(0) // 2
    loader = make_mixture_loader(dataset, StepSampler(0, steps, 2, 2, 0, 1), processor.tokenizer.pad_token_id, workers,
                                 stand_in=visual_stand_in(processor))
    return list(loader)


def test_workers_on_and_off_give_the_same_batches_in_the_same_order(damaged_folder):
    without, with_workers = loader_batches(damaged_folder, 0), loader_batches(damaged_folder, 2)
    assert len(without) == len(with_workers) == 6  # 6 rows, batches of 2, 2 epochs: a skipped row is stood in for
    for one, other in zip(without, with_workers):
        assert one.keys() == other.keys()
        for key, value in one.items():
            assert torch.equal(value, other[key]) if isinstance(value, torch.Tensor) else value == other[key], key
    orders = [name for batch in without for _, name in batch["samples"]]
    assert orders[:6] != orders[6:]  # reshuffled each epoch, so the comparison covers two orders
    reported = {key for batch in with_workers for _, key, _ in batch["problems"]}
    assert reported == {"annotations.jsonl/line 2", "annotations.jsonl/line 5"}


def test_a_run_with_workers_trains_exactly_as_one_without(folder, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same torch threads in both runs, so the sums agree bit for bit
    common = ["--model", str(tiny_checkpoint), "--full", "--max-steps", "4", "--lr", "1e-3", "--batch-size", "2",
              "--epochs", "2"]
    runs = {}
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}"
        result = train(folder, out, *common, "--workers", workers)
        assert result.exit_code == 0, result.output
        runs[workers] = out
    assert [r["loss"] for r in metrics(runs["0"])] == [r["loss"] for r in metrics(runs["2"])]
    before, after = weights(runs["0"]), weights(runs["2"])
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_a_video_that_does_not_decode_is_skipped_with_its_line(damaged_folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = train(damaged_folder, out, "--model", str(tiny_checkpoint), "--full", "--epochs", "3", "--workers", "2")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert re.search(r"skipped source 0, annotations.jsonl/line 2: \S*notes\.mp4 is not a readable video", text)
    assert re.search(r"skipped source 0, annotations.jsonl/line 5: \S*cut\.mp4", text), text
    assert text.count("jsonl/line 2:") == 1 and text.count("jsonl/line 5:") == 1  # once, though read each epoch
    assert "on 18 samples (2 skipped)" in text
    assert len(metrics(out)) == 18  # 6 rows x 3 epochs: the rows that stand in keep every step full
    strict = train(damaged_folder, tmp_path / "strict", "--model", str(tiny_checkpoint), "--full", "--strict",
                   "--workers", "2")
    assert strict.exit_code == 1 and "Traceback" not in strict.output
    assert re.search(r"line [25]: .*drop --strict", " ".join(strict.output.split()))


def test_a_folder_of_videos_that_do_not_decode_stops_with_one_line(tmp_path, tiny_checkpoint):
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_text("not a video\n")
    (tmp_path / "annotations.jsonl").write_text("".join(
        json.dumps({"video": name, "caption": "x"}) + "\n" for name in ("a.mp4", "b.mp4")))
    result = train(tmp_path, tmp_path.parent / f"{tmp_path.name}-out", "--model", str(tiny_checkpoint), "--workers", "1")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "none of its samples could be read (2 tried; first: annotations.jsonl/line 1: " in " ".join(result.output.split())


def test_train_vision_leaves_out_the_key_biases_the_softmax_cancels(tmp_path):
    """Autograd is the reference: the vision tower's attention key biases get no gradient but
    rounding (a constant added to all of a query's scores), so --train-vision does not train them;
    every other weight of its encoder layers it trains."""
    from crosslmm import build_tiny
    from crosslmm_cli.finetune.train import FinetuneSettings, configure_stage
    from tests.helpers import open_gates, question, random_video

    model, processor = build_tiny(seed=0)
    open_gates(model, 0.7)
    model.train()
    batch = processor(question(), [random_video(3)])
    model(**batch, labels=batch["input_ids"]).loss.backward()
    gradients = {n: p.grad.abs().max().item() for n, p in model.vision_tower.named_parameters() if p.grad is not None}
    keys = [n for n in gradients if n.endswith("self_attn.k_proj.bias")]
    assert keys and all(gradients[n] < 1e-6 * gradients[n.replace(".k_proj.", ".q_proj.")] for n in keys)

    (tmp_path / "data").mkdir()
    settings = FinetuneSettings(tmp_path / "data", tmp_path / "out", full=True, train_vision=True)
    model, groups = configure_stage(build_tiny(seed=0)[0], settings)
    trained = {id(p) for group in groups for p in group["params"]}
    for name, p in model.vision_tower.encoder.named_parameters():
        assert (id(p) in trained) == (not name.endswith("self_attn.k_proj.bias")), name


@pytest.mark.parametrize("flags", [["--stage", "1"], ["--stage", "2"], ["--stage", "2", "--full", "--train-vision"]],
                         ids=["stage 1", "stage 2 LoRA", "stage 2 full with vision"])
def test_every_trained_parameter_receives_a_gradient(folder, tiny_checkpoint, tmp_path, flags):
    """What a stage opens for training all learns: after one step (LoRA's B and the gates start at
    zero, which holds back the gradient of what lies behind them), every trained tensor has a
    nonzero gradient; none is dead weight in the optimizer."""
    from crosslmm_cli.finetune.train import FinetuneSettings, configure_stage
    from crosslmm_cli.model_source import open_model
    from crosslmm_cli.training_data.collate import collate

    stage = int(flags[1])
    settings = FinetuneSettings(folder=folder, output=tmp_path / "o", model=str(tiny_checkpoint), stage=stage,
                                full="--full" in flags, train_vision="--train-vision" in flags, device="cpu")
    model, processor = open_model(settings.model, device="cpu", quantize="none", dtype=torch.float32)
    model.train()
    model, groups = configure_stage(model, settings)
    dataset = folder_dataset(folder, processor)
    batch = collate([dataset.from_stream(0, position) for position in (0, 1)], processor.tokenizer.pad_token_id)
    batch = {name: value for name, value in batch.items() if isinstance(value, torch.Tensor)}  # the model's inputs
    optimizer = torch.optim.SGD([p for g in groups for p in g["params"]], lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trained and {id(p) for p in trained.values()} == {id(p) for g in groups for p in g["params"]}
    dead = sorted(name for name, p in trained.items() if p.grad is None or not p.grad.abs().max() > 0)
    assert not dead, dead
    # without rotary positions (cross-attention, the vision tower) a key bias adds one constant to all
    # scores of a query, which the softmax cancels: its gradient is rounding noise (1e-13 against 1e-4
    # for the value bias here), so it is not trained; the LLM's own keys are rotated, their bias learns
    unrotated = [name for name in trained if name.endswith("k_proj.bias") and (".cross_attn." in name or
                                                                               name.startswith("vision_tower."))]
    assert not unrotated, unrotated


def test_a_multiple_choice_row_is_trained_on_the_prompt_eval_scores_it_with(tiny_checkpoint, videos):
    """The reference is what `crosslmm eval jsonl` feeds the model for the row: its task's prompt,
    asked as the first question about the video. Training once showed the question without its
    options and learned the option's text instead of its letter."""
    from crosslmm import load_checkpoint
    from crosslmm_cli.ask import AskSettings, VideoChat
    from crosslmm_cli.evaluation.tasks import TASKS, Doc
    from crosslmm_cli.training_data.tokens import IGNORE_INDEX, tokenize_conversation
    from crosslmm_cli.training_data.records import conversation
    from crosslmm_cli.video import SamplingRequest, read_frames

    model, processor = load_checkpoint(tiny_checkpoint)
    row = {"video": "h264.mp4", "question": "Which colour?", "options": ["red", "green", "blue"], "answer": "green"}
    doc, task = Doc(0, videos["mp4"], row, "jsonl"), TASKS["jsonl"]
    info, frames = read_frames(videos["mp4"], SamplingRequest(2))
    chat = VideoChat(model, processor, info, frames, AskSettings(model=str(tiny_checkpoint), frames=2), "none")
    asked = chat.first_question_inputs(task.prompt(doc))["input_ids"][0].tolist()
    ids, labels = tokenize_conversation(processor, conversation(row, "video"), len(frames.timestamps))
    assert ids[:len(asked)] == asked  # the prompt, token for token
    learned = processor.tokenizer.decode([token for token, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert learned.startswith(task.target(doc)) and task.target(doc) == "B"


@pytest.fixture(scope="module")
def with_text_rows(folder, tmp_path_factory):
    """The training folder plus text-only rows (no "video"), as LLaVA's mixtures hold them."""
    root = tmp_path_factory.mktemp("text")
    shutil.copytree(folder / "clips", root / "clips")
    rows = [{"video": "clips/c0.mp4", "question": "What is it?", "answer": "A red ball."},
            {"video": "clips/c1.mp4", "caption": "A cat sleeps."}]
    rows += [{"conversations": [{"from": "human", "value": f"Count to {n}."}, {"from": "gpt", "value": " ".join(map(str, range(1, n + 1)))}]}
             for n in range(3, 7)]
    rows += [{"question": "Capital of France?", "answer": "Paris."}]
    (root / "annotations.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def test_text_only_rows_train(with_text_rows, tiny_checkpoint, tmp_path):
    """They were refused ("a row needs video"); they train (their loss falls) and are counted."""
    out = tmp_path / "text"
    result = train(with_text_rows, out, "--model", str(tiny_checkpoint), "--full", "--lr", "1e-3", "--max-steps", "8",
                   "--batch-size", "2", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "5 text-only samples trained (no image or video)" in " ".join(result.output.split())
    assert "(0 skipped)" in " ".join(result.output.split())
    losses = [row["loss"] for row in metrics(out)]
    assert min(losses[-2:]) < losses[0]


def test_a_micro_batch_of_text_rows_trains_as_the_model_alone_would(tiny_open_checkpoint):
    """The stand-in row a text-only micro-batch gets (so that every process's backward reaches the
    visual parts) changes neither the loss nor any gradient of the text rows: the reference is the
    model on the text rows alone, without pixels."""
    from crosslmm import load_checkpoint
    from crosslmm_cli.training_data.collate import collate, no_frames, visual_stand_in
    from crosslmm_cli.training_data.tokens import tokenize_conversation

    model, processor = load_checkpoint(tiny_open_checkpoint)
    model.train()
    rows = []
    for n in (3, 5):
        messages = [{"role": "user", "content": f"Count to {n}."}, {"role": "assistant", "content": "1 2 3 4 5"[:2 * n - 1]}]
        ids, labels = tokenize_conversation(processor, messages, 0)
        rows.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "pixels": no_frames(processor),
                     "problems": []})
    pad = processor.tokenizer.pad_token_id
    alone = collate(rows, pad)
    assert "pixel_values_videos" not in alone and alone["stand_in"] == 0
    with_stand_in = collate(rows, pad, stand_in=visual_stand_in(processor))
    assert with_stand_in["stand_in"] == 1 and with_stand_in["pixel_values_videos"].shape[:2] == (3, 1)

    def loss_and_gradients(batch):
        model.zero_grad()
        inputs = {k: v for k, v in batch.items() if k not in ("problems", "text_only", "stand_in")}
        torch.manual_seed(0)
        loss = model(**inputs).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, gradients = loss_and_gradients(alone)
    stood_loss, stood_gradients = loss_and_gradients(with_stand_in)
    torch.testing.assert_close(stood_loss, loss, rtol=1e-6, atol=1e-7)
    for name, gradient in gradients.items():
        torch.testing.assert_close(stood_gradients[name], gradient, rtol=1e-5, atol=1e-7)
    visual = [n for n in stood_gradients if n not in gradients]  # reached only through the stand-in: all zero
    assert any("cross_attn" in n for n in visual) and any(n.startswith("vision_tower.") for n in visual)
    assert all(not stood_gradients[n].any() for n in visual)


def test_two_gloo_processes_train_text_rows_beside_videos(with_text_rows, tiny_checkpoint, tmp_path):
    """A process whose micro-batch is all text and one whose micro-batch holds a video: without the
    stand-in row their backward passes reached different parameters, which DDP cannot reduce."""
    done = launch(torchrun(), "crosslmm_cli.app", with_text_rows, tmp_path / "run", "--model", str(tiny_checkpoint),
                  "--full", "--max-steps", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "find_unused_parameters" not in done.stderr and "Traceback" not in done.stderr


def test_resuming_a_run_saved_before_the_separator_module_is_refused_in_one_line(tmp_path):
    from safetensors.torch import save_file

    from crosslmm_cli.checkpoint_files import check_training_state
    from crosslmm_cli.errors import UserError

    step = tmp_path / "step-000002"
    step.mkdir()
    save_file({"video_separator": torch.zeros(4), "multi_modal_projector.linear_1.weight": torch.zeros(2, 2)},
              step / "model.safetensors")
    with pytest.raises(UserError, match="written by an older crosslmm"):
        check_training_state(step)
    save_file({"video_separator.weight": torch.zeros(4)}, step / "model.safetensors")
    check_training_state(step)
