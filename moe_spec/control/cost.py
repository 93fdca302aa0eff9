"""Step times the controller plans with: a cost model on a model shape, as lookup tables.

The running model (``top_k`` of ``n_experts``) may be small and the priced one large:
distinct-expert counts are carried over with ``moe_spec.costmodel.map_distinct``, as
the A/B harness prices them. Times are tabulated once per tree so that the planner
prices a window of steps for many budget vectors with array operations only:

- ``draft_C[c]``: the draft forwards of candidate tree c (with ``draft_extend``, also the
  draft forward over its verified tokens that SGLang runs after every verify);
- ``verify_CD[c, d]``: the verify forward of tree c reading d experts per layer
  (d from 0 to E; fractional means interpolate);
- ``repair_Q[q]``: an unbudgeted forward of q re-run path tokens (its distinct experts:
  the independent-routing curve ``E(1 - (1 - K/E)^q)``, an upper estimate);
- ``decode_s``: one autoregressive step (with ``draft_extend``, SGLang's depth-0 step: a
  1-token verify and a 1-token draft extend, unless ``decode_extend`` is off: SGLang then
  skips the extend on every decode of a run but the last, whose extend, one per run,
  goes unpriced; and :meth:`StepCost.forward_seconds`, a prompt's forward);
- ``plain_decode_s``: one step of decoding without speculation (no draft at all): what a
  tree that cannot be switched off is compared with (:meth:`Guard.against_decoding`);
- ``select_s``: the expert ranking in every MoE layer (``Overheads.select_s``; 0 unless
  the cost model measured it), paid by every budgeted tree step; a step whose budgets are
  all at least E ranks only every ``rank_every``-th time (the ranking is what the
  controller learns from) and otherwise *rests*, paying ``rest_share`` of a selection (0
  in the engines, which then skip the policy; on a server the selection's kernels still
  launch, read the rest flag and copy the rows): ``rest_select_s`` on average. A plain
  decode pays none: the engines skip the policy there, and SGLang's plugin runs no
  selection in a verify of one token per request (``Policy.budgets_plain_decodes``).
  The step that ranks pays ``rank_share`` of a selection:
  1 where it ranks inside the forward; :func:`after_share` where the policy ranks its
  routing after the forward, every layer at once (``moe_spec.policies.auto``).
"""

from __future__ import annotations

import functools

import numpy as np

from moe_spec.costmodel import (
    CostModel,
    ModelShape,
    decode_seconds,
    draft_seconds,
    independent_distinct,
    map_distinct,
    verify_seconds,
)


class StepCost:
    """Modeled seconds of the steps a controller can choose between."""

    def __init__(
        self,
        cost: CostModel,
        shape: ModelShape,
        top_k: int,
        n_experts: int,
        trees: list[tuple[int, int, int]],
        max_repair: int = 64,
        rank_every: int = 1,
        draft_extend: bool = False,
        decode_extend: bool = True,
        rest_share: float = 0.0,
        rank_share: float = 1.0,
    ) -> None:
        self.cost, self.shape, self.trees = cost, shape, list(trees)
        self.K, self.E = top_k, n_experts
        args = (cost, shape, top_k, n_experts, tuple(tuple(t) for t in trees), max_repair)
        try:
            tables = step_tables(*args, draft_extend, decode_extend)
        except TypeError:  # a cost model that cannot be hashed: made here, not cached
            tables = step_tables.__wrapped__(*args, draft_extend, decode_extend)
        self.draft_C, self.verify_CD, self.repair_Q = (t.copy() for t in tables[:3])
        self.decode_s, self.select_s = tables[3:]
        self.plain_decode_s = decode_seconds(cost.gpu, shape, overheads=cost.overheads)
        self.rest_share, self.rank_share = rest_share, rank_share
        self.rest_every(rank_every)
        self.by_total: dict[tuple[int, int], np.ndarray] = {}  # (tree, layers): verify_T

    def describe(self) -> str:
        return f"{self.shape.name} on {self.cost.describe()}"

    def rank_at(self, rank_share: float, interval: int) -> None:
        """A step at the cap that ranks pays ``rank_share`` of a selection from now on (it
        ranks inside the forward, 1, or after it); priced at the current ``interval``."""
        self.rank_share = rank_share
        self.rest_every(interval)

    def rest_every(self, interval: int) -> None:
        """Price a tree step at the cap (budgets all at least E) as one that ranks one time
        in ``interval`` and rests the others: ``rest_select_s``, a selection on average."""
        share = (self.rank_share + (interval - 1) * self.rest_share) / interval
        self.rest_select_s = self.select_s * share

    def tree_seconds(
        self,
        c: int,
        read: np.ndarray,
        repair_tokens: np.ndarray,
        budgeted: np.ndarray | bool = False,
    ) -> np.ndarray:
        """Seconds of steps with tree ``c``: draft + verify reading ``read`` experts per layer
        (any shape, fractional allowed) + a repair forward of ``repair_tokens`` (0: none)
        + the expert ranking (``budgeted``, broadcast against ``read``: every step ranks)."""
        return self.add_parts(c, self.verify_seconds(c, read), repair_tokens, budgeted)

    def forward_seconds(self, tokens: int) -> float:
        """An unbudgeted target forward of ``tokens`` tokens (a prompt's), independently
        routed."""
        return unbudgeted_seconds(self.cost, self.shape, self.K, self.E, tokens)

    def verify_seconds(self, c: int, read: np.ndarray) -> np.ndarray:
        """The verify of tree ``c`` reading ``read`` experts per layer (interpolated)."""
        return interpolate(self.verify_CD[c], read)

    def tree_seconds_total(
        self,
        c: int,
        total_read: np.ndarray,
        layers: int,
        repair_tokens: np.ndarray | None,
        budgeted: np.ndarray | bool = False,
    ) -> np.ndarray:
        """:meth:`tree_seconds` with ``read = total_read / layers`` (``total_read``: integer
        experts read over ``layers`` layers), the verify looked up in a table made once
        per tree and layer count with the same arithmetic, so the same numbers."""
        table = self.by_total.get((c, layers))
        if table is None:  # shared by the step costs of equal tables (a guard per request)
            table = verify_by_total(self.verify_CD[c].tobytes(), layers)
            self.by_total[(c, layers)] = table
        return self.add_parts(c, table[total_read], repair_tokens, budgeted)

    def add_parts(
        self,
        c: int,
        verify: np.ndarray,
        repair_tokens: np.ndarray | None,
        budgeted: np.ndarray | bool,
    ) -> np.ndarray:
        """draft + verify + repair (None: no repair; adding ``repair_Q[0] = 0`` changes no
        number) + the expert ranking (all of it where ``budgeted``)."""
        seconds = self.draft_C[c] + verify
        if repair_tokens is not None:
            # np.minimum/np.maximum: np.clip's checks cost more than the lookup on a window
            q = np.minimum(np.maximum(repair_tokens, 0), self.repair_Q.size - 1)
            seconds = seconds + self.repair_Q[q]
        return seconds + np.where(budgeted, self.select_s, self.rest_select_s)


