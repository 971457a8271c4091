"""The leaderboard's two PNG charts, drawn from its aggregated views (``Leaderboard.chart`` and ``.pareto``): accuracy
per family per model, and mean accuracy against inference cost. Stable bytes: no software stamp in the PNG."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.leaderboard import Leaderboard


def _png_bytes(fig) -> bytes:
    """A finished matplotlib figure as PNG bytes (stable: no software stamp), the figure closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def to_pareto_png(lb: Leaderboard) -> bytes:
    """Mean accuracy (SOP, reasoning, mixed) against inference cost: the Pareto view. Stable bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in lb.pareto if p.get("time_ratio") is not None or p.get("forwards") is not None]
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=100)
    for p in pts:
        x = p["time_ratio"] if p.get("time_ratio") is not None else float(p["forwards"])
        color = "tab:red" if p["fusion"] else ("tab:blue" if p.get("forwards") == 1 else "tab:orange")
        ax.errorbar([x], [p["mean_acc"]], yerr=[p.get("spread") or 0.0], fmt="o", color=color, capsize=3)
        ax.annotate(p["name"], (x, p["mean_acc"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front, best = [], -1.0  # the Pareto frontier: no cheaper point is as accurate
    for p in sorted(pts, key=lambda p: (p["time_ratio"] if p.get("time_ratio") is not None else p["forwards"])):
        if p["mean_acc"] > best:
            front.append(p)
            best = p["mean_acc"]
    if len(front) > 1:
        ax.plot([p["time_ratio"] if p.get("time_ratio") is not None else p["forwards"] for p in front],
                [p["mean_acc"] for p in front], "--", color="grey", linewidth=0.8, label="Pareto frontier")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("inference cost: scoring time × foundation (1x models blue, 2x orange, trained fusions red)")
    ax.set_ylabel("mean accuracy (SOP, reasoning, mixed)")
    ax.set_ylim(0, 1.05)
    runs = f"{len(lb.sources)} runs: mean ± std" if len(lb.sources) > 1 else "1 run"
    ax.set_title(f"sopmoe: accuracy against cost ({runs})")
    return _png_bytes(fig)


def to_png(lb: Leaderboard) -> bytes:
    """Grouped bar chart of accuracy per family per model (error bars: the ± of the table). Stable bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = list(lb.chart)
    names = [row[0] for row in lb.summary.rows if any(row[0] in lb.chart[f] for f in fams)]
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.0, 1.5 + 0.35 * len(fams) * len(names))), 4.5), dpi=100)
    width = 0.8 / max(1, len(names))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")  # one colour per model
    for i, name in enumerate(names):
        xs = [k + (i - (len(names) - 1) / 2) * width for k in range(len(fams))]
        ms = [lb.chart[f].get(name) for f in fams]
        ax.bar(xs, [m.value if m else 0.0 for m in ms], width, label=name, color=cmap(i % cmap.N),
               yerr=[(m.stderr or 0.0) if m else 0.0 for m in ms], capsize=2, error_kw={"linewidth": 0.8})
    ax.set_xticks(range(len(fams)), fams)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (lm-eval acc)")
    runs = f"{len(lb.sources)} runs: mean ± std" if len(lb.sources) > 1 else "1 run: ± stderr"
    ax.set_title(f"sopmoe: accuracy per family ({runs})")
    ax.legend(fontsize=8, ncols=min(len(names), 6) or 1, loc="upper center", bbox_to_anchor=(0.5, -0.1),
              frameon=False)
    return _png_bytes(fig)
