"""The main job: held-out prompts through autoregressive, unbudgeted and budgeted decoding.

Shape legend: L layers, E experts, K top-k, D model dim, F expert dim.

Every configuration runs greedy decoding on the same prompts; the table reports,
per configuration, the measurements of one speculative run: acceptance length,
tokens/s, verify steps, distinct experts per layer per verify step before and
after the budget, the accepted path's own distinct experts (the floor a lossless
verify cannot go below), modeled expert bytes read per generated token, and
agreement with the unbudgeted greedy output. A planning policy (``auto``) may
decode some steps instead of verifying a tree: those count as decodes (one token,
top-k experts per layer), apart from the verify steps, with the guard's reason.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import fmean

from moe_spec.ab.runner import schedule
from moe_spec.control.steps import AUTOREGRESSIVE
from moe_spec.engine.data import HELD_OUT, read_text, stdlib_root
from moe_spec.engine.generate import Engine, GenerationResult, SpecConfig

DEMO_FILES = ("textwrap.py", "statistics.py", "json/encoder.py")
PROMPT_CHARS = 1200
BYTES_PER_PARAM = 2  # experts stored and read as bf16


def held_out_prompts(files: Sequence[str] = DEMO_FILES, chars: int = PROMPT_CHARS) -> list[str]:
    """The first ``chars`` characters of code (from the first ``def``/``class``) of each file."""
    prompts = []
    for name in files:
        if name not in HELD_OUT:
            raise ValueError(f"{name} is not a held-out file; held-out: {', '.join(HELD_OUT)}")
        text = read_text(stdlib_root() / name)
        starts = [i for i in (text.find("\ndef "), text.find("\nclass ")) if i >= 0]
        start = min(starts) + 1 if starts else 0
        chunk = text[start : start + chars]
        prompts.append(chunk[: chunk.rfind("\n") + 1])
    return prompts


@dataclass
class ConfigResult:
    """One configuration over all prompts (means over prompts, steps and layers)."""

    label: str
    policy: str
    budget: int | None
    acceptance_length: float
    tokens_per_s: float
    verify_steps: int
    decoded_steps: int  # a planning policy's plain decodes (0 for the others)
    tokens: int
    distinct_before: float
    distinct_after: float
    distinct_path: float
    distinct_after_per_layer: list[float]
    expert_mb_per_token: float
    agreement: float
    first_divergence: list[int | None]
    decode_reason: str = ""  # why a planning policy decoded its last decoded step ("" if none)


def summarize(
    label: str,
    spec: SpecConfig | None,
    runs: list[GenerationResult],
    reference: list[list[int]],
    engine: Engine,
) -> ConfigResult:
    cfg = engine.config
    expert_bytes = 3 * cfg.dim * cfg.expert_dim * BYTES_PER_PARAM
    every = [s for r in runs for s in r.steps]
    steps = [s for s in every if s.guard != AUTOREGRESSIVE]  # verify steps
    decoded = [s for s in every if s.guard == AUTOREGRESSIVE]  # a planning policy's decodes
    tokens = sum(len(r.tokens) for r in runs)
    # a decode reads its token's own K experts per layer; autoregressive decoding decodes
    # every token but the first of each run (the prompt's forward gives it, as for the others)
    decodes = len(decoded) if every else tokens - len(runs)
    read = decodes * cfg.n_layers * cfg.top_k
    read += sum(sum(s.distinct_after_L) + sum(s.distinct_repair_L) for s in steps)
    if steps:
        per_layer = [
            fmean(s.distinct_after_L[layer] for s in steps) for layer in range(cfg.n_layers)
        ]
        before = fmean(fmean(s.distinct_before_L) for s in steps)
        path = fmean(fmean(s.distinct_path_L) for s in steps)
    else:  # every token decoded
        per_layer = [float(cfg.top_k)] * cfg.n_layers
        before = path = float(cfg.top_k)
    pairs = list(zip(runs, reference, strict=True))
    same = [sum(a == b for a, b in zip(r.tokens, ref, strict=False)) for r, ref in pairs]
    divergence = [first_divergence(r.tokens, ref) for r, ref in pairs]
    return ConfigResult(
        label=label,
        policy=spec.policy if spec else "autoregressive",
        budget=spec.budget if spec else None,
        acceptance_length=fmean(s.committed for s in steps) if steps else 1.0,
        tokens_per_s=tokens / sum(r.seconds for r in runs),
        verify_steps=len(steps),
        decoded_steps=len(decoded),
        tokens=tokens,
        distinct_before=before,
        distinct_after=fmean(per_layer),
        distinct_path=path,
        distinct_after_per_layer=per_layer,
        expert_mb_per_token=read * expert_bytes / tokens / 1e6,
        agreement=sum(same) / sum(len(ref) for ref in reference),
        first_divergence=divergence,
        decode_reason=decoded[-1].reason if decoded else "",
    )


def first_divergence(tokens: list[int], reference: list[int]) -> int | None:
    for i, (a, b) in enumerate(zip(tokens, reference, strict=False)):
        if a != b:
            return i
    return None if len(tokens) == len(reference) else min(len(tokens), len(reference))


def demo_configs(
    budgets: Sequence[int],
    policies: Sequence[str],
    spec: SpecConfig,
    repair_policies: Sequence[str] = (),
    auto: bool = False,
    policy_options: dict | None = None,
) -> list[tuple[str, SpecConfig | None]]:
    """``(label, SpecConfig or None)``: autoregressive, unbudgeted, each policy x budget, then
    each of ``repair_policies`` x budget with repair, then with ``auto`` the ``auto`` policy
    with repair, timing this machine's steps (``measure``: its guard decodes where trees
    lose here). ``policy_options`` go to every arm but the unbudgeted one (``auto``'s
    over its ``measure=True``)."""
    options = dict(policy_options or {})
    configs: list[tuple[str, SpecConfig | None]] = [("autoregressive", None), ("none", spec)]
    arms = [(p, False) for p in policies] + [(p, True) for p in repair_policies]
    for policy, repair in arms:
        for budget in budgets:
            budgeted = replace(
                spec, policy=policy, budget=budget, repair=repair, policy_options=dict(options)
            )
            configs.append((budgeted.label, budgeted))
    if auto:
        planned = replace(
            spec, policy="auto", repair=True, policy_options={"measure": True, **options}
        )
        measured = " (measured)" if planned.policy_options["measure"] is True else ""
        configs.append((f"{planned.label}{measured}", planned))
    return configs


def run_demo(engine: Engine, prompts: list[str], configs, max_new_tokens: int, progress=None):
    """Run every configuration on every prompt; the unbudgeted run is the agreement reference.

    Runs are interleaved as ``moe-spec ab`` runs them (:func:`moe_spec.ab.runner.schedule`:
    prompt by prompt, the configurations' order rotating), so the machine's drift falls on
    every configuration alike and tokens/s compare across rows. ``progress(label, i, run)``
    is called after each run, ``i`` the prompt's index.
    """
    ids = [engine.encode(p) for p in prompts]
    runs: dict[str, list[GenerationResult]] = {label: [] for label, _ in configs}
    for i, (label, spec) in schedule(list(configs), len(ids)):
        if spec is None:
            run = engine.generate_autoregressive(ids[i], max_new_tokens)
        else:
            run = engine.generate_speculative(ids[i], max_new_tokens, spec)
        runs[label].append(run)
        if progress:
            progress(label, i, run)
    unbudgeted = [label for label, spec in configs if spec is not None and spec.policy == "none"]
    reference = [r.tokens for r in runs[unbudgeted[-1] if unbudgeted else configs[0][0]]]
    return [summarize(label, spec, runs[label], reference, engine) for label, spec in configs]


def sample_lines(text: str, lines: int = 3, width: int = 96) -> list[str]:
    """The first ``lines`` non-empty lines of a completion, each cut to ``width`` characters."""
    kept = [line.rstrip() for line in text.splitlines() if line.strip()][:lines]
    return [line if len(line) <= width else line[: width - 3] + "..." for line in kept]


def format_table(rows: Sequence[ConfigResult]) -> str:
    head = (
        f"{'configuration':<24}{'accept':>7}{'tok/s':>8}{'steps':>6}{'experts/layer':>15}"
        f"{'path floor':>11}{'MB/token':>9}{'agree':>7}  first divergence"
    )
    lines = [head, "-" * (len(head) + 8)]
    for r in rows:
        experts = f"{r.distinct_before:.1f}->{r.distinct_after:.1f}"
        divergence = ",".join("-" if d is None else str(d) for d in r.first_divergence)
        lines.append(
            f"{r.label:<24}{r.acceptance_length:>7.2f}{r.tokens_per_s:>8.1f}{r.verify_steps:>6}"
            f"{experts:>15}{r.distinct_path:>11.1f}{r.expert_mb_per_token:>9.2f}"
            f"{r.agreement:>7.1%}  {divergence}"
        )
    for r in rows:
        if r.decoded_steps:
            lines.append(
                f"{r.label}: {r.decoded_steps} of {r.decoded_steps + r.verify_steps} steps "
                f"decoded; the last because: {r.decode_reason}"
            )
    return "\n".join(lines)


def write_outputs(rows: Sequence[ConfigResult], out_dir: Path, meta: dict) -> tuple[Path, Path]:
    """``results.json`` and ``demo.png`` (acceptance length and distinct experts per budget)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "results.json", out_dir / "demo.png"
    payload = {"schema": "moe-spec-demo/1", **meta, "results": [asdict(r) for r in rows]}
    json_path.write_text(json.dumps(payload, indent=2) + "\n")

    fig, (ax_acc, ax_exp) = plt.subplots(1, 2, figsize=(11, 4.2))
    budgeted = [r for r in rows if r.budget is not None]
    unbudgeted = next(r for r in rows if r.policy == "none")

    def arm(r: ConfigResult) -> str:  # the label without its budget: "draft-path repair"
        return r.label.replace(f" B={r.budget}", "")

    arms = list(dict.fromkeys(arm(r) for r in budgeted))
    for i, name in enumerate(arms):
        pts = sorted(((r.budget, r) for r in budgeted if arm(r) == name), key=lambda p: p[0])
        style = dict(
            marker="osD^vP*X"[i % 8],
            markersize=11 - 2 * (i % 4),  # equal points stay visible one over another
            fillstyle="none" if "repair" in name else "full",
            label=name,
        )
        ax_acc.plot([b for b, _ in pts], [r.acceptance_length for _, r in pts], "-", **style)
        ax_exp.plot([b for b, _ in pts], [r.distinct_after for _, r in pts], "-", **style)
    budgets = sorted({r.budget for r in budgeted})
    for ax in (ax_acc, ax_exp):
        ax.set_xticks(budgets)  # integer budgets only
        if len(budgets) == 1:
            ax.set_xlim(budgets[0] - 4, budgets[0] + 4)
    ax_acc.axhline(unbudgeted.acceptance_length, color="k", ls="--", label="unbudgeted")
    ax_exp.axhline(unbudgeted.distinct_before, color="k", ls="--", label="unbudgeted")
    ax_exp.axhline(unbudgeted.distinct_path, color="grey", ls=":", label="accepted-path floor")
    ax_acc.set(xlabel="budget B (experts per layer)", ylabel="acceptance length (tokens/step)")
    ax_exp.set(xlabel="budget B (experts per layer)", ylabel="distinct experts / layer / verify")
    ax_acc.legend(fontsize=8)
    ax_exp.legend(fontsize=8)
    fig.suptitle(meta.get("title", "moe-spec demo"))
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return json_path, png_path
