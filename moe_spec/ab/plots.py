"""PNG plots of an A/B run: throughput vs quality (Pareto view), distinct experts per layer.

Every series keeps one colour and one marker in both plots. A series is an arm, with the
budgets of one policy (same mode, options, repair, tree) joined into one line; the legend
names it with its repair setting. Budget labels, in their series' colour, are placed so that
they do not overlap (a thin leader line when pushed away from their point).
"""

from __future__ import annotations

import textwrap
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


def _place_labels(ax, fig, labelled: list[tuple[str, float, float, tuple]]) -> None:
    """Annotate each point in its colour, trying offsets until no placed label is overlapped."""
    offsets = [(5, 4), (5, -11), (-30, 4), (-30, -11), (5, 14), (-30, 14), (5, -21), (-30, -21)]
    offsets += [(-12, 24), (-12, -31), (18, 24), (18, -31), (-42, 24), (-42, -31)]
    fig.canvas.draw()
    placed = []
    renderer = fig.canvas.get_renderer()

    def annotate(text, x, y, colour, dx, dy):
        leader = {"arrowstyle": "-", "color": colour, "lw": 0.5, "alpha": 0.6}
        return ax.annotate(
            text,
            (x, y),
            fontsize=7,
            color=colour,
            xytext=(dx, dy),
            textcoords="offset points",
            arrowprops=leader if abs(dy) > 14 else None,
        )

    for text, x, y, colour in labelled:
        for dx, dy in offsets:
            ann = annotate(text, x, y, colour, dx, dy)
            box = ann.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(b) for b in placed):
                placed.append(box)
                break
            ann.remove()
        else:  # every offset collides: keep the first (rare with few points)
            placed.append(annotate(text, x, y, colour, *offsets[0]).get_window_extent(renderer))


def left_out(rows: list[ConfigStats], plotted: list[ConfigStats], quality: str) -> str:
    """What the trade-off plot leaves out and why ("" when it plots every arm): sampled arms
    have no greedy agreement to plot beside greedy ones; other arms lack a coordinate."""
    missing = [r for r in rows if r not in plotted]
    sampled = sum(quality == "agreement" and bool(r.config.get("temperature")) for r in missing)
    other = len(missing) - sampled
    parts = []
    if sampled:
        parts.append(
            f"{sampled} sampled arm{'s' * (sampled != 1)} (T > 0) not plotted: greedy "
            "agreement needs T = 0"
        )
    if other:
        parts.append(f"{other} arm{'s' * (other != 1)} not plotted: no speed or {quality}")
    return "; ".join(parts)


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
    note = left_out(rows, [r for r, _, _ in pts], quality)
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
        labelled += [(f"B={b}", x, y, colour) for b, x, y in mine if b]
    front = pareto([(x, y) for _, x, y in pts])
    ax.plot(  # each point ringed, so that a front of one point shows (and its legend entry)
        [x for x, _ in front],
        [y for _, y in front],
        ":",
        color="grey",
        marker="o",
        markersize=14,
        markerfacecolor="none",
        label="Pareto front",
    )
    _place_labels(ax, fig, labelled)
    if priced:
        xlabel = f"modeled tokens/s ({meta.get('modeled_on')})"
    else:
        xlabel = "measured tokens/s on the machine that ran it (no cost model)"
    xlabel = textwrap.fill(xlabel, 110)  # a cost model's description runs past the plot
    ylabel = (
        "greedy agreement with unbudgeted speculation"
        if quality == "agreement"
        else "mean target log-prob per token"
    )
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(meta.get("title", "") + (f"\n{note}" if note else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_experts(rows: list[ConfigStats], path: Path, meta: dict) -> bool:
    """Distinct experts per verify step, per layer, for each speculative configuration.

    Budgeted arms of one budget whose curves lie within 0.5 of each other in every layer
    (they sit at the budget) are drawn as one grey line, naming how many arms it stands for,
    instead of lines that hide each other.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    style = styles(rows)
    rows = [r for r in rows if r.distinct_after_per_layer]
    if not rows:
        return False
    by_budget: dict[int, list[ConfigStats]] = {}
    for r in rows:
        if r.config.get("budget") is not None:
            by_budget.setdefault(r.config["budget"], []).append(r)
    at_budget = {
        b: group
        for b, group in by_budget.items()
        if len(group) > 1
        and all(
            max(layer) - min(layer) <= 0.5
            for layer in zip(*(r.distinct_after_per_layer for r in group), strict=True)
        )
    }
    own = [r for r in rows if r.config.get("budget") not in at_budget]
    fig, ax = plt.subplots(figsize=(8, 5))
    dashes = {}
    for r in own:
        colour, marker = style[series_name(r)]
        n = dashes.setdefault(series_name(r), 0)
        dashes[series_name(r)] += 1
        ax.plot(
            range(len(r.distinct_after_per_layer)),
            r.distinct_after_per_layer,
            ["-", "--", "-.", ":"][n % 4],
            marker=marker,
            color=colour,
            label=legend_label(r),
        )
    for b, group in sorted(at_budget.items()):
        layers = list(zip(*(r.distinct_after_per_layer for r in group), strict=True))
        ax.plot(
            range(len(layers)),
            [sum(v) / len(v) for v in layers],
            "--",
            marker="_",
            color="grey",
            label=f"B={b}: {len(group)} budgeted arms (mean; all within 0.5)",
        )
        ax.annotate(f"B={b}", (0, sum(layers[0]) / len(layers[0])), fontsize=7, color="grey",
                    xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="layer", ylabel="distinct experts / verify step (after budget)")
    ax.set_title(meta.get("title", ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True
