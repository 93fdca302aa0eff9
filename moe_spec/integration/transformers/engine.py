"""Speculative decoding with a transformers MoE target: the reference engine's interface.

Shape legend: N tree tokens, P prompt tokens, V vocabulary, L MoE layers.

One step mirrors ``moe_spec.engine.generate.Engine``: the draft (a causal LM or an
engine-format EAGLE head) grows a tree
below the root (the last target token); the target runs the tree in one
forward with the tree mask and positions ``prefix + depth``, its MoE blocks
budgeted by the policy (the only budgeted forward); the greedy or sampling
rule picks the path and a bonus token; both KV caches keep only committed
tokens. Prefill, autoregressive decoding and the draft run the models' own code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from moe_spec.budget import check_budget
from moe_spec.control.steps import AUTOREGRESSIVE, TREE, StepOutcome
from moe_spec.engine.attention import KVCache
from moe_spec.engine.generate import (
    Engine,
    GenerationResult,
    SpecConfig,
    StepStats,
    decode_stats,
    draft_matches,
    gate_step,
    live_policy,
    plan_step,
    run_decodes,
    sample,
    timed,
)
from moe_spec.engine.model import distinct_per_layer
from moe_spec.engine.tree import DraftTree
from moe_spec.engine.verify import accept, accept_chain, exact_prefix, rerun_tail
from moe_spec.integration.transformers.adapter import (
    VerifyRouting,
    budgeted_verify,
    find_moe_blocks,
)
from moe_spec.integration.transformers.draft import CausalLMDraft, context_limit
from moe_spec.integration.transformers.eagle import (
    EagleHeadDraft,
    FeatureRecorder,
    capture_features,
)
from moe_spec.integration.transformers.tree import (
    check_tree_attention,
    crop_to,
    keep_path,
    new_cache,
    run_tree,
)
from moe_spec.policies import Policy, get_policy


@dataclass(frozen=True)
class MoEShape:
    """The target's MoE shape, under the names ``moe_spec.engine.config.ModelConfig`` uses."""

    n_layers: int  # MoE layers (dense layers are not counted)
    n_experts: int
    top_k: int
    dim: int
    expert_dim: int


def moe_shape(model, blocks) -> MoEShape:
    E, D = blocks[0].num_experts, model.config.hidden_size
    expert_dim = blocks[0].experts.down_proj.numel() // (E * D)  # [E, D, F] or [E, F, D]
    return MoEShape(len(blocks), E, blocks[0].top_k, D, expert_dim)


TreeSize = Callable[[list[StepStats]], tuple[int, int, int]]


def eos_ids(model) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])}


def check_draft_vocab(draft_config, target_config) -> None:
    """A draft LM's vocabulary must not be larger than the target's (a shared tokenizer)."""
    if draft_config.vocab_size > target_config.vocab_size:
        raise ValueError(
            f"draft vocab_size={draft_config.vocab_size} exceeds the target's "
            f"{target_config.vocab_size}: the draft must share the target's tokenizer"
        )


def causal_lm_draft(target, draft) -> CausalLMDraft:
    check_draft_vocab(draft.config, target.config)
    return CausalLMDraft(draft.eval())


