"""smollm2-moe with its exported EAGLE head in a live SGLang 0.5.23 CPU server: acceptance.

The same held-out prompts (``real_model_quality.py``'s two sets) go to live servers
started through ``moe-spec serve`` with the live tests' CPU recipe (float32, greedy,
``--speculative-eagle-topk 8 --speculative-num-draft-tokens 32``), and to the transformers
engine with the engine-format head (``eagle/``), fp32, 32-token trees of width 8: what
SGLang accepts beside what the engine accepts. Both draft from the head's hot tokens
(``--speculative-token-map``; ``--full-vocab``: from every token). Servers run one request
at a time (all servers at once); the engine runs after they stop (``--skip-engine``: not).

    PYTHONPATH=$PWD .venv/bin/python bench/sglang_real_model.py [--prompts 6] [--max-new-tokens 48]

SGLang's ``spec_accept_length`` is completion tokens / verify passes, and its completion
counts the token the prefill produced; ``1 + accepted drafts / verify passes`` is the
engine's definition (tokens committed per verify step), shown beside it.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import fmean

import torch

from bench.real_model_quality import cpu_name, prompt_sets
from moe_spec.engine.generate import SpecConfig
from moe_spec.integration.sglang.eagle_draft import TOKEN_MAP
from moe_spec.models import model_path
from tests.integration.sglang.live.harness import LiveServer, ServerSpec, stop_all

LOG_LINE = re.compile(
    r"moe-spec: (\d+) verify passes; distinct experts per layer ([\d.]+) -> ([\d.]+)"
)


def sglang_configs(path: Path, budget: int, hot: bool) -> list[tuple[str, ServerSpec]]:
    """(label, server): unbudgeted trees of 6 and 5 draft steps, and router-mass at B; with
    ``hot``, the head drafts from its hot tokens (``--speculative-token-map``)."""
    token_map = ["--speculative-token-map", str(path / "eagle-sglang" / TOKEN_MAP)] if hot else []
    out = []
    for steps, policy in ((6, 32), (5, 32), (6, budget)):
        argv = [
            "--dtype", "float32",
            "--speculative-algorithm", "EAGLE",
            "--speculative-draft-model-path", str(path / "eagle-sglang"),
            *token_map,
            "--speculative-num-steps", str(steps), "--speculative-eagle-topk", "8",
            "--speculative-num-draft-tokens", "32",
        ]  # fmt: skip
        serve = ["--policy", "router-mass", "--budget", str(policy), "--log-interval", "1"]
        label = f"steps {steps}, " + ("unbudgeted" if policy >= 32 else f"router-mass B={policy}")
        out.append((label, ServerSpec(f"smollm2-{steps}-{policy}", path, argv, serve)))
    return out


def run_server(server: LiveServer, sets: dict[str, list[str]], max_new: int) -> dict:
    server.wait_ready(1200)
    rows = {}
    for name, prompts in sets.items():
        answers = [server.generate(p, max_new) for p in prompts]
        metas = [a["meta_info"] for a in answers]
        verify = sum(m["spec_verify_ct"] for m in metas)
        rows[name] = {
            "tokens": [a["output_ids"] for a in answers],
            "spec_accept_length": fmean(m["spec_accept_length"] for m in metas),
            "per_step": fmean(
                1 + m["spec_num_correct_drafts"] / m["spec_verify_ct"] for m in metas
            ),
            "verify_passes": verify,
        }
    return rows


def distinct_experts(log: str) -> tuple[float, float]:
    """Mean distinct experts per layer per verify pass (before, after the budget), weighted."""
    lines = [(int(n), float(b), float(a)) for n, b, a in LOG_LINE.findall(log)]
    total = sum(n for n, _, _ in lines)
    return (
        sum(n * b for n, b, _ in lines) / total,
        sum(n * a for n, _, a in lines) / total,
    )


def run_engine(
    path: Path, sets: dict[str, list[str]], max_new: int, budget: int, hot: bool
) -> dict:
    from moe_spec.integration.transformers import load_engine

    engine = load_engine(
        str(path), str(path / "eagle"), device="cpu", dtype=torch.float32, hot_tokens=hot
    )
    out = {}
    for label, spec in (
        ("unbudgeted", SpecConfig(width=8, depth=6, num_tokens=32)),
        (f"router-mass B={budget}", SpecConfig(width=8, depth=6, num_tokens=32,
                                               policy="router-mass", budget=budget)),
    ):  # fmt: skip
        for name, prompts in sets.items():
            results = [
                engine.generate_speculative(engine.encode(p), max_new, spec) for p in prompts
            ]
            out[(label, name)] = {
                "tokens": [r.tokens for r in results],
                "per_step": fmean(r.acceptance_length for r in results),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--json", type=Path, help="write every figure and token here")
    parser.add_argument(
        "--full-vocab", action="store_true", help="draft from every token, not the hot ones"
    )
    parser.add_argument("--skip-engine", action="store_true", help="SGLang servers only")
    args = parser.parse_args()
    path = model_path("smollm2-moe")
    sets = prompt_sets(args.prompts)
    logs = Path(tempfile.mkdtemp(prefix="moe-spec-sglang-real-"))
    configs = sglang_configs(path, args.budget, not args.full_vocab)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    servers = [LiveServer(spec, logs) for _, spec in configs]
    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            answers = list(pool.map(lambda s: run_server(s, sets, args.max_new_tokens), servers))
    finally:
        stop_all(servers)
    experts = [distinct_experts(s.log()) for s in servers]
    engine = {}
    if not args.skip_engine:
        engine = run_engine(path, sets, args.max_new_tokens, args.budget, not args.full_vocab)
    print(f"{started}; CPU: {cpu_name()}; logs in {logs}")
    vocab = "every token" if args.full_vocab else "the head's hot tokens"
    print(
        f"{args.prompts} prompts per set, {args.max_new_tokens} greedy tokens, fp32, "
        f"drafting from {vocab}"
    )
    print(
        "| run | prompt set | SGLang spec_accept_length | tokens per verify step | "
        "distinct experts / layer / verify (before -> after) | same tokens as engine |"
    )
    print("| --- | --- | ---: | ---: | --- | --- |")
    record = {"cpu": cpu_name(), "started": started, "args": vars(args) | {"json": None}}
    for (label, _), rows, (before, after) in zip(configs, answers, experts, strict=True):
        engine_label = "unbudgeted" if "unbudgeted" in label else f"router-mass B={args.budget}"
        for name, row in rows.items():
            mine = engine.get((engine_label, name), {}).get("tokens")
            same = mine and sum(a == b for a, b in zip(row["tokens"], mine, strict=True))
            cells = [
                f"SGLang, {label}", name, f"{row['spec_accept_length']:.2f}",
                f"{row['per_step']:.2f}", f"{before:.1f} -> {after:.1f}",
                f"{same} of {len(mine)}" if mine else "-",
            ]  # fmt: skip
            print("| " + " | ".join(cells) + " |")
            record[f"sglang {label} {name}"] = row | {"experts": [before, after], "same": same}
    for (label, name), row in engine.items():
        print(
            f"| engine, {label} (width 8, depth 6) | {name} | - | {row['per_step']:.2f} | - | - |"
        )
        record[f"engine {label} {name}"] = row
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
