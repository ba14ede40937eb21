"""A `crosslmm init` directory is a Hugging Face checkpoint: after `import crosslmm`, transformers'
Auto classes load it (no remote code), the processor takes chat messages with video parts, and
`generate()` answers as `crosslmm ask` does; quantised and sharded saves load back with defaults."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor
from typer.testing import CliRunner

import crosslmm
from crosslmm import load_checkpoint, load_model, save_checkpoint
from crosslmm.loading import save_partial_checkpoint
from crosslmm_cli.app import app
from crosslmm_cli.ask import MAX_SIDE
from crosslmm_cli.checkpoint_files import weight_files
from crosslmm_cli.video import SamplingRequest, read_frames
from tests.helpers import question, random_video

REPOSITORY = Path(__file__).resolve().parents[2]


def test_auto_classes_load_an_init_directory(tiny_checkpoint):
    assert type(AutoConfig.from_pretrained(tiny_checkpoint)) is crosslmm.CrossLMMConfig
    for auto in (AutoModel, AutoModelForImageTextToText):
        assert type(auto.from_pretrained(tiny_checkpoint)) is crosslmm.CrossLMMForConditionalGeneration
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    assert type(processor) is crosslmm.CrossLMMProcessor
    assert type(processor.video_processor) is crosslmm.CrossLMMVideoProcessor
    generation = json.loads((tiny_checkpoint / "generation_config.json").read_text())
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in generation["eos_token_id"] and generation["suppress_tokens"] == [processor.video_token_id]


def test_hugging_face_generate_answers_as_crosslmm_ask(tiny_checkpoint, videos):
    """The transformers way (AutoProcessor, apply_chat_template, processor(text, videos), generate,
    batch_decode) on the frames `ask` samples gives `ask`'s answer."""
    result = CliRunner().invoke(app, ["ask", str(videos["mp4"]), "What is shown?", "--model", str(tiny_checkpoint),
                                      "--frames", "4", "--max-new-tokens", "12", "--json"])
    assert result.exit_code == 0, result.output
    expected = json.loads(result.stdout)["answer"]

    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint).eval()
    _, frames = read_frames(videos["mp4"], SamplingRequest(4, max_side=MAX_SIDE))
    prompt = processor.apply_chat_template(question("What is shown?"), add_generation_prompt=True)
    inputs = processor(text=prompt, videos=[frames.pixels])
    sequences = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = processor.batch_decode(sequences[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    assert answer == expected


@pytest.mark.parametrize("part", ["path", "video", "url"])
def test_a_chat_template_with_a_video_file_tokenizes_as_crosslmm_ask_reads_it(tiny_checkpoint, videos, part):
    """apply_chat_template(tokenize=True, return_dict=True) with a video part naming a file, as
    Qwen2-VL / LLaVA-OneVision users write it: the frames come from crosslmm's decoder, sampled by
    the processor kwargs, and generate() answers as `crosslmm ask --frames 4 --start 1` does."""
    result = CliRunner().invoke(app, ["ask", str(videos["mp4"]), "What is shown?", "--model", str(tiny_checkpoint),
                                      "--frames", "4", "--start", "1", "--max-new-tokens", "12", "--json"])
    assert result.exit_code == 0, result.output
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint).eval()
    source = f"file://{videos['mp4']}" if part == "url" else str(videos["mp4"])
    messages = [{"role": "user", "content": [{"type": "video", part: source}, {"type": "text", "text": "What is shown?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt", num_frames=4, start=1.0)
    assert inputs["num_frames"].tolist() == [4]
    sequences = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = processor.batch_decode(sequences[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    assert answer == json.loads(result.stdout)["answer"]


def test_an_image_through_the_processor_answers_as_crosslmm_ask(tiny_checkpoint, tmp_path):
    """processor(images=PIL) with a chat's image part, as LLaVA-OneVision users write it, gives the
    answer `crosslmm ask photo.png` gives (an image is a one-frame video in both)."""
    from PIL import Image

    pixels = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    result = CliRunner().invoke(app, ["ask", str(tmp_path / "photo.png"), "What is shown?", "--model", str(tiny_checkpoint),
                                      "--max-new-tokens", "12", "--json"])
    assert result.exit_code == 0, result.output
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    inputs = processor(text=processor.apply_chat_template(messages, add_generation_prompt=True),
                       images=Image.open(tmp_path / "photo.png"))
    by_path = [{"role": "user", "content": [{"type": "image", "path": str(tmp_path / "photo.png")},
                                            {"type": "text", "text": "What is shown?"}]}]
    tokenized = processor.apply_chat_template(by_path, add_generation_prompt=True, tokenize=True, return_dict=True)
    for batch in (inputs, tokenized):
        sequences = model.generate(**batch, max_new_tokens=12, do_sample=False)
        answer = processor.batch_decode(sequences[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)[0]
        assert answer == json.loads(result.stdout)["answer"]


def test_the_image_text_to_text_pipeline_answers_as_crosslmm_ask(tiny_checkpoint, videos, tmp_path):
    """pipeline("image-text-to-text", model=DIR): a chat with an image, and one with a video file,
    each answered as `crosslmm ask` answers on the same file (its default 32 frames)."""
    from PIL import Image
    from transformers import pipeline

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(photo)
    answer = pipeline("image-text-to-text", model=str(tiny_checkpoint))
    for media, part in ((photo, {"type": "image", "image": Image.open(photo)}),
                        (videos["mp4"], {"type": "video", "path": str(videos["mp4"])})):
        result = CliRunner().invoke(app, ["ask", str(media), "What is shown?", "--model", str(tiny_checkpoint),
                                          "--max-new-tokens", "8", "--json"])
        assert result.exit_code == 0, result.output
        chat = [{"role": "user", "content": [part, {"type": "text", "text": "What is shown?"}]}]
        reply = answer(text=chat, max_new_tokens=8)[0]["generated_text"][-1]
        assert reply["role"] == "assistant" and reply["content"] == json.loads(result.stdout)["answer"], media


def test_the_processor_takes_videos_and_images_in_the_layouts_hf_users_pass(tiny):
    _, processor = tiny
    video = random_video(3)
    as_list = processor(question(), [video])["pixel_values_videos"]
    for other in (video, torch.from_numpy(video).permute(0, 3, 1, 2), [video.transpose(0, 3, 1, 2)]):  # bare, channels first
        assert torch.equal(processor(question(), other)["pixel_values_videos"], as_list)
    several = processor(question(), images=[video[0], video[1], video[2]])  # a multi-image sample: the images are its frames
    assert several["num_frames"].tolist() == [3] and torch.equal(several["pixel_values_videos"], as_list)
    batch = processor([question(), question()], images=[video[0], [video[1], video[2]]])  # one entry per prompt
    assert batch["num_frames"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="either videos or images"):
        processor(question(), videos=[video], images=video[0])


def test_a_saved_nf4_model_reloads_with_defaults(tiny_checkpoint, tmp_path):
    """Saved after it has answered (bitsandbytes may repack 4-bit weights on a CPU's first forward),
    the model reloads to the same outputs; the expected ones are taken before saving."""
    quantised, processor = load_checkpoint(tiny_checkpoint, quantize="nf4")
    batch = processor(question(), [random_video(2)])
    expected = quantised.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    logits = quantised(**batch).logits
    save_checkpoint(quantised, processor, tmp_path / "nf4")
    for reloaded in (load_model(tmp_path / "nf4"), AutoModelForImageTextToText.from_pretrained(tmp_path / "nf4")):
        assert reloaded.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False).tolist() == expected.tolist()
        torch.testing.assert_close(reloaded(**batch).logits, logits, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="already quantised as nf4"):
        load_model(tmp_path / "nf4", quantize="int8")


def test_a_4bit_layer_computes_with_its_stored_weights_after_forwards(tiny_checkpoint):
    """bitsandbytes' own dequantisation of the stored 4-bit state is the reference: a layer's output
    equals it on the first forward and on later ones (no lossy repacking in memory)."""
    import bitsandbytes

    quantised, _ = load_checkpoint(tiny_checkpoint, quantize="nf4")
    layer = quantised.language_model.model.layers[0].mlp.down_proj
    weight = bitsandbytes.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()  # (out, in)
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(0)).to(layer.compute_dtype)
    reference = x @ weight.to(x.dtype).T  # (3, out) in the compute dtype; repacked scales were 4e-3 off
    with torch.inference_mode():
        for _ in range(2):
            torch.testing.assert_close(layer(x), reference, rtol=0, atol=1e-3)


# peft 0.21 itself reads transformers' deprecated is_gradient_checkpointing (as in finetune's get_peft_model)
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_peft_causal_lm_recipe_trains_saves_and_reloads(tiny_checkpoint, tmp_path):
    """peft's usual recipe, LoraConfig(task_type="CAUSAL_LM"): its wrapper passes inputs_embeds=None
    along; training moves the loss, and the saved adapter on a fresh base gives the same logits."""
    from peft import LoraConfig, PeftModel, get_peft_model

    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    batch = processor(question(), [random_video(2)])
    model = get_peft_model(load_model(tiny_checkpoint), LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8,
                                                                    target_modules=["q_proj", "v_proj"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(load_model(tiny_checkpoint), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model.eval()(**batch).logits, rtol=0, atol=1e-6)
        assert reloaded.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False).shape[1] == batch["input_ids"].shape[1] + 4


@pytest.mark.parametrize("share", [0.8, 0.85, 0.9])
def test_device_map_with_max_memory_keeps_every_decoder_layer_whole(tiny_checkpoint, tmp_path, share):
    """accelerate places whole modules of the classes a model lists as unsplittable: a DCAL layer
    (its LLM layer's class with the cross-attention mixed in) must be one of them. These shares of
    the memory the model needs cut through the DCAL layer (layer 3) when it is not; the offloaded
    model still gives the logits of the one in memory."""
    from accelerate.utils import compute_module_sizes

    whole = load_model(tiny_checkpoint)
    limit = int(compute_module_sizes(whole)[""] * share)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        placed = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, device_map="auto",
                                                             max_memory={"cpu": limit, "disk": 10**12},
                                                             offload_folder=str(tmp_path / "offload"))
    # every weight sits in a module accelerate can place (the separator was once a bare parameter)
    assert not [str(w.message) for w in warned if "device_map" in str(w.message)]
    assert "disk" in placed.hf_device_map.values() and "video_separator" in placed.hf_device_map
    layers = [name for name in placed.hf_device_map if name.startswith("language_model.model.layers.")]
    assert layers and all(name.count(".") == 3 for name in layers), layers  # ...layers.N, never a part of one
    batch = AutoProcessor.from_pretrained(tiny_checkpoint)(question(), [random_video(2)])
    with torch.no_grad():
        torch.testing.assert_close(placed(**batch).logits, whole(**batch).logits)


def with_the_old_separator_name(folder: Path, weights: str) -> None:
    """Rewrite ``folder``'s ``weights`` as crosslmm wrote them before the separator was a module:
    its tensor named ``video_separator``."""
    tensors = load_file(folder / weights)
    tensors["video_separator"] = tensors.pop("video_separator.weight")
    save_file(tensors, folder / weights, metadata={"format": "pt"})


def test_a_checkpoint_from_before_the_separator_module_loads_to_the_same_logits(tiny_open_checkpoint, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_open_checkpoint, old)
    with_the_old_separator_name(old, "model.safetensors")
    assert "video_separator" in load_file(old / "model.safetensors")
    today = load_model(tiny_open_checkpoint)
    batch = AutoProcessor.from_pretrained(tiny_open_checkpoint)(question(), [random_video(2)])
    with torch.no_grad():
        expected = today(**batch).logits
        for loaded in (load_model(old), AutoModelForImageTextToText.from_pretrained(old)):
            torch.testing.assert_close(loaded.video_separator.weight, today.video_separator.weight, rtol=0, atol=0)
            torch.testing.assert_close(loaded(**batch).logits, expected, rtol=0, atol=0)
            loaded.save_pretrained(tmp_path / "saved again")  # with today's name
            assert "video_separator.weight" in load_file(tmp_path / "saved again" / "model.safetensors")
    # a fine-tuning run's output (its trained tensors beside a pointer to the base) from before
    model, processor = load_checkpoint(tiny_open_checkpoint)
    with torch.no_grad():
        model.video_separator.weight.mul_(-1)  # trained: unlike the base's
    partial = tmp_path / "partial"
    save_partial_checkpoint(model, processor, partial, ["video_separator.weight"], str(tiny_open_checkpoint))
    with_the_old_separator_name(partial, "trained.safetensors")
    torch.testing.assert_close(load_model(partial).video_separator.weight, model.video_separator.weight, rtol=0, atol=0)


def test_init_shards_at_the_size_asked_and_the_shards_load(tmp_path, videos):
    result = CliRunner().invoke(app, ["init", "tiny", str(tmp_path / "sharded"), "--max-shard-size", "200KB"])
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all(os.path.getsize(tmp_path / "sharded" / s) <= 200_000 + 70_000 for s in shards)
    assert [f.name for f in weight_files(tmp_path / "sharded")] == shards
    whole = CliRunner().invoke(app, ["init", "tiny", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    for name, tensor in load_model(tmp_path / "whole").state_dict().items():
        torch.testing.assert_close(load_model(tmp_path / "sharded").state_dict()[name], tensor)
    bad = CliRunner().invoke(app, ["init", "tiny", str(tmp_path / "bad"), "--max-shard-size", "lots"])
    assert bad.exit_code == 1 and "--max-shard-size" in bad.output and not (tmp_path / "bad").exists()


def test_init_writes_the_dtype_asked(tmp_path):
    result = CliRunner().invoke(app, ["init", "tiny", str(tmp_path / "bf16"), "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_the_tool_and_the_library_import_from_a_folder_with_its_own_models_package(tmp_path):
    """`models` is the commonest package name in ML repositories; crosslmm must not claim it."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("MINE = True\n")
    environment = {**os.environ, "PYTHONPATH": ""}
    run = lambda *args: subprocess.run([sys.executable, *args], cwd=tmp_path, env=environment,  # noqa: E731
                                       capture_output=True, text=True, timeout=120)
    help_run = run("-m", "crosslmm_cli.app", "--help")
    assert help_run.returncode == 0 and "ask" in help_run.stdout, help_run.stderr
    both = run("-c", "import crosslmm, models; print(models.MINE, crosslmm.CrossLMMForConditionalGeneration.__name__)")
    assert both.returncode == 0 and both.stdout.split() == ["True", "CrossLMMForConditionalGeneration"], both.stderr
    assert not (REPOSITORY / "crosslmm").exists()  # the import name comes from packaging, not a folder


def test_the_model_card_says_to_import_crosslmm_and_its_code_answers_as_crosslmm_ask(tmp_path, videos):
    """Every checkpoint carries a README.md; its Python block, run as written next to the checkpoint
    in a fresh interpreter, gives `crosslmm ask`'s answer; without its first line it cannot load."""
    checkpoint = tmp_path / "ckpt"
    assert CliRunner().invoke(app, ["init", "tiny", str(checkpoint)]).exit_code == 0
    card = (checkpoint / "README.md").read_text()
    assert "**import `crosslmm`\nfirst**" in card
    code = card.split("```python\n")[1].split("```")[0].replace('"ckpt"', f'"{checkpoint.name}"')
    (tmp_path / "video.mp4").write_bytes(videos["mp4"].read_bytes())
    run = lambda source: subprocess.run([sys.executable, "-c", source], cwd=tmp_path, capture_output=True,  # noqa: E731
                                        text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    card_run = run(code)
    assert card_run.returncode == 0, card_run.stderr[-2000:]
    asked = CliRunner().invoke(app, ["ask", str(tmp_path / "video.mp4"), "What happens?", "--model", str(checkpoint),
                                     "--frames", "8", "--max-new-tokens", "32", "--json"])
    assert asked.exit_code == 0, asked.output
    assert card_run.stdout.strip() == json.loads(asked.stdout)["answer"].strip()
    assert run(code.replace("import crosslmm", "pass")).returncode != 0
