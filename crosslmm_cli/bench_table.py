"""The `crosslmm bench` table."""

from __future__ import annotations

from rich.table import Table


def bench_table(report: dict) -> Table:
    table = Table(title=f"{report['preset']} on {report['device']} ({report['dtype']}, quantize {report['quantize']})")
    columns = ["system", "frames", "positions", "prefill ms", "tok/s", "peak MB", "act. MB", "TFLOPs", "vision",
               "proj.", "LLM", "DCAL"]
    for column in columns:
        table.add_column(column, justify="left" if column == "system" else "right")
    def number(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for row in report["results"]:
        parts = row["tflops_breakdown"]
        table.add_row(
            row["system"], str(row["frames"]), str(row["llm_positions"]), number(row["prefill_ms"], ",.1f"),
            number(row["decode_tokens_per_s"], ",.1f"), number(row["peak_memory_mb"], ",.0f"),
            number(row["activation_memory_mb"], ",.0f"),
            f"{row['tflops']:,.3g}", *(f"{parts[k]:,.3g}" for k in ("vision", "projector", "llm", "dcal")),
        )
    slopes = [f"{system}: {fit['prefill_ms_per_frame']['slope']:.2f} ms and "
              f"{fit['activation_mb_per_frame']['slope']:.2f} MB per added frame"
              for system, fit in report["scaling"].items()]
    table.caption = "; ".join(slopes)
    return table
