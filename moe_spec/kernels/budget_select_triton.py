"""Budget selection in Triton: scores, kept set and rewritten top-k in two launches.

Shape legend: T tokens, E experts, K top-k, B budget (see ``moe_spec.routing``).

1. ``score_keep_kernel`` (one program): per-expert scores of a
   :class:`~moe_spec.kernels.budget_select_torch.ScoreRule` over valid rows
   (a row with a negative id is masked, as SGLang marks rows it does not route:
   it never counts, and the rewrite copies it),
   the used-expert mask, then each expert's rank (used experts first, higher
   score first, lower id on ties) and the kept mask ``rank < B``. B may be
   read from the device (an adaptive policy's per-layer budget, rewritten
   between steps), and the ranks written out (what such a policy learns from).
   A device rest flag may tell it to keep every expert without ranking, with or
   without the scores (``REST``, ``REST_SCORED`` of :mod:`.budget_select_torch`, the flag's
   values 1 and 2); ``rank_scored_kernel``
   then ranks a forward's scored layers after it, one program per layer.
2. ``rewrite_topk_kernel`` (one program per block of rows): every row that
   lost an expert is re-routed inside the kept set (substitution or
   truncation, as :func:`moe_spec.budget.apply_budget`); other rows are copied
   bit for bit.

Static shapes, no host synchronisation: CUDA-graph capturable. Scores sum in
a different order than torch does, so on real data a near-tie within float
rounding could rank differently from the torch path; exact ties (equal
logits, equal counts) resolve the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from moe_spec.budget import BudgetedTopK, Mode
from moe_spec.kernels.budget_select_torch import ScoreRule
from moe_spec.kernels.dispatch import interpreter_enabled
from moe_spec.routing import RoutingRecord

RANK_CHUNK = 16  # experts ranked at a time (an [RANK_CHUNK, E] comparison)
FLT_MAX: tl.constexpr = tl.constexpr(3.4028234663852886e38)


@triton.jit
def routing_gates(logits, e_ok, SIGMOID: tl.constexpr):
    """fp32 gates of a ``[rows, BLOCK_E]`` logit tile: softmax or sigmoid; 0 off the E columns."""
    if SIGMOID:
        gates = tl.where(e_ok[None, :], tl.sigmoid(logits), 0.0)
    else:
        shifted = tl.where(e_ok[None, :], logits, float("-inf"))
        ex = tl.exp(shifted - tl.max(shifted, axis=1)[:, None])
        gates = ex / tl.sum(ex, axis=1)[:, None]
    return gates


@triton.jit
def load_logits(logits_ptr, t, t_ok, offs_e, e_ok, stride_lt):
    ptrs = logits_ptr + t.to(tl.int64)[:, None] * stride_lt + offs_e[None, :]
    return tl.load(ptrs, mask=t_ok[:, None] & e_ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def score_keep_kernel(
    logits_ptr,
    ids_ptr,
    valid_ptr,
    weight_ptr,
    root_ptr,
    scores_ptr,
    used_ptr,
    keep_ptr,
    limit_ptr,
    rank_ptr,
    rest_ptr,
    ids_out_ptr,
    T,
    E,
    budget,
    stride_lt,
    stride_it,
    R,
    W,
    K: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_W: tl.constexpr,
    RANK_CHUNK: tl.constexpr,
    MASS: tl.constexpr,
    SIGMOID: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_ROOT: tl.constexpr,
    HAS_LIMIT: tl.constexpr,
    HAS_RANK: tl.constexpr,
    HAS_REST: tl.constexpr,
    HAS_IDS_OUT: tl.constexpr,
):
    """Write ``scores_E`` (fp32), ``used_E`` and ``keep_E`` (int8) for the whole layer;
    with ``HAS_LIMIT`` keep at most ``min(budget, limit[0])``, with ``HAS_RANK`` also write
    each expert's rank (int64). With ``HAS_REST``, where ``rest[0]`` is ``REST``: keep
    every expert, scores and used 0, ranks not written, and no row read but the copied
    ones; where it is ``REST_SCORED``: keep every expert, scores and used written, ranks
    not (they are made after the forward from the scores: :func:`rank_scored_triton`).
    With ``HAS_IDS_OUT``, whatever the flag: :func:`copy_ids` of the first ``R`` rows."""
    if HAS_IDS_OUT:
        copy_ids(ids_ptr, ids_out_ptr, R, W, stride_it, K, BLOCK_T, BLOCK_W)
    offs_e = tl.arange(0, BLOCK_E)
    e_ok = offs_e < E
    rest = 0
    if HAS_REST:
        rest = tl.load(rest_ptr)
    if rest == 1:  # REST
        tl.store(scores_ptr + offs_e, tl.zeros((BLOCK_E,), dtype=tl.float32), mask=e_ok)
        tl.store(used_ptr + offs_e, tl.zeros((BLOCK_E,), dtype=tl.int32), mask=e_ok)
        tl.store(keep_ptr + offs_e, tl.full((BLOCK_E,), 1, dtype=tl.int8), mask=e_ok)
    else:
        score_used(
            logits_ptr, ids_ptr, valid_ptr, weight_ptr, root_ptr, scores_ptr, used_ptr, T, E,
            stride_lt, stride_it, offs_e, e_ok, K, BLOCK_T, BLOCK_E, MASS, SIGMOID, HAS_WEIGHT,
            HAS_ROOT,
        )  # fmt: skip
        if rest == 0:  # RANK; else REST_SCORED
            tl.debug_barrier()
            rank_experts(
                scores_ptr, used_ptr, keep_ptr, rank_ptr, limit_ptr, E, budget, offs_e, e_ok,
                BLOCK_E, RANK_CHUNK, HAS_LIMIT, HAS_RANK,
            )  # fmt: skip
        else:
            tl.store(keep_ptr + offs_e, tl.full((BLOCK_E,), 1, dtype=tl.int8), mask=e_ok)


@triton.jit
def copy_ids(ids_ptr, out_ptr, R, W, stride_it, K: tl.constexpr, BLOCK_T: tl.constexpr,
             BLOCK_W: tl.constexpr):  # fmt: skip
    """Store the first ``R`` rows' ids as int64 ``[R, W]`` rows, ``W >= K``: the columns past
    ``K`` repeat the row's first id (what an adaptive policy learns from after the forward)."""
    offs_w = tl.arange(0, BLOCK_W)
    w_ok = offs_w < W
    src_w = tl.where(offs_w < K, offs_w, 0)
    for t0 in range(0, R, BLOCK_T):
        t = (t0 + tl.arange(0, BLOCK_T)).to(tl.int64)
        ok = (t < R)[:, None] & w_ok[None, :]
        ids = tl.load(ids_ptr + t[:, None] * stride_it + src_w[None, :], mask=ok, other=0)
        tl.store(out_ptr + t[:, None] * W + offs_w[None, :], ids.to(tl.int64), mask=ok)


