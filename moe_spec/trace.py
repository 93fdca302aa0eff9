"""Routing traces: the router logits of every MoE layer for one verify pass of a draft tree.

Shape legend: L MoE layers, T tree tokens, E experts, K top-k.

A trace is what budgeting policies are compared on without running a model.
:func:`synthetic_trace` draws one from a documented generative model;
:func:`save_trace` / :func:`load_trace` keep traces (for instance recorded from
a real model) in safetensors files, which never execute code when loaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from moe_spec.routing import RoutingRecord, softmax_topk

TRACE_FORMAT = "moe-spec-trace/1"


@dataclass(frozen=True)
class RoutingTrace:
    """Router logits of L MoE layers for the T tokens of one draft tree.

    Attributes:
        router_logits_LTE: router outputs per layer and token.
        parent_T: index of each token's parent in the tree (-1 for the root).
        depth_T: tree depth (0 for the root).
        path_logprob_T: draft log-probability of the path root..token.
        top_k: experts each token routes to.
        renormalize: whether the model renormalises its top-k weights.
        source: where the trace comes from, in words.
    """

    router_logits_LTE: torch.Tensor
    parent_T: torch.Tensor
    depth_T: torch.Tensor
    path_logprob_T: torch.Tensor
    top_k: int
    renormalize: bool
    source: str

    def __post_init__(self) -> None:
        if self.router_logits_LTE.dim() != 3:
            raise ValueError(
                f"router_logits_LTE must be [L, T, E], got {tuple(self.router_logits_LTE.shape)}"
            )
        L, T, E = self.router_logits_LTE.shape
        if min(L, T, E) < 1:
            raise ValueError(
                f"router_logits_LTE has shape [L={L}, T={T}, E={E}]; a trace needs at least one "
                "layer, token and expert"
            )
        for name in ("parent_T", "depth_T", "path_logprob_T"):
            if tuple(getattr(self, name).shape) != (T,):
                raise ValueError(
                    f"{name} must have shape [T={T}], got {tuple(getattr(self, name).shape)}"
                )
        if not 1 <= self.top_k <= E:
            raise ValueError(f"top_k is {self.top_k}; it must be in [1, E={E}]")
        bad_LTE = ~torch.isfinite(self.router_logits_LTE)
        if bad_LTE.any():
            layer, token, expert = (int(i) for i in bad_LTE.nonzero()[0])
            value = self.router_logits_LTE[layer, token, expert].item()
            raise ValueError(
                f"router_logits_LTE has {int(bad_LTE.sum())} non-finite values, the first "
                f"{value} at layer {layer}, token {token}, expert {expert}; logits must be finite"
            )
        check_tree(self.parent_T, self.depth_T)

    @property
    def num_layers(self) -> int:
        return self.router_logits_LTE.shape[0]

    def record(self, layer_idx: int) -> RoutingRecord:
        """The :class:`RoutingRecord` of one layer, with the model's own top-k."""
        logits_TE = self.router_logits_LTE[layer_idx]
        weights_TK, ids_TK = softmax_topk(logits_TE, self.top_k, self.renormalize)
        return RoutingRecord(
            router_logits_TE=logits_TE,
            topk_ids_TK=ids_TK,
            topk_weights_TK=weights_TK,
            depth_T=self.depth_T,
            path_logprob_T=self.path_logprob_T,
            layer_idx=layer_idx,
            num_layers=self.num_layers,
            renormalize=self.renormalize,
        )


def check_tree(parent_T: torch.Tensor, depth_T: torch.Tensor) -> None:
    """Refuse a tree whose ``parent_T`` is not an earlier token (or -1 for a root), or whose
    ``depth_T`` is not its parent's plus one (0 for a root): ``ValueError`` naming the token."""
    for name, t in (("parent_T", parent_T), ("depth_T", depth_T)):
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(f"{name} must hold integers, got {t.dtype}")
    parents, depths = parent_T.tolist(), depth_T.tolist()
    for t, (parent, depth) in enumerate(zip(parents, depths, strict=True)):
        if not -1 <= parent < t:
            raise ValueError(
                f"parent_T[{t}] is {parent}; allowed: -1 (a root) or an earlier token, 0..{t - 1}"
            )
        want = 0 if parent < 0 else depths[parent] + 1
        if depth != want:
            raise ValueError(
                f"depth_T[{t}] is {depth}; its parent is {parent}, so it must be {want}"
            )


