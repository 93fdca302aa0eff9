"""One line per arm: faster or slower than autoregressive and unbudgeted, at what quality.

Speed is the modeled tokens/s when the run was priced (and the line names the cost model),
else the measured tokens/s on the machine that ran it. Quality: greedy agreement, tokens
before the first divergence and the log-probability change with its 95% paired CI.
"""

from __future__ import annotations

from moe_spec.ab.stats import ConfigStats


def _speed(row: ConfigStats, metric: str) -> float | None:
    return row.metrics.get(metric)


def _compare(row: ConfigStats, base: ConfigStats | None, metric: str, name: str) -> str | None:
    if base is None or base.label == row.label:
        return None
    a, b = _speed(row, metric), _speed(base, metric)
    if a is None or not b:
        return None
    ratio = a / b
    shown = f"{ratio:.2f}"
    word = "level with" if shown == "1.00" else "faster than" if ratio > 1 else "slower than"
    return f"{word} {name} ({shown}x)"


def _quality(row: ConfigStats, reference: str) -> str:
    m, parts = row.metrics, []
    if m.get("agreement") is not None:
        parts.append(f"{m['agreement']:.1%} greedy agreement")
    if m.get("tokens_to_divergence") is not None:
        parts.append(f"{m['tokens_to_divergence']:.1f} tokens before the first divergence")
    d = row.vs_reference.get("mean_logprob") if row.vs_reference else None
    if d is not None:
        low, high = d["ci95"]
        parts.append(f"log-prob/token {d['diff']:+.3f} [{low:+.3f}, {high:+.3f}] vs {reference}")
    check = row.distribution_check
    if check is not None:
        verdict = "consistent with" if check["consistent"] else "differs from"
        parts.append(
            f"sampled tokens {verdict} the unbudgeted distribution (permutation test of "
            f"per-position token counts over {check['positions']} positions, {check['seeds']} "
            f"seeds: p = {check['p_value']:.3g}, alpha {check['alpha']:g}; largest "
            f"difference at position {check['worst_position']})"
        )
    if m.get("repair_rate") is not None:
        parts.append(f"repair after {m['repair_rate']:.0%} of steps")
    return "; ".join(parts) if parts else "no quality measure"


def verdicts(rows: list[ConfigStats], meta: dict) -> list[str]:
    """``- label: speed vs autoregressive and vs unbudgeted; under which model; quality``."""
    priced = any(r.metrics.get("modeled_tokens_per_s") is not None for r in rows)
    metric = "modeled_tokens_per_s" if priced else "tokens_per_s"
    where = (
        f"modeled for {meta.get('modeled_on')}"
        if priced
        else "measured on the machine that ran it (no cost model)"
    )
    autoregressive = next((r for r in rows if r.config.get("policy") == "autoregressive"), None)
    unbudgeted = next(
        (r for r in rows if r.config.get("policy") == "none" and not r.config.get("temperature")),
        None,
    )
    out = []
    for row in rows:
        if row is autoregressive:
            continue
        speed = [
            c
            for c in (
                _compare(row, autoregressive, metric, "autoregressive"),
                _compare(row, unbudgeted, metric, "unbudgeted speculation"),
            )
            if c
        ]
        speed_text = " and ".join(speed) if speed else "no baseline to compare with"
        out.append(
            f"**{row.label}**: {speed_text}, {where}; quality: "
            f"{_quality(row, meta.get('reference', 'the reference'))}"
        )
    return out
