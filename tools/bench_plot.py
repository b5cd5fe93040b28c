"""The picture ``attnzoo bench`` writes: published ImageNet top-1 against measured images/s and
against GFLOPs, one colour per family, each attnzoo model next to its timm twin.

Input is the rows of bench.csv (``attnzoo.tools.bench.CSV_FIELDS``, as strings or numbers), so a
saved table can be drawn again: ``python -m attnzoo.tools.bench_plot bench.csv bench.png``.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

__all__ = ["plot_results", "main"]


def _num(value) -> Optional[float]:
    if value is None or value == "":
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _minor_label(value: float, _pos) -> str:
    """Labels 2 and 5 of each decade on a log axis (0.2, 0.5, 2, 5, 20, ...)."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if round(mantissa) in (2, 5) and abs(mantissa - round(mantissa)) < 1e-6 else ""


def _label(ax, points: Sequence[Dict[str, object]], key: str, colour: Dict[str, object]) -> None:
    """Names each point, moving a label down (then up) by whole lines until it overlaps no label
    placed before it; points at the same place (nat_mini and dinat_mini share their figures) get
    one line each."""
    fig = ax.figure
    fig.canvas.draw()  # the axes' limits and transforms are final now
    line_px, char_px = 11.0, 5.3  # fontsize 7 at 120 dpi
    boxes: List[tuple] = []
    for p in sorted(points, key=lambda p: (-p["top1"], p[key])):
        x0, y0 = ax.transData.transform((p[key], p["top1"]))
        width = char_px * len(p["label"])
        for step in [0] + [s for k in range(1, 8) for s in (-k, k)]:
            left, bottom = x0 + 6, y0 + 3 + step * line_px
            box = (left, bottom, left + width, bottom + line_px)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
                break
        boxes.append(box)
        ax.annotate(p["label"], (p[key], p["top1"]), textcoords="offset pixels", xytext=(6, 3 + step * line_px),
                    fontsize=7, color=colour[p["family"]],
                    arrowprops=None if step == 0 else dict(arrowstyle="-", color=colour[p["family"]], lw=0.5,
                                                           alpha=0.6, shrinkA=0, shrinkB=3))


def plot_results(rows: Sequence[Mapping[str, object]], path, title: str = "attnzoo bench") -> List[str]:
    """Draws the picture of ``rows`` into ``path`` (PNG); returns what was left out and why (one
    string per model). Needs matplotlib (ImportError otherwise)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    points: List[Dict[str, object]] = []
    skipped: List[str] = []
    for row in rows:
        top1, gflops = _num(row.get("pub_top1")), _num(row.get("gflops"))
        label = f"{row['model']} (timm)" if row.get("impl") == "timm" else str(row["model"])
        if row.get("backend") not in (None, "", "auto", "timm") and any(
                r["model"] == row["model"] and r.get("backend") == "auto" for r in rows):
            continue  # one point per model: the default dispatch where several backends were timed
        if top1 is None:
            skipped.append(f"{label}: no published top-1")
            continue
        rate = _num(row.get("images_per_s"))
        spread = None
        median, p25, p75 = (_num(row.get(k)) for k in ("median_ms", "p25_ms", "p75_ms"))
        batch = _num(row.get("batch_size"))
        if rate is not None and median and p25 and p75 and batch:
            spread = (batch / (p75 / 1e3), batch / (p25 / 1e3))  # images/s of the slower and faster quartile
        points.append(dict(label=label, family=str(row["family"]), impl=row.get("impl", "attnzoo"),
                           twin_of=row.get("twin_of") or "", model=str(row["model"]), top1=top1, gflops=gflops,
                           rate=rate, spread=spread, settled=row.get("settled") == "yes"))
    has_speed = any(p["rate"] is not None for p in points)
    if has_speed:
        untimed = [p for p in points if p["rate"] is None]
        skipped += [f"{p['label']}: not timed or too few runs for a median" for p in untimed]

    families = list(dict.fromkeys(p["family"] for p in points))
    cmap = plt.get_cmap("tab10")
    colour = {f: cmap(i % 10) for i, f in enumerate(families)}
    panels = [("rate", "measured images/s (log scale)")] if has_speed else []
    panels.append(("gflops", "GFLOPs per image at the published resolution (log scale)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 6.0), squeeze=False)
    by_model = {p["model"]: p for p in points if p["impl"] != "timm"}
    for ax, (key, xlabel) in zip(axes[0], panels):
        placed = [p for p in points if p[key] is not None]
        for p in placed:
            x, c = p[key], colour[p["family"]]
            twin = p["impl"] == "timm"
            faded = key == "rate" and not p["settled"]
            alpha = 0.45 if faded else 1.0
            if key == "rate" and p["spread"] is not None:
                lo, hi = p["spread"]
                ax.plot([lo, hi], [p["top1"], p["top1"]], color=c, alpha=0.3, linewidth=3, solid_capstyle="butt")
            ax.scatter([x], [p["top1"]], s=110 if twin else 55, marker="s" if twin else "o", alpha=alpha,
                       facecolors="none" if twin else [c], edgecolors=[c], linewidths=1.6, zorder=3)
            if twin and p["twin_of"] in by_model and by_model[p["twin_of"]][key] is not None:
                ours = by_model[p["twin_of"]]
                ax.plot([ours[key], x], [ours["top1"], p["top1"]], color=c, linestyle=":", linewidth=1, zorder=2)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(_minor_label))
        ax.margins(x=0.25, y=0.12)
        _label(ax, [p for p in placed if p["impl"] != "timm"], key, colour)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("published ImageNet-1k top-1 (%)")
        ax.grid(True, which="both", alpha=0.25)
    handles = [Line2D([], [], marker="o", linestyle="", color=colour[f], label=f) for f in families]
    handles += [Line2D([], [], marker="o", linestyle="", color="0.3", label="attnzoo model"),
                Line2D([], [], marker="s", linestyle="", markerfacecolor="none", color="0.3",
                       label="its timm twin (same weights)")]
    if has_speed:
        handles.append(Line2D([], [], color="0.3", alpha=0.3, linewidth=3,
                              label="half of the runs (interquartile range)"))
        handles.append(Line2D([], [], marker="o", linestyle="", color="0.3", alpha=0.45,
                              label="faded: the median had not settled"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return skipped


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnzoo.tools.bench_plot",
                                     description="Draw the picture of a saved bench.csv again.")
    parser.add_argument("csv", type=Path, help="a bench.csv written by attnzoo bench")
    parser.add_argument("png", type=Path, help="the picture to write")
    parser.add_argument("--title", default="attnzoo bench", help="the picture's title (default: attnzoo bench)")
    args = parser.parse_args(argv)
    with open(args.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    skipped = plot_results(rows, args.png, title=args.title)
    for line in skipped:
        print(f"not in the picture: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
