"""Results of an A/B run: statistics per configuration, JSON, Markdown and the terminal table."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

from moe_spec.ab.configs import RunConfig
from moe_spec.ab.records import RunRecord
from moe_spec.ab.sampled import distribution_check
from moe_spec.ab.stats import ConfigStats, Modeled, metric_names, paired_bootstrap, summarize
from moe_spec.ab.verdict import baselines, speed_basis, speed_metric, verdicts

SCHEMA = "moe-spec-ab/1"
VERDICT_RULE = (
    "Faster or slower means the 95% paired bootstrap CI of the speed ratio (resampling "
    "prompts) lies wholly above or below 1; otherwise level within the CI."
)
BOOTSTRAP_METRICS = (
    "acceptance_length",
    "tokens_per_s",
    "modeled_tokens_per_s",
    "agreement",
    "tokens_to_divergence",
    "mean_logprob",
)


def unbudgeted_for(config: RunConfig, configs: list[RunConfig]) -> RunConfig | None:
    """The greedy unbudgeted run quality is measured against (None when sampling)."""
    if config.temperature != 0:
        return None
    return next((c for c in configs if c.policy == "none" and c.temperature == 0), None)


def analyze(
    configs: list[RunConfig],
    records: dict[tuple[str, int], RunRecord],
    n_prompts: int,
    reference: str,
    info: dict,
    modeled: Modeled | None,
    seeds: int = 1,
) -> list[ConfigStats]:
    """Statistics per configuration, with paired differences against ``reference``.

    With ``seeds > 1`` (run ``i`` is prompt ``i // seeds``) the bootstrap resamples whole
    prompts (their ``seeds`` runs together), and every arm sampled at temperature > 0 also
    gets ``distribution_check`` against the unbudgeted arm at the same temperature
    (``moe_spec.ab.sampled``).
    """
    rows, pairs = [], {}
    for c in configs:
        runs = [records[(c.label, i)] for i in range(n_prompts)]
        base = unbudgeted_for(c, configs)
        refs = [None if base is None else records[(base.label, i)] for i in range(n_prompts)]
        row, pairs[c.label] = summarize(c, runs, refs, info, modeled)
        row.prompts = n_prompts // seeds  # distinct prompts, not runs
        sampled_ref = next(
            (x for x in configs if x.policy == "none" and x.temperature == c.temperature), None
        )
        if c.temperature > 0 and sampled_ref is not None and sampled_ref.label != c.label:
            ref_tokens = [records[(sampled_ref.label, i)].tokens for i in range(n_prompts)]
            row.distribution_check = distribution_check([r.tokens for r in runs], ref_tokens, seeds)
        rows.append(row)
    speed = speed_metric(rows)
    by_label = {c.label: c for c in configs}
    for row, c in zip(rows, configs, strict=True):
        against = reference_for(c, by_label[reference], configs)
        if against is not None:
            row.reference = against.label
            row.vs_reference = {
                m: paired_bootstrap(pairs[row.label], pairs[against.label], m, block=seeds)
                for m in BOOTSTRAP_METRICS
            }
        row.speed_vs = {
            name: paired_bootstrap(pairs[row.label], pairs[base.label], speed, block=seeds)
            for name, base in baselines(rows, row).items()
            if base is not row
        }
    return rows


def reference_for(
    config: RunConfig, reference: RunConfig, configs: list[RunConfig]
) -> RunConfig | None:
    """What ``config``'s paired differences are against: the run's ``reference``, or where
    that decodes at another temperature the unbudgeted arm at ``config``'s (a sampled arm
    against greedy decoding measures the sampling, not the budget); None for the reference
    itself, or with neither."""
    if config.temperature != reference.temperature:
        reference = next(
            (x for x in configs if x.policy == "none" and x.temperature == config.temperature),
            None,
        )
    return None if reference is None or reference.label == config.label else reference


def write_json(rows: list[ConfigStats], path: Path, meta: dict) -> None:
    payload = {
        "schema": SCHEMA,
        **meta,
        "metrics": metric_names(),
        "configs": [asdict(r) for r in rows],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def speedup(row: ConfigStats, ref: ConfigStats, metric: str) -> float | None:
    a, b = row.metrics.get(metric), ref.metrics.get(metric)
    return a / b if a is not None and b else None


def own_reference(row: ConfigStats, ref: ConfigStats, rows: list[ConfigStats]) -> ConfigStats:
    """The row ``row``'s ``x ref`` is over: the arm its verdict and differences are against
    (``row.reference``: at another temperature than ``ref``, the unbudgeted arm at its own),
    the row itself where it is that arm, else the reference row ``ref``."""
    if row.reference:
        return next(r for r in rows if r.label == row.reference)
    temperature = row.config.get("temperature") or 0.0
    own = row.config.get("policy") == "none" and temperature != (
        ref.config.get("temperature") or 0.0
    )
    return row if own else ref


def table_rows(rows: list[ConfigStats], reference: str) -> list[list[str]]:
    ref = next(r for r in rows if r.label == reference)
    modeled = any(r.metrics["modeled_tokens_per_s"] is not None for r in rows)
    head = [
        "configuration",
        "accept",
        "tok/s",
        "experts/layer",
        "p99",
        "floor",
        "MB/tok",
        "agree",
        "to div",
        "rep5",
        "logprob",
    ] + (["model tok/s", "x ref"] if modeled else [])
    repaired = any(r.metrics.get("repair_rate") is not None for r in rows)
    head += ["tok/fwd", "repaired"] if repaired else []
    guarded = any(r.metrics.get("guard_autoregressive") is not None for r in rows)
    head += ["guard AR", "guard small"] if guarded else []
    out = [head]
    for r in rows:
        m = r.metrics
        before, after = r.distinct_before, r.distinct_after
        experts = "-" if after is None else f"{before['mean']:.1f}->{after['mean']:.1f}"
        line = [
            r.label + (" (ref)" if r.label == reference else ""),
            fmt(m["acceptance_length"], ".2f"),
            fmt(m["tokens_per_s"], ".1f"),
            experts,
            "-" if after is None else f"{after['p99']:.0f}",
            "-" if r.distinct_path is None else f"{r.distinct_path['mean']:.1f}",
            fmt(m["expert_mb_per_token"], ".2f"),
            fmt(m["agreement"], ".1%"),
            fmt(m["tokens_to_divergence"], ".1f"),
            fmt(m.get("repeated_5grams"), ".2f"),
            fmt(m["mean_logprob"], ".3f"),
        ]
        if modeled:
            line += [
                fmt(m["modeled_tokens_per_s"], ".0f"),
                fmt(speedup(r, own_reference(r, ref, rows), "modeled_tokens_per_s"), ".2f"),
            ]
        if repaired:
            line += [
                fmt(m.get("tokens_per_target_forward"), ".2f"),
                fmt(m.get("repair_rate"), ".0%"),
            ]
        if guarded:
            line += [fmt(m.get("guard_autoregressive"), ".0%")]
            line += [fmt(m.get("guard_smaller_tree"), ".0%")]
        out.append(line)
    return out


def format_table(rows: list[ConfigStats], reference: str) -> str:
    """The one-screen terminal table."""
    cells = table_rows(rows, reference)
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=False))
            )
        )
        if n == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def ci_text(d: dict | None, spec: str) -> str:
    if d is None:
        return "-"
    low, high = d["ci95"]
    return f"{format(d['diff'], spec)} [{format(low, spec)}, {format(high, spec)}]"


def write_markdown(rows: list[ConfigStats], path: Path, meta: dict, plots: list[str]) -> None:
    reference = meta["reference"]
    cells = table_rows(rows, reference)
    lines = [f"# moe-spec ab: {meta['title']}", ""]
    lines += [
        f"- {k}: {meta[k]}"
        for k in (
            "backend",
            "model",
            "prompts",
            "seeds",
            "max_new_tokens",
            "seed",
            "modeled_on",
            "depth_width_controller",
        )
        if meta.get(k) is not None
    ]
    budgets = meta.get("priced_budgets") or {}
    lines += [f"- {label}: {what}" for label, what in budgets.items()]
    planned = meta.get("planned_for") or {}
    lines += [f"- {label} plans for: {what}" for label, what in planned.items()]
    if meta.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in meta["warnings"]]
    lines += ["", "## Verdicts", "", f"Speed: {speed_basis(rows, meta)}. {VERDICT_RULE}", ""]
    lines += [f"- {v}" for v in verdicts(rows, meta)]
    lines += ["", "| " + " | ".join(cells[0]) + " |", "|" + " --- |" * len(cells[0])]
    lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
    lines += [
        "",
        f"## Differences against `{reference}` (95% paired bootstrap CI over prompts)",
        "",
        "| configuration | " + " | ".join(BOOTSTRAP_METRICS) + " |",
        "|" + " --- |" * (len(BOOTSTRAP_METRICS) + 1),
    ]
    specs = {"agreement": ".3f", "mean_logprob": ".3f", "acceptance_length": ".3f"}
    specs["tokens_to_divergence"] = ".1f"
    for r in rows:
        if r.vs_reference:
            against = "" if r.reference == reference else f" (vs {r.reference})"
            lines.append(
                f"| {r.label}{against} | "
                + " | ".join(
                    ci_text(r.vs_reference.get(m), specs.get(m, ".1f")) for m in BOOTSTRAP_METRICS
                )
                + " |"
            )
    guarded = [r for r in rows if r.guard_reasons]
    if guarded:
        lines += ["", "## The guard's last decision per prompt", ""]
        for r in guarded:
            lines += [f"- {r.label}:"] + [f"  - {short_reason(why)}" for why in r.guard_reasons]
    lines += ["", "## Columns", ""]
    lines += [f"- {name}: {text}" for name, text in metric_names().items()]
    lines += [
        "- experts/layer: distinct experts per layer per verify step, before->after the "
        "budget (mean; p99 after); floor: the accepted path's own distinct experts; "
        "to div: tokens_to_divergence; rep5: repeated_5grams",
        "- accept: acceptance_length; agree: agreement; MB/tok: expert_mb_per_token; logprob: "
        "mean_logprob; model tok/s: modeled_tokens_per_s; x ref: model tok/s over the "
        "reference row's, or for an arm at another temperature over the unbudgeted arm's at "
        "its own (the arm its verdict and differences are against; 1.00 for that arm "
        "itself); tok/fwd: tokens_per_target_forward; repaired: repair_rate; "
        "guard AR / guard small: guard_autoregressive / guard_smaller_tree",
        "- a guard's decision `tree N/W/D B=b1,b2,...`: a tree of N tokens, width W, depth D, "
        "and each MoE layer's budget (`8x30`: 30 layers at 8)",
        "",
    ]
    lines += [f"![{p}]({p})" for p in plots]
    path.write_text("\n".join(lines) + "\n")


def short_reason(reason: str) -> str:
    """``reason`` with each per-layer budget list run-length coded: "B=8x2,32x28"."""

    def coded(match: re.Match) -> str:
        runs: list[list] = []
        for b in match.group(1).split(","):
            if runs and runs[-1][0] == b:
                runs[-1][1] += 1
            else:
                runs.append([b, 1])
        return "B=" + ",".join(b if n == 1 else f"{b}x{n}" for b, n in runs)

    return re.sub(r"B=(\d+(?:,\d+)+)", coded, reason)
