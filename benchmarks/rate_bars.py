"""The bar chart the loader benchmarks draw: median samples/s of each loader, one bar each."""

from __future__ import annotations

from pathlib import Path


def rate_bars(medians: dict[str, float], colors: list[str], xlabel: str, title: str, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(medians)
    figure, axis = plt.subplots(figsize=(7, 0.8 * len(names) + 1.0))
    axis.barh(names[::-1], [medians[n] for n in names][::-1], color=colors[: len(names)][::-1])
    for y, name in enumerate(names[::-1]):
        axis.text(medians[name], y, f" {medians[name]:.1f}", va="center")
    axis.set_xlabel(xlabel)
    axis.set_title(title, fontsize=9)
    axis.set_xlim(0, max(medians.values()) * 1.25)
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)
