"""Per-configuration statistics and paired bootstrap differences against a reference.

Every aggregate is a ratio of sums over prompts (numerator, denominator per
prompt), so a bootstrap resample of prompts re-computes it exactly as the point
estimate was computed. Distinct-expert statistics pool every (verify step,
layer) value of a configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from moe_spec.ab.configs import BASELINES, RunConfig
from moe_spec.ab.records import RunRecord, Step
from moe_spec.control.cost import after_share
from moe_spec.control.steps import AUTOREGRESSIVE
from moe_spec.costmodel import (
    CostModel,
    ModeledStep,
    ModelShape,
    autoregressive_tokens_per_s,
    map_distinct,
    speculative_tokens_per_s,
)
from moe_spec.engine.demo import first_divergence

#: metric -> what it is; each is sum(numerator) / sum(denominator) over prompts.
METRICS = {
    "acceptance_length": "tokens committed per verify step (bonus included; a repair is "
    "part of its step; a last step's tokens past max_new_tokens count: its verify accepted "
    "them)",
    "tokens_per_s": "generated tokens per second, measured",
    "modeled_tokens_per_s": "tokens per second on the modeled GPU and model shape",
    "agreement": "share of tokens equal to the unbudgeted run's at the same position",
    "tokens_to_divergence": "tokens generated before the first one that differs from the "
    "unbudgeted run's (the whole output when none differs), mean over prompts",
    "mean_logprob": "mean target log-probability per generated token",
    "expert_mb_per_token": "modeled expert MB read per generated token (this model, bf16)",
    "repair_rate": "share of verify steps followed by an unbudgeted repair forward",
    "tokens_per_target_forward": "tokens committed per target forward (verify and repair)",
    "guard_autoregressive": "share of steps a planning policy's guard (auto) decoded "
    "autoregressively instead of verifying a tree",
    "guard_smaller_tree": "share of steps its guard verified a tree smaller than configured",
}


#: Extra per-run quality metrics: name -> (description, fn(tokens) -> (numerator, denominator)).
#: A hook for text metrics computed elsewhere (e.g. a share of repeated 5-grams); each
#: registered metric becomes a column of results.json and is aggregated like the others.
TEXT_METRICS: dict[str, tuple[str, Callable[[list[int]], tuple[float, float]]]] = {}


def repeated_5grams(tokens: list[int]) -> tuple[float, float]:
    """``(repeated 5-grams, 5-grams)`` of a completion: the degenerate-text measure."""
    from moe_spec.models.repetition import repeated_ngram_share

    total = max(len(tokens) - 4, 0)
    return round(repeated_ngram_share(tokens, 5) * total), total


TEXT_METRICS["repeated_5grams"] = (
    "share of the completion's 5-token windows that already occurred earlier in it "
    "(0: no loop; near 1: degenerate, looping text)",
    repeated_5grams,
)


def metric_names() -> dict[str, str]:
    """Every metric with its description: the built-in ones and the registered text metrics."""
    return {**METRICS, **{name: desc for name, (desc, _) in TEXT_METRICS.items()}}


@dataclass
class Modeled:
    cost: CostModel  # the device and its overhead terms (roofline or calibrated)
    shape: ModelShape
    # every speculative step pays a draft forward over its verified tokens after the verify,
    # a guard's plain decode included (SGLang's draft extend; the engines catch up lazily)
    draft_extend: bool = False
    # with draft_extend: False where SGLang skips it on a guard's decode that another
    # decode follows (its skip switch with the plugin: a run's last decode extends)
    decode_extend: bool = True
    # the share of a budget selection that a verify pays where the policy rested (did not
    # rank): 0 in the engines, which skip it; on a server auto's rest flag leaves the
    # selection's launches (moe_spec.policies.auto.SERVER_REST_SHARE). A guard's plain
    # decode pays none (SGLang's plugin runs no selection there: budgets_plain_decodes)
    rest_share: float = 0.0
    # the share of a selection a verify pays where the policy ranked its routing after the
    # forward (None: moe_spec.control.cost.after_share's estimate, 2 / n_moe_layers)
    after_share: float | None = None

    def describe(self) -> str:
        return f"{self.shape.name}, {self.cost.describe()}"


def per_prompt(
    record: RunRecord, config: RunConfig, ref: RunRecord | None, info: dict, modeled: Modeled | None
) -> dict[str, tuple[float, float]]:
    """``metric -> (numerator, denominator)`` of one run (missing metrics are left out)."""
    n = len(record.tokens)
    out: dict[str, tuple[float, float]] = {"tokens_per_s": (n, record.seconds)}
    if config.kind == "autoregressive":
        out["acceptance_length"] = out["tokens_per_target_forward"] = (1.0, 1.0)
    elif record.steps:
        committed = sum(s.committed for s in record.steps)
        repairs = sum(s.repair_tokens > 0 for s in record.steps)
        out["acceptance_length"] = (committed, len(record.steps))
        out["tokens_per_target_forward"] = (committed, len(record.steps) + repairs)
    elif record.verify_ct:
        out["acceptance_length"] = out["tokens_per_target_forward"] = (n, record.verify_ct)
    if ref is not None:
        same = sum(a == b for a, b in zip(record.tokens, ref.tokens, strict=False))
        out["agreement"] = (same, len(ref.tokens))
        diverged = first_divergence(record.tokens, ref.tokens)
        out["tokens_to_divergence"] = (n if diverged is None else diverged, 1)
    for name, (_, fn) in TEXT_METRICS.items():
        out[name] = fn(record.tokens)
    if record.logprobs_sum is not None and n:
        out["mean_logprob"] = (record.logprobs_sum, n)
    if info and (record.steps or config.kind == "autoregressive"):
        L, K = info["n_layers"], info["top_k"]
        experts = (
            sum(sum(s.after_L) + sum(s.repair_L) for s in record.steps)
            if record.steps
            else n * L * K
        )
        out["expert_mb_per_token"] = (experts * info["expert_bytes"] / 1e6, n)
    guarded = [s for s in record.steps if s.guard]
    if guarded:
        ar = sum(s.guard == "autoregressive" for s in guarded)
        small = sum(s.guard == "tree" and s.num_tokens < config.num_tokens for s in guarded)
        out["guard_autoregressive"] = (ar, len(record.steps))
        out["guard_smaller_tree"] = (small, len(record.steps))
    if config.repair and record.steps:
        out["repair_rate"] = (sum(s.repair_tokens > 0 for s in record.steps), len(record.steps))
    if modeled is not None and info:
        out["modeled_tokens_per_s"] = modeled_pair(record, config, info, modeled)
    return out


def modeled_pair(record: RunRecord, config: RunConfig, info: dict, m: Modeled):
    """``(tokens, modeled seconds)``: each step's tree and mapped distinct count."""
    if config.kind == "autoregressive":
        n = len(record.tokens)
        tokens_per_s = autoregressive_tokens_per_s(m.cost.gpu, m.shape, overheads=m.cost.overheads)
        return (n, n / tokens_per_s)
    if not record.steps:
        return (0.0, 0.0)
    steps = modeled_steps(record, config, info, m)
    committed = sum(s.committed for s in steps)
    tokens_per_s = speculative_tokens_per_s(m.cost.gpu, m.shape, steps, overheads=m.cost.overheads)
    # the steps delivered the tokens after the prompt's (the first); a last step may commit
    # past --max-new-tokens or an end token: those tokens were not delivered, its time was
    delivered = min(committed, max(len(record.tokens) - 1, 0))
    return (delivered, committed / tokens_per_s)


