"""PNG plots of an A/B run: throughput vs quality (Pareto view), distinct experts per layer."""

from __future__ import annotations

from pathlib import Path

from moe_spec.ab.stats import ConfigStats


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats in both coordinates (higher is better), by x."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(front)


def plot_tradeoff(rows: list[ConfigStats], path: Path, title: str) -> bool:
    """Speed (modeled tok/s if present, else measured) against quality (agreement or log-prob)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = "modeled_tokens_per_s" if rows[0].metrics["modeled_tokens_per_s"] else "tokens_per_s"
    quality = (
        "agreement" if any(r.metrics["agreement"] is not None for r in rows) else "mean_logprob"
    )
    pts = [(r, r.metrics[speed], r.metrics[quality]) for r in rows]
    pts = [(r, x, y) for r, x, y in pts if x is not None and y is not None]
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for policy in dict.fromkeys(r.config["policy"] for r, _, _ in pts):
        mine = sorted(
            (r.config["budget"] or 0, x, y) for r, x, y in pts if r.config["policy"] == policy
        )
        style = "o-" if any(b for b, _, _ in mine) else "s"
        ax.plot([x for _, x, _ in mine], [y for _, _, y in mine], style, label=policy)
        for b, x, y in mine:
            if b:
                ax.annotate(f"B={b}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = pareto([(x, y) for _, x, y in pts])
    ax.plot([x for x, _ in front], [y for _, y in front], ":", color="grey", label="Pareto front")
    ax.set(xlabel=speed.replace("_", " "), ylabel=quality.replace("_", " "), title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_experts(rows: list[ConfigStats], path: Path, title: str) -> bool:
    """Distinct experts per verify step, per layer, for each speculative configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.distinct_after_per_layer]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for r in rows:
        layers = range(len(r.distinct_after_per_layer))
        ax.plot(list(layers), r.distinct_after_per_layer, "o-", label=r.label)
    ax.set(xlabel="layer", ylabel="distinct experts / verify step (after budget)", title=title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