def synthetic_tree(tree_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A draft tree of ``tree_size`` tokens: ``(parent_T, depth_T, path_logprob_T)``.

    Token 0 is the root. Each later token picks its parent among the earlier
    ones with probability proportional to the parent's path probability (so
    likely paths grow deeper, as in EAGLE-2 trees) and takes a step
    probability drawn uniformly from [0.05, 0.9].
    """
    parent_T = torch.full((tree_size,), -1, dtype=torch.long)
    depth_T = torch.zeros(tree_size, dtype=torch.long)
    logprob_T = torch.zeros(tree_size)
    for t in range(1, tree_size):
        parent = int(torch.multinomial(logprob_T[:t].exp(), 1, generator=generator))
        step = 0.05 + 0.85 * float(torch.rand((), generator=generator))
        parent_T[t], depth_T[t] = parent, depth_T[parent] + 1
        logprob_T[t] = logprob_T[parent] + math.log(step)
    return parent_T, depth_T, logprob_T


def synthetic_trace(
    num_layers: int = 16,
    num_experts: int = 64,
    top_k: int = 8,
    tree_size: int = 32,
    seed: int = 0,
    zipf: float = 0.7,
    context_scale: float = 1.0,
    token_scale: float = 1.5,
    parent_corr: float = 0.6,
) -> RoutingTrace:
    """A trace drawn from a simple model of real MoE routing (default: OLMoE-like, 64/top-8).

    Per layer, router logits are ``popularity + context + token``:
    ``popularity[e] = -zipf * log(rank[e])`` over a random ranking of experts
    (a few experts are busy, many are rare); ``context`` is one Gaussian
    vector shared by the whole tree (the prompt's topic; scale
    ``context_scale``); ``token`` is Gaussian per token (scale ``token_scale``)
    and correlated with the parent's by ``parent_corr`` (neighbouring tree
    tokens route alike). Seeds make it reproducible. It is a stand-in, not a
    recording: results on it say how policies behave, not how a model scores.
    """
    for name, value, low in (
        ("num_layers", num_layers, 1),
        ("num_experts", num_experts, max(1, top_k)),
        ("top_k", top_k, 1),
        ("tree_size", tree_size, 1),
    ):
        if value < low:
            least = " (at least 1 and top_k)" if name == "num_experts" else ""
            raise ValueError(f"{name} is {value}; allowed: an integer >= {low}{least}")
    g = torch.Generator().manual_seed(seed)
    parent_T, depth_T, logprob_T = synthetic_tree(tree_size, g)
    L, T, E = num_layers, tree_size, num_experts
    rank_LE = torch.argsort(torch.rand(L, E, generator=g), dim=-1).float() + 1.0
    popularity_LE = -zipf * torch.log(rank_LE)
    context_LE = context_scale * torch.randn(L, E, generator=g)
    noise_LTE = torch.randn(L, T, E, generator=g)
    token_LTE = torch.empty(L, T, E)
    token_LTE[:, 0] = noise_LTE[:, 0]
    keep = math.sqrt(1.0 - parent_corr**2)
    for t in range(1, T):
        token_LTE[:, t] = parent_corr * token_LTE[:, parent_T[t]] + keep * noise_LTE[:, t]
    logits_LTE = popularity_LE[:, None, :] + context_LE[:, None, :] + token_scale * token_LTE
    source = (
        f"synthetic routing (moe_spec.trace.synthetic_trace: L={L}, E={E}, top-{top_k}, "
        f"{T}-token tree, zipf={zipf}, seed={seed}); not recorded from a model"
    )
    return RoutingTrace(logits_LTE, parent_T, depth_T, logprob_T, top_k, False, source)


def save_trace(trace: RoutingTrace, path: str | Path) -> None:
    """Write ``trace`` as a safetensors file (tensors plus JSON metadata); a path that
    cannot be written raises ``ValueError``."""
    tensors = {
        "router_logits_LTE": trace.router_logits_LTE.contiguous(),
        "parent_T": trace.parent_T.contiguous(),
        "depth_T": trace.depth_T.contiguous(),
        "path_logprob_T": trace.path_logprob_T.contiguous(),
    }
    meta = {"top_k": trace.top_k, "renormalize": trace.renormalize, "source": trace.source}
    try:
        save_file(tensors, str(path), metadata={"format": TRACE_FORMAT, "meta": json.dumps(meta)})
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"cannot write trace file {path}: {exc}") from None


def load_trace(path: str | Path) -> RoutingTrace:
    """Read a trace written by :func:`save_trace`; a malformed file raises ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"trace file {path} does not exist")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"trace file {path} is not a readable safetensors file: {exc}") from exc
    if header.get("format") != TRACE_FORMAT:
        raise ValueError(
            f"trace file {path} has format {header.get('format')!r}; expected {TRACE_FORMAT!r}"
        )
    try:
        meta = json.loads(header["meta"])
        return RoutingTrace(
            tensors["router_logits_LTE"],
            tensors["parent_T"],
            tensors["depth_T"],
            tensors["path_logprob_T"],
            int(meta["top_k"]),
            bool(meta["renormalize"]),
            str(meta["source"]),
        )
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"trace file {path} is missing {exc} in its tensors or metadata") from exc
    except ValueError as exc:
        raise ValueError(f"trace file {path}: {exc}") from None