def modeled_steps(
    record: RunRecord, config: RunConfig, info: dict, m: Modeled
) -> list[ModeledStep]:
    """A speculative run's steps as the cost model prices them (``record.steps`` in order)."""

    def mapped(distinct_L: list[int], tokens: int) -> float:
        mean = sum(distinct_L) / len(distinct_L) if distinct_L else 0.0
        return map_distinct(
            mean, info["top_k"], info["n_experts"], m.shape.top_k, m.shape.n_experts, tokens
        )

    def extends(i: int) -> bool:  # SGLang's draft extend after step i
        if not m.draft_extend:
            return False
        if m.decode_extend or record.steps[i].guard != AUTOREGRESSIVE:
            return True
        after = record.steps[i + 1] if i + 1 < len(record.steps) else None
        return after is not None and after.guard != AUTOREGRESSIVE

    def drafted(s) -> tuple[int, int]:  # the step's draft forward: width, depth
        # a decode that read the decoded tokens (``StepPlan.read``, priced as a draft forward)
        # reads nothing more where SGLang's extend after every decode already ran the draft
        # over each of them (its guesses: the SGLang plugin reads them there)
        if m.draft_extend and m.decode_extend and s.guard == AUTOREGRESSIVE:
            return 0, 0
        return s.width, s.depth

    return [
        ModeledStep(
            s.committed,
            s.num_tokens,
            *drafted(s),
            mapped(s.after_L, s.num_tokens),
            s.repair_tokens,
            mapped(s.repair_L, s.repair_tokens) if s.repair_tokens else 0.0,
            # a policy that rested (or B >= E) ran no selection: priced without it (but
            # ``rest_share`` of it, a server's launch anyway); nor did the guard's decodes
            budgeted=selection_share(config, s, m),
            draft_extend=extends(i),
        )
        for i, s in enumerate(record.steps)
    ]


def selection_share(config: RunConfig, s: Step, m: Modeled) -> float:
    """The share of a budget selection step ``s``'s verify pays (:class:`Modeled`; a step
    ranked after the forward at the arm's own ``after_share`` option where it sets one, as
    its policy planned with)."""
    if config.policy in BASELINES:
        return 0.0
    if s.guard == AUTOREGRESSIVE:  # a server's decode: a 1-token verify, no selection run
        return 0.0
    if s.ranked_after:
        share = config.options.get("after_share", m.after_share)
        return m.rest_share + after_share(m.shape, None if share is None else float(share))
    return 1.0 if s.ranked else m.rest_share


