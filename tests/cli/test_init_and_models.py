"""`crosslmm init` and `crosslmm models`."""

from __future__ import annotations

import re

import torch
from typer.testing import CliRunner

from crosslmm_cli.app import app
from crosslmm import build_tiny, load_checkpoint
from tests.helpers import question, random_video

runner = CliRunner()


def test_init_tiny_writes_a_loadable_checkpoint(tmp_path):
    outdir = tmp_path / "tiny"
    result = runner.invoke(app, ["init", "tiny", str(outdir)])
    assert result.exit_code == 0, result.output
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in outdir.iterdir()}
    loaded, processor = load_checkpoint(outdir)
    reference, _ = build_tiny(seed=0)
    batch = processor(question(), [random_video(2)])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, reference(**batch).logits, rtol=0, atol=0)


def test_init_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "something").write_text("x")
    result = runner.invoke(app, ["init", "tiny", str(tmp_path)])
    assert result.exit_code == 1
    assert "not an empty directory" in result.output and "Traceback" not in result.output


def test_init_unknown_preset(tmp_path):
    result = runner.invoke(app, ["init", "gpt-5", str(tmp_path / "x")])
    assert result.exit_code == 1 and "unknown preset" in result.output


def test_init_with_tokens_per_frame(tmp_path):
    result = runner.invoke(app, ["init", "tiny", str(tmp_path / "t"), "--tokens-per-frame", "1"])
    assert result.exit_code == 0, result.output
    bad = runner.invoke(app, ["init", "tiny", str(tmp_path / "u"), "--tokens-per-frame", "3"])
    assert bad.exit_code == 1 and "perfect square" in bad.output


def test_models_lists_presets_with_counts():
    result = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "crosslmm-2b" in line and "M" in line)
    cells = [cell.strip() for cell in re.split(r"[│┃|]", row) if cell.strip()]
    assert cells[-2] == "37.2 M"  # Stage I trainable: paper Table 3 says 43 M, with a V2V in the last layer (5.5 M)
    for name in ("tiny", "crosslmm-ov-0.5b", "crosslmm-ov-7b", "crosslmm-7b"):
        assert name in result.output


def test_init_writes_the_dtype_asked_for(tmp_path):
    from safetensors import safe_open

    for dtype, stored in (("bf16", "BF16"), ("fp32", "F32")):
        out = tmp_path / dtype
        result = runner.invoke(app, ["init", "tiny", str(out), "--random", "--dtype", dtype])
        assert result.exit_code == 0, result.output
        with safe_open(str(out / "model.safetensors"), "pt") as weights:  # safetensors' own reader
            assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {stored}
