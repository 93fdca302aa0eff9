"""Sampled mode: the per-position permutation test of an arm's token distribution."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moe_spec.ab.sampled import distribution_check, g_statistic, permutation_p
from moe_spec.cli import main


def test_g_statistic_by_hand():
    # token 1: (2-1)^2/3, token 2: (1-2)^2/3; second group: token 5 (0-1)^2/1, token 6 (1-0)^2/1
    assert g_statistic([([1, 1, 2], [1, 2, 2])]) == pytest.approx(2 / 3)
    assert g_statistic([([1, 1, 2], [1, 2, 2]), ([6], [5])]) == pytest.approx(2 / 3 + 2)


def test_permutation_p_of_equal_and_of_separated_samples():
    rng = np.random.default_rng(0)
    same = [([[1, 2], [3, 4]], [[1, 2], [3, 4]])] * 3  # per prompt: (arm runs, ref runs)
    p, g_p = permutation_p(same, 2, 200, rng)
    assert p == 1.0 and g_p == [0.0, 0.0]  # nothing is further from equal than 0
    apart = [([[1, 1]] * 4, [[2, 2]] * 4)] * 5
    p, g_p = permutation_p(apart, 2, 200, rng)
    assert p == pytest.approx(1 / 201) and g_p == [40.0, 40.0]  # 5 x (16/4 + 16/4)


def sample(rng, probs, prompts, seeds, length):
    return [list(rng.choice(len(probs), size=length, p=probs)) for _ in range(prompts * seeds)]


def test_same_distribution_passes_a_shifted_one_fails():
    rng = np.random.default_rng(1)
    p = np.array([0.4, 0.3, 0.2, 0.1])
    ref = sample(rng, p, 10, 8, 6)
    same = sample(rng, p, 10, 8, 6)
    shifted = sample(rng, p[::-1].copy(), 10, 8, 6)
    ok = distribution_check(same, ref, seeds=8, positions=6, n_perm=200)
    bad = distribution_check(shifted, ref, seeds=8, positions=6, n_perm=200)
    assert ok["consistent"] and ok["positions"] == 6
    assert not bad["consistent"] and bad["p_value"] < 0.01
    assert distribution_check(same, ref, seeds=1) is None  # one seed: no test


def test_an_arm_that_shares_its_seeds_random_numbers_is_tested_on_unpaired_runs():
    """An arm sampled with the reference's seeds copies many of its tokens (shared random
    numbers): tested on every run, the pairs made a shifted arm look like the reference
    (a walkthrough: p = 0.96 for B = top-k). Tested on even seeds against odd ones, the
    shift shows, and an arm equal to the reference still passes."""
    rng = np.random.default_rng(2)
    p = np.array([0.4, 0.3, 0.2, 0.1])
    prompts, seeds, length = 8, 16, 6
    ref = sample(rng, p, prompts, seeds, length)
    arm = [
        [int(rng.choice(4, p=p[::-1])) if rng.random() < 0.5 else t for t in run] for run in ref
    ]  # half the tokens redrawn from the reversed distribution, the rest the reference's
    got = distribution_check(arm, ref, seeds, positions=length, n_perm=300)
    assert got["runs_per_arm"] == 8 and not got["consistent"]
    paired = [
        (arm[b * seeds : (b + 1) * seeds], ref[b * seeds : (b + 1) * seeds]) for b in range(8)
    ]
    old_p, _ = permutation_p(paired, length, 300, np.random.default_rng(0))
    assert old_p > 0.1  # what testing the same-seed runs together said
    assert distribution_check([list(r) for r in ref], ref, seeds, length, 300)["consistent"]


def run_ab(tiny_dir, out, seeds: int, configs: list[str]) -> dict:
    """``moe-spec ab`` on 2 prompts of the tiny checkpoint, a small tree: its results.json."""
    args = [
        "ab", "--checkpoint", str(tiny_dir), "--num-prompts", "2", "--seeds", str(seeds),
        "--out", str(out), "--num-tokens", "8", "--width", "4", "--depth", "3",
        "--max-new-tokens", "4", "--no-progress",
    ]  # fmt: skip
    for config in configs:
        args += ["--config", config]
    assert main(args) == 0
    return json.loads((out / "results.json").read_text())


def test_ab_sampled_mode_end_to_end(tiny_dir, tmp_path):
    out = tmp_path / "out"
    configs = ["autoregressive:T=1", "none:T=1", "token-priority:B=3,T=1"]
    results = run_ab(tiny_dir, out, 3, configs)
    assert results["seeds"] == 3 and results["prompts"] == 2  # prompts, not runs
    assert all(row["prompts"] == 2 for row in results["configs"])
    report = (out / "report.md").read_text()
    assert report.startswith("# moe-spec ab: 3 configurations on 2 prompts x 3 seeds\n")
    rows = {c["label"]: c for c in results["configs"]}
    ar = rows["autoregressive T=1"]["distribution_check"]
    assert ar["seeds"] == 3 and ar["runs_per_arm"] == 2 and ar["positions"] == 4
    assert ar["consistent"]  # autoregressive sampling is the target's distribution
    assert rows["none tree=8/4/3 T=1"]["distribution_check"] is None  # the reference itself
    budgeted = rows["token-priority B=3 tree=8/4/3 T=1"]["distribution_check"]
    assert budgeted is not None and 0 < budgeted["p_value"] <= 1
    assert "unbudgeted distribution" in (out / "report.md").read_text()


def test_a_sampled_arm_is_judged_against_sampled_speculation(tiny_dir, tmp_path):
    """In a run of greedy and sampled arms, a sampled arm's speed verdict and log-prob
    difference are against the unbudgeted arm at its own temperature, not greedy `none`
    (a walkthrough read 0.82x 'level' where the same-temperature ratio was 1.49x)."""
    out = tmp_path / "out"
    configs = ["autoregressive", "token-priority:B=3", "token-priority:B=3,T=1"]
    results = run_ab(tiny_dir, out, 2, configs)
    assert any(w.startswith("2 prompts: a bootstrap CI over so few") for w in results["warnings"])
    rows = {c["label"]: c for c in results["configs"]}
    sampled, greedy = (
        rows["token-priority B=3 tree=8/4/3 T=1"],
        rows["token-priority B=3 tree=8/4/3"],
    )
    assert sampled["reference"] == "none tree=8/4/3 T=1"
    assert greedy["reference"] == "none tree=8/4/3"
    speed = (
        "modeled_tokens_per_s"
        if sampled["metrics"].get("modeled_tokens_per_s")
        else ("tokens_per_s")
    )
    want = sampled["metrics"][speed] / rows["none tree=8/4/3 T=1"]["metrics"][speed]
    assert sampled["speed_vs"]["unbudgeted speculation"]["ratio"] == pytest.approx(want)
    report = (out / "report.md").read_text()
    line = next(
        x for x in report.splitlines() if x.startswith("- **token-priority B=3 tree=8/4/3 T=1")
    )
    assert "unbudgeted speculation" in line and "vs none tree=8/4/3 T=1" in line
    assert "| token-priority B=3 tree=8/4/3 T=1 (vs none tree=8/4/3 T=1) |" in report


@pytest.mark.parametrize(("runs", "text"), [(1, "1 run per arm"), (3, "3 runs per arm")])
def test_the_distribution_verdict_counts_runs_in_good_grammar(runs, text):
    """``--seeds 2`` gives one run an arm a prompt: the verdict said "1 runs an arm"."""
    from moe_spec.ab.stats import ConfigStats
    from moe_spec.ab.verdict import verdicts

    check = {"consistent": True, "positions": 4, "runs_per_arm": runs, "p_value": 0.5,
             "alpha": 0.01, "worst_position": 2}  # fmt: skip
    arm = ConfigStats("x T=1", {"policy": "tp", "temperature": 1.0}, 2, 1, 1, {}, None, None,
                      None, [], [], distribution_check=check)  # fmt: skip
    line = verdicts([arm], {})[0]
    assert f"{text} and prompt, the arm's and the reference's on different seeds" in line
    assert "runs an arm" not in line
