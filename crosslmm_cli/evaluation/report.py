"""Terminal tables for `crosslmm eval`."""

from __future__ import annotations

from rich.table import Table


def results_tables(report: dict) -> list[Table]:
    tables = []
    scores = Table(title="results (scored as lmms-eval " + report["versions"][next(iter(report["versions"]))] + ")")
    for column in ("task", "metric", "score", "samples", "missing videos"):
        scores.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for name, entry in report["results"].items():
        metric = next(key for key in entry if key.endswith(",none"))
        scores.add_row(name, metric.removesuffix(",none"), f"{entry[metric]:.2f}", str(entry.get("samples", "")),
                       str(entry.get("missing_videos", "")))
    tables.append(scores)
    for entry in report["results"].values():
        for group, values in (entry.get("breakdown") or {}).items():
            table = Table(title=f"by {group}")
            table.add_column(group)
            table.add_column("score", justify="right")
            for key, value in values.items():
                table.add_row(key, f"{value:.2f}")
            tables.append(table)
    efficiency = report.get("efficiency") or {}
    if efficiency:
        table = Table(title="efficiency")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for key, value in efficiency.items():
            table.add_row(key, "-" if value is None else str(value))
        tables.append(table)
    return tables
