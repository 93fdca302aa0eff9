"""Online estimates of what a verify step gets accepted, kept between steps.

Shape legend: N tree tokens, L MoE layers, E experts, K top-k, P path positions,
C candidate trees, S steps in the window.

Three estimates, all updated after acceptance (outside the verify forward):

- **calibration** of the draft's path probability ``q = exp(path_logprob)`` to the
  probability that the node is on the accepted path: ``bins`` equal-width bins of q,
  each with counts of nodes seen and accepted and a prior of ``prior`` pseudo-nodes at
  the bin's centre (so an empty bin trusts the draft):
  ``P(accept | bin b) = (accepted_b + prior * centre_b) / (seen_b + prior)``; the root's
  children are also counted apart (:meth:`AcceptanceEstimates.accept_first_B`, what the
  draft gate reads): a deep node of the same path probability is accepted less often.
- **acceptance per depth**: ``P(the accepted path reaches depth d | the tree had depth d)``,
  unconditional on the shallower depths (a running product of these would count the
  shallower levels twice), with a prior of one pseudo-step reaching depth d with
  probability ``2**-d``.
- a **window** of the last ``window`` tree steps, each kept as
  ``need_LP`` (the smallest budget layer l needed, under the policy's ranking of that
  step, to keep every expert of path positions 0..p: a path position's routing depends
  on its ancestors, so the need is a running maximum along the path; None for a step the
  policy did not rank, a resting one: its tokens and experts still count, and budgets
  are searched over the ranked steps, :meth:`AcceptanceEstimates.ranked_S`),
  ``committed_C`` (tokens the step would have committed with each smaller candidate
  tree: the accepted path's prefix inside the candidate's best nodes by path
  log-probability, -1 when the step's tree was smaller than the candidate) and
  ``used_CL`` (distinct experts the candidate's tokens picked in each layer), and the
  bins of its first level's path probabilities (``first_WB``: what the draft gate reads).
"""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from moe_spec.control.planner import level_index
from moe_spec.control.steps import StepOutcome


def until_changed(read):
    """Keep what the :class:`AcceptanceEstimates` read ``read`` returns, per positional
    arguments, until the next ``observe`` or ``forget`` (arrays come back read-only: every
    caller shares them). Under ``torch.compile`` the read runs afresh: the traced graph
    holds no cache and numpy's ``setflags`` has no traced counterpart."""

    defaults = read.__defaults__ or ()
    params = read.__code__.co_argcount - 1  # after self

    @functools.wraps(read)
    def kept(self, *args):
        if torch.compiler.is_compiling():
            return read(self, *args)
        if len(args) < params:  # rows(c) and rows(c, 4): one key
            args += defaults[len(defaults) - (params - len(args)) :]
        key = (read.__name__, *args)
        got = self.kept.get(key)
        if got is None:
            got = self.kept[key] = read(self, *args)
            if isinstance(got, np.ndarray):
                got.setflags(write=False)
        return got

    return kept


@dataclass(frozen=True)
class WindowStep:
    need_LP: np.ndarray | None  # int [L, P]: budget each layer needed for positions 0..p
    committed_C: np.ndarray  # int [C]: committed tokens per candidate tree (-1: unknown)
    used_CL: np.ndarray  # int [C, L]: distinct experts of the candidate's tokens

    @cached_property
    def path_need(self) -> float:
        """The budget needed to keep the whole accepted path, mean over layers (NaN for a
        step that was not ranked)."""
        if self.need_LP is None:
            return math.nan
        last_L = self.need_LP[:, -1]
        return float(last_L.sum() / last_L.size)


def exact_table(need_LP: np.ndarray, levels_V: np.ndarray) -> np.ndarray:
    """int ``[L, V]``: path positions whose need the budget ``levels_V[v]`` meets, per layer.

    ``need_LP`` rises along the path, so the positions a budget keeps form a prefix and
    the prefix all layers keep is the shortest of theirs (the planner's ``min`` over L).
    ``levels_V``: ascending budgets (``np.arange(E + 1)``: every budget).
    """
    return (need_LP[:, :, None] <= levels_V).sum(axis=1)


