"""PNG charts for the reports: grouped or stacked bars per layout, and lines over a sweep.

matplotlib runs on the Agg backend (no display needed). Every chart has a title, axis labels with
units, value labels on the bars, and a log scale where values span orders of magnitude. A chart is
a list of panels drawn side by side; `None` values draw no bar and are labelled "n/a".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from helix_jax.report.fmt import human

COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")
HATCHES = ("", "//", "..", "xx", "\\\\", "++")


def wrap_label(text: str) -> str:
    """Layout specs broken at ':' and ',' so they fit under a bar."""
    return text.replace(":", ":\n").replace(",", ",\n")


@dataclass
class BarPanel:
    """One axes of bars: a bar group per category, a bar (or a stack segment) per series."""

    title: str
    categories: Sequence[str]
    series: dict[str, Sequence[float | None]]
    ylabel: str
    log: bool = False
    stacked: bool = False
    markers: dict[str, Sequence[float | None]] = field(default_factory=dict)
    note: str = ""
    fmt: Callable[[float | None], str] = human
    missing: str = "n/a"  # drawn where a value is None


@dataclass
class LinePanel:
    """One axes of lines over a numeric or categorical x."""

    title: str
    x: Sequence
    series: dict[str, Sequence[float | None]]
    xlabel: str
    ylabel: str
    logx: bool = False
    logy: bool = False
    note: str = ""
    categorical_x: bool = False
    colors: dict[str, str] = field(default_factory=dict)  # series name -> colour, for consistency


def _grid(n: int, ncols: int, width: float, height: float):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _note(ax, text: str) -> None:
    if text:
        ax.text(0.01, 0.98, text, transform=ax.transAxes, va="top", ha="left", fontsize=8,
                style="italic", color="#444444",
                bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "#cccccc", "alpha": 0.9})


def _draw_bars(ax, p: BarPanel) -> None:
    n_cat, names = len(p.categories), list(p.series)
    xs = list(range(n_cat))
    width = 0.8 if p.stacked else 0.8 / max(1, len(names))
    bottoms = [0.0] * n_cat
    positive = [v for vals in p.series.values() for v in vals if v]
    floor = 10 ** math.floor(math.log10(min(positive) / 2)) if positive and p.log else 1.0
    for s, name in enumerate(names):
        vals = list(p.series[name])
        offs = 0.0 if p.stacked else (s - (len(names) - 1) / 2) * width
        heights = [v if v is not None else 0.0 for v in vals]
        pos = [x + offs for x in xs]
        bars = ax.bar(pos, heights, width, bottom=bottoms if p.stacked else None,
                      label=name, color=COLORS[s % len(COLORS)], hatch=HATCHES[s % len(HATCHES)],
                      edgecolor="white" if not HATCHES[s % len(HATCHES)] else "#333333",
                      linewidth=0.5)
        if not p.stacked:
            labels = ["" if v is None else p.fmt(v) for v in vals]
            ax.bar_label(bars, labels=labels, fontsize=7, padding=2, rotation=90 if n_cat *
                         len(names) > 14 else 0)
            for x, v in zip(pos, vals):
                if v is None:
                    ax.text(x, floor if p.log else 0, p.missing, ha="center", va="bottom",
                            fontsize=7, rotation=90)
        else:
            bottoms = [b + h for b, h in zip(bottoms, heights)]
    if p.stacked:
        top = max(bottoms) if bottoms else 0
        for x, total in zip(xs, bottoms):
            ax.text(x, total + top * 0.01, p.fmt(total), ha="center", va="bottom", fontsize=8,
                    fontweight="bold")
        for s, name in enumerate(names):  # segment values inside segments that are tall enough
            base = [0.0] * n_cat
            for prev in names[:s]:
                base = [b + (v or 0.0) for b, v in zip(base, p.series[prev])]
            for x, b, v in zip(xs, base, p.series[name]):
                if v and top and v / top > 0.06:
                    ax.text(x, b + v / 2, p.fmt(v), ha="center", va="center", fontsize=7,
                            color="white", fontweight="bold")
    for m, (name, vals) in enumerate(p.markers.items()):
        px = [x for x, v in zip(xs, vals) if v is not None]
        py = [v for v in vals if v is not None]
        if px:
            ax.scatter(px, py, marker="D", s=45, zorder=5, color=("black", "#C44E52")[m % 2],
                       label=name)
            for x, y in zip(px, py):
                ax.annotate(p.fmt(y), (x, y), textcoords="offset points", xytext=(8, -3),
                            fontsize=7)
    ax.set_xticks(xs)
    ax.set_xticklabels([wrap_label(c) for c in p.categories], fontsize=8)
    ax.set_ylabel(p.ylabel)
    ax.set_title(p.title, fontsize=10)
    if p.log:
        ax.set_yscale("log")
        top = max(positive) if positive else 10 * floor
        ax.set_ylim(floor, top * 4)
    else:
        _lo, hi = ax.get_ylim()
        ax.set_ylim(0, hi * 1.3)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, loc="upper right")
    _note(ax, p.note)


def bar_chart(path: str | Path, panels: Sequence[BarPanel], title: str, ncols: int = 2,
              width: float = 6.5, height: float = 4.6) -> Path:
    """Draw `panels` of bars into one PNG at `path`; returns the path."""
    fig, axes = _grid(len(panels), ncols, width, height)
    for ax, p in zip(axes, panels):
        _draw_bars(ax, p)
    return _save(fig, path, title)


def line_chart(path: str | Path, panels: Sequence[LinePanel], title: str, ncols: int = 2,
               width: float = 6.5, height: float = 4.4) -> Path:
    """Draw `panels` of lines (one marker per point) into one PNG at `path`."""
    fig, axes = _grid(len(panels), ncols, width, height)
    for ax, p in zip(axes, panels):
        xs = list(range(len(p.x))) if p.categorical_x else list(p.x)
        for s, (name, vals) in enumerate(p.series.items()):
            pts = [(x, v) for x, v in zip(xs, vals) if v is not None]
            if not pts:
                continue
            ax.plot([a for a, _ in pts], [b for _, b in pts], marker="os^vD<>p"[s % 8],
                    color=p.colors.get(name, COLORS[s % len(COLORS)]), label=name, linewidth=1.5,
                    markersize=5)
        if p.logx and not p.categorical_x:
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(xs)  # ticks at the sweep's own points, labelled plainly
        ax.set_xticklabels([str(x) if p.categorical_x else human(x) for x in p.x], fontsize=8)
        if p.logy:
            ax.set_yscale("log")
        ax.set_xlabel(p.xlabel)
        ax.set_ylabel(p.ylabel)
        ax.set_title(p.title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        _note(ax, p.note)
    return _save(fig, path, title)


def _save(fig, path: str | Path, title: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.suptitle(title, fontsize=12, fontweight="bold")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
