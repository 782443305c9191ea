"""What `Model.fit` returns: the run's history as Keras' History holds it, and its curves.

    history = model.fit("digits", epochs=5)
    history.history["val_loss"]     # one value per epoch, as Keras' history.history
    history.epoch                   # [0, 1, 2, 3, 4]
    history.plot()                  # the learning curves, a matplotlib Figure
    history                         # in a notebook: the curves (_repr_png_)
"""

from __future__ import annotations

# columns of a history row that are no metric: Keras' history.history has only metrics
_NOT_METRICS = ("epoch", "seconds")


class History:
    """A training run's per-epoch record, drawn by the code that draws learning_curves.png."""

    def __init__(self, network: str, rows: list[dict], result: dict):
        self.network = network
        self.rows = [dict(r) for r in rows]    # as history.json: epoch (from 1), lr, seconds too
        self.result = dict(result)             # as metrics.json: test metrics, best epoch, ...
        keys = dict.fromkeys(k for r in rows for k in r if k not in _NOT_METRICS)
        self.history: dict[str, list[float]] = {k: [r[k] for r in rows if k in r] for k in keys}
        self.epoch: list[int] = [r["epoch"] - 1 for r in rows]   # Keras counts from 0
        self.params = {"epochs": len(rows), "steps": result.get("steps")}

    def plot(self):
        """The learning curves (loss and each metric, training beside validation) as a
        matplotlib Figure, as learning_curves.png draws them."""
        from .plots import history_figure
        if not self.rows:
            raise ValueError("no epoch was trained: nothing to plot")
        return history_figure(self.rows, f"{self.network}: learning curves")

    def _repr_png_(self) -> bytes | None:
        """The curves as PNG bytes: what a notebook shows for a History."""
        if not self.rows:
            return None
        from .plots import figure_bytes
        return figure_bytes(self.plot(), "png")

    def __repr__(self) -> str:
        last = self.rows[-1] if self.rows else {}
        shown = ", ".join(f"{k} {v:.4f}" for k, v in last.items()
                          if k not in (*_NOT_METRICS, "lr"))
        return f"<History {self.network}: {len(self.rows)} epochs" + (f"; last: {shown}>" if shown else ">")