@triton.jit
def score_used(
    logits_ptr, ids_ptr, valid_ptr, weight_ptr, root_ptr, scores_ptr, used_ptr, T, E,
    stride_lt, stride_it, offs_e, e_ok, K: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr, MASS: tl.constexpr, SIGMOID: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_ROOT: tl.constexpr,
):  # fmt: skip
    """Store one layer's expert scores (fp32, the root bonus added) and used mask (int32)."""
    score_E = tl.zeros((BLOCK_E,), dtype=tl.float32)
    used_E = tl.zeros((BLOCK_E,), dtype=tl.int32)
    root_E = tl.zeros((BLOCK_E,), dtype=tl.int32)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        t_ok = t < T
        valid_T = (tl.load(valid_ptr + t, mask=t_ok, other=0) != 0) & t_ok
        hits = tl.zeros((BLOCK_T, BLOCK_E), dtype=tl.int32)
        for k in tl.static_range(K):
            ids_k = tl.load(ids_ptr + t.to(tl.int64) * stride_it + k, mask=t_ok, other=-1)
            valid_T = valid_T & (ids_k >= 0)  # a masked row (a negative id) never counts
            hits = tl.where(ids_k[:, None] == offs_e[None, :], 1, hits)
        valid_hits = tl.where(valid_T[:, None], hits, 0)
        used_E = tl.maximum(used_E, tl.max(valid_hits, axis=0))
        if MASS:
            logits = load_logits(logits_ptr, t, t_ok, offs_e, e_ok, stride_lt)
            x = routing_gates(logits, e_ok, SIGMOID)
            if SIGMOID:  # normalised per token, as RoutingRecord.routing_probs_TE
                x = x / tl.maximum(tl.sum(x, axis=1), 1e-20)[:, None]
        else:
            x = valid_hits.to(tl.float32)
        if HAS_WEIGHT:
            x = x * tl.load(weight_ptr + t, mask=t_ok, other=0.0).to(tl.float32)[:, None]
        score_E += tl.sum(tl.where(valid_T[:, None], x, 0.0), axis=0)
        if HAS_ROOT:
            root_T = (tl.load(root_ptr + t, mask=t_ok, other=0) != 0) & valid_T
            root_E = tl.maximum(root_E, tl.max(tl.where(root_T[:, None], hits, 0), axis=0))
    if HAS_ROOT:
        bonus = tl.sum(tl.where(e_ok, score_E, 0.0), axis=0) + 1.0
        score_E = tl.where(root_E != 0, score_E + bonus, score_E)
    tl.store(scores_ptr + offs_e, score_E, mask=e_ok)
    tl.store(used_ptr + offs_e, used_E, mask=e_ok)


