"""PNG plots of an A/B run: throughput vs quality (Pareto view), distinct experts per layer.

Every series keeps one colour and one marker in both plots. A series is an arm, with the
budgets of one policy (same mode, options, repair, tree) joined into one line; the legend
names it with its repair setting. Budget labels are placed so that they do not overlap.
"""

from __future__ import annotations

from pathlib import Path

from moe_spec.ab.stats import ConfigStats

MARKERS = "osD^v<>pPX*h"


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats in both coordinates (higher is better), by x."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(front)


def series_name(row: ConfigStats) -> str:
    """The arm without its budget: ``token-priority repair``, ``none``, ``depth-width``."""
    budget = row.config.get("budget")
    label = row.label
    if budget is not None:
        label = label.replace(f" B={budget}", "", 1)
    if row.config.get("budget") is not None and not row.config.get("repair"):
        label += " (no repair)"
    return label


def legend_label(row: ConfigStats) -> str:
    """The arm's label, saying ``no repair`` for a budgeted arm without it."""
    budgeted = row.config.get("budget") is not None
    return row.label + (" (no repair)" if budgeted and not row.config.get("repair") else "")


def styles(rows: list[ConfigStats]) -> dict[str, tuple[str, str]]:
    """``series name -> (colour, marker)``, in order of first appearance."""
    import matplotlib

    colours = matplotlib.colormaps["tab10"].colors
    names = list(dict.fromkeys(series_name(r) for r in rows))
    return {n: (colours[i % 10], MARKERS[i % len(MARKERS)]) for i, n in enumerate(names)}


def _place_labels(ax, fig, labelled: list[tuple[str, float, float]]) -> None:
    """Annotate each point, trying offsets until the label's box overlaps none placed so far."""
    offsets = [(5, 4), (5, -11), (-30, 4), (-30, -11), (5, 14), (-30, 14), (5, -21), (-30, -21)]
    fig.canvas.draw()
    placed = []
    renderer = fig.canvas.get_renderer()
    for text, x, y in labelled:
        for dx, dy in offsets:
            ann = ax.annotate(text, (x, y), fontsize=7, xytext=(dx, dy), textcoords="offset points")
            box = ann.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(b) for b in placed):
                placed.append(box)
                break
            ann.remove()
        else:  # every offset collides: keep the first (rare with few points)
            ann = ax.annotate(
                text, (x, y), fontsize=7, xytext=offsets[0], textcoords="offset points"
            )
            placed.append(ann.get_window_extent(renderer))


def plot_tradeoff(rows: list[ConfigStats], path: Path, meta: dict) -> bool:
    """Speed (modeled tok/s if priced, else measured) against quality (agreement or log-prob)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    priced = rows[0].metrics.get("modeled_tokens_per_s") is not None
    speed = "modeled_tokens_per_s" if priced else "tokens_per_s"
    quality = (
        "agreement" if any(r.metrics["agreement"] is not None for r in rows) else "mean_logprob"
    )
    pts = [(r, r.metrics[speed], r.metrics[quality]) for r in rows]
    pts = [(r, x, y) for r, x, y in pts if x is not None and y is not None]
    if not pts:
        return False
    style = styles([r for r, _, _ in pts])
    fig, ax = plt.subplots(figsize=(8, 5.5))
    labelled = []
    for name, (colour, marker) in style.items():
        mine = sorted(
            ((r.config.get("budget") or 0, x, y) for r, x, y in pts if series_name(r) == name)
        )
        line = "-" if len(mine) > 1 else ""
        ax.plot(
            [x for _, x, _ in mine],
            [y for _, _, y in mine],
            line,
            marker=marker,
            color=colour,
            label=name,
            markersize=7,
        )
        labelled += [(f"B={b}", x, y) for b, x, y in mine if b]
    front = pareto([(x, y) for _, x, y in pts])
    ax.plot([x for x, _ in front], [y for _, y in front], ":", color="grey", label="Pareto front")
    _place_labels(ax, fig, labelled)
    if priced:
        xlabel = f"modeled tokens/s ({meta.get('modeled_on')})"
    else:
        xlabel = "measured tokens/s on the machine that ran it (no cost model)"
    ylabel = (
        "greedy agreement with unbudgeted speculation"
        if quality == "agreement"
        else "mean target log-prob per token"
    )
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(meta.get("title", ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_experts(rows: list[ConfigStats], path: Path, meta: dict) -> bool:
    """Distinct experts per verify step, per layer, for each speculative configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    style = styles(rows)
    rows = [r for r in rows if r.distinct_after_per_layer]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    dashes = {}
    for r in rows:
        colour, marker = style[series_name(r)]
        n = dashes.setdefault(series_name(r), 0)
        dashes[series_name(r)] += 1
        layers = list(range(len(r.distinct_after_per_layer)))
        ax.plot(
            layers,
            r.distinct_after_per_layer,
            ["-", "--", "-.", ":"][n % 4],
            marker=marker,
            color=colour,
            label=legend_label(r),
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="layer", ylabel="distinct experts / verify step (after budget)")
    ax.set_title(meta.get("title", ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True
