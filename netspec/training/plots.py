"""Learning curves: loss and each metric per epoch, training beside validation."""

from __future__ import annotations

import io
from pathlib import Path


def history_figure(history: list[dict], title: str):
    """`history` (rows of history.json) drawn as a matplotlib Figure: one panel per metric.
    Made without pyplot, so it touches no backend or global figure state (a notebook's
    included)."""
    from matplotlib.figure import Figure
    keys = [k for k in history[0] if k not in ("epoch", "lr", "seconds") and not k.startswith("val_")]
    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(5 * len(keys), 3.6))
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys):
        ax.plot(epochs, [row[key] for row in history], marker="o", ms=3, label="training")
        if f"val_{key}" in history[0]:
            ax.plot(epochs, [row[f"val_{key}"] for row in history], marker="o", ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
        if len(epochs) < 12:
            ax.set_xticks(epochs)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def figure_bytes(fig, fmt: str) -> bytes:
    """The figure as a .png or .svg file's bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=110)
    return buf.getvalue()


def plot_history(history: list[dict], stem: Path, title: str) -> list[Path]:
    """Draw `history` (rows of history.json) to stem.png and stem.svg; return the paths."""
    from ..outdirs import write_atomic
    fig = history_figure(history, title)
    paths = []
    for fmt in ("png", "svg"):
        path = stem.with_suffix(f".{fmt}")
        write_atomic(path, figure_bytes(fig, fmt))
        paths.append(path)
    return paths
