"""`moe-spec demo`, `generate` and `train` on a tiny checkpoint."""

from __future__ import annotations

import json

import pytest

from moe_spec.cli import main
from moe_spec.control.steps import AUTOREGRESSIVE
from moe_spec.engine.checkpoint import save_checkpoint
from moe_spec.engine.demo import BYTES_PER_PARAM, demo_configs, run_demo, summarize
from moe_spec.engine.generate import GenerationResult, SpecConfig, StepStats
from moe_spec.policies import get_policy


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_checkpoint):
    path = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(
        path,
        tiny_checkpoint.target,
        tiny_checkpoint.draft,
        tiny_checkpoint.tokenizer,
        {"note": "tiny"},
    )
    return path


def test_demo_prints_the_table_and_writes_json_and_png(tiny_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    args = [
        "demo",
        "--checkpoint",
        str(tiny_dir),
        "--max-new-tokens",
        "6",
        "--budgets",
        "3,5",
        "--policies",
        "router-mass,token-priority",
        "--num-tokens",
        "8",
        "--depth",
        "3",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    labels = [
        line.split("  ")[0].strip()
        for line in text.splitlines()
        if line.startswith(("autoregressive", "none", "router-mass", "token-priority", "draft"))
    ]
    assert labels == [
        "autoregressive",
        "none",
        "router-mass B=3",
        "router-mass B=5",
        "token-priority B=3",
        "token-priority B=5",
        "draft-path B=3 repair",  # --repair-policies defaults to draft-path
        "draft-path B=5 repair",
    ]
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "moe-spec-demo/1" and len(results["results"]) == 9
    by_label = {r["label"]: r for r in results["results"]}
    auto = results["results"][-1]  # the auto policy's run comes last, unless --no-auto
    assert auto["label"] == "auto repair (measured)" and auto["policy"] == "auto"
    assert auto["agreement"] == 1.0  # repair keeps the unbudgeted greedy output
    assert auto["verify_steps"] + auto["decoded_steps"] > 0
    if auto["decoded_steps"]:  # its guard decoded where trees were timed to lose
        assert f"{auto['label']}: {auto['decoded_steps']} of" in text and auto["decode_reason"]
    assert by_label["none"]["agreement"] == 1.0
    assert by_label["draft-path B=3 repair"]["agreement"] == 1.0  # repair is lossless
    assert by_label["autoregressive"]["agreement"] == 1.0  # greedy speculation is exact
    assert max(by_label["router-mass B=3"]["distinct_after_per_layer"]) <= 3
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out / 'results.json'}" in text


def test_demo_leaves_out_auto_on_request(tiny_dir, tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--checkpoint", str(tiny_dir), "--max-new-tokens", "4", "--out", str(out)]
    args += ["--num-tokens", "8", "--depth", "3"]
    assert main([*args, "--budgets", "3", "--repair-policies", "", "--no-auto"]) == 0
    labels = [r["label"] for r in json.loads((out / "results.json").read_text())["results"]]
    assert labels == ["autoregressive", "none", "router-mass B=3", "token-priority B=3"]


class RecordingEngine:
    """The tiny engine, recording which prompt and configuration each generation ran."""

    def __init__(self, engine) -> None:
        self.engine, self.calls = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate_autoregressive(self, prompt, max_new_tokens):
        self.calls.append((prompt, "autoregressive"))
        return self.engine.generate_autoregressive(prompt, max_new_tokens)

    def generate_speculative(self, prompt, max_new_tokens, spec):
        self.calls.append((prompt, spec.label))
        return self.engine.generate_speculative(prompt, max_new_tokens, spec)


def test_demo_interleaves_the_configurations_prompt_by_prompt(tiny_engine):
    """Drift must fall on every row alike: prompt by prompt, the order rotating; the rows
    come back in the configurations' order with the unbudgeted run as the reference."""
    spec = SpecConfig(num_tokens=8, depth=3, width=2)
    configs = demo_configs([3], ["router-mass"], spec, ["draft-path"])
    engine = RecordingEngine(tiny_engine)
    prompts = ["def f(x):", "class A:", "import os"]
    seen = []
    rows = run_demo(engine, prompts, configs, 4, progress=lambda *a: seen.append(a[:2]))
    labels = [label for label, _ in configs]
    n = len(labels)
    expected = [(i, labels[(i + j) % n]) for i in range(3) for j in range(n)]
    encoded = [tiny_engine.encode(p) for p in prompts]
    assert [(encoded.index(p), label) for p, label in engine.calls] == expected
    assert [(label, i) for i, label in expected] == seen
    assert [r.label for r in rows] == labels
    by_label = {r.label: r for r in rows}
    assert by_label["none"].agreement == 1.0 and by_label["autoregressive"].agreement == 1.0
    assert by_label["draft-path B=3 repair"].agreement == 1.0  # against the unbudgeted text


def test_summary_counts_a_planning_policys_decodes_apart_from_its_verify_steps(tiny_engine):
    """Two verify steps (3 and 2 tokens) and three decodes: acceptance and experts per layer
    come from the verify steps, a decode reads its token's K experts per layer."""
    cfg = tiny_engine.config
    L, K = cfg.n_layers, cfg.top_k
    tree = StepStats(3, [5] * L, [3] * L, [2] * L, guard="tree")
    tree2 = StepStats(2, [4] * L, [3] * L, [2] * L, repair_tokens=1, distinct_repair_L=[1] * L)
    decode = StepStats(1, [K] * L, [K] * L, [K] * L, guard=AUTOREGRESSIVE, reason="why")
    run = GenerationResult(list(range(9)), 1.0, [tree, decode, decode, tree2, decode])
    spec = SpecConfig(policy="auto", repair=True)
    row = summarize("auto", spec, [run], [list(range(9))], tiny_engine)
    assert (row.verify_steps, row.decoded_steps, row.decode_reason) == (2, 3, "why")
    assert row.acceptance_length == 2.5 and row.distinct_after == 3.0
    assert row.distinct_before == 4.5 and row.distinct_path == 2.0
    expert_bytes = 3 * cfg.dim * cfg.expert_dim * BYTES_PER_PARAM
    read = 3 * L * K + (3 * L) + (3 * L + 1 * L)  # decodes, then the two verify steps
    assert row.expert_mb_per_token == pytest.approx(read * expert_bytes / 9 / 1e6)
    runs = [GenerationResult(list(range(9)), 1.0)]
    ar = summarize("autoregressive", None, runs, [list(range(9))], tiny_engine)
    assert ar.decoded_steps == 0 and ar.verify_steps == 0
    # every token but the first (the prompt's forward gives it) is a decode of K experts
    assert ar.expert_mb_per_token == pytest.approx(8 * L * K * expert_bytes / 9 / 1e6)


def test_demo_refuses_bad_input_before_running(tiny_dir, capsys):
    assert main(["demo", "--checkpoint", str(tiny_dir), "--budgets", "1"]) == 2
    assert "budget B=1 is below top-k=2" in capsys.readouterr().err
    assert main(["demo", "--checkpoint", str(tiny_dir), "--policies", "nope"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
    assert main(["demo", "--checkpoint", "/nonexistent"]) == 2
    assert "--checkpoint '/nonexistent' is neither a model name" in capsys.readouterr().err


def test_demo_passes_its_policy_options_to_every_budgeted_arm(tiny_dir, tmp_path, monkeypatch):
    """``--policy-option`` reaches the policy objects the runs build, as ``generate``'s does;
    the unbudgeted baseline runs without it. One prompt, two tokens: the wiring, not the text."""
    import moe_spec.engine.demo as demo
    import moe_spec.engine.generate as generate

    built = []

    def recording_get_policy(name, **options):
        policy = get_policy(name, **options)
        built.append((name, options, policy))
        return policy

    real_run_demo = demo.run_demo
    monkeypatch.setattr(generate, "get_policy", recording_get_policy)
    monkeypatch.setattr(demo, "run_demo", lambda e, p, c, n, **k: real_run_demo(e, p[:1], c, n))
    out = tmp_path / "demo"
    args = ["demo", "--checkpoint", str(tiny_dir), "--out", str(out), "--budgets", "3"]
    args += ["--num-tokens", "8", "--depth", "3", "--max-new-tokens", "2", "--no-auto"]
    args += ["--policies", "token-priority", "--repair-policies", "draft-path"]
    assert main([*args, "--policy-option", "decay=0.7"]) == 0
    by_name = {name: (options, policy) for name, options, policy in built}
    assert by_name["none"][0] == {}
    for name in ("token-priority", "draft-path"):
        options, policy = by_name[name]
        assert options == {"decay": 0.7} and policy.decay == 0.7
    results = json.loads((out / "results.json").read_text())
    assert results["policy_options"] == {"decay": 0.7}


def test_demo_configs_give_auto_the_options_over_its_measure():
    spec = SpecConfig(num_tokens=8, depth=3, width=2)
    configs = dict(
        demo_configs([3], ["router-mass"], spec, auto=True, policy_options={"window": 8})
    )
    assert configs["none"].policy_options == {}
    assert configs["router-mass B=3"].policy_options == {"window": 8}
    assert configs["auto repair (measured)"].policy_options == {"measure": True, "window": 8}
    off = dict(demo_configs([3], [], spec, auto=True, policy_options={"measure": False}))
    assert off["auto repair"].policy_options == {"measure": False}  # not labelled measured


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--policy-option", "decay=0"], "token-priority: decay is 0; allowed: 0 < decay <= 1"),
        (
            ["--policy-option", "decay=0.7", "--policy-option", "decay=0.5"],
            "--policy-option decay is given twice (0.7 and 0.5); give each option once",
        ),
        (
            ["--policy-option", "decay=0.7", "--policies", "router-mass,token-priority"],
            "policy 'router-mass' takes no options; got decay (demo passes each --policy-option "
            "to every policy it runs: router-mass, token-priority; --policies, "
            "--repair-policies and --no-auto choose them)",
        ),
        (
            ["--policy-option", "budgets=[2,2,2]", "--policies", "layer-adaptive"],
            "policy 'layer-adaptive' (from built-in): budgets has 3 entries; the model has 2 MoE "
            "layers",
        ),
    ],
)
def test_demo_refuses_a_bad_policy_option_before_running(
    tiny_dir, tmp_path, capsys, monkeypatch, extra, message
):
    monkeypatch.setattr("moe_spec.engine.demo.run_demo", lambda *_, **__: pytest.fail("ran"))
    out = tmp_path / "demo"
    args = ["demo", "--checkpoint", str(tiny_dir), "--out", str(out), "--budgets", "3"]
    args += ["--policies", "token-priority", "--repair-policies", "", "--no-auto"]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not out.exists()


def test_generate_prints_the_completion(tiny_dir, capsys):
    args = [
        "generate",
        "def f(x):",
        "--checkpoint",
        str(tiny_dir),
        "--max-new-tokens",
        "5",
        "--policy",
        "router-mass",
        "--budget",
        "4",
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("def f(x):")
    assert "policy router-mass B=4" in captured.err
    assert main([*args, "--repair"]) == 0
    assert "policy router-mass B=4 repair" in capsys.readouterr().err
    assert main([*args, "--repair-min", "3"]) == 0
    assert "policy router-mass B=4 repair>=3" in capsys.readouterr().err
    auto = ["--policy", "auto", "--policy-option", "window=8", "--policy-option", "guard=false"]
    assert main([*args[:6], *auto]) == 0
    assert "policy auto (window=8, guard=false)]" in capsys.readouterr().err  # the options too