@triton.jit
def rank_experts(
    scores_ptr, used_ptr, keep_ptr, rank_ptr, limit_ptr, E, budget, offs_e, e_ok,
    BLOCK_E: tl.constexpr, RANK_CHUNK: tl.constexpr, HAS_LIMIT: tl.constexpr,
    HAS_RANK: tl.constexpr,
):  # fmt: skip
    """From one layer's stored scores and used mask: each expert's rank (used experts
    first, higher score first, lower id on ties) and the kept mask ``rank < budget``
    (with ``HAS_LIMIT``, ``min(budget, limit[0])``; at most the used experts, where some
    are: :func:`moe_spec.budget.kept_of_rank`). The budget is lowered here, outside
    the caller's run-time branches: Triton makes an argument of 1 a constant, which a
    run-time branch may not reassign."""
    if HAS_LIMIT:
        budget = tl.minimum(tl.load(limit_ptr).to(tl.int32), budget)
    score_E = tl.load(scores_ptr + offs_e, mask=e_ok, other=0.0)
    used_E = tl.load(used_ptr + offs_e, mask=e_ok, other=0)
    # only used experts are kept where some are (they rank first): no spare slot for an
    # expert no token picked, which re-routed padded rows would read
    n_used = tl.sum((used_E > 0).to(tl.int32), axis=0)
    budget = tl.where(n_used > 0, tl.minimum(budget, n_used), budget)
    for c0 in tl.static_range(0, BLOCK_E, RANK_CHUNK):
        i = c0 + tl.arange(0, RANK_CHUNK)
        i_ok = i < E
        s_i = tl.load(scores_ptr + i, mask=i_ok, other=0.0)
        u_i = tl.load(used_ptr + i, mask=i_ok, other=0)
        higher = (score_E[None, :] > s_i[:, None]) | (
            (score_E[None, :] == s_i[:, None]) & (offs_e[None, :] < i[:, None])
        )
        ahead = (used_E[None, :] > u_i[:, None]) | ((used_E[None, :] == u_i[:, None]) & higher)
        ahead = ahead & e_ok[None, :]
        rank = tl.sum(ahead.to(tl.int32), axis=1)
        tl.store(keep_ptr + i, (rank < budget).to(tl.int8), mask=i_ok)
        if HAS_RANK:
            tl.store(rank_ptr + i, rank.to(tl.int64), mask=i_ok)


