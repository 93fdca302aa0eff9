"""Calibration text and the dense model's FFN inputs on it.

Shape legend: T tokens, D hidden size, F FFN size, L layers.

The text is the standard library's source with the documented held-out files
left out (``moe_spec.engine.data.split_files``): ``n_files`` training files picked
with a seeded generator, the first ``tokens_per_file`` tokens of each. The picks are
one seeded shuffle read from its start (``random.sample`` draws one file after the
other, so a longer draw starts with a shorter one): ``skip`` files further on gives
files disjoint from the first ``skip``, to add training text to an existing set.
"""

from __future__ import annotations

import random

import torch

from moe_spec.engine.data import read_text, split_files


def calibration_files(n_files: int, seed: int = 0, skip: int = 0) -> list:
    """Files ``skip .. skip + n_files`` of a seeded shuffle of the training (never
    held-out) stdlib files; fewer when the shuffle runs out."""
    for name, value in (("n_files", n_files), ("skip", skip)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    train, _held_out = split_files()
    return random.Random(seed).sample(train, min(skip + n_files, len(train)))[skip:]


def calibration_sequences(
    tokenizer, n_files: int, tokens_per_file: int, seed: int = 0, skip: int = 0, chunks: int = 1
) -> list[list[int]]:
    """Token sequences of :func:`calibration_files` ``(n_files, seed, skip)``: each file's
    first ``chunks`` pieces of ``tokens_per_file`` tokens (pieces under 16 tokens dropped;
    ``chunks=1``: the file's first ``tokens_per_file`` tokens)."""
    if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1:
        raise ValueError(f"chunks must be a positive integer, got {chunks!r}")
    out = []
    for path in calibration_files(n_files, seed, skip):
        ids = tokenizer.encode(read_text(path))[: chunks * tokens_per_file]
        pieces = (ids[i : i + tokens_per_file] for i in range(0, len(ids), tokens_per_file))
        out += [piece for piece in pieces if len(piece) >= 16]
    return out


def held_out_sequences(tokenizer, n_tokens: int, seq_len: int) -> list[list[int]]:
    """The held-out files' text, tokenized and cut into sequences; ``n_tokens`` in all."""
    _train, held_out = split_files()
    ids: list[int] = []
    for path in held_out:
        ids += tokenizer.encode(read_text(path))[: n_tokens // len(held_out) + 1]
    ids = ids[:n_tokens]
    return [
        ids[i : i + seq_len] for i in range(0, len(ids), seq_len) if len(ids[i : i + seq_len]) > 1
    ]


@torch.no_grad()
def ffn_inputs(model, sequences: list[list[int]]) -> list[torch.Tensor]:
    """Each layer's FFN input (after ``post_attention_layernorm``) ``[T, D]`` over all sequences."""
    layers = model.model.layers
    captured: list[list[torch.Tensor]] = [[] for _ in layers]
    handles = [
        layer.mlp.register_forward_pre_hook(
            lambda _m, args, i=i: captured[i].append(args[0].reshape(-1, args[0].shape[-1]).float())
        )
        for i, layer in enumerate(layers)
    ]
    try:
        for ids in sequences:
            model.model(input_ids=torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(c) for c in captured]


def ffn_activations(mlp, x_TD: torch.Tensor) -> torch.Tensor:
    """A Llama MLP's neuron activations ``silu(gate(x)) * up(x)`` ``[T, F]``."""
    return torch.nn.functional.silu(mlp.gate_proj(x_TD)) * mlp.up_proj(x_TD)
