"""Generation: autoregressive decoding and tree speculative decoding with budgeted verification.

Shape legend: N tree tokens, P prompt tokens, V vocabulary, D model dim, L layers.

Speculative decoding (batch size 1), one step:
  1. ``expand_tree``: the draft grows a tree below the root (the last target token).
  2. ``verify``: the target runs every tree token in one forward with the tree
     mask and positions ``prefix + depth``; each MoE layer hands its routing to
     the budgeting policy first (the only budgeted forward).
  3. ``accept_greedy`` / ``accept_sampling`` picks the path to keep and a bonus
     token; the target's KV cache keeps only that path (``KVCache.commit``).
     With ``repair``, the path's tail from its first token whose routing the
     budget changed is re-run unbudgeted and decided again (see ``verify.py``),
     so the output is exactly the unbudgeted run's.
  4. The draft catches up on the accepted path with the target's real features.
Prefill, autoregressive decoding and the draft are never budgeted.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

import torch

from moe_spec.budget import MODES, Mode, check_budget
from moe_spec.checks import check_temperature
from moe_spec.control.steps import AUTOREGRESSIVE, TREE, StepOutcome, StepPlan
from moe_spec.engine.attention import KVCache
from moe_spec.engine.checkpoint import Checkpoint
from moe_spec.engine.model import VerifyBudget, distinct_per_layer
from moe_spec.engine.tokenizer import EOT
from moe_spec.engine.tree import DraftTree, expand_tree, verify_mask
from moe_spec.engine.verify import accept, accept_chain, exact_prefix, rerun_tail
from moe_spec.policies import Policy, get_policy

R = TypeVar("R")


@dataclass(frozen=True)
class SpecConfig:
    """Tree shape, sampling and the verify budget of a speculative run."""

    width: int = 8  # children per expanded node (and nodes expanded per depth)
    depth: int = 6  # draft steps below the root
    num_tokens: int = 32  # tree tokens verified per step, root included
    temperature: float = 0.0
    policy: str = "none"
    budget: int | None = None  # None: the number of experts (no budget)
    mode: Mode = "substitution"
    policy_options: dict = field(default_factory=dict)
    repair: bool = False  # re-run, unbudgeted, the accepted path's tokens the budget changed
    repair_min_tokens: int = 1  # a shorter changed tail is cut instead of re-run

    def __post_init__(self) -> None:
        for name, low in (("width", 1), ("depth", 1), ("num_tokens", 2), ("repair_min_tokens", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.depth > self.num_tokens - 1:  # the draft would run levels no node reaches
            raise ValueError(
                f"depth {self.depth} needs at least {self.depth + 1} tree tokens (num_tokens "
                f"{self.num_tokens}); allowed: depth <= num_tokens - 1 = {self.num_tokens - 1}"
            )
        check_temperature(self.temperature, "temperature")
        if self.mode not in MODES:
            raise ValueError(f"mode is {self.mode!r}; allowed: {', '.join(MODES)}")
        if not isinstance(self.repair, bool):
            raise ValueError(f"repair must be True or False, got {self.repair!r}")
        if self.repair_min_tokens != 1 and not self.repair:
            raise ValueError("repair_min_tokens applies only with repair=True")

    @property
    def label(self) -> str:
        budget = "" if self.budget is None or self.policy == "none" else f" B={self.budget}"
        return f"{self.policy}{budget}{repair_label(self.repair, self.repair_min_tokens)}"


def repair_label(repair: bool, min_tokens: int) -> str:
    if not repair:
        return ""
    return " repair" if min_tokens == 1 else f" repair>={min_tokens}"


@dataclass
class StepStats:
    """One verify step: tokens committed and distinct experts per layer."""

    committed: int  # accepted draft tokens + the bonus token
    distinct_before_L: list[int]  # the whole tree, unbudgeted
    distinct_after_L: list[int]  # the whole tree, after the budget
    distinct_path_L: list[int]  # the accepted path alone: the floor of a lossless verify
    num_tokens: int = 0  # the tree this step asked for: tokens, width, depth
    width: int = 0
    depth: int = 0
    repair_tokens: int = 0  # tokens re-run unbudgeted after the verify (0: none needed)
    distinct_repair_L: list[int] = field(default_factory=list)  # that forward's experts
    guard: str = ""  # a planning policy's step kind ("tree", "autoregressive"); "" if none
    reason: str = ""  # why the policy planned this step
    ranked: bool = True  # the policy ran in the verify (ranked experts: the selection's cost)
    ranked_after: bool = False  # it ranked the verify's routing after the forward instead


@dataclass
class GenerationResult:
    tokens: list[int]
    seconds: float
    steps: list[StepStats] = field(default_factory=list)

    @property
    def acceptance_length(self) -> float:
        """Mean tokens committed per verify step (1.0 for autoregressive decoding)."""
        return sum(s.committed for s in self.steps) / len(self.steps) if self.steps else 1.0

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0


class Engine:
    """Target, draft and tokenizer of a checkpoint, ready to generate (batch size 1)."""

    supports_repair = True  # SpecConfig.repair

    def __init__(self, checkpoint: Checkpoint, max_len: int | None = None) -> None:
        self.target, self.draft, self.tokenizer = (
            checkpoint.target,
            checkpoint.draft,
            checkpoint.tokenizer,
        )
        self.config = self.target.config
        self.max_len = max_len or self.config.max_seq_len
        self.vocab_size = self.target.embed.weight.shape[0]  # token ids it reads
        self.eot = self.tokenizer.token_to_id(EOT)
        self.dtype = self.target.embed.weight.dtype

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def new_cache(self, n_layers: int, n_heads: int, head_dim: int) -> KVCache:
        return KVCache(n_layers, n_heads, head_dim, self.max_len, self.dtype)

    def check_room(self, prompt: list[int], max_new_tokens: int, extra: int = 0) -> None:
        """``prompt`` is a list of token ids of this model's vocabulary (batch 1), and it, the
        new tokens and ``extra`` scratch positions fit ``max_len``."""
        if isinstance(prompt, torch.Tensor) or not all(
            isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in prompt
        ):
            shown = f"a tensor of shape {list(prompt.shape)}" if torch.is_tensor(prompt) else prompt
            raise ValueError(
                f"prompt is {shown!r}; allowed: a list of token ids (int), one sequence "
                "(batch 1): engine.encode(text), or tensor[0].tolist()"
            )
        vocab = self.vocab_size
        outside = [t for t in prompt if not 0 <= t < vocab]
        if outside:
            raise ValueError(
                f"prompt token ids {outside[:5]} are outside the vocabulary; allowed: 0 to "
                f"{vocab - 1}"
            )
        need = len(prompt) + max_new_tokens + extra
        if not prompt or need > self.max_len:
            raise ValueError(
                f"prompt of {len(prompt)} tokens + {max_new_tokens} new (+{extra} tree scratch) "
                f"must be non-empty and fit max_len={self.max_len}"
            )

    @staticmethod
    def tree_scratch(spec: SpecConfig) -> int:
        """Positions a speculative step needs past the prompt and the new tokens."""
        return spec.num_tokens + spec.width * spec.depth

    @torch.no_grad()
    def generate_autoregressive(
        self, prompt: list[int], max_new_tokens: int, temperature: float = 0.0, seed: int = 0
    ) -> GenerationResult:
        """The baseline: prefill, then one target forward per token."""
        self.check_room(prompt, max_new_tokens)
        g = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        logits_V, next_logits = self.start_decoding(prompt)
        out: list[int] = []
        while len(out) < max_new_tokens:
            token = sample(logits_V, temperature, g)
            out.append(token)
            if len(out) == max_new_tokens or self.is_end(token):
                break  # no forward for a token nothing will follow
            logits_V = next_logits(token)
        return GenerationResult(out, time.perf_counter() - start)

    def start_decoding(self, prompt: list[int]):
        """Prefill a fresh cache: the last logits ``[V]`` and ``next_logits(token) -> [V]``."""
        cache = self.new_cache(self.config.n_layers, self.config.n_heads, self.config.head_dim)
        return self.prefill(prompt, cache)[0], lambda token: self.decode_one_token(token, cache)

    def is_end(self, token: int) -> bool:
        return token == self.eot

    def trim(self, out: list[int], max_new_tokens: int) -> list[int]:
        """At most ``max_new_tokens``, ending at the first end token (a step may overshoot)."""
        out = out[:max_new_tokens]
        end = next((i for i, token in enumerate(out) if self.is_end(token)), None)
        return out if end is None else out[: end + 1]

    def prefill(self, prompt: list[int], cache: KVCache):
        """Run the prompt through the target: last logits ``[V]`` and features ``[P, D]``."""
        result = self.target(torch.tensor([prompt]), cache=cache)
        cache.advance(len(prompt))
        return self.target.lm_head(result.feature_BQD[0, -1]), result.feature_BQD[0]

    def decode_one_token(self, token: int, cache: KVCache) -> torch.Tensor:
        result = self.target(torch.tensor([[token]]), cache=cache)
        cache.advance(1)
        return result.logits_BQV[0, -1]

    @torch.no_grad()
    def generate_speculative(
        self,
        prompt: list[int],
        max_new_tokens: int,
        spec: SpecConfig,
        seed: int = 0,
        tree_size: Callable[[list[StepStats]], tuple[int, int, int]] | None = None,
        policy: Policy | None = None,
    ) -> GenerationResult:
        """Tree speculative decoding; the verify forward is budgeted by ``spec.policy``.

        ``tree_size``, if given, picks ``(num_tokens, width, depth)`` before every step
        from the steps so far (each at most ``spec``'s); otherwise ``spec``'s tree is used.
        ``policy``: a live instance of ``spec.policy`` to use instead of a fresh one (a
        planning policy such as ``auto`` then keeps its statistics across generations).
        """
        self.check_room(prompt, max_new_tokens, extra=self.tree_scratch(spec))
        E = self.config.n_experts
        budget = E if spec.budget is None else check_budget(spec.budget, self.config.top_k, E)
        cfg, dcfg = self.config, self.draft.config
        dims = (cfg.n_layers, E, cfg.top_k, budget)
        policy = live_policy(spec, policy, dims, self.target.embed.weight.device)
        g = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        tcache = self.new_cache(cfg.n_layers, cfg.n_heads, cfg.head_dim)
        dcache = self.new_cache(1, dcfg.n_heads, dcfg.head_dim)
        logits_V, feature_PD = timed(policy.prefilled, len(prompt), self.prefill, prompt, tcache)
        root = sample(logits_V, spec.temperature, g)
        out, steps = [root], []
        pending_QD, pending = [feature_PD], prompt[1:] + [root]  # pairs the draft has not seen
        decoded, root_feature_D = 0, None  # of them, the last plain decodes; the draft's state
        while len(out) < max_new_tokens and not self.is_end(out[-1]):
            plan = plan_step(policy, spec, steps, tree_size)
            num_tokens, width, depth = plan.tree
            if plan.kind == TREE:
                if pending:  # not read since
                    root_feature_D = timed(
                        policy.draft_caught_up,
                        len(pending),
                        self.draft_catch_up_on,
                        (pending, pending_QD, decoded),
                        dcache,
                        policy,
                        root_feature_D,
                    )
                    pending_QD, pending, decoded = [], [], 0
                root_logprobs_V = torch.log_softmax(self.target.lm_head(root_feature_D), dim=-1)
                plan = gate_step(policy, plan, root_logprobs_V)
            if plan.kind == AUTOREGRESSIVE:  # the guard's choice, or the gate's: plain forwards
                ran = run_decodes(
                    plan,
                    lambda token: self.decode_step(token, tcache, spec.temperature, g),
                    out,
                    (pending, pending_QD),
                    max_new_tokens,
                    self.is_end,
                )
                root, decoded = out[-1], decoded + ran
                steps += decode_stats(plan, ran, E, self.config.top_k, cfg.n_layers)
                if plan.read and ran:  # in the decodes' time
                    root_feature_D = self.draft_catch_up_on(
                        (pending, pending_QD, decoded), dcache, policy, root_feature_D
                    )
                    pending_QD, pending, decoded = [], [], 0
                policy.observe(StepOutcome(AUTOREGRESSIVE, [0], tree=plan.tree, steps=ran))
                continue
            tree = expand_tree(
                self.draft,
                self.target,
                dcache,
                root,
                root_feature_D,
                root_logprobs_V,
                width,
                depth,
                num_tokens,
            )
            dcache.offset = 0  # drop the tree's scratch entries
            verify = VerifyBudget(
                policy, budget, spec.mode, tree.depth_N, tree.logprob_N, track_exact=spec.repair
            )
            path, bonus, path_feature_QD, repair = self.verify(tree, tcache, verify, spec, g)
            new_tokens = tree.tokens_N[path[1:]].tolist() + [bonus]
            steps.append(
                StepStats(
                    len(new_tokens),
                    distinct_per_layer(verify.ids_before_LTK, E),
                    distinct_per_layer(verify.ids_after_LTK, E),
                    distinct_per_layer(verify.ids_before_LTK, E, torch.tensor(path)),
                    num_tokens,
                    width,
                    depth,
                    0 if repair is None else len(repair.ids_before_LTK[0]),
                    [] if repair is None else distinct_per_layer(repair.ids_before_LTK, E),
                    plan.kind if plan.reason else "",
                    plan.reason,
                    verify.ranked,
                    verify.ranked_after,
                )
            )
            policy.observe(verify.outcome(path, tree.depth_N, tree.logprob_N, plan.tree))
            out.extend(new_tokens)
            root = bonus
            pending_QD, pending = [path_feature_QD], new_tokens
        return GenerationResult(self.trim(out, max_new_tokens), time.perf_counter() - start, steps)

    def decode_step(self, root: int, cache: KVCache, temperature: float, g: torch.Generator):
        """One plain target forward of ``root``: the next token, ``root``'s feature ``[1, D]``."""
        result = self.target(torch.tensor([[root]]), cache=cache)
        cache.advance(1)
        return sample(result.logits_BQV[0, -1], temperature, g), result.feature_BQD[0, -1:]

    @staticmethod
    def pick_tree(spec: SpecConfig, steps: list[StepStats], tree_size) -> tuple[int, int, int]:
        """``(num_tokens, width, depth)`` of the next step: ``spec``'s, or ``tree_size``'s pick."""
        largest = (spec.num_tokens, spec.width, spec.depth)
        if tree_size is None:
            return largest
        picked = tuple(tree_size(steps))
        lows = (2, 1, 1)
        ok = len(picked) == 3 and all(
            lo <= p <= m for p, lo, m in zip(picked, lows, largest, strict=False)
        )
        if not ok:
            raise ValueError(f"tree_size picked {picked}; allowed: {lows} <= each <= {largest}")
        return picked

    @torch.no_grad()
    def score(self, prompt: list[int], tokens: list[int]) -> list[float]:
        """Log-probabilities of ``tokens`` after ``prompt`` under the unbudgeted target."""
        self.check_room(prompt, len(tokens))
        logits_QV = self.target(torch.tensor([prompt + tokens])).logits_BQV[0]
        logprobs_QV = torch.log_softmax(logits_QV[len(prompt) - 1 : -1].float(), dim=-1)
        return logprobs_QV.gather(1, torch.tensor(tokens)[:, None])[:, 0].tolist()

    def verify(
        self,
        tree: DraftTree,
        cache: KVCache,
        budget: VerifyBudget,
        spec: SpecConfig,
        g: torch.Generator,
    ):
        """One target forward over the tree; keep the accepted path in the KV cache.

        Returns ``(path node indices, bonus token, target features of the path [Q, D],
        the repair forward's routing or None)``. With ``spec.repair``, the path's nodes
        from the first one whose routing the budget changed are re-run unbudgeted
        (``repair_chain``) or cut (``rerun_tail``), and the path may end earlier.
        """
        positions_N = cache.length + tree.depth_N
        mask = verify_mask(tree, cache.length)
        result = self.target(tree.tokens_N[None], positions_N, cache, mask, budget)
        path, bonus = accept(tree, result.logits_BQV[0], spec.temperature, g)
        exact = exact_prefix(path, budget.exact_T()) if spec.repair else len(path)
        budget.exact_path = exact if spec.repair else None  # read once; the policy sees it
        path_N = torch.tensor(path[:exact], dtype=torch.long)
        cache.commit(path_N)
        feature_QD = result.feature_BQD[0, path_N]
        if exact == len(path):
            return path, bonus, feature_QD, None
        if not rerun_tail(len(path), exact, spec.repair_min_tokens):
            return path[:exact], int(tree.tokens_N[path[exact]]), feature_QD, None
        kept, bonus, chain_feature_QD, routing = self.repair_chain(
            tree.tokens_N[path[exact:]], cache, spec.temperature, g
        )
        feature_QD = torch.cat((feature_QD, chain_feature_QD))
        return path[: exact + kept], bonus, feature_QD, routing

    def repair_chain(
        self, tokens_Q: torch.Tensor, cache: KVCache, temperature: float, g: torch.Generator
    ):
        """Run ``tokens_Q`` (its first already accepted) unbudgeted after the cache; decide again.

        Returns ``(tokens kept, bonus token, their features [kept, D], the forward's routing)``.
        """
        # Policy "none" with B=E changes nothing; the record keeps the routing for the stats.
        routing = VerifyBudget(get_policy("none"), self.config.n_experts)
        result = self.target(tokens_Q[None], cache=cache, verify=routing)
        kept, bonus = accept_chain(tokens_Q, result.logits_BQV[0], temperature, g)
        cache.advance(kept)
        return kept, bonus, result.feature_BQD[0, :kept], routing

    def draft_catch_up_on(
        self,
        unseen: tuple[list[int], list[torch.Tensor], int],
        cache: KVCache,
        policy: Policy,
        before_D: torch.Tensor | None,
    ) -> torch.Tensor:
        """The draft reads the pairs it has not seen (tokens, their features ``[Q_i, D]``,
        and how many of the last tokens are plain decodes; ``before_D``: its feature before
        them, None before any); its guesses at the decoded tokens (the rest: a tree's path
        or a prompt) go to ``policy.draft_matched``. Returns its last feature ``[D]``."""
        tokens, feature_QD, decoded = unseen
        if not policy.wants_guesses:  # no LM head over them
            decoded = 0
        guesses = min(decoded, len(tokens) - 1)  # the first token's guess came before them
        root_feature_D, next_Q = self.draft_read(torch.cat(feature_QD), tokens, cache, guesses)
        guessed = next_Q[:-1]
        if guesses < decoded and before_D is not None:
            guessed.insert(0, int(self.target.lm_head(before_D).argmax()))
        if guessed:
            policy.draft_matched(draft_matches(guessed, tokens[len(tokens) - len(guessed) :]))
        return root_feature_D

    def draft_catch_up(self, feature_QD: torch.Tensor, next_tokens: list[int], cache: KVCache):
        """Feed (target feature, next token) pairs to the draft; return its last feature ``[D]``."""
        return self.draft_read(feature_QD, next_tokens, cache)[0]

    def draft_read(
        self, feature_QD: torch.Tensor, next_tokens: list[int], cache: KVCache, guesses: int = 0
    ) -> tuple[torch.Tensor, list[int]]:
        """:meth:`draft_catch_up`, and the draft's most likely next token after each of the
        last ``guesses`` + 1 pairs (none for 0)."""
        out_BQD = self.draft(
            self.target, feature_QD[None], torch.tensor([next_tokens]), cache=cache
        )
        cache.advance(len(next_tokens))
        if not guesses:
            return out_BQD[0, -1], []
        return out_BQD[0, -1], self.target.lm_head(out_BQD[0, -guesses - 1 :]).argmax(-1).tolist()


def live_policy(
    spec: SpecConfig, policy: Policy | None, dims: tuple[int, int, int, int], device
) -> Policy:
    """The policy of a new generation: ``policy`` if given (it must be ``spec.policy``),
    else a fresh ``spec.policy``; told that a request starts (a live one learns the new text
    from here) and prepared for ``dims`` (MoE layers, experts, top-k, budget) on ``device``
    before the first plan, which may come before any verify."""
    if policy is None:
        policy = get_policy(spec.policy, **spec.policy_options)
    elif policy.name != spec.policy:
        raise ValueError(f"the policy instance is {policy.name!r}; spec.policy is {spec.policy!r}")
    if spec.budget is None and policy.name != "none" and not policy.adaptive:
        raise ValueError(  # it would keep every expert, under a budgeting policy's name
            f"policy {spec.policy!r} needs a budget: SpecConfig(budget=B), B distinct experts "
            "per MoE layer, at least the model's top-k; without one use policy='none' (or "
            "'auto', which picks its own)"
        )
    policy.model_check(*dims[:3])
    policy.start_request()
    policy.prepare(*dims, device)
    return policy


def draft_matches(predicted: list[int], tokens: list[int]) -> list[bool]:
    """Per token, whether the draft's most likely next token before it (``predicted``, as
    long as ``tokens``) was it: the teacher-forced first draft of a chain rooted there."""
    return [p == t for p, t in zip(predicted, tokens, strict=True)]


def timed(report: Callable[[int, float], None], tokens: int, run: Callable[..., R], *args) -> R:
    """``run(*args)``, a forward of ``tokens`` tokens (ending in a host read where the
    device runs ahead), its wall time reported as ``report(tokens, seconds)``: the prompt's
    to ``Policy.prefilled``, the draft's catch-up to ``Policy.draft_caught_up``."""
    start = time.perf_counter()
    out = run(*args)
    report(tokens, time.perf_counter() - start)
    return out


def plan_step(policy, spec: SpecConfig, steps: list[StepStats], tree_size) -> StepPlan:
    """The next step: the policy's plan (a planning policy such as ``auto``), else the
    configured tree or ``tree_size``'s pick. A planned tree must fit the configured one."""
    largest = (spec.num_tokens, spec.width, spec.depth)
    plan = policy.plan_step(largest, spec.repair)
    if plan is None:
        return StepPlan(TREE, *Engine.pick_tree(spec, steps, tree_size))
    if tree_size is not None:
        raise ValueError(f"policy {policy.name!r} plans its own steps; it takes no tree_size")
    if plan.kind == TREE and not all(p <= m for p, m in zip(plan.tree, largest, strict=True)):
        raise ValueError(f"policy {policy.name!r} planned tree {plan.tree}; allowed: <= {largest}")
    return plan


def gate_step(policy, plan: StepPlan, root_logprobs_V: torch.Tensor) -> StepPlan:
    """Before growing ``plan``'s tree: ``plan``, or a decode of the root alone when the
    policy's gate finds the draft's first level (the root's ``plan.width`` most likely
    children) too unsure to pay for the tree. A gated step is priced as the one draft
    forward it ran (the catch-up that gave the first level) and a decode."""
    reason = policy.gate(root_logprobs_V.topk(plan.width).values)
    if reason is None:
        return plan
    return StepPlan(AUTOREGRESSIVE, 1, 1, 1, reason)


def run_decodes(
    plan: StepPlan,
    decode: Callable[[int], tuple[int, torch.Tensor]],
    out: list[int],
    pending: tuple[list[int], list[torch.Tensor]],
    max_new_tokens: int,
    is_end: Callable[[int], bool],
) -> int:
    """Append the plan's plain decodes to ``out``, stopping early at ``max_new_tokens`` or
    an end token; how many ran. ``decode(last token)`` gives the next token and the last
    token's feature ``[1, D]``; both go to ``pending`` (tokens, features), the pairs the
    draft catches up on before its next tree."""
    ran = 0
    while ran < plan.steps and len(out) < max_new_tokens and not is_end(out[-1]):
        token, feature_1D = decode(out[-1])
        out.append(token)
        pending[0].append(token)
        pending[1].append(feature_1D)
        ran += 1
    return ran


def autoregressive_stats(plan: StepPlan, n_experts: int, top_k: int, n_layers: int) -> StepStats:
    """A guard's autoregressive step: one token committed, its own top-k read per layer;
    ``plan``'s width and depth are the draft forwards it ran (the gate's: 1 and 1; else 0)."""
    read_L = [min(top_k, n_experts)] * n_layers
    return StepStats(
        1,
        read_L,
        read_L,
        read_L,
        1,
        plan.width,
        plan.depth,
        guard=plan.kind,
        reason=plan.reason,
        ranked=False,
    )


def decode_stats(
    plan: StepPlan, ran: int, n_experts: int, top_k: int, n_layers: int
) -> list[StepStats]:
    """The ``ran`` decodes of an autoregressive ``plan``; with ``plan.read`` the last also
    ran the draft forward that read them (priced as one draft forward: width and depth 1)."""
    stats = [autoregressive_stats(plan, n_experts, top_k, n_layers)] * ran
    if plan.read and ran:
        stats[-1] = replace(stats[-1], width=1, depth=1)
    return stats


def sample(logits_V: torch.Tensor, temperature: float, g: torch.Generator) -> int:
    """Argmax at temperature 0, else a draw from ``softmax(logits / temperature)``."""
    if temperature == 0:
        return int(logits_V.argmax())
    return int(torch.multinomial(torch.softmax(logits_V / temperature, dim=-1), 1, generator=g))