@triton.jit
def rank_layers_kernel(
    logits_ptr, ids_ptr, valid_ptr, weight_ptr, root_ptr, scores_ptr, used_ptr, keep_ptr,
    rank_ptr, T, E, stride_ll, stride_lt, stride_il, stride_it,
    K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, RANK_CHUNK: tl.constexpr,
    MASS: tl.constexpr, SIGMOID: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_ROOT: tl.constexpr,
):  # fmt: skip
    """One program per layer of ``[L, T, E]`` logits and ``[L, T, K]`` ids (the same rows,
    weights and roots): :func:`score_used` then :func:`rank_experts` of each, its ranks
    written to ``[L, E]``."""
    layer = tl.program_id(0).to(tl.int64)
    offs_e = tl.arange(0, BLOCK_E)
    e_ok = offs_e < E
    out = layer * E
    score_used(
        logits_ptr + layer * stride_ll, ids_ptr + layer * stride_il, valid_ptr, weight_ptr,
        root_ptr, scores_ptr + out, used_ptr + out, T, E, stride_lt, stride_it, offs_e, e_ok,
        K, BLOCK_T, BLOCK_E, MASS, SIGMOID, HAS_WEIGHT, HAS_ROOT,
    )  # fmt: skip
    tl.debug_barrier()
    rank_experts(
        scores_ptr + out, used_ptr + out, keep_ptr + out, rank_ptr + out, used_ptr, E, E,
        offs_e, e_ok, BLOCK_E, RANK_CHUNK, False, True,
    )  # fmt: skip


@triton.jit
def rank_scored_kernel(
    scores_ptr, used_ptr, keep_ptr, rank_ptr, E, stride_sl, stride_ul, stride_rl,
    BLOCK_E: tl.constexpr, RANK_CHUNK: tl.constexpr,
):  # fmt: skip
    """One program per layer of ``[L, E]`` scores and used masks (written by a forward's
    selections at ``REST_SCORED``): :func:`rank_experts` of each into ``[L, E]`` ranks."""
    layer = tl.program_id(0).to(tl.int64)
    offs_e = tl.arange(0, BLOCK_E)
    rank_experts(
        scores_ptr + layer * stride_sl, used_ptr + layer * stride_ul, keep_ptr + layer * E,
        rank_ptr + layer * stride_rl, used_ptr, E, E, offs_e, offs_e < E, BLOCK_E, RANK_CHUNK,
        False, True,
    )  # fmt: skip


