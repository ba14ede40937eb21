"""`crosslmm bench` on the tiny preset: both systems measured, every JSON field, the plot, and a
clear refusal when the frames would not fit in memory."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from crosslmm_cli import bench as bench_module
from crosslmm_cli.app import app

runner = CliRunner()
FAST = ["--preset", "tiny", "--frames", "1,2,3", "--runs", "1", "--warmup", "0", "--decode-tokens", "2"]
FIELDS = {"prefill_ms", "decode_tokens_per_s", "peak_memory_mb", "activation_memory_mb", "tflops", "tflops_breakdown",
          "llm_positions", "frames", "system"}


def test_bench_writes_json_and_plot(tmp_path):
    report_path, plot_path = tmp_path / "bench.json", tmp_path / "bench.png"
    result = runner.invoke(app, ["bench", *FAST, "--json", str(report_path), "--plot", str(plot_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["preset"] == "tiny" and report["dtype"] == "fp32" and report["device"].startswith("CPU")
    assert {"torch", "transformers"} <= set(report["versions"])
    for system in ("crosslmm", "baseline"):
        rows = [r for r in report["results"] if r["system"] == system]
        assert [r["frames"] for r in rows] == [1, 2, 3]
        for row in rows:
            assert FIELDS <= set(row), FIELDS - set(row)
            assert row["prefill_ms"] > 0 and row["decode_tokens_per_s"] > 0 and row["tflops"] > 0
            assert set(row["tflops_breakdown"]) == {"vision", "projector", "llm", "dcal"}
        assert set(report["scaling"][system]) == {"prefill_ms_per_frame", "activation_mb_per_frame"}
    assert all(r["tflops_breakdown"]["dcal"] == 0 for r in report["results"] if r["system"] == "baseline")
    assert all(r["tflops_breakdown"]["dcal"] > 0 for r in report["results"] if r["system"] == "crosslmm")
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "crosslmm" in result.output and "baseline" in result.output


def test_bench_with_nf4_on_cpu():
    result = runner.invoke(app, ["bench", *FAST, "--quantize", "nf4", "--dtype", "bf16"])
    assert result.exit_code == 0, result.output


def test_bench_refuses_what_does_not_fit(monkeypatch):
    monkeypatch.setattr(bench_module.MemoryMeter, "free_mb", lambda self: 0.8)  # 90 % of it is usable: 0.72 MB
    monkeypatch.setattr(bench_module, "activation_budget", lambda *args: (0.1, 0.2))  # 0.1 MB + 0.2 MB per frame
    result = runner.invoke(app, ["bench", "--preset", "tiny", "--frames", "1,2,5", "--runs", "1"])
    assert result.exit_code == 1
    assert "the largest frame count that fits is 3" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["bench", "--preset", "tiny", "--frames", "8", "--runs", "1"])
    assert result.exit_code == 1 and "--frames 8 would need" in result.output


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--frames", "a,b"], "comma-separated integers"),
        (["--frames", "0"], "positive frame counts"),
        (["--quantize", "int8"], "nf4 or none"),
        (["--dtype", "fp8"], "--dtype must be one of"),
        (["--quantize", "nf4", "--dtype", "fp32"], "drop --dtype fp32"),
        (["--preset", "nope"], "unknown preset"),
    ],
)
def test_bench_bad_flags(flags, message):
    result = runner.invoke(app, ["bench", *flags])
    assert result.exit_code == 1 and message in result.output


def test_linear_fit():
    fit = bench_module._fit([1, 2, 3, 4], [3, 5, 7, 9])
    assert fit == {"slope": 2.0, "r2": 1.0}


def test_flops_only_needs_no_weights(tmp_path):
    report_path = tmp_path / "flops.json"
    result = runner.invoke(app, ["bench", "--preset", "crosslmm-2b", "--frames", "256", "--flops-only",
                                 "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    rows = {r["system"]: r for r in json.loads(report_path.read_text())["results"]}
    assert rows["crosslmm"]["tflops"] <= 0.25 * rows["baseline"]["tflops"]
    assert rows["crosslmm"]["prefill_ms"] is None and rows["baseline"]["llm_positions"] == 64 + 256 * 196 + 1


def test_the_two_systems_are_timed_alternately(monkeypatch):
    from crosslmm_cli import bench

    order, real_prefill = [], bench.prefill
    monkeypatch.setattr(bench, "prefill", lambda model, *a: order.append(model.config.cross_attn_every) or real_prefill(model, *a))
    settings = bench.BenchSettings(preset="tiny", frames=[2], device="cpu", runs=3, warmup=1, decode_tokens=2)
    models = {system: bench.build_system(settings, system) for system in bench.SYSTEMS}
    times = bench.timed_prefills(models, 2, settings)
    crosslmm, baseline = (models[s].config.cross_attn_every for s in bench.SYSTEMS)
    assert order == [crosslmm, baseline] * 4  # one warm-up each, then three timed runs each, in turn
    assert all(len(runs) == 3 for runs in times.values())
