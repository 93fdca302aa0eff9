"""Measure a model on held-out text: per-token and per-byte loss, greedy completions.

Shape legend: S sequence positions, V vocabulary.

Both a transformers causal LM and the reference engine's toy are scored on the same
characters: each held-out file's first ``chars`` characters, in windows of at most
``window`` tokens; the per-byte figure divides the summed NLL by the UTF-8 bytes of
the scored text (every token but each window's first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moe_spec.engine.data import read_text, split_files

LogitsFn = Callable[[list[int]], torch.Tensor]  # token ids [S] -> logits [S, V]


@dataclass
class HeldOutLoss:
    nats_per_token: float
    nats_per_byte: float
    tokens: int
    bytes: int

    @property
    def perplexity(self) -> float:
        return float(torch.tensor(self.nats_per_token).exp())


def held_out_texts(chars: int) -> list[str]:
    """The first ``chars`` characters of every documented held-out file."""
    _train, held_out = split_files()
    return [read_text(p)[:chars] for p in held_out]


@torch.no_grad()
def held_out_loss(
    logits_fn: LogitsFn,
    encode: Callable[[str], list[int]],
    decode,
    texts: Sequence[str],
    window: int = 512,
) -> HeldOutLoss:
    """Summed next-token NLL over ``texts`` per token and per byte of scored text."""
    nll, tokens, nbytes = 0.0, 0, 0
    for text in texts:
        ids = encode(text)
        for i in range(0, len(ids) - 1, window):
            chunk = ids[i : i + window + 1] if i == 0 else ids[i - 1 : i + window]
            if len(chunk) < 2:
                continue
            logits_SV = logits_fn(chunk)[:-1].float()
            nll += F.cross_entropy(logits_SV, torch.tensor(chunk[1:]), reduction="sum").item()
            tokens += len(chunk) - 1
            nbytes += len(decode(chunk[1:]).encode("utf-8"))
    return HeldOutLoss(nll / tokens, nll / nbytes, tokens, nbytes)


def hf_logits_fn(model) -> LogitsFn:
    return lambda ids: model(input_ids=torch.tensor([ids])).logits[0]


@torch.no_grad()
def hf_greedy(model, prompt: list[int], max_new_tokens: int, eos: set[int]) -> list[int]:
    """Greedy completion with a transformers causal LM (its own KV cache)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    out = model(input_ids=torch.tensor([prompt]), past_key_values=cache, use_cache=True)
    tokens: list[int] = []
    while len(tokens) < max_new_tokens:
        token = int(out.logits[0, -1].argmax())
        tokens.append(token)
        if token in eos:
            break
        out = model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
    return tokens
