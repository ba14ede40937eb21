"""The `crosslmm models` table: presets and their parameter counts."""

from __future__ import annotations

from rich.table import Table

from crosslmm import PRESETS, parameter_counts


def millions(count: int) -> str:
    return f"{count / 1e6:,.1f} M"


def presets_table() -> Table:
    table = Table(title="CrossLMM presets (parameters counted on the meta device)")
    for column, justify in [
        ("preset", "left"), ("source", "left"), ("tokens/frame", "right"), ("K", "right"),
        ("total", "right"), ("Stage I", "right"), ("Stage II", "right"),
    ]:
        table.add_column(column, justify=justify)
    for preset in PRESETS.values():
        config = preset.reference_config()
        counts = parameter_counts(config)
        table.add_row(
            preset.name,
            preset.source + (" (train first)" if preset.needs_training else ""),
            str(config.tokens_per_frame),
            str(config.cross_attn_every),
            millions(counts["total"]),
            millions(counts["stage1"]),
            millions(counts["stage2"]),
        )
    table.caption = "trainable parameters in Stage I: projector + separator + V2V (paper §6.1); Stage II: all"
    return table


def presets_descriptions() -> str:
    return "\n".join(f"[bold]{preset.name}[/]: {preset.description}" for preset in PRESETS.values())