@triton.jit
def rewrite_topk_kernel(
    logits_ptr,
    ids_ptr,
    weights_ptr,
    bias_ptr,
    keep_ptr,
    out_ids_ptr,
    out_weights_ptr,
    rest_ptr,
    T,
    E,
    stride_lt,
    stride_it,
    stride_wt,
    K: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SIGMOID: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    TRUNCATE: tl.constexpr,
    HAS_REST: tl.constexpr,
):
    """Re-route the rows of one block that lost an expert; copy the others unchanged
    (every row where ``HAS_REST`` and ``rest[0]`` is nonzero)."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < T
    offs_k = tl.arange(0, BLOCK_K)
    k_ok = offs_k < K
    tk_ok = t_ok[:, None] & k_ok[None, :]
    ids = tl.load(
        ids_ptr + t.to(tl.int64)[:, None] * stride_it + offs_k[None, :], mask=tk_ok, other=0
    )
    weights = tl.load(
        weights_ptr + t.to(tl.int64)[:, None] * stride_wt + offs_k[None, :], mask=tk_ok, other=0.0
    )
    out_offs = t.to(tl.int64)[:, None] * K + offs_k[None, :]
    reroutes = True
    if HAS_REST:
        reroutes = tl.load(rest_ptr) == 0
    if reroutes:
        reroute_rows(
            logits_ptr, bias_ptr, keep_ptr, out_ids_ptr, out_weights_ptr, ids, weights, t,
            t_ok, offs_k, k_ok, tk_ok, out_offs, E, stride_lt, BLOCK_T, BLOCK_E, BLOCK_K, K,
            SIGMOID, HAS_BIAS, RENORMALIZE, TRUNCATE,
        )  # fmt: skip
    else:
        tl.store(out_ids_ptr + out_offs, ids, mask=tk_ok)
        tl.store(out_weights_ptr + out_offs, weights, mask=tk_ok)


@triton.jit
def reroute_rows(
    logits_ptr, bias_ptr, keep_ptr, out_ids_ptr, out_weights_ptr, ids, weights, t, t_ok,
    offs_k, k_ok, tk_ok, out_offs, E, stride_lt, BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, K: tl.constexpr, SIGMOID: tl.constexpr,
    HAS_BIAS: tl.constexpr, RENORMALIZE: tl.constexpr, TRUNCATE: tl.constexpr,
):  # fmt: skip
    """:func:`rewrite_topk_kernel`'s work where the budget applies."""
    offs_e = tl.arange(0, BLOCK_E)
    e_ok = offs_e < E
    keep_E = (tl.load(keep_ptr + offs_e, mask=e_ok, other=0) != 0) & e_ok
    n_kept = tl.sum(keep_E.to(tl.int32), axis=0)
    id_ok = tk_ok & (ids >= 0) & (ids < E)
    kept_TK = (tl.load(keep_ptr + ids, mask=id_ok, other=0) != 0) | ~k_ok[None, :]
    masked_T = tl.min(tl.where(tk_ok, ids, 0), axis=1) < 0  # copied as they came
    affected_T = (tl.min(kept_TK.to(tl.int32), axis=1) == 0) & ~masked_T
    gates = routing_gates(load_logits(logits_ptr, t, t_ok, offs_e, e_ok, stride_lt), e_ok, SIGMOID)
    choice = gates
    if HAS_BIAS:
        choice = choice + tl.load(bias_ptr + offs_e, mask=e_ok, other=0.0).to(tl.float32)[None, :]
    # A padded row may hold anything: NaN/inf become finite, so kept experts always win.
    choice = tl.where(choice == choice, choice, -FLT_MAX)
    choice = tl.minimum(tl.maximum(choice, -FLT_MAX), FLT_MAX)
    choice = tl.where(keep_E[None, :], choice, float("-inf"))
    best_T = first_argmax(choice, offs_e, BLOCK_E)
    if TRUNCATE:
        new_w = tl.where(kept_TK, weights.to(tl.float32), 0.0)
        lost_all_T = tl.max(kept_TK.to(tl.int32) * k_ok[None, :], axis=1) == 0
        fallback_T = tl.sum(tl.where(offs_e[None, :] == best_T[:, None], gates, 0.0), axis=1)
        first_slot = lost_all_T[:, None] & (offs_k[None, :] == 0)
        new_w = tl.where(first_slot, fallback_T[:, None], new_w)
        new_ids = tl.where(kept_TK, ids, best_T[:, None])
    else:
        new_ids = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.int32)
        new_w = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)
        taken = tl.zeros((BLOCK_T, BLOCK_E), dtype=tl.int1)
        for k in tl.static_range(K):
            pick_T = first_argmax(tl.where(taken, float("-inf"), choice), offs_e, BLOCK_E)
            is_pick = offs_e[None, :] == pick_T[:, None]
            taken = taken | is_pick
            slot_ok = k < n_kept
            w_T = tl.where(slot_ok, tl.sum(tl.where(is_pick, gates, 0.0), axis=1), 0.0)
            id_T = tl.where(slot_ok, pick_T, best_T)
            new_ids = tl.where(offs_k[None, :] == k, id_T[:, None], new_ids)
            new_w = tl.where(offs_k[None, :] == k, w_T[:, None], new_w)
    if RENORMALIZE:
        new_w = tl.where(k_ok[None, :], new_w, 0.0)
        new_w = new_w / tl.maximum(tl.sum(new_w, axis=1), 1e-20)[:, None]
    new_w = tl.where(new_w == new_w, new_w, 0.0)  # rows of NaN logits get weight 0
    out_ids = tl.where(affected_T[:, None], new_ids.to(ids.dtype), ids)
    out_w = tl.where(affected_T[:, None], new_w.to(weights.dtype), weights)
    tl.store(out_ids_ptr + out_offs, out_ids, mask=tk_ok)
    tl.store(out_weights_ptr + out_offs, out_w, mask=tk_ok)


