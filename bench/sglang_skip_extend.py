"""What skipping SGLang's draft extend on plain decodes costs the chain steps after them.

SGLang 0.5.23's ``SGLANG_SPEC_SKIP_ZERO_STEP_DRAFT_EXTEND=1`` skips the draft forward over
a depth-0 step's token (an adaptive chain's plain decode). The draft's cache then has no
entries for the decoded tokens, and a chain right after such a decode drafts from a zeroed
stand-in. With ``auto`` the plugin skips it on every decode of a planned run but the last
(``moe_spec.integration.sglang.depth``). This benchmark measures what each costs on the
real model: one live CPU server per mode (smollm2-moe, float32, its EAGLE head, a chain
of 3 drafts, ``--speculative-adaptive``, ``auto``), whose depths follow a fixed pattern
(``--decodes`` plain decodes, then ``--chains`` chain steps, repeated) forced by a small
SGLang plugin written to a temporary folder, with every expert kept, and the accepted
drafts of each chain step counted by its place after a run of decodes:

- ``extend``: SGLang's default, a draft extend after every decode;
- ``last``: skipped on every decode but the last of a run (what the plugin does);
- ``cold``: skipped on every decode (the switch alone).

Greedy, so each mode commits the same tokens; acceptance does not depend on the machine's
load. Prints one line per mode and writes ``results.json``.

    PYTHONPATH=$PWD .venv/bin/python bench/sglang_skip_extend.py [--decodes 24] [--chains 4]
        [--prompts 8] [--max-new 96] [--out out/skip-extend]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections import defaultdict
from pathlib import Path
from statistics import fmean

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

MODES = ("extend", "last", "cold")
PROBE = '''"""Forces an adaptive chain's depths (PROBE_PATTERN) and logs each step (PROBE_LOG)."""
import json, os

def install():
    import moe_spec.control.guard as guard
    from moe_spec.integration.sglang.depth import GuardedDepth

    pattern = [int(x) for x in os.environ["PROBE_PATTERN"].split(",")]
    mode, log, skip = os.environ["PROBE_MODE"], os.environ["PROBE_LOG"], "{skip}"
    state = {{"step": 0}}

    def get_steps_for_batch(self, batch_size):
        i = state["step"]
        state["step"] += 1
        depth, after = pattern[i % len(pattern)], pattern[(i + 1) % len(pattern)]
        skips = depth == 0 and (mode == "cold" or (mode == "last" and after == 0))
        os.environ[skip] = "1" if skips else "0"
        return depth

    def on_verify_complete(self, correct, batch_size):
        with open(log, "a") as f:
            f.write(json.dumps({{"correct": [int(c) for c in correct]}}) + "\\n")

    plan = guard.best_budgets

    def every_expert(cost, c, window, levels_V, repair, passes=2, min_gain=0.01):
        # the largest level alone (every expert kept), priced as the guard prices it
        return plan(cost, c, (window[0][:, :, -1:], *window[1:]), levels_V[-1:], repair, 0)

    GuardedDepth.get_steps_for_batch = get_steps_for_batch
    GuardedDepth.on_verify_complete = on_verify_complete
    guard.best_budgets = every_expert
'''


def write_probe(folder: Path) -> None:
    """The forcing plugin as an installed-looking package (an ``sglang.srt.plugins`` entry)."""
    from moe_spec.integration.sglang.compat import SKIP_EXTEND

    (folder / "skip_extend_probe.py").write_text(PROBE.format(skip=SKIP_EXTEND))
    info = folder / "skip_extend_probe-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: skip_extend_probe\nVersion: 0.1\n")
    entry = "[sglang.srt.plugins]\nskip_extend_probe = skip_extend_probe:install\n"
    (info / "entry_points.txt").write_text(entry)


def by_place(log: Path, pattern: list[int]) -> dict[int, list[int]]:
    """Accepted drafts of each chain step, by its place (1, 2, ...) after a run of decodes."""
    rows = [json.loads(line)["correct"][0] for line in log.read_text().splitlines()]
    out: dict[int, list[int]] = defaultdict(list)
    place = 0
    for i, correct in enumerate(rows):
        if pattern[i % len(pattern)] == 0:
            place = 0
            continue
        place += 1
        out[place].append(correct)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decodes", type=int, default=24, help="plain decodes per run")
    ap.add_argument("--chains", type=int, default=4, help="chain steps after each run")
    ap.add_argument("--prompts", type=int, default=8, help="per prompt set (two sets)")
    ap.add_argument("--max-new", type=int, default=96)
    ap.add_argument("--out", default="out/skip-extend")
    args = ap.parse_args()
    from auto_budget import prompt_sets

    from moe_spec.models.registry import model_path
    from tests.integration.sglang.live.conftest import ADAPTIVE_CHAIN
    from tests.integration.sglang.live.harness import LiveServer, ServerSpec

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_probe(out)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(out), os.environ.get("PYTHONPATH")])
    )
    pattern = [0] * args.decodes + [3] * args.chains
    path = model_path("smollm2-moe")
    head = path / "eagle-sglang"
    sglang = ["--dtype", "float32", "--speculative-algorithm", "EAGLE"]
    sglang += ["--speculative-draft-model-path", str(head), "--speculative-token-map"]
    sglang += [str(head / "hot_token_map.pt"), *ADAPTIVE_CHAIN]
    prompts = [p for ps in prompt_sets(args.prompts, 1200).values() for p in ps]
    servers = {}
    for mode in MODES:
        (out / f"{mode}.jsonl").unlink(missing_ok=True)
        env = {
            "PROBE_MODE": mode,
            "PROBE_PATTERN": ",".join(map(str, pattern)),
            "PROBE_LOG": str(out / f"{mode}.jsonl"),
            "SGLANG_PLUGINS": "moe_spec,live_test_cpu,skip_extend_probe",
        }
        spec = ServerSpec(f"skip-{mode}", path, sglang, ["--policy", "auto", "--budget", "32"], env)
        servers[mode] = LiveServer(spec, out)
    texts: dict[str, list[str]] = {}

    def drive(mode: str) -> None:
        server = servers[mode]
        server.wait_ready(1800)
        texts[mode] = [server.generate(p, args.max_new)["text"] for p in prompts]

    try:
        threads = [threading.Thread(target=drive, args=(m,)) for m in MODES]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for server in servers.values():
            server.stop()
    results = {"pattern": f"{args.decodes} decodes, {args.chains} chain steps", "modes": {}}
    for mode in MODES:
        places = by_place(out / f"{mode}.jsonl", pattern)
        every = [c for cs in places.values() for c in cs]
        results["modes"][mode] = {
            "chain_steps": len(every),
            "accepted_drafts": fmean(every),
            "by_place": {k: fmean(v) for k, v in sorted(places.items())},
            "same_text": texts[mode] == texts["extend"],
        }
        r = results["modes"][mode]
        place = " ".join(f"{k}: {v:.2f}" for k, v in r["by_place"].items())
        print(
            f"{mode:6s} accepted drafts per chain step {r['accepted_drafts']:.3f} over "
            f"{r['chain_steps']} steps; by place after the decodes {place}; "
            f"same text as extend: {r['same_text']}"
        )
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
