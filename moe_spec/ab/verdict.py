"""One line per arm: faster or slower than autoregressive and unbudgeted, at what quality.

Speed is the modeled tokens/s when the run was priced, else the measured tokens/s on the
machine that ran it; ``speed_basis`` says which, once, above the verdicts. An arm is called
faster or slower than a baseline only where the 95% paired bootstrap CI of its speed ratio
(``ConfigStats.speed_vs``, resampling prompts) lies wholly on one side of 1; otherwise it is
level with it within the CI. Quality: greedy agreement, tokens before the first divergence and
the log-probability change with its 95% paired CI.
"""

from __future__ import annotations

from moe_spec.ab.stats import ConfigStats


def speed_metric(rows: list[ConfigStats]) -> str:
    """``modeled_tokens_per_s`` when the run was priced, else ``tokens_per_s``."""
    priced = any(r.metrics.get("modeled_tokens_per_s") is not None for r in rows)
    return "modeled_tokens_per_s" if priced else "tokens_per_s"


def speed_basis(rows: list[ConfigStats], meta: dict) -> str:
    """What the verdicts' speeds are: modeled under which cost model, or measured."""
    if speed_metric(rows) == "modeled_tokens_per_s":
        return f"modeled tokens/s for {meta.get('modeled_on')}"
    return "tokens/s measured on the machine that ran it (no cost model)"


def baselines(rows: list[ConfigStats], row: ConfigStats | None = None) -> dict[str, ConfigStats]:
    """The autoregressive arm and the unbudgeted one at ``row``'s temperature (greedy without
    a row), where the run has them: a sampled arm is judged against sampled speculation."""
    temperature = (row.config.get("temperature") or 0.0) if row is not None else 0.0
    found = {
        "autoregressive": next(
            (r for r in rows if r.config.get("policy") == "autoregressive"), None
        ),
        "unbudgeted speculation": next(
            (
                r
                for r in rows
                if r.config.get("policy") == "none"
                and (r.config.get("temperature") or 0.0) == temperature
            ),
            None,
        ),
    }
    return {name: base for name, base in found.items() if base is not None}


def _compare(row: ConfigStats, base: ConfigStats, metric: str, name: str) -> str | None:
    a, b = row.metrics.get(metric), base.metrics.get(metric)
    if base.label == row.label or a is None or not b:
        return None
    ratio = a / b
    shown = f"{ratio:.2f}x"
    ci = (row.speed_vs.get(name) or {}).get("ratio_ci95")
    if ci is None or row.prompts < 2:
        word = "level with" if shown == "1.00x" else "faster than" if ratio > 1 else "slower than"
        why = "one prompt: no CI" if row.prompts < 2 else "no CI"
        return f"{word} {name} ({shown}; {why})"
    low, high = ci
    word = "faster than" if low > 1 else "slower than" if high < 1 else "level with"
    within = " within the CI" if word == "level with" else ""
    return f"{word} {name}{within} ({shown}, 95% CI {low:.2f}-{high:.2f}x)"


def _quality(row: ConfigStats, reference: str) -> str:
    m, parts = row.metrics, []
    if m.get("agreement") is not None:
        parts.append(f"{m['agreement']:.1%} greedy agreement")
    if m.get("tokens_to_divergence") is not None:
        parts.append(f"{m['tokens_to_divergence']:.1f} tokens before the first divergence")
    d = row.vs_reference.get("mean_logprob") if row.vs_reference else None
    if d is not None:
        low, high = d["ci95"]
        against = row.reference or reference
        parts.append(f"log-prob/token {d['diff']:+.3f} [{low:+.3f}, {high:+.3f}] vs {against}")
    check = row.distribution_check
    if check is not None:
        verdict = "consistent with" if check["consistent"] else "differs from"
        weak = " (a pass is weak evidence: the test sees large shifts only)"
        weak = weak if check["consistent"] else ""
        runs = check["runs_per_arm"]
        parts.append(
            f"sampled tokens {verdict} the unbudgeted distribution (permutation test of "
            f"per-position token counts over {check['positions']} positions, "
            f"{runs} run{'s' * (runs != 1)} per arm and prompt, the arm's and the reference's "
            f"on different seeds: p = {check['p_value']:.3g}, alpha {check['alpha']:g}; "
            f"largest difference at position {check['worst_position']}){weak}"
        )
    if m.get("repair_rate") is not None:
        parts.append(f"repair after {m['repair_rate']:.0%} of steps")
    return "; ".join(parts) if parts else "no quality measure"


def verdicts(rows: list[ConfigStats], meta: dict) -> list[str]:
    """``- label: speed vs autoregressive and vs unbudgeted (ratio, CI); quality`` per arm
    but the autoregressive one; the speeds' basis is ``speed_basis``'s line."""
    metric = speed_metric(rows)
    out = []
    for row in rows:
        bases = baselines(rows, row)
        if row is bases.get("autoregressive"):
            continue
        speed = [c for name, b in bases.items() if (c := _compare(row, b, metric, name))]
        speed_text = " and ".join(speed) if speed else "no baseline to compare with"
        out.append(
            f"**{row.label}**: {speed_text}; quality: "
            f"{_quality(row, meta.get('reference', 'the reference'))}"
        )
    return out