@triton.jit
def first_argmax(values, offs_e, BLOCK_E: tl.constexpr):
    """Per row of ``[rows, BLOCK_E]``: the lowest column holding the row's maximum."""
    row_max = tl.max(values, axis=1)
    candidates = tl.where(values == row_max[:, None], offs_e[None, :], BLOCK_E)
    return tl.min(candidates, axis=1)


@dataclass(frozen=True)
class SelectLaunch:
    """Launch sizes of the two kernels; ``None``: the built-in rule (results do not change)."""

    rewrite_block_t: int | None = None  # rows per rewrite program
    score_warps: int | None = None
    rewrite_warps: int | None = None


def select_budget_triton(
    record: RoutingRecord,
    budget: int,
    rule: ScoreRule,
    mode: Mode = "substitution",
    launch: SelectLaunch = SelectLaunch(),  # noqa: B008  (frozen, never mutated)
    *,
    limit_1: torch.Tensor | None = None,
    rank_E: torch.Tensor | None = None,
    rest_1: torch.Tensor | None = None,
    scores_E: torch.Tensor | None = None,
    used_E: torch.Tensor | None = None,
    ids_out: torch.Tensor | None = None,
) -> tuple[BudgetedTopK, torch.Tensor]:
    """The Triton twin of :func:`~moe_spec.kernels.budget_select_torch.select_budget_torch`.

    ``budget`` must satisfy ``top-k <= budget`` (callers return the input for
    ``budget >= E`` unless a ``limit_1`` may lower it). ``limit_1``: optional integer
    ``[1]`` on the device, read in the kernel: at most ``min(budget, limit_1[0])``
    experts are kept (an adaptive policy's budget, no host read). ``rank_E``: optional
    contiguous long ``[E]`` the kernel fills with each expert's rank (as
    :func:`moe_spec.budget.expert_rank_E`). ``rest_1``: optional int32 ``[1]`` on the device;
    where nonzero the layer *rests*: every expert is kept, every row copied and ``rank_E``
    left as it was (an adaptive policy's step that needs no ranking, decided between
    steps). At ``REST`` the scores are 0 and no routing is read but the copied rows;
    at ``REST_SCORED`` the scores and used mask are written (to be ranked after the
    forward). ``scores_E`` (contiguous fp32 ``[E]``) and ``used_E`` (int32 ``[E]``):
    optional buffers the scores and used mask are written to (else new ones). ``ids_out``:
    optional contiguous long ``[R, W]``, ``R <= T``, ``W >= K``, written at every flag with
    the first ``R`` rows' top-k ids (columns past ``K`` repeat a row's first id).
    Returns ``(BudgetedTopK, scores_E)``;
    output ids and weights keep the input dtypes and are contiguous ``[T, K]``.
    """
    if record.scoring == "sparsemixer":
        raise ValueError("the Triton budget kernel has no sparsemixer rule; use the torch path")
    T, E, K = record.num_tokens, record.num_experts, record.top_k
    device = record.router_logits_TE.device
    logits_TE = record.router_logits_TE.contiguous()
    ids_TK = record.topk_ids_TK.contiguous()
    weights_TK = record.topk_weights_TK.contiguous()
    valid_T = record.valid_mask_T().contiguous().view(torch.int8)
    weight_T = rule.weight_T.contiguous() if rule.weight_T is not None else logits_TE
    root_T = rule.root_T.contiguous().view(torch.int8) if rule.root_T is not None else valid_T
    bias_E = record.correction_bias_E
    bias_E = bias_E.contiguous() if bias_E is not None else logits_TE
    scores_E = out_buffer(scores_E, "scores_E", E, torch.float32, device)
    used_E = out_buffer(used_E, "used_E", E, torch.int32, device)
    keep_E = torch.empty(E, dtype=torch.int8, device=device)
    block_e = max(triton.next_power_of_2(E), RANK_CHUNK)
    block_t = max(min(triton.next_power_of_2(T), 16), 2)
    # Launch sizes measured on an H200 (bench/gpu_tune.py --only-selection, BENCHMARKS.md):
    # 8 warps score E=128 twice as fast as 4; rewrites of 4 rows per program beat 16.
    # The interpreter runs programs one by one, so there few large programs win.
    score_warps = 4 if block_e <= 64 else 8
    rewrite_warps = 2 if block_e <= 64 else 4 if block_e <= 128 else 8
    rewrite_t = block_t if interpreter_enabled() else min(block_t, 4)
    sigmoid = record.scoring == "sigmoid"
    if rank_E is not None and (rank_E.dtype != torch.long or not rank_E.is_contiguous()):
        raise ValueError(f"rank_E must be a contiguous long tensor, got {rank_E.dtype}")
    if rest_1 is not None and (rest_1.dtype != torch.int32 or rest_1.numel() != 1):
        raise ValueError(f"rest_1 must be an int32 tensor of one element, got {rest_1.dtype}")
    R, W = check_ids_out(ids_out, T, K)
    # pointers a launch does not read (its HAS_ flag off) are filled with a tensor at hand
    limit_p, rank_p, rest_p, ids_out_p = (
        t if t is not None else used_E for t in (limit_1, rank_E, rest_1, ids_out)
    )
    score_keep_kernel[(1,)](
        logits_TE, ids_TK, valid_T, weight_T, root_T, scores_E, used_E, keep_E,
        limit_p, rank_p, rest_p, ids_out_p, T, E, min(budget, E), logits_TE.stride(0),
        ids_TK.stride(0), R, W, K=K, BLOCK_T=block_t, BLOCK_E=block_e,
        BLOCK_W=triton.next_power_of_2(W), RANK_CHUNK=RANK_CHUNK,
        MASS=rule.kind == "mass", SIGMOID=sigmoid,
        HAS_WEIGHT=rule.weight_T is not None, HAS_ROOT=rule.root_T is not None,
        HAS_LIMIT=limit_1 is not None, HAS_RANK=rank_E is not None, HAS_REST=rest_1 is not None,
        HAS_IDS_OUT=ids_out is not None, num_warps=launch.score_warps or score_warps,
    )  # fmt: skip
    out_ids_TK = torch.empty_like(ids_TK)
    out_weights_TK = torch.empty_like(weights_TK)
    rewrite_t = launch.rewrite_block_t or rewrite_t
    rewrite_topk_kernel[(triton.cdiv(T, rewrite_t),)](
        logits_TE, ids_TK, weights_TK, bias_E, keep_E, out_ids_TK, out_weights_TK,
        rest_p, T, E, logits_TE.stride(0), ids_TK.stride(0), weights_TK.stride(0),
        K=K, BLOCK_T=rewrite_t, BLOCK_E=block_e, BLOCK_K=triton.next_power_of_2(K),
        SIGMOID=sigmoid, HAS_BIAS=record.correction_bias_E is not None,
        RENORMALIZE=record.renormalize, TRUNCATE=mode == "truncation",
        HAS_REST=rest_1 is not None, num_warps=launch.rewrite_warps or rewrite_warps,
    )  # fmt: skip
    return BudgetedTopK(out_ids_TK, out_weights_TK, keep_E.view(torch.bool)), scores_E