def ratio(pairs: list[tuple[float, float]]) -> float | None:
    den = sum(d for _, d in pairs)
    return sum(n for n, _ in pairs) / den if pairs and den else None


def distribution(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=float)
    return {
        "mean": float(arr.mean()),
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
    }


@dataclass
class ConfigStats:
    label: str
    config: dict
    prompts: int
    tokens: int
    verify_steps: int
    metrics: dict[str, float | None]
    distinct_before: dict | None
    distinct_after: dict | None
    distinct_path: dict | None
    distinct_after_per_layer: list[float]
    first_divergence: list[int | None]
    vs_reference: dict[str, dict] = field(default_factory=dict)
    guard_reasons: list[str] = field(default_factory=list)  # each prompt's last planned step
    speed_vs: dict[str, dict | None] = field(default_factory=dict)  # baseline -> paired ratio
    distribution_check: dict | None = None  # sampled mode (moe_spec.ab.sampled)
    # the arm vs_reference compares with: the run's reference, or at another temperature the
    # unbudgeted arm at this one's (a sampled arm against greedy decoding measures sampling)
    reference: str = ""


def summarize(
    config: RunConfig,
    records: list[RunRecord],
    refs: list[RunRecord | None],
    info: dict,
    modeled: Modeled | None,
) -> tuple[ConfigStats, list[dict]]:
    """The statistics of one configuration, and its per-prompt pairs (for the bootstrap)."""
    pairs = [
        per_prompt(r, config, ref, info, modeled) for r, ref in zip(records, refs, strict=False)
    ]
    steps = [s for r in records for s in r.steps]
    L = len(steps[0].after_L) if steps else 0
    return ConfigStats(
        label=config.label,
        config={k: v for k, v in vars(config).items() if k != "label"},
        prompts=len(records),
        tokens=sum(len(r.tokens) for r in records),
        verify_steps=sum(r.verify_ct or 0 for r in records),
        metrics={m: ratio([p[m] for p in pairs if m in p]) for m in metric_names()},
        distinct_before=distribution([v for s in steps for v in s.before_L]),
        distinct_after=distribution([v for s in steps for v in s.after_L]),
        distinct_path=distribution([v for s in steps for v in s.path_L]),
        distinct_after_per_layer=[float(np.mean([s.after_L[i] for s in steps])) for i in range(L)],
        first_divergence=[
            None if ref is None else first_divergence(r.tokens, ref.tokens)
            for r, ref in zip(records, refs, strict=False)
        ],
        guard_reasons=[r.steps[-1].reason for r in records if r.steps and r.steps[-1].guard],
    ), pairs


def paired_bootstrap(
    a: list[dict], b: list[dict], metric: str, n_boot: int = 2000, seed: int = 0, block: int = 1
) -> dict | None:
    """Difference ``a - b`` of a ratio metric and its 95% CI, resampling prompts jointly;
    also the ratio ``a / b`` and its CI from the same resamples (``ratio``, ``ratio_ci95``).

    ``block``: runs per prompt (``--seeds``; run ``i`` is prompt ``i // block``). A prompt's
    runs are resampled as one unit, so S copies of each run give the CI of one run.
    """
    if not all(metric in p for p in a + b) or len(a) != len(b) or not a or len(a) % block:
        return None
    arr = (
        np.array([[*x[metric], *y[metric]] for x, y in zip(a, b, strict=False)], dtype=float)
        .reshape(len(a) // block, block, 4)
        .sum(axis=1)
    )  # [P, 4]: each prompt's sums over its runs
    idx = np.random.default_rng(seed).integers(0, len(arr), size=(n_boot, len(arr)))
    sums = arr[idx].sum(axis=1)  # [n_boot, 4]
    with np.errstate(divide="ignore", invalid="ignore"):
        diffs = sums[:, 0] / sums[:, 1] - sums[:, 2] / sums[:, 3]
        ratios = sums[:, 0] / sums[:, 1] / (sums[:, 2] / sums[:, 3])
    diffs, ratios = diffs[np.isfinite(diffs)], ratios[np.isfinite(ratios)]
    tot = arr.sum(axis=0)
    if tot[1] == 0 or tot[3] == 0 or diffs.size == 0:
        return None
    out = {"diff": float(tot[0] / tot[1] - tot[2] / tot[3]), "ci95": ci95(diffs)}
    if tot[2] != 0 and ratios.size:
        out |= {"ratio": float(tot[0] / tot[1] / (tot[2] / tot[3])), "ratio_ci95": ci95(ratios)}
    return out


def ci95(samples: np.ndarray) -> list[float]:
    """The 2.5th and 97.5th percentiles of bootstrap ``samples``."""
    return [float(v) for v in np.percentile(samples, [2.5, 97.5])]