class TransformersEngine:
    """A transformers MoE target, a draft and a tokenizer, ready to generate (batch 1).

    ``draft`` is a transformers causal LM sharing the target's tokenizer, or an
    :class:`EagleHeadDraft` (an engine-format EAGLE head built for this target).
    """

    supports_repair = True  # SpecConfig.repair

    def __init__(self, target, draft, tokenizer, max_len: int | None = None) -> None:
        check_tree_attention(target)
        blocks = find_moe_blocks(target)
        self.target, self.tokenizer = target.eval(), tokenizer
        if isinstance(draft, EagleHeadDraft):
            if draft.out is not target.get_output_embeddings():
                raise ValueError("the EagleHeadDraft was built for another target model")
            self.draft = draft
        else:
            self.draft = causal_lm_draft(target, draft)
        self.config = moe_shape(target, blocks)
        self.n_experts, self.top_k = self.config.n_experts, self.config.top_k
        self.n_moe_layers = self.config.n_layers
        limit = min(context_limit(target.config), self.draft.context_limit)
        if max_len is not None and not 2 <= max_len <= limit:
            raise ValueError(
                f"max_len is {max_len}; allowed: 2 to {limit}, the positions both models take"
            )
        self.max_len = max_len or limit
        self.vocab_size = target.get_input_embeddings().num_embeddings  # token ids it reads
        self.eos = eos_ids(target)
        self.eot = min(self.eos) if self.eos else -1

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    check_room = Engine.check_room  # prompt + new tokens (+ tree scratch) must fit max_len

    @staticmethod
    def tree_scratch(spec: SpecConfig) -> int:
        """Positions a speculative step needs past the prompt and the new tokens."""
        return spec.num_tokens + spec.depth + 1

    def forward_last(self, tokens: list[int], cache: DynamicCache) -> torch.Tensor:
        """Plain causal forward of ``tokens`` after the cache: fp32 logits ``[V]`` of the last."""
        ids = torch.tensor([tokens], device=self.target.device)
        out = self.target(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].float().cpu()

    # Prefill, then one plain target forward per token (the engine's loop, this model's hooks).
    generate_autoregressive = Engine.generate_autoregressive

    def start_decoding(self, prompt: list[int]):
        """Prefill a fresh cache: the last logits ``[V]`` and ``next_logits(token) -> [V]``."""
        cache = new_cache()
        return self.forward_last(prompt, cache), lambda token: self.forward_last([token], cache)

    def is_end(self, token: int) -> bool:
        return token in self.eos

    trim = Engine.trim

    @torch.no_grad()
    def generate_speculative(
        self,
        prompt: list[int],
        max_new_tokens: int,
        spec: SpecConfig,
        seed: int = 0,
        tree_size: TreeSize | None = None,
        policy: Policy | None = None,
    ) -> GenerationResult:
        """Tree speculative decoding; the verify forward is budgeted by ``spec.policy``.

        ``tree_size``, if given, picks ``(num_tokens, width, depth)`` before every step
        from the steps so far (each at most ``spec``'s); otherwise ``spec``'s tree is used.
        ``policy``: a live instance of ``spec.policy`` (see ``Engine.generate_speculative``).
        """
        self.check_room(prompt, max_new_tokens, extra=self.tree_scratch(spec))
        E = self.n_experts
        budget = E if spec.budget is None else check_budget(spec.budget, self.top_k, E)
        dims = (self.n_moe_layers, E, self.top_k, budget)
        policy = live_policy(spec, policy, dims, self.target.device)
        # the hot path reads nothing on the host per layer; the first verify of a generation
        # runs every value check, and each one the kept-set sizes after it (verify)
        policy.validate = False
        checked = False
        g = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        with capture_features(self.target) as features:
            draft_room = len(prompt) + max_new_tokens + spec.depth + 1 + spec.width * spec.depth
            tcache, dcache = new_cache(), self.draft.new_cache(draft_room)
            root = timed(  # the host reads the token: the forward has run
                policy.prefilled,
                len(prompt),
                lambda: sample(self.forward_last(prompt, tcache), spec.temperature, g),
            )
            out, steps = [root], []
            # the draft reads the prompt before the first tree (a guard may decode to the end)
            draft_start, root_state = (prompt, root, features.last_BSD[0]), None
            pending_QD, pending = [], []  # the guard's decoded pairs the draft has not seen

            def read_unseen(report: Callable[[int, float], None]) -> None:
                """The draft reads the prompt and decodes it has not seen (``report``: the
                tokens and the seconds); its guesses at the decodes go to the policy."""
                nonlocal draft_start, pending_QD, pending, root_state
                unseen = len(pending) + (0 if draft_start is None else len(prompt))
                root_state, matched = timed(
                    report,
                    unseen,
                    self.catch_up,
                    dcache,
                    draft_start,
                    pending,
                    pending_QD,
                    root_state,
                    policy.wants_guesses,
                )
                draft_start, pending_QD, pending = None, [], []
                if matched:
                    policy.draft_matched(matched)

            while len(out) < max_new_tokens and not self.is_end(out[-1]):
                plan = plan_step(policy, spec, steps, tree_size)
                num_tokens, width, depth = plan.tree
                if plan.kind == TREE:
                    if draft_start is not None or pending:  # what the draft has not read
                        read_unseen(policy.draft_caught_up)
                    first_V = self.draft.first_level(root_state)
                    plan = gate_step(policy, plan, first_V)
                if plan.kind == AUTOREGRESSIVE:  # the guard's or the gate's: plain forwards
                    ran = run_decodes(
                        plan,
                        lambda token: self.decode_step(
                            token, tcache, spec.temperature, g, features
                        ),
                        out,
                        (pending, pending_QD),
                        max_new_tokens,
                        self.is_end,
                    )
                    root = out[-1]
                    steps += decode_stats(plan, ran, E, self.top_k, self.n_moe_layers)
                    if plan.read and ran:  # timed as the decodes' (their outcome's)
                        read_unseen(lambda _tokens, _seconds: None)
                    policy.observe(StepOutcome(AUTOREGRESSIVE, [0], tree=plan.tree, steps=ran))
                    continue
                tree = self.draft.grow_tree(
                    dcache, root, root_state, width, depth, num_tokens, first_V
                )
                path, bonus, path_feature_QD, routing, repair = self.verify(
                    tree, tcache, policy, budget, spec, g, features, validate=not checked
                )
                checked = True
                new_tokens = tree.tokens_N[path[1:]].tolist() + [bonus]
                steps.append(
                    StepStats(
                        len(new_tokens),
                        distinct_per_layer(routing.ids_before_LTK, E),
                        routing.distinct_computed_L(),
                        distinct_per_layer(routing.ids_before_LTK, E, torch.tensor(path)),
                        num_tokens,
                        width,
                        depth,
                        0 if repair is None else len(repair.ids_before_LTK[0]),
                        [] if repair is None else repair.distinct_computed_L(),
                        plan.kind if plan.reason else "",
                        plan.reason,
                        routing.ranked,
                        routing.ranked_after,
                    )
                )
                policy.observe(routing.outcome(path, tree.depth_N, tree.logprob_N, plan.tree))
                out.extend(new_tokens)
                root = bonus
                root_state = self.draft.extend(dcache, new_tokens, path_feature_QD)
        return GenerationResult(self.trim(out, max_new_tokens), time.perf_counter() - start, steps)

    def catch_up(
        self,
        cache: KVCache | DynamicCache,
        start: tuple[list[int], int, torch.Tensor] | None,
        tokens: list[int],
        feature_QD: list[torch.Tensor],
        root_state: torch.Tensor | None,
        guesses: bool = False,
    ) -> tuple[torch.Tensor, list[bool]]:
        """The draft reads what it has not seen: the prompt (``start``: prompt, root and
        the prompt's features ``[P, D]``), then the decoded ``tokens`` with their features.
        Returns the root's state and, with ``guesses``, per decoded token whether the
        draft's most likely next token before it was it (``Policy.draft_matched``; else
        none); on the host's clock."""
        if start is not None:
            root_state = self.draft.start(cache, *start)
        matched = []
        if tokens and not guesses:
            root_state = self.draft.extend(cache, tokens, torch.cat(feature_QD))
        elif tokens:
            first = int(self.draft.first_level(root_state).argmax())  # before tokens[0]
            root_state, next_Q = self.draft.read(cache, tokens, torch.cat(feature_QD))
            matched = draft_matches([first, *next_Q[:-1].tolist()], tokens)
        if root_state.is_cuda:
            torch.cuda.synchronize(root_state.device)
        return root_state, matched

    def decode_step(
        self,
        root: int,
        cache: DynamicCache,
        temperature: float,
        g: torch.Generator,
        features: FeatureRecorder,
    ) -> tuple[int, torch.Tensor]:
        """One plain target forward of ``root``: the next token, ``root``'s feature ``[1, D]``."""
        logits_V = self.forward_last([root], cache)
        return sample(logits_V, temperature, g), features.last_BSD[0, -1:]

    @torch.no_grad()
    def score(self, prompt: list[int], tokens: list[int]) -> list[float]:
        """Log-probabilities of ``tokens`` after ``prompt`` under the unbudgeted target."""
        self.check_room(prompt, len(tokens))
        ids = torch.tensor([prompt + tokens], device=self.target.device)
        logits_QV = self.target(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
        logprobs_QV = torch.log_softmax(logits_QV, dim=-1).cpu()
        return logprobs_QV.gather(1, torch.tensor(tokens)[:, None])[:, 0].tolist()

    def verify(
        self,
        tree: DraftTree,
        cache: DynamicCache,
        policy: Policy,
        budget: int,
        spec: SpecConfig,
        g: torch.Generator,
        features: FeatureRecorder,
        validate: bool = False,
    ) -> tuple[list[int], int, torch.Tensor, VerifyRouting, VerifyRouting | None]:
        """One budgeted target forward over the tree; keep the accepted path in the cache.

        Returns ``(path node indices, bonus token, the path's target features [Q, D], the
        forward's routing, the repair forward's routing or None)``; with ``spec.repair`` the
        path's tokens from the first one the budget changed are re-run unbudgeted, as in
        ``Engine.verify``. ``validate``: the policy runs every value check in every layer
        (host reads); either way each layer's kept-set size is checked after the forward.
        """
        prefix, device = cache.get_seq_length(), self.target.device
        depth_T, logprob_T = tree.depth_N.to(device), tree.logprob_N.to(device)
        before, policy.validate = policy.validate, validate or policy.validate
        try:
            with budgeted_verify(
                self.target, policy, budget, spec.mode, depth_T, logprob_T, spec.repair, validate
            ) as routing:
                logits_NV = run_tree(self.target, cache, tree).cpu()
        finally:
            policy.validate = before
        routing.check_kept(self.top_k, self.n_experts)
        path, bonus = accept(tree, logits_NV, spec.temperature, g)
        exact = exact_prefix(path, routing.exact_T()) if spec.repair else len(path)
        routing.exact_path = exact if spec.repair else None  # read once; the policy sees it
        path_N = torch.tensor(path[:exact], dtype=torch.long)
        keep_path(cache, prefix, path_N)
        feature_QD = features.last_BSD[0, path_N.to(device)]  # read before another forward
        if exact == len(path):
            return path, bonus, feature_QD, routing, None
        if not rerun_tail(len(path), exact, spec.repair_min_tokens):
            return path[:exact], int(tree.tokens_N[path[exact]]), feature_QD, routing, None
        kept, bonus, chain_feature_QD, repair = self.repair_chain(
            tree.tokens_N[path[exact:]], cache, spec.temperature, g, features
        )
        feature_QD = torch.cat((feature_QD, chain_feature_QD))
        return path[: exact + kept], bonus, feature_QD, routing, repair

    def repair_chain(
        self,
        tokens_Q: torch.Tensor,
        cache: DynamicCache,
        temperature: float,
        g: torch.Generator,
        features: FeatureRecorder,
    ):
        """Run ``tokens_Q`` (its first already accepted) unbudgeted after the cache; decide again.

        Returns ``(tokens kept, bonus token, their features [kept, D], the forward's routing)``.
        """
        prefix = cache.get_seq_length()
        ids = tokens_Q[None].to(self.target.device)
        with budgeted_verify(self.target, get_policy("none"), self.n_experts) as routing:
            out = self.target(input_ids=ids, past_key_values=cache, use_cache=True)
        kept, bonus = accept_chain(tokens_Q, out.logits[0].float().cpu(), temperature, g)
        crop_to(cache, prefix + kept)
        return kept, bonus, features.last_BSD[0, :kept], routing
