"""The interleaved, resumable runner (with a fake backend) and the statistics."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from moe_spec.ab.configs import RunConfig
from moe_spec.ab.engine_backend import EngineBackend
from moe_spec.ab.plots import pareto
from moe_spec.ab.records import ResumeError, RunRecord, Step, Store
from moe_spec.ab.runner import RunInterruptedError, run_all, schedule
from moe_spec.ab.stats import Modeled, paired_bootstrap, per_prompt
from moe_spec.costmodel import (
    draft_seconds,
    get_cost_model,
    get_gpu,
    get_shape,
    map_distinct,
    verify_seconds,
)

CONFIGS = [RunConfig("autoregressive"), RunConfig("none"), RunConfig("token-priority", 8)]
HEADER = {"prompts_sha": "x", "max_new_tokens": 4, "seed": 0, "backend": "fake"}


class FakeBackend:
    name = "fake"

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self.fail_at = fail_at

    def run(self, config, index, prompt, seed, max_new):
        if len(self.calls) == self.fail_at:
            raise ValueError("server went away")
        self.calls.append((config.label, index, seed))
        return RunRecord(config.label, index, seed, [index, len(prompt)], 0.5)


def test_schedule_runs_prompt_by_prompt_and_rotates_the_order():
    order = [(i, c.label) for i, c in schedule(CONFIGS, 3)]
    assert order[:3] == [(0, "autoregressive"), (0, "none"), (0, "token-priority B=8")]
    assert order[3:6] == [(1, "none"), (1, "token-priority B=8"), (1, "autoregressive")]
    assert sorted(order) == sorted((i, c.label) for i in range(3) for c in CONFIGS)


def test_runs_are_stored_as_they_finish_and_a_rerun_skips_them(tmp_path):
    prompts = ["a", "bb", "ccc"]
    backend = FakeBackend(fail_at=4)
    with pytest.raises(RunInterruptedError, match="4 finished runs are kept") as failed:
        run_all(backend, CONFIGS, prompts, Store(tmp_path, HEADER, False), 7, 4, False)
    assert "token-priority B=8 on prompt 2: server went away" in str(failed.value)  # from 1
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 4
    with pytest.raises(ResumeError, match="--resume"):
        Store(tmp_path, HEADER, resume=False)
    with pytest.raises(ResumeError, match="seed"):
        Store(tmp_path, {**HEADER, "seed": 1}, resume=True)
    with (tmp_path / "runs.jsonl").open("a") as f:
        f.write('{"label": "none", "prom')  # a line cut short by a kill
    again = FakeBackend()
    records = run_all(again, CONFIGS, prompts, Store(tmp_path, HEADER, True), 7, 4, False)
    assert len(again.calls) == 9 - 4 and len(records) == 9
    assert all(seed == 7 + i for _, i, seed in backend.calls + again.calls)
    assert records[("none", 2)].tokens == [2, 3]


def test_a_failed_run_names_its_prompt_and_seed_counted_from_one(tmp_path):
    store = Store(tmp_path, HEADER, False)
    with pytest.raises(RunInterruptedError, match="B=8 on prompt 1, seed 2: server went away"):
        run_all(FakeBackend(fail_at=4), CONFIGS, ["a"] * 3 + ["b"] * 3, store, 7, 4, False, 3)


def test_per_prompt_measures_against_the_unbudgeted_run():
    info = {"n_layers": 2, "n_experts": 8, "top_k": 2, "expert_bytes": 1_000_000}
    steps = [Step(3, 8, 4, 3, [6, 5], [4, 4], [2, 3]), Step(1, 8, 4, 3, [7, 7], [4, 3], [2, 2])]
    run = RunRecord("x", 0, 0, [1, 2, 3, 9], 2.0, steps, 2, -2.0)
    ref = RunRecord("none", 0, 0, [1, 2, 3, 4, 5], 1.0)
    got = per_prompt(run, RunConfig("token-priority", 4), ref, info, None)
    assert got["acceptance_length"] == (4, 2)
    assert got["tokens_per_target_forward"] == (4, 2)  # no repairs: one forward per step
    assert got["agreement"] == (3, 5)
    assert got["tokens_per_s"] == (4, 2.0)
    assert got["mean_logprob"] == (-2.0, 4)
    assert got["expert_mb_per_token"] == (15.0, 4)  # (4+4+4+3) experts x 1 MB over 4 tokens
    ar = per_prompt(
        RunRecord("ar", 0, 0, [1, 2], 1.0), RunConfig("autoregressive"), ref, info, None
    )
    assert ar["acceptance_length"] == (1.0, 1.0) and ar["expert_mb_per_token"] == (8.0, 2)


def test_a_repair_counts_in_the_expert_bytes_and_the_modeled_time():
    info = {"n_layers": 2, "n_experts": 8, "top_k": 2, "expert_bytes": 1_000_000}
    steps = [
        Step(3, 8, 4, 3, [6, 5], [4, 4], [2, 3], 2, [3, 4]),
        Step(1, 8, 4, 3, [7, 7], [4, 3], [2, 2]),
    ]
    run = RunRecord("x", 0, 0, [1, 2, 3, 9, 5], 2.0, steps, 2, -2.0)  # the prompt's, then 4
    gpu, shape = get_gpu("H200"), get_shape("OLMoE-1B-7B")
    got = per_prompt(
        run,
        RunConfig("token-priority", 4, repair=True),
        None,
        info,
        Modeled(get_cost_model("roofline", "H200"), shape),
    )
    assert got["expert_mb_per_token"] == (22.0, 5)  # (4+4+4+3) verify + (3+4) repair experts
    assert got["repair_rate"] == (1, 2)
    assert got["tokens_per_target_forward"] == (4, 3)  # 2 verify forwards + 1 repair

    def mapped(d, tokens):
        return map_distinct(d, 2, 8, shape.top_k, shape.n_experts, tokens)

    seconds = 2 * draft_seconds(gpu, shape, 4, 3)
    seconds += verify_seconds(gpu, shape, 8, mapped(4.0, 8)) + verify_seconds(
        gpu, shape, 8, mapped(3.5, 8)
    )
    # the repair forward: 2 tokens, which read at most 2 * 8 of OLMoE's experts (3.5 of the
    # 4 that 2 tokens can read at top-2 of 8 -> 14 of 16, not 22 of 64)
    seconds += verify_seconds(gpu, shape, 2, mapped(3.5, 2))
    assert mapped(3.5, 2) == pytest.approx(14.0)
    assert got["modeled_tokens_per_s"][0] == 4
    assert got["modeled_tokens_per_s"][1] == pytest.approx(seconds)
    plain = per_prompt(run, RunConfig("token-priority", 4), None, info, None)
    assert "repair_rate" not in plain


CONFIG = RunConfig("token-priority", 4)


def test_modeled_throughput_counts_the_tokens_delivered_not_a_last_steps_overshoot():
    """A last step may commit past --max-new-tokens (or an end token): its time counts, the
    tokens cut off do not; the prompt's forward gave the first token."""
    info = {"n_layers": 2, "n_experts": 8, "top_k": 2, "expert_bytes": 1}
    steps = [Step(4, 8, 4, 3, [6, 6], [6, 6], [3, 3])] * 3  # 12 committed
    m = Modeled(get_cost_model("roofline", "H200"), get_shape("OLMoE-1B-7B"))
    whole = per_prompt(RunRecord("x", 0, 0, [7] * 13, 1.0, steps), CONFIG, None, info, m)
    cut = per_prompt(RunRecord("x", 0, 0, [7] * 10, 1.0, steps), CONFIG, None, info, m)
    assert whole["modeled_tokens_per_s"][0] == 12 and cut["modeled_tokens_per_s"][0] == 9
    assert cut["modeled_tokens_per_s"][1] == whole["modeled_tokens_per_s"][1]  # the same steps
    assert cut["acceptance_length"] == (12, 3)  # the draft's acceptance is as it was