def interpolate(verify_D: np.ndarray, read: np.ndarray) -> np.ndarray:
    """``verify_D`` (seconds at 0..E experts read per layer) at ``read`` experts per layer
    (any shape, fractional: linear between the neighbouring counts, clipped to 0..E)."""
    E = verify_D.size - 1
    d = np.clip(read, 0, E)
    low = np.floor(d).astype(int)
    high = np.minimum(low + 1, E)
    frac = d - low
    return verify_D[low] * (1 - frac) + verify_D[high] * frac


@functools.lru_cache(maxsize=256)
def verify_by_total(verify_D: bytes, layers: int) -> np.ndarray:
    """float ``[layers * E + 1]``, read-only: :func:`interpolate` of the float64 table
    ``verify_D`` (as bytes: hashable) at every total of experts read over ``layers`` layers."""
    table_D = np.frombuffer(verify_D)
    table = interpolate(table_D, np.arange(layers * (table_D.size - 1) + 1) / layers)
    table.setflags(write=False)
    return table


def unbudgeted_seconds(
    cost: CostModel, shape: ModelShape, top_k: int, n_experts: int, tokens: int
) -> float:
    """A target forward of ``tokens`` tokens, unbudgeted, their experts independently routed
    (``E(1 - (1 - K/E)^q)`` of the running model's, carried to the priced shape)."""
    d = independent_distinct(tokens, top_k, n_experts)
    mapped = map_distinct(d, top_k, n_experts, shape.top_k, shape.n_experts, tokens)
    return float(verify_seconds(cost.gpu, shape, tokens, mapped, overheads=cost.overheads))


@functools.lru_cache(maxsize=64)
def step_tables(
    cost: CostModel,
    shape: ModelShape,
    top_k: int,
    n_experts: int,
    trees: tuple[tuple[int, int, int], ...],
    max_repair: int,
    draft_extend: bool = False,
    decode_extend: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """``(draft_C, verify_CD, repair_Q, decode_s, select_s)`` of :class:`StepCost`, made
    once per cost model, shape, routing and trees (a policy per generation reuses them);
    the cached arrays are read-only (each :class:`StepCost` holds copies)."""
    g, o = cost.gpu, cost.overheads

    def mapped(d: float, tokens: int) -> float:
        return map_distinct(d, top_k, n_experts, shape.top_k, shape.n_experts, tokens)

    def extend(tokens: int) -> float:  # SGLang's draft forward after each verify
        return draft_seconds(g, shape, tokens, 1, overheads=o) if draft_extend else 0.0

    draft_C = np.array(
        [draft_seconds(g, shape, w, d, overheads=o) + extend(n) for n, w, d in trees]
    )
    verify_CD = np.array(
        [
            [verify_seconds(g, shape, n, mapped(d, n), overheads=o) for d in range(n_experts + 1)]
            for n, _, _ in trees
        ]
    )
    repair_Q = np.array(
        [0.0]
        + [unbudgeted_seconds(cost, shape, top_k, n_experts, q) for q in range(1, max_repair + 1)]
    )
    for table in (draft_C, verify_CD, repair_Q):
        table.setflags(write=False)
    return (
        draft_C,
        verify_CD,
        repair_Q,
        decode_seconds(g, shape, overheads=o) + (extend(1) if decode_extend else 0.0),
        (shape.n_moe_layers * o.select_s),
    )


def after_share(shape: ModelShape, share: float | None = None) -> float:
    """The share of a step's selection (two launches in each of L MoE layers) that ranking
    its routing after the forward costs, every layer at once (``share``; None:
    ``2 / n_moe_layers``: one launch of a program per layer, as long as one layer's score
    kernel, and as much again for stacking the layers' routing; an estimate until
    ``bench/gpu_check.sh`` times it, its "ranked after the forward" column)."""
    return 2.0 / shape.n_moe_layers if share is None else share
