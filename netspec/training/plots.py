"""Learning curves: loss and each metric per epoch, training beside validation."""

from __future__ import annotations

from pathlib import Path


def plot_history(history: list[dict], stem: Path, title: str) -> list[Path]:
    """Draw `history` (rows of history.json) to stem.png and stem.svg; return the paths."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    from ..outdirs import write_atomic
    keys = [k for k in history[0] if k not in ("epoch", "lr", "seconds") and not k.startswith("val_")]
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
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
    paths = []
    for fmt in ("png", "svg"):
        import io
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=110)
        path = stem.with_suffix(f".{fmt}")
        write_atomic(path, buf.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths
