"""A draft vocabulary: the N most frequent tokens an EAGLE head drafts from (FR-Spec).

An EAGLE head's logits are the target's LM head applied to its predicted feature. With a
49k-token vocabulary that product reads the whole [V, D] matrix for every expanded tree
node, and on a CPU it can cost more than the head's decoder layer (smollm2-moe: 21 ms of a
draft level's 8 nodes, fp32). The tokens a code model emits are far fewer: 12,294 distinct
ids in 513k training tokens. Drafting from the N most frequent (Zhao et al., "FR-Spec",
2025; SGLang's ``--speculative-token-map``) multiplies only those N rows; every other token
gets logit -inf, so the draft's probabilities are renormalised over the N. Verification is
unchanged: the target still scores every token, and greedy output stays the target's.

A head folder may hold :data:`HOT_TOKENS_FILE` (safetensors, ``hot_token_ids`` int64 [N],
unique, ascending); ``load_engine`` uses it unless told not to.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

HOT_TOKENS_FILE = "hot_tokens.safetensors"
KEY = "hot_token_ids"


class HotTokensError(ValueError):
    """A hot-token file or list is malformed, or does not fit the vocabulary."""


def frequent_tokens(sequences: Iterable[Iterable[int]], size: int) -> torch.Tensor:
    """The ``size`` most frequent ids of ``sequences`` (ties: smaller id first), ascending."""
    if not isinstance(size, int) or size < 1:
        raise HotTokensError(f"size must be an integer >= 1, got {size!r}")
    counts = Counter(t for seq in sequences for t in seq)
    ranked = sorted(counts, key=lambda t: (-counts[t], t))[:size]
    return torch.tensor(sorted(ranked), dtype=torch.long)


def check_hot_tokens(ids_N: torch.Tensor, vocab_size: int, where: str = "hot tokens") -> None:
    """Raise :class:`HotTokensError` unless ``ids_N`` is 1-D, unique, ascending, in [0, V)."""
    if ids_N.dtype != torch.long or ids_N.dim() != 1 or ids_N.numel() == 0:
        raise HotTokensError(
            f"{where}: expected a non-empty 1-D int64 tensor, got {ids_N.dtype} "
            f"of shape {tuple(ids_N.shape)}"
        )
    if ids_N.numel() > 1 and not bool((ids_N[1:] > ids_N[:-1]).all()):
        raise HotTokensError(f"{where}: ids must be unique and ascending")
    if int(ids_N[0]) < 0 or int(ids_N[-1]) >= vocab_size:
        raise HotTokensError(
            f"{where}: ids must lie in [0, {vocab_size}) (the target's vocabulary), "
            f"got {int(ids_N[0])}..{int(ids_N[-1])}"
        )


def save_hot_tokens(path: str | Path, ids_N: torch.Tensor) -> None:
    check_hot_tokens(ids_N, int(ids_N.max()) + 1)
    save_file({KEY: ids_N.contiguous()}, str(path))


def read_hot_tokens(path: str | Path, vocab_size: int) -> torch.Tensor:
    """The ids ``[N]`` of a :data:`HOT_TOKENS_FILE` (safetensors; never unpickles), checked."""
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise HotTokensError(f"cannot read hot tokens {path}: {exc}") from exc
    if set(tensors) != {KEY}:
        raise HotTokensError(f"{path}: expected one tensor {KEY!r}, found {sorted(tensors)}")
    check_hot_tokens(tensors[KEY], vocab_size, str(path))
    return tensors[KEY]


def hot_logits(
    feature_QD: torch.Tensor, weight_ND: torch.Tensor, ids_N: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    """fp32 logits ``[Q, V]`` (CPU): ``feature @ weight.T`` at ``ids_N``, -inf elsewhere.

    ``weight_ND`` holds the rows for ``ids_N`` of an LM head without bias.
    """
    sub_QN = (feature_QD @ weight_ND.T).float().cpu()
    out_QV = torch.full((*sub_QN.shape[:-1], vocab_size), float("-inf"))
    out_QV[..., ids_N] = sub_QN
    return out_QV
