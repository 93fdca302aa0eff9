"""Quality of a reference-engine checkpoint on the held-out files.

Prints, as Markdown: the target's held-out loss (loaded weights, bf16-rounded as
shipped), and for greedy tree speculative decoding with a 32-token tree on a
prompt from every held-out file: mean acceptance length, unbudgeted distinct
experts per layer per verify step (and as a multiple of top-k), the accepted
path's distinct experts, and tokens/s of autoregressive and speculative decoding.

    .venv/bin/python bench/engine_quality.py [--checkpoint DIR] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import platform
import time
from statistics import fmean

import torch

from moe_spec.engine.checkpoint import SHIPPED, load_checkpoint
from moe_spec.engine.data import HELD_OUT, read_text, split_files
from moe_spec.engine.demo import held_out_prompts
from moe_spec.engine.generate import Engine, SpecConfig
from moe_spec.engine.train import TrainConfig, encode_corpus, held_out_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(SHIPPED))
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--num-tokens", type=int, default=32)
    parser.add_argument("--width", type=int, default=SpecConfig.width)
    parser.add_argument("--depth", type=int, default=SpecConfig.depth)
    args = parser.parse_args()

    checkpoint = load_checkpoint(args.checkpoint)
    engine = Engine(checkpoint)
    cfg = engine.config
    _, held_out = split_files()
    stream = encode_corpus(checkpoint.tokenizer, [read_text(p) for p in held_out])
    loss = held_out_loss(checkpoint.target, stream, TrainConfig())

    spec = SpecConfig(width=args.width, depth=args.depth, num_tokens=args.num_tokens)
    accept, before, path, ar_tps, spec_tps = [], [], [], [], []
    for prompt in held_out_prompts(HELD_OUT, chars=1200):
        ids = engine.encode(prompt)
        ar = engine.generate_autoregressive(ids, args.max_new_tokens)
        sp = engine.generate_speculative(ids, args.max_new_tokens, spec)
        assert sp.tokens == ar.tokens, "greedy speculative decoding must equal autoregressive"
        accept += [s.committed for s in sp.steps]
        before += [fmean(s.distinct_before_L) for s in sp.steps]
        path += [fmean(s.distinct_path_L) for s in sp.steps]
        ar_tps.append(ar.tokens_per_second)
        spec_tps.append(sp.tokens_per_second)

    print(
        f"Command: `.venv/bin/python bench/engine_quality.py --max-new-tokens "
        f"{args.max_new_tokens} --num-tokens {args.num_tokens} --width {args.width} "
        f"--depth {args.depth}`"
    )
    print(
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()} CPU, "
        f"{torch.get_num_threads()} threads; checkpoint {args.checkpoint}\n"
    )
    print("| measure | value |")
    print("| --- | --- |")
    print(
        f"| held-out loss (nats/token, {TrainConfig().eval_batches} x {TrainConfig().batch_size} "
        f"windows of {TrainConfig().seq_len}) | {loss:.3f} |"
    )
    print(f"| held-out prompts | {len(HELD_OUT)} files, greedy, {args.max_new_tokens} new tokens |")
    print(f"| verify steps | {len(accept)} |")
    print(
        f"| mean acceptance length ({args.num_tokens}-token tree, bonus included) | "
        f"{fmean(accept):.2f} |"
    )
    print(
        f"| unbudgeted distinct experts / layer / verify step | {fmean(before):.1f} of "
        f"{cfg.n_experts} = {fmean(before) / cfg.top_k:.2f} x top-k ({cfg.top_k}) |"
    )
    print(f"| accepted path's distinct experts / layer (the floor) | {fmean(path):.1f} |")
    print(
        f"| tokens/s autoregressive / speculative (mean over prompts) | "
        f"{fmean(ar_tps):.1f} / {fmean(spec_tps):.1f} |"
    )


if __name__ == "__main__":
    main()