def test_paired_bootstrap_of_a_ratio_metric():
    rng = np.random.default_rng(1)
    a = [{"m": (float(x), 2.0)} for x in rng.normal(10, 1, 30)]
    b = [{"m": (float(x) - 1.0, 2.0)} for (x,) in [p["m"][:1] for p in a]]  # exactly 0.5 lower
    out = paired_bootstrap(a, b, "m")
    assert out["diff"] == pytest.approx(0.5)
    assert out["ci95"] == pytest.approx([0.5, 0.5])  # a paired, constant shift has no spread
    c = [{"m": (float(x), 2.0)} for x in rng.normal(10, 1, 30)]
    noisy = paired_bootstrap(a, c, "m")
    expected = sum(p["m"][0] for p in a) / 60 - sum(p["m"][0] for p in c) / 60
    assert noisy["diff"] == pytest.approx(expected)
    assert noisy["ci95"][0] < noisy["diff"] < noisy["ci95"][1]
    assert paired_bootstrap(a, [{}] * 30, "m") is None


def test_paired_bootstrap_gives_the_ratio_and_its_ci_from_the_same_resamples():
    a = [{"m": (3.0 * n, 2.0)} for n in range(1, 9)]
    b = [{"m": (2.0 * n, 2.0)} for n in range(1, 9)]  # every prompt 1.5x
    out = paired_bootstrap(a, b, "m")
    assert out["ratio"] == pytest.approx(1.5) and out["ratio_ci95"] == pytest.approx([1.5, 1.5])
    mixed = [{"m": (2.0 * n * (2.0 if n % 2 else 0.5), 2.0)} for n in range(1, 9)]
    wide = paired_bootstrap(mixed, b, "m")
    expected = sum(p["m"][0] for p in mixed) / sum(p["m"][0] for p in b)  # a ratio of sums
    assert wide["ratio"] == pytest.approx(expected)
    assert wide["ratio_ci95"][0] < 1 < wide["ratio_ci95"][1]  # prompts 2x and 0.5x: no sign