class AcceptanceEstimates:
    """Calibration, acceptance per depth and the window of recent tree steps.

    ``levels``: the ascending budgets the window's exact-prefix tables are kept at (the
    planner's budget levels; None: every budget from 0 to E).
    """

    def __init__(
        self,
        num_layers: int,
        num_experts: int,
        candidate_tokens: list[int],
        window: int = 64,
        bins: int = 10,
        prior: float = 4.0,
        max_depth: int = 64,
        levels: np.ndarray | None = None,
    ) -> None:
        if window < 1 or bins < 1 or not prior > 0:
            raise ValueError(
                f"need window >= 1, bins >= 1, prior > 0; got {window}, {bins}, {prior}"
            )
        self.L, self.E = num_layers, num_experts
        if levels is None:
            self.levels_V = np.arange(num_experts + 1)
        else:  # checked on Python ints: no branch on array data (prepare() may be traced)
            budgets = [int(b) for b in levels]
            if not budgets or any(b <= a for a, b in zip(budgets, budgets[1:], strict=False)):
                raise ValueError(f"levels must be ascending budgets; got {budgets}")
            self.levels_V = np.array(budgets, dtype=np.int64)
        self.candidate_tokens = list(candidate_tokens)
        self.n_C = np.array(self.candidate_tokens, dtype=np.int64)
        # (index, tokens) of the candidates by size, smallest first (``window_step``)
        self.ascending_C = sorted(enumerate(self.candidate_tokens), key=lambda cn: cn[1])
        self._offsets_L11 = (np.arange(num_layers) * num_experts)[:, None, None]
        self.prior = float(prior)
        self.centre_B = (np.arange(bins) + 0.5) / bins
        self.edges_V = np.array(self.logprob_edges())  # float [bins - 1]
        # nodes seen per (depth 1?, accepted?, bin): one add per step, read by the properties
        self.count_FAB = np.zeros((2, 2, bins))
        self.tried_D = np.zeros(max_depth + 1)
        self.reached_D = np.zeros(max_depth + 1)
        self.reach_prior_D = 0.5 ** np.arange(max_depth + 1)  # one pseudo-step, 2**-d
        self.window: deque[WindowStep] = deque(maxlen=window)
        C, V = len(self.candidate_tokens), self.levels_V.size
        self.exact_WLV = np.zeros((window, num_layers, V), dtype=np.int64)
        self.committed_WC = np.full((window, C), -1, dtype=np.int64)
        self.used_WCL = np.zeros((window, C, num_layers), dtype=np.int64)
        self.ran_W = np.full(window, -1, dtype=np.int64)  # the candidate each step ran (-1: other)
        self.ranked_W = np.zeros(window, dtype=bool)  # whether the step was ranked (need known)
        self.first_WB = np.zeros((window, bins), dtype=np.int64)  # depth-1 nodes per bin
        self.need_W = np.zeros(window)  # each step's path_need
        self.steps_seen = 0
        # what the reads below computed since the last observe or forget (a replan reads
        # each several times: once per candidate tree, and again for the draft gate)
        self.kept: dict[tuple, object] = {}
        self.orders: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # depth_order's

    # -- calibration -------------------------------------------------------------------
    @property
    def bins(self) -> int:
        return self.centre_B.size

    @property
    def seen_B(self) -> np.ndarray:
        """float ``[bins]``: non-root nodes seen per bin of path probability."""
        return self.count_FAB.sum(axis=(0, 1))

    @property
    def accepted_B(self) -> np.ndarray:
        """float ``[bins]``: those of them on the accepted path."""
        return self.count_FAB[:, 1].sum(axis=0)

    @property
    def seen_first_B(self) -> np.ndarray:
        """float ``[bins]``: :attr:`seen_B` of the root's children alone."""
        return self.count_FAB[1].sum(axis=0)

    @property
    def accepted_first_B(self) -> np.ndarray:
        """float ``[bins]``: :attr:`accepted_B` of the root's children alone."""
        return self.count_FAB[1, 1]

    def logprob_edges(self) -> list[float]:
        """The bins' inner edges in log-probability (for ``torch.bucketize``), ascending."""
        return [math.log(i / self.bins) for i in range(1, self.bins)]

    @until_changed
    def accept_B(self) -> np.ndarray:
        """float ``[bins]``: calibrated P(accepted) per bin of the draft's path probability."""
        return (self.accepted_B + self.prior * self.centre_B) / (self.seen_B + self.prior)

    @until_changed
    def accept_first_B(self) -> np.ndarray:
        """float ``[bins]``: :meth:`accept_B` of the root's children alone (what the draft
        gate reads: a first level is accepted more often than a deep node of the same path
        probability, whose ancestors' errors it carries)."""
        return (self.accepted_first_B + self.prior * self.centre_B) / (
            self.seen_first_B + self.prior
        )

    def bin_of(self, logprob_N: np.ndarray) -> np.ndarray:
        """int ``[N]``: the bin of each node's path probability ``exp(logprob_N)``."""
        return np.searchsorted(self.edges_V, logprob_N, side="right")

    @until_changed
    def reach_D(self) -> np.ndarray:
        """float ``[depths]``: P(path reaches depth d | tree had depth d); prior ``2**-d``."""
        out = (self.reached_D + self.reach_prior_D) / (self.tried_D + 1.0)
        out[0] = 1.0
        return out

    # -- updates -----------------------------------------------------------------------
    def observe(
        self, outcome: StepOutcome, rank_LE: torch.Tensor | None, ids_LNK: torch.Tensor | None
    ) -> None:
        """Fold in one finished tree step; ``rank_LE``/``ids_LNK`` are the policy's ranking
        and the unbudgeted top-k of the verify forward (``ids_LNK`` None: the window is not
        updated; ``rank_LE`` None: the step enters without its need, as a step that rested).

        Without the draft's path log-probabilities (``logprob_N`` None, as in SGLang) the
        calibration is left as it is and the window orders nodes by depth instead.
        """
        self.kept.clear()
        path_P = np.asarray(outcome.path, dtype=np.int64)
        depth_N = None if outcome.depth_N is None else outcome.depth_N.numpy(force=True)
        first_B = order = None
        if outcome.logprob_N is not None:
            logprob_N = outcome.logprob_N.float().numpy(force=True)
            # one count of the non-root nodes by (depth 1?, on the path?, bin)
            code_N = self.bin_of(logprob_N)
            code_N[path_P] += self.bins
            if depth_N is not None:
                code_N += (2 * self.bins) * (depth_N == 1)
            count_FAB = np.bincount(code_N[1:], minlength=4 * self.bins).reshape(2, 2, -1)
            self.count_FAB += count_FAB
            if depth_N is not None:
                first_B = count_FAB[1, 0] + count_FAB[1, 1]
            depth = int(depth_N.max()) if depth_N is not None else path_P.size - 1
        elif depth_N is not None:  # no draft scores (SGLang): shallower nodes first
            logprob_N, order = None, self.depth_order(depth_N)
            depth = int(depth_N[order[0][-1]])  # the deepest node comes last
        else:
            raise ValueError("a tree step's outcome needs logprob_N or depth_N")
        depth = min(depth, self.tried_D.size - 1)
        self.tried_D[1 : depth + 1] += 1
        self.reached_D[1 : min(path_P.size, depth + 1)] += 1
        if ids_LNK is None:
            return
        rank = None if rank_LE is None else rank_LE.numpy(force=True)
        step = self.window_step(logprob_N, path_P, rank, ids_LNK.numpy(force=True), order)
        self.window.append(step)
        w = self.steps_seen % self.exact_WLV.shape[0]
        self.first_WB[w] = 0 if first_B is None else first_B
        self.ranked_W[w] = step.need_LP is not None
        # a step not ranked: every budget counted as keeping its path (read at the cap only)
        self.exact_WLV[w] = (
            path_P.size if rank is None else exact_table(step.need_LP, self.levels_V)
        )
        self.committed_WC[w] = step.committed_C
        self.used_WCL[w] = step.used_CL
        self.need_W[w] = step.path_need
        n = outcome.tree[0]
        self.ran_W[w] = self.candidate_tokens.index(n) if n in self.candidate_tokens else -1
        self.steps_seen += 1

    def forget(self, keep: int) -> None:
        """Keep only the window's latest ``keep`` steps (the text has changed: older steps
        would predict for what is no longer read). The calibration and the acceptance per
        depth, counts over every step, stay."""
        self.kept.clear()
        W = self.exact_WLV.shape[0]
        old = len(self.window) - keep
        if old <= 0:
            return
        for i in range(old):  # ring rows of the oldest steps, marked as knowing nothing
            w = (self.steps_seen - len(self.window) + i) % W
            self.committed_WC[w] = -1
            self.ran_W[w] = -1
        for _ in range(old):
            self.window.popleft()

    def recent_need(self, n: int) -> np.ndarray:
        """float ``[<= n]``: :attr:`WindowStep.path_need` of the ranked steps among the
        window's latest ``n``."""
        n = min(n, len(self.window))
        W = self.need_W.size
        start = (self.steps_seen - n) % W
        if start + n <= W:  # one slice of the ring
            rows = slice(start, start + n)
            return self.need_W[rows][self.ranked_W[rows]]
        w = (start + np.arange(n)) % W
        return self.need_W[w[self.ranked_W[w]]]

    def layer_offsets(self, L: int) -> np.ndarray:
        """int ``[L, 1, 1]``: layer l's first index ``l * E`` in a flat ``[L * E]`` table."""
        if self._offsets_L11.shape[0] != L:
            self._offsets_L11 = (np.arange(L) * self.E)[:, None, None]
        return self._offsets_L11

    def depth_order(self, depth_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """int ``[N]`` twice: the nodes by depth (shallower first, lower index on ties) and
        each node's place in that order; kept per tree shape (a server's trees repeat)."""
        key = (depth_N.dtype.str, depth_N.tobytes())
        got = self.orders.get(key)
        if got is None:
            if len(self.orders) >= 64:  # trees of many shapes: start again
                self.orders.clear()
            order_N = np.argsort(depth_N, kind="stable")
            got = self.orders[key] = (order_N, order_N.argsort())
            for a in got:
                a.setflags(write=False)
        return got

    def window_step(
        self,
        logprob_N: np.ndarray | None,
        path: list[int] | np.ndarray,
        rank_LE: np.ndarray | None,
        ids_LNK: np.ndarray,
        order: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> WindowStep:
        """One step's :class:`WindowStep`; ``ids_LNK`` holds expert ids in ``[0, E)``
        (``rank_LE`` None: a step not ranked, its need unknown). Nodes are ordered by
        ``logprob_N`` (higher first, lower index on ties), or given in that ``order``
        (:meth:`depth_order`)."""
        L, N, K = ids_LNK.shape
        if rank_LE is not None and rank_LE.shape != (L, self.E):
            raise ValueError(f"rank_LE has shape {rank_LE.shape}; expected ({L}, {self.E})")
        # (layer, expert) as one index into [L * E]
        at_LNK = ids_LNK.astype(np.int64, copy=False) + self.layer_offsets(L)
        need_LP = None
        if rank_LE is not None:
            rank_X = np.ascontiguousarray(rank_LE).ravel()
            need_LP = np.maximum.accumulate(rank_X[at_LNK[:, path]].max(axis=-1) + 1, axis=1)
        # node order by path log-probability (higher first, lower index on ties)
        if order is None:
            order_N = np.argsort(-logprob_N, kind="stable")
            order = order_N, order_N.argsort()
        order_N, place_N = order
        path_place_P = np.maximum.accumulate(place_N[path])  # ascending
        known_C = self.n_C <= N
        committed_C = np.where(known_C, np.searchsorted(path_place_P, self.n_C), -1)
        # the best n nodes of a candidate tree use the experts their top-k picked: mark the
        # nodes' experts in place order, counting the marks at each candidate's n (nodes
        # first: each candidate's new nodes are one slice; a bool sum, not count_nonzero's
        # Python path); a candidate of all N nodes marks them all, in any order (a server's
        # one tree: no reordering)
        marked_LE = np.zeros((L, self.E), dtype=bool)
        marked_X = marked_LE.reshape(-1)
        used_CL = np.zeros((self.n_C.size, L), dtype=np.int64)
        done, at_NLK = 0, None
        for c, n in self.ascending_C:
            if n > N:  # a tree smaller than the candidate: unknown (0)
                break
            if n == N:
                marked_X[at_LNK] = True
            elif n > done:
                if at_NLK is None:
                    at_NLK = at_LNK.transpose(1, 0, 2)[order_N]
                marked_X[at_NLK[done:n]] = True
            done = max(done, n)
            used_CL[c] = marked_LE.sum(axis=1)
        return WindowStep(need_LP, committed_C, used_CL)

    def arrays(
        self, c: int, levels_V: np.ndarray | None = None, min_ran: int = 4
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The window for candidate ``c``: ``exact_SLV`` (:func:`exact_table` of each step at
        ``levels_V``, ascending budgets among :attr:`levels_V`; None: all of those),
        ``committed_S`` and ``used_SL``.

        Steps that ran candidate ``c`` itself when there are ``min_ran`` of them; otherwise
        every step that knew it, a larger tree's included (its best nodes stand in for the
        smaller tree, an optimistic guess: a smaller draft expands fewer candidates).
        """
        rows = self.rows(c, min_ran)
        exact_SLV = self.exact_WLV[rows]
        if (
            levels_V is not None
            and levels_V is not self.levels_V
            and not np.array_equal(levels_V, self.levels_V)
        ):
            try:
                v_V = level_index(self.levels_V, np.asarray(levels_V))
            except ValueError:
                raise ValueError(
                    f"levels {np.asarray(levels_V).tolist()} are not all among the window's "
                    f"{self.levels_V.tolist()}"
                ) from None
            exact_SLV = exact_SLV[:, :, v_V]
        return exact_SLV, self.committed_WC[rows, c], self.used_WCL[rows, c]

    @until_changed
    def ranked_S(self, c: int, min_ran: int = 4) -> np.ndarray:
        """bool ``[S]``: which of the rows :meth:`arrays` reads for ``c`` were ranked (their
        exact-prefix tables hold; a row not ranked counts every budget as keeping its path)."""
        return self.ranked_W[self.rows(c, min_ran)]

    @until_changed
    def rows(self, c: int, min_ran: int = 4) -> np.ndarray | slice:
        """The window rows :meth:`arrays` reads for candidate ``c``."""
        filled = min(self.steps_seen, self.exact_WLV.shape[0])
        ran = np.flatnonzero(self.ran_W[:filled] == c)
        rows = ran if ran.size >= min_ran else np.flatnonzero(self.committed_WC[:filled, c] >= 1)
        if rows.size == filled:  # every step (ascending): views, not copies of the tables
            rows = slice(0, filled)
        return rows
