"""Metric history of a run: ``metrics.csv`` (one row per epoch), ``steps.csv`` (one row every
``--log-interval`` steps) and ``metrics.png`` (loss, top-1 / top-5 and lr against epoch), each
rewritten whole and atomically after every epoch. The history itself travels in the checkpoints,
so a resumed run rewrites the files exactly as an uninterrupted one would. Columns ending in
``_s`` or ``images_per_s`` are wall-clock figures; every other column is a function of the seed.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Dict, List

from .checkpoint import atomic_write

__all__ = ["History", "TIMING_COLUMNS", "read_csv"]

TIMING_COLUMNS = ("epoch_time_s", "train_images_per_s", "eval_images_per_s", "time_s", "images_per_s")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)  # shortest exact round-trip of the double
    return "" if v is None else str(v)


def _csv_text(rows: List[Dict[str, Any]]) -> str:
    cols: List[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_fmt(r.get(c)) for c in cols])
    return buf.getvalue()


def read_csv(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class History:
    def __init__(self, epochs: List[Dict[str, Any]] = None, steps: List[Dict[str, Any]] = None):
        self.epochs: List[Dict[str, Any]] = list(epochs or [])
        self.steps: List[Dict[str, Any]] = list(steps or [])

    def state_dict(self) -> Dict[str, Any]:
        return {"epochs": [dict(r) for r in self.epochs], "steps": [dict(r) for r in self.steps]}

    @classmethod
    def from_state_dict(cls, state: Dict[str, Any]) -> "History":
        return cls(state.get("epochs"), state.get("steps"))

    def write(self, folder: Path, title: str) -> None:
        folder = Path(folder)
        for name, rows in (("metrics.csv", self.epochs), ("steps.csv", self.steps)):
            if rows:
                text = _csv_text(rows)
                atomic_write(folder / name, lambda f, t=text: f.write(t.encode()))
        if self.epochs:
            self.plot(folder / "metrics.png", title)

    def plot(self, path: Path, title: str) -> None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        def series(key, rows):
            pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None and not (isinstance(r[key], float) and math.isnan(r[key]))]
            return [p[0] for p in pts], [p[1] for p in pts]

        fig = Figure(figsize=(12, 3.6), dpi=100)
        ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
        steps = [dict(s, epoch=s["epoch"] + s["step"] / max(s["steps_per_epoch"], 1)) for s in self.steps]
        if steps:
            ax_loss.plot(*series("loss", steps), color="0.75", lw=0.8, label="train (steps)")
        ax_loss.plot(*series("train_loss", self.epochs), "o-", label="train")
        ax_loss.plot(*series("eval_loss", self.epochs), "s-", label="eval")
        if any(r.get("ema_eval_loss") is not None for r in self.epochs):
            ax_loss.plot(*series("ema_eval_loss", self.epochs), "^-", label="eval (EMA)")
        ax_loss.set(title="loss", xlabel="epoch")
        for key, mark in (("eval_top1", "o-"), ("eval_top5", "s-"), ("ema_eval_top1", "^-")):
            if any(r.get(key) is not None for r in self.epochs):
                ax_acc.plot(*series(key, self.epochs), mark, label=key.replace("eval_", "").replace("_", " "))
        ax_acc.set(title="accuracy (%)", xlabel="epoch")
        if steps:
            ax_lr.plot(*series("lr", steps), color="C2")
        else:
            ax_lr.plot(*series("lr", self.epochs), "o-", color="C2")
        ax_lr.set(title="learning rate", xlabel="epoch")
        for ax in (ax_loss, ax_acc, ax_lr):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        atomic_write(Path(path), lambda f: fig.savefig(f, format="png"))