def seeded_records(labels: list[str], seeds: int) -> dict[tuple[str, int], RunRecord]:
    """5 prompts with varied speeds, each run repeated ``seeds`` times (run i: prompt i // S)."""
    rng = np.random.default_rng(3)
    records = {}
    for label in labels:
        for p in range(5):
            tokens, seconds = [1] * int(rng.integers(4, 12)), float(rng.uniform(0.2, 2.0))
            for s in range(seeds):
                i = p * seeds + s
                records[(label, i)] = RunRecord(label, i, i, tokens, seconds)
    return records


def test_the_bootstrap_resamples_prompts_not_seeds():
    """S identical runs per prompt (greedy seeds) give the CI of one run, not a narrower one."""
    from moe_spec.ab.report import analyze

    configs = [RunConfig("none"), RunConfig("token-priority", 8)]
    labels = [c.label for c in configs]
    one = analyze(configs, seeded_records(labels, 1), 5, "none", {}, None, seeds=1)
    four = analyze(configs, seeded_records(labels, 4), 20, "none", {}, None, seeds=4)
    ci_one = one[1].vs_reference["tokens_per_s"]
    ci_four = four[1].vs_reference["tokens_per_s"]
    assert ci_one["ci95"][1] - ci_one["ci95"][0] > 1  # the test needs a spread to shrink
    assert ci_four["diff"] == pytest.approx(ci_one["diff"])
    assert ci_four["ci95"] == pytest.approx(ci_one["ci95"])
    assert four[1].prompts == one[1].prompts == 5


def test_pareto_front():
    pts = [(1, 5), (2, 4), (3, 1), (1.5, 3), (2, 4.5)]
    assert pareto(pts) == [(1, 5), (2, 4.5), (3, 1)]


def test_store_writes_the_versioned_header(tmp_path):
    Store(tmp_path, HEADER, False)
    assert json.loads((tmp_path / "run.json").read_text())["schema"] == "moe-spec-ab-run/1"


def test_resuming_with_an_added_configuration_runs_only_the_new_arm(tmp_path):
    prompts = ["a", "bb"]
    run_all(FakeBackend(), CONFIGS, prompts, Store(tmp_path, HEADER, False), 0, 4, False)
    more = FakeBackend()
    extra = RunConfig("router-mass", 8)
    records = run_all(more, [*CONFIGS, extra], prompts, Store(tmp_path, HEADER, True), 0, 4, False)
    assert [(label, i) for label, i, _ in more.calls] == [(extra.label, 0), (extra.label, 1)]
    assert len(records) == 8


def test_engine_backend_refuses_repair_on_an_engine_without_it():
    engine = SimpleNamespace(
        config=SimpleNamespace(top_k=2, n_experts=8), generate_speculative=lambda *a: None
    )
    backend = EngineBackend(engine, get_cost_model("roofline", "H200"), get_shape("OLMoE-1B-7B"))
    backend.check([RunConfig("token-priority", 4)])
    with pytest.raises(ValueError, match="repair needs an engine that can re-run a path"):
        backend.check([RunConfig("token-priority", 4, repair=True)])
    with pytest.raises(ValueError, match=r"^token-priority B=1: budget B=1 is below top-k=2"):
        backend.check([RunConfig("token-priority", 1)])  # the config named, as every other


def test_the_repeated_5gram_share_is_reported_per_run_and_aggregated_over_windows():
    loop = [1, 2, 3] * 6  # 18 tokens, 14 windows of 5; all but the first 3 repeat
    fresh = list(range(10))  # 6 windows, none repeated
    info = {}
    a = per_prompt(RunRecord("x", 0, 0, loop, 1.0), RunConfig("none"), None, info, None)
    b = per_prompt(RunRecord("x", 1, 0, fresh, 1.0), RunConfig("none"), None, info, None)
    assert a["repeated_5grams"] == (11, 14) and b["repeated_5grams"] == (0, 6)
    short = per_prompt(RunRecord("x", 2, 0, [1, 2], 1.0), RunConfig("none"), None, info, None)
    assert short["repeated_5grams"] == (0, 0)
