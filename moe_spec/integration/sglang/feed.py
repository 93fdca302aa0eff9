"""Acceptance fed back to an adaptive policy (``auto``) after every SGLang verify step.

SGLang's ``EAGLEWorkerV2.verify`` returns, per request, how many tokens were accepted
(``accept_lens [bs]``, the bonus token included) and which tree rows (``accept_index
[bs, depth + 1]``, rows of the whole verify batch, root first, -1 padded). The plugin's
AFTER hook on it hands both to :class:`AcceptanceFeed`, with what the policy recorded
in that verify forward (each layer's expert ranking, the unbudgeted top-k and depths of
the first :data:`REQUESTS` request's rows: ``Auto.record_to_device``). The feed copies
them off the device (on CUDA without blocking: a step is folded in at the next verify
step, a fixed lag, so that every tensor-parallel rank changes its budgets at the same
step and all ranks keep the same experts), calls the policy's ``observe`` once per
recorded request and ``plan_step`` once per verify step; when the observed request (the
batch's first, by SGLang's ``rid``) is another than the last step's, ``start_request``
before its first observation. ``plan_step`` rewrites the
per-layer budget tensor in place between forwards, so captured CUDA graphs stay valid;
nothing here runs inside a forward. A step at the cap that the policy ranks only to learn
from rests with its scores kept (the rest flag's ``REST_SCORED``): before the copies, the
feed has the policy rank them (``Auto.rank_scored``, one launch on CUDA), so the step is
folded in as ranked.

SGLang runs the configured tree every step: a plugin cannot switch to a smaller tree or
to plain decoding, so the policy plans per-layer budgets for that tree only (no guard).
The first time the policy predicts that tree slower than decoding without speculation, the
feed logs a warning naming both rates and what to serve instead
(:meth:`AcceptanceFeed.note_speed`); the periodic line says whether it still holds.
The exception is a chain with SGLang's adaptive speculation (``--speculative-adaptive``,
``chains``): SGLang can then run the chain at other depths, 0 included (the root verified
alone: a plain decode), and the policy's guard chooses among the configured chain, its
halvings and decoding (``moe_spec.integration.sglang.depth`` hands its choice to SGLang).
Each step's chain is then read from the width of its ``accept_index`` (depth + 1), and
the decodes of a planned run are reported as one outcome once the run is over (or its
request), as the engines report them. Where every decode runs SGLang's draft extend (no
skip switch), the draft's most likely next token is at hand before each decode
(``spec_info.topk_index[:, 0]``, through the draft's ``hot_token_id``): the plugin reads it
as SGLang builds the decode's input (:meth:`AcceptanceFeed.note_guess`), and whether the
verified token matched goes with the step's copies; a run's matches reach
``policy.draft_matched`` before its outcome (``auto``'s shadows: what the chain would have
committed on the decoded text, ``moe_spec.control.shadows``).

Shape legend: b requests, P accepted-path slots, L MoE layers, E experts, K top-k,
N tree tokens per request, R recorded rows.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from moe_spec.control.steps import (
    AUTOREGRESSIVE,
    TREE,
    StepOutcome,
    StepPlan,
    candidate_trees,
)
from moe_spec.integration.sglang.compat import UnsupportedSetupError
from moe_spec.kernels.budget_select_torch import RANK, REST, REST_SCORED

logger = logging.getLogger("moe_spec.sglang")

#: Requests per verify step whose routing is recorded and observed (the batch's first):
#: each is a host-side observe, and every 8 observed requests the controller replans.
REQUESTS = 1
#: What the feed reads from SGLang's verify result.
RESULT_FIELDS = ("accept_lens", "accept_index")


def tree_of(server_args: Any) -> tuple[int, int, int]:
    """``(num_tokens, width, depth)`` of the EAGLE tree SGLang verifies every step
    (width and depth at most ``num_tokens - 1``, as the policy's candidate trees)."""
    names = ("speculative_num_draft_tokens", "speculative_eagle_topk", "speculative_num_steps")
    values = [getattr(server_args, name, None) for name in names]
    if any(v is None for v in values):
        unset = [n for n, v in zip(names, values, strict=True) if v is None]
        raise UnsupportedSetupError(f"SGLang's server arguments leave {', '.join(unset)} unset")
    return candidate_trees(*(int(v) for v in values))[0]


class FeedError(RuntimeError):
    """SGLang's verify result is not laid out as the feed expects."""


@dataclass
class Snapshot:
    """One verify step's acceptance and recorded routing, on the host after :meth:`wait`."""

    event: Any  # a CUDA event recorded after the non-blocking copies, or None (copied)
    lens_b: torch.Tensor
    index_bP: torch.Tensor
    recorded: dict[str, torch.Tensor]
    new_request: bool = False  # the observed request is another than the last step's
    hit_1: torch.Tensor | None = None  # a decode: whether the draft guessed its token
    rested: bool = False  # the step's selection rested (the policy's device flag): no ranking
    ranked_after: bool = False  # it rested, its scores ranked after the forward

    def wait(self) -> None:
        """Until the copies have landed (long done when the next step comes)."""
        if self.event is not None:
            self.event.synchronize()


class AcceptanceFeed:
    """Feeds each verify step's acceptance to ``policy.observe``, then ``plan_step``."""

    def __init__(
        self,
        policy: Any,
        tree: tuple[int, int, int],
        top_k: int,
        interval_s: float = 30.0,
        tp_rank: int = 0,
        requests: int = REQUESTS,
        chains: bool = False,
        skip_extend: bool = False,
    ) -> None:
        self.policy = policy
        self.tree = tree
        self.N = tree[0]
        self.chains = chains  # SGLang may run each step at another depth (adaptive chains)
        self.trees = candidate_trees(*tree) if chains else [tree]
        self.decodes = 0  # plain decodes (depth-0 steps) not yet reported to the policy
        # with skip_extend (chains): a decode that another of its planned run follows skips
        # SGLang's draft extend (:meth:`skips_extend`); the run's plan and decodes issued
        self.skip_extend = skip_extend and chains
        self.run: tuple[StepPlan | None, int] = (None, 0)
        self.extends_skipped = self.decodes_run = 0
        self.by_depth: Counter[int] = Counter()  # verify steps per chain depth (chains)
        # folded tree steps; those that rested (no ranking); those ranked after the forward
        self.tree_steps = self.rested = self.ranked_after = 0
        self.buffers = policy.record_to_device(requests * self.N, top_k)
        self.per_step = requests  # requests observed per verify step (the batch's first)
        self.pending: deque[Snapshot] = deque()
        self.host: dict[tuple, torch.Tensor] = {}  # the snapshots' host buffers (host_buffer)
        self.copies = 0  # snapshots taken: which of the two sets of host buffers is next
        self.lowest_L: np.ndarray | None = None  # each layer's lowest budget planned since
        self.plan: StepPlan | None = None  # the last report (a line shows the latest alone)
        self.replan()
        self.steps = self.requests = self.observed = self.tokens = self.reported_steps = 0
        self.host_s = 0.0  # the feed's own host time (copies, observe, plan_step)
        self.reported_host_s = 0.0  # host_s at the last report
        self.stopped: str | None = None  # why the feed stopped, once it has
        self.interval_s, self.tp_rank = interval_s, tp_rank
        self.last_report = time.monotonic()
        self.rid: Any = None  # the observed request (the batch's first), by SGLang's rid
        self.started = 0  # observed requests that started new text (start_request calls)
        self.warned = False  # whether the tree was predicted slower than plain decoding yet
        # the draft's guesses at decoded tokens, for a policy that wants them (auto's shadows)
        self.guesses = bool(getattr(policy, "wants_guesses", False))
        self.guess_1: torch.Tensor | None = None  # before this step's decode, on the device
        self.matched: list[bool] = []  # the run's decodes so far: whether each was guessed
        self.guessed = self.right = 0

    # -- after each verify -------------------------------------------------------------
    def after_verify(self, result: Any, batch: Any) -> None:
        """Queue this step's acceptance and recorded routing; fold in the previous step's
        (on CUDA) or this one's (on a CPU, where the copies are made at once)."""
        mode = getattr(batch, "forward_mode", None)
        if mode is not None and mode.is_idle():
            return
        missing = [name for name in RESULT_FIELDS if getattr(result, name, None) is None]
        if missing:
            raise FeedError(
                f"SGLang's verify result ({type(result).__name__}) has no "
                f"{', '.join(missing)}; auto needs them to learn acceptance"
            )
        lens_b, index_bP = result.accept_lens, result.accept_index
        if lens_b.dim() != 1 or index_bP.dim() != 2 or index_bP.shape[0] != lens_b.shape[0]:
            raise FeedError(
                f"SGLang's verify result has accept_lens {tuple(lens_b.shape)} and accept_index "
                f"{tuple(index_bP.shape)}; expected [bs] and [bs, depth + 1]"
            )
        t0 = time.perf_counter()
        guess_1, self.guess_1 = self.guess_1, None
        if lens_b.numel():
            hit_1 = self.hit(guess_1, result) if index_bP.shape[1] == 1 else None
            self.pending.append(self.snapshot(lens_b, index_bP, hit_1))
            self.pending[-1].new_request = self.next_request(batch)
        lag = int(lens_b.device.type == "cuda")
        while len(self.pending) > lag:
            snap = self.pending.popleft()
            snap.wait()
            self.fold(snap)
        self.host_s += time.perf_counter() - t0

    def next_request(self, batch: Any) -> bool:
        """Whether the batch's first request (the one observed) differs from the last
        step's: new text for the policy (:meth:`Policy.start_request`). A batch without
        request ids (``reqs[0].rid``) never starts one."""
        reqs = getattr(batch, "reqs", None)
        rid = getattr(reqs[0], "rid", None) if reqs else None
        if rid is None or rid == self.rid:
            return False
        self.rid = rid
        return True

    def note_guess(self, worker: Any, batch: Any) -> None:
        """As SGLang builds a plain decode's verify input (``batch.spec_info`` is still the
        draft extend's output): the draft's most likely token after the text so far, for
        the batch's first request, mapped from the draft's hot vocabulary (``hot_token_id``
        of ``worker.draft_worker``) where it has one. Device ops only."""
        self.guess_1 = None
        if not self.guesses:
            return
        index_bW = getattr(getattr(batch, "spec_info", None), "topk_index", None)
        if index_bW is None or index_bW.dim() != 2 or 0 in index_bW.shape:
            return
        guess_1 = index_bW[:1, 0]
        hot_V = getattr(getattr(worker, "draft_worker", None), "hot_token_id", None)
        self.guess_1 = hot_V[guess_1] if hot_V is not None else guess_1.clone()

    @staticmethod
    def hit(guess_1: torch.Tensor | None, result: Any) -> torch.Tensor | None:
        """bool ``[1]``: whether a plain decode's token (the bonus token SGLang verified for
        the batch's first request) is the draft's guess; None without a guess."""
        token_b = getattr(getattr(result, "next_draft_input", None), "bonus_tokens", None)
        if guess_1 is None or token_b is None or token_b.dim() != 1 or not token_b.numel():
            return None
        return guess_1.to(token_b.dtype) == token_b[:1]

    def snapshot(
        self, lens_b: torch.Tensor, index_bP: torch.Tensor, hit_1: torch.Tensor | None = None
    ) -> Snapshot:
        """Host copies of this step's tensors (non-blocking into pinned memory on CUDA),
        into buffers the feed keeps (:meth:`host_buffer`): two sets, used in turn (a step
        is folded in before the step after the next is copied), so a step allocates no host
        memory once a batch of its size was seen."""
        tensors = {"lens_b": lens_b, "index_bP": index_bP, **self.buffers}
        if hit_1 is not None:
            tensors["hit_1"] = hit_1
        cuda = lens_b.device.type == "cuda"
        rest = getattr(self.policy, "rest_host", RANK)  # the flag this forward read
        if rest == REST_SCORED:  # ranked after the forward, from the scores it wrote
            self.policy.rank_scored()
        self.copies += 1
        host = {
            k: self.host_buffer(k, t, cuda).copy_(t, non_blocking=cuda) for k, t in tensors.items()
        }
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        lens, index, hit_1 = host.pop("lens_b"), host.pop("index_bP"), host.pop("hit_1", None)
        rested, after = rest == REST, rest == REST_SCORED
        return Snapshot(event, lens, index, host, hit_1=hit_1, rested=rested, ranked_after=after)

    def host_buffer(self, name: str, t: torch.Tensor, pinned: bool) -> torch.Tensor:
        """This copy's host buffer for tensor ``name``, made again when its shape or dtype
        changes (a batch of another size): pinned for a copy off a CUDA device."""
        key = (name, self.copies % 2)
        buf = self.host.get(key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = self.host[key] = torch.empty(t.shape, dtype=t.dtype, pin_memory=pinned)
        return buf

    def fold(self, snap: Snapshot) -> None:
        """Observe the recorded requests of one step, then plan the next (host only)."""
        tree = self.step_tree(snap.index_bP.shape[1])
        N = tree[0]
        lens, index = snap.lens_b.tolist(), snap.index_bP.tolist()
        paths = []
        for i, (n, rows) in enumerate(zip(lens, index, strict=True)):
            path = [row - i * N for row in rows[:n]]
            if not 1 <= n <= len(rows) or not all(0 <= p < N for p in path) or path[0] != 0:
                raise FeedError(
                    f"request {i} of a verify step: accept_lens {n}, accept_index {rows}; "
                    f"expected 1 to {len(rows)} rows of its own {N}, root first"
                )
            paths.append(path)
        rec = snap.recorded
        if snap.new_request:
            self.report_decodes()  # a run of decodes ends with its request, as in the engines
            self.policy.start_request()
            self.started += 1
        if N == 1:
            self.fold_decode(snap.new_request, None if snap.hit_1 is None else bool(snap.hit_1))
        else:
            self.report_decodes()
            self.tree_steps += 1
            self.rested += snap.rested
            self.ranked_after += snap.ranked_after
            for i, path in enumerate(paths[: min(self.per_step, rec["ids_LRK"].shape[1] // N)]):
                rows = slice(i * N, (i + 1) * N)
                outcome = StepOutcome(TREE, path, rec["depth_R"][rows], None, tree)
                rank_LE = None if snap.rested else rec["rank_LE"]  # not written at rest
                ids_LNK = rec["ids_LRK"][:, rows]
                self.policy.observe(outcome, rank_LE, ids_LNK, snap.rested)
                self.observed += 1
            self.replan()
            self.note_speed()
        self.steps += 1
        self.requests += len(paths)
        self.tokens += sum(lens)
        self.by_depth[tree[2]] += 1

    def replan(self) -> None:
        """The policy's plan for the next step, its budgets kept in :attr:`lowest_L`."""
        self.plan = self.policy.plan_step(self.tree, False)
        budgets = getattr(self.policy, "budget_host_L", None)
        if budgets is not None:
            low = budgets if self.lowest_L is None else self.lowest_L
            self.lowest_L = np.minimum(low, budgets)

    def step_tree(self, width: int) -> tuple[int, int, int]:
        """The step's ``(num_tokens, width, depth)``: the configured tree, or with ``chains``
        the chain whose accepted paths are ``width`` (depth + 1) slots wide; a chain of
        depth 0 is ``(1, 0, 0)``, the root alone."""
        if not self.chains:
            return self.tree
        tree = (1, 0, 0) if width == 1 else (width, 1, width - 1)
        if tree[0] > 1 and tree not in self.trees:
            depths = [d for _, _, d in self.trees]
            raise FeedError(
                f"a verify step ran a chain of depth {width - 1}; auto chooses among depths "
                f"{depths} and 0"
            )
        return tree

    def fold_decode(self, new_text: bool = False, hit: bool | None = None) -> None:
        """A depth-0 step: SGLang verified the root alone, a plain decode. A run the guard
        planned is reported once it is over, as one outcome; a decode it did not plan (the
        plan changed a step late) at once. The first decode of new text starts a run planned
        for it. ``hit``: whether the draft guessed the decoded token (None: no guess)."""
        if new_text and self.plan is not None and self.plan.kind == AUTOREGRESSIVE:
            self.replan()
        self.decodes += 1
        if hit is None:  # a decode without a guess ends the text the matches cover
            self.give_matches()
        else:
            self.matched.append(hit)
            self.guessed, self.right = self.guessed + 1, self.right + hit
        plan = self.plan
        if plan is None or plan.kind != AUTOREGRESSIVE or self.decodes >= plan.steps:
            self.report_decodes()
            self.replan()

    def give_matches(self) -> None:
        """The run's matches so far to ``policy.draft_matched`` (contiguous decoded text)."""
        if self.matched:
            self.policy.draft_matched(self.matched)
            self.matched = []

    def report_decodes(self) -> None:
        """The decodes not yet reported, as one autoregressive outcome (after the draft's
        matches at them, as the engines give them)."""
        self.give_matches()
        if self.decodes:
            self.policy.observe(StepOutcome(AUTOREGRESSIVE, [0], steps=self.decodes))
            self.decodes = 0

    def skips_extend(self, depth: int) -> bool:
        """With ``skip_extend``: whether the step about to run at ``depth`` skips SGLang's
        draft extend (``SGLANG_SPEC_SKIP_ZERO_STEP_DRAFT_EXTEND``, read by SGLang after the
        verify): a decode of a planned run that another decode of the run follows. The
        run's last decode extends, so the chain after it drafts from a current state (not
        SGLang's zeroed stand-in, whose first step commits the root alone); the decoded
        tokens' entries in the draft's cache stay unwritten. Measured on smollm2-moe (CPU
        server, a chain of 3 after runs of 8 or 24 decodes): accepted drafts per chain step
        level within noise with SGLang's extend on every decode (``bench/sglang_skip_extend.py``).
        Counted per run (a new plan starts a new one); a decode the plan did not foresee
        extends. Where the plan changes before its run ends (the observed request ended and
        others in the batch go on), their next chain drafts once from the stand-in."""
        plan, issued = self.run
        if depth != 0 or self.plan is None or self.plan.kind != AUTOREGRESSIVE:
            self.run = (None, 0)
            return False
        issued = issued + 1 if plan is self.plan else 1
        self.run = (self.plan, issued)
        skip = self.skip_extend and issued < self.plan.steps
        self.decodes_run += 1
        self.extends_skipped += skip
        return skip

    def stop(self, exc: BaseException, where: str) -> None:
        """Stop learning after ``exc`` in ``where`` (a layout this feed cannot read, a policy
        bug): one error line; the policy keeps the budgets of its last tree step and SGLang
        runs the configured tree or chain from here on (the server keeps serving)."""
        self.stopped = f"{exc!r}"
        if hasattr(self.policy, "stop_learning"):
            self.policy.stop_learning()
        logger.error(
            "moe-spec: policy %r gets no more acceptance (its budgets stay as they are; %s "
            "raised): %r",
            getattr(self.policy, "name", "?"),
            where,
            exc,
        )

    def depth(self) -> int:
        """The chain depth the next step should run: the plan's (0: a plain decode), or the
        configured chain's once the feed has stopped."""
        plan = self.plan
        if self.stopped or plan is None:
            return self.tree[2]
        return 0 if plan.kind == AUTOREGRESSIVE else plan.depth

    # -- reporting ---------------------------------------------------------------------
    def note_speed(self) -> None:
        """Without the guard: a warning (rank 0) the first time the policy predicts the tree
        slower than decoding without speculation (:attr:`moe_spec.control.Guard.slower`).
        SGLang cannot turn a tree off per step. Once per server: a tree near the line would
        warn again at every crossing; each periodic line gives the current verdict."""
        slower = getattr(getattr(self.policy, "controller", None), "slower", None)
        if slower is None or self.warned:
            return
        self.warned = True
        if self.tp_rank != 0:
            return
        n, w, d = self.tree
        tree_rate, plain = slower
        cost = self.policy.controller.cost
        flags = (
            f"--speculative-num-draft-tokens {n} --speculative-eagle-topk {w} "
            f"--speculative-num-steps {d}"
        )
        logger.warning(
            f"moe-spec: auto models this server's tree ({flags}) at {tree_rate:.4g} tok/s per "
            f"request and decoding without speculation at {plain:.4g} "
            f"({plain / tree_rate - 1:.0%} faster), from the acceptance of its last verify "
            f"steps, priced on {cost.shape.name} on {cost.cost.gpu.name} ({cost.cost.name} "
            "cost model, one request at a time; --policy-option shape=... and gpu=... set "
            "what is priced). SGLang runs the configured tree on every step (its adaptive "
            "speculation takes --speculative-eagle-topk 1 only), so auto cannot fall back "
            "to plain decoding here: serve a chain (--speculative-eagle-topk 1 "
            "--speculative-adaptive), where auto chooses each step's draft depth, 0 "
            "included, or serve without speculation. The periodic 'auto observed' line "
            "says whether this still holds."
        )

    def due(self, now: float | None = None) -> bool:
        """Whether ``interval_s`` has passed since the last report and steps came in since."""
        now = time.monotonic() if now is None else now
        fresh = self.steps > self.reported_steps
        return fresh and self.interval_s > 0 and now - self.last_report >= self.interval_s

    def line(self) -> str:
        """What the policy learned so far: steps seen, budgets, acceptance per depth."""
        if self.stopped:
            return f"moe-spec: auto gets no acceptance (budgets stay as they are): {self.stopped}"
        state = self.policy.device_state
        budgets = self.policy.budget_host_L.tolist()
        lowest = budgets if self.lowest_L is None else self.lowest_L.tolist()
        since = f" (lowest planned since the last line {lowest})" if lowest != budgets else ""
        reach = [round(x, 3) for x in state["reach_D"][1 : self.tree[2] + 1].tolist()]
        mean = self.tokens / self.requests if self.requests else 0.0
        reason = self.plan.reason if self.plan is not None else ""
        return (
            f"moe-spec: auto observed {self.steps} verify steps ({self.observed} request steps "
            f"folded in, from {self.started} requests), mean accepted length {mean:.2f}; "
            f"budgets per layer {budgets}{since}; "
            f"P(reach depth 1..{self.tree[2]}) {reach}; "
            f"{self.rested} of {self.tree_steps} tree steps rested (budgets at E, no ranking), "
            f"{self.ranked_after} ranked after the forward; "
            f"{self.host_time()}; "
            f"{self.depths()}plan: {reason}"
        )

    def host_time(self) -> str:
        """The feed's own host time per verify step since the last report, and since start
        (the first steps also build the controller's tables, so the mean since start
        overstates the running cost for a while)."""
        total = 1e3 * self.host_s / max(self.steps, 1)
        steps = self.steps - self.reported_steps
        if self.reported_steps == 0 or steps <= 0:
            return f"host time per step {total:.2f} ms"
        recent = 1e3 * (self.host_s - self.reported_host_s) / steps
        return f"host time per step {recent:.2f} ms since the last report ({total:.2f} since start)"

    def depths(self) -> str:
        """With ``chains``: verify steps per chain depth so far (0: plain decodes)."""
        if not self.chains:
            return ""
        counts = ", ".join(f"{d}: {n}" for d, n in sorted(self.by_depth.items()))
        skipped = (
            f"draft extends skipped on {self.extends_skipped} of {self.decodes_run} decodes; "
            if self.skip_extend
            else ""
        )
        guessed = (
            f"the draft guessed {self.right} of {self.guessed} decoded tokens; "
            if self.guesses
            else ""
        )
        return f"steps per chain depth {{{counts}}}; {skipped}{guessed}"

    def report(self) -> None:
        line = self.line()
        self.last_report, self.reported_steps = time.monotonic(), self.steps
        self.reported_host_s = self.host_s
        budgets = getattr(self.policy, "budget_host_L", None)
        self.lowest_L = None if budgets is None else budgets.copy()
        if self.tp_rank == 0:
            logger.info(line)