def out_buffer(
    buf: torch.Tensor | None, name: str, n: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``buf`` checked to be a contiguous ``[n]`` tensor of ``dtype``, or a new one."""
    if buf is None:
        return torch.empty(n, dtype=dtype, device=device)
    if buf.dtype != dtype or buf.shape != (n,) or not buf.is_contiguous():
        raise ValueError(
            f"{name} must be a contiguous {dtype} tensor of shape ({n},), got {buf.dtype} "
            f"{tuple(buf.shape)}"
        )
    return buf


def check_ids_out(ids_out: torch.Tensor | None, T: int, K: int) -> tuple[int, int]:
    """``(R, W)`` of a checked ``ids_out`` buffer (contiguous long ``[R <= T, W >= K]``);
    ``(0, K)`` without one."""
    if ids_out is None:
        return 0, K
    if ids_out.dtype != torch.long or ids_out.dim() != 2 or not ids_out.is_contiguous():
        raise ValueError(f"ids_out must be a contiguous long [R, W] tensor, got {ids_out.dtype}")
    R, W = ids_out.shape
    if R > T or W < K:
        raise ValueError(f"ids_out is [{R}, {W}]; allowed: R <= T={T} rows, W >= K={K} columns")
    return R, W


def rank_layers_triton(records: Sequence[RoutingRecord], rule: ScoreRule) -> torch.Tensor:
    """long ``[L, E]``: each layer's ranking under ``rule`` (as
    :func:`~moe_spec.kernels.budget_select_torch.rank_layers_LE`) in one launch, a program
    per layer: the ranking of a step that ran without it, after the forward. The layers
    share tokens (rows, weights, roots), experts, top-k and router scoring."""
    first = records[0]
    T, E, K = first.num_tokens, first.num_experts, first.top_k
    device = first.router_logits_TE.device
    logits_LTE = torch.stack([r.router_logits_TE for r in records])
    ids_LTK = torch.stack([r.topk_ids_TK for r in records])
    valid_T = first.valid_mask_T().contiguous().view(torch.int8)
    weight_T = rule.weight_T.contiguous() if rule.weight_T is not None else logits_LTE
    root_T = rule.root_T.contiguous().view(torch.int8) if rule.root_T is not None else valid_T
    L = len(records)
    scores_LE = torch.empty(L, E, dtype=torch.float32, device=device)
    used_LE = torch.empty(L, E, dtype=torch.int32, device=device)
    keep_LE = torch.empty(L, E, dtype=torch.int8, device=device)
    rank_LE = torch.empty(L, E, dtype=torch.long, device=device)
    block_e = max(triton.next_power_of_2(E), RANK_CHUNK)
    rank_layers_kernel[(L,)](
        logits_LTE, ids_LTK, valid_T, weight_T, root_T, scores_LE, used_LE, keep_LE, rank_LE,
        T, E, logits_LTE.stride(0), logits_LTE.stride(1), ids_LTK.stride(0), ids_LTK.stride(1),
        K=K, BLOCK_T=max(min(triton.next_power_of_2(T), 16), 2), BLOCK_E=block_e,
        RANK_CHUNK=RANK_CHUNK, MASS=rule.kind == "mass", SIGMOID=first.scoring == "sigmoid",
        HAS_WEIGHT=rule.weight_T is not None, HAS_ROOT=rule.root_T is not None,
        num_warps=4 if block_e <= 64 else 8,
    )  # fmt: skip
    return rank_LE


def rank_scored_triton(
    scores_LE: torch.Tensor, used_LE: torch.Tensor, rank_LE: torch.Tensor
) -> torch.Tensor:
    """Write into long ``rank_LE`` each layer's ranking (as :func:`moe_spec.budget.expert_rank_LE`)
    of fp32 ``scores_LE`` and int32 ``used_LE`` ``[L, E]``, the buffers a forward's selections
    wrote at ``REST_SCORED``: one launch, a program per layer. Rows contiguous."""
    L, E = scores_LE.shape
    for name, t, dtype in (
        ("scores_LE", scores_LE, torch.float32),
        ("used_LE", used_LE, torch.int32),
        ("rank_LE", rank_LE, torch.long),
    ):
        if t.dtype != dtype or t.shape != (L, E) or t.stride(1) != 1:
            raise ValueError(
                f"{name} must be {dtype} [{L}, {E}] with contiguous rows, got {t.dtype} "
                f"{tuple(t.shape)}"
            )
    keep_LE = torch.empty(L, E, dtype=torch.int8, device=scores_LE.device)
    block_e = max(triton.next_power_of_2(E), RANK_CHUNK)
    rank_scored_kernel[(L,)](
        scores_LE, used_LE, keep_LE, rank_LE, E, scores_LE.stride(0), used_LE.stride(0),
        rank_LE.stride(0), BLOCK_E=block_e, RANK_CHUNK=RANK_CHUNK,
        num_warps=4 if block_e <= 64 else 8,
    )  # fmt: skip
    return rank_LE
