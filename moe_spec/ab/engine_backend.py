"""The ``engine`` backend: any object with ``moe_spec.engine.generate.Engine``'s interface.

It needs ``config`` (``n_layers``, ``n_experts``, ``top_k``, ``dim``, ``expert_dim``),
``encode``, ``generate_autoregressive``, ``generate_speculative`` (whose results
carry ``tokens``, ``seconds`` and ``steps`` of ``StepStats``), and optionally
``score(prompt, tokens) -> log-probs`` (target log-probabilities of the text)
and the ``tree_size=`` argument of ``generate_speculative`` (the depth-width baseline).
"""

from __future__ import annotations

import inspect

from moe_spec.ab.configs import BASELINES, RunConfig
from moe_spec.ab.depth_width import DepthWidthController
from moe_spec.ab.records import RunRecord, Step
from moe_spec.budget import check_budget
from moe_spec.control import candidate_trees
from moe_spec.costmodel import CostModel, ModelShape
from moe_spec.policies import get_policy

BYTES_PER_PARAM = 2
TREE_KEYS = {"num_tokens": "tokens", "width": "width", "depth": "depth"}  # a config's keys


class EngineBackend:
    name = "engine"

    def __init__(self, engine, cost: CostModel, shape: ModelShape) -> None:
        self.engine, self.cost, self.shape = engine, cost, shape  # the depth-width controller's
        self.ids: dict[str, list[int]] = {}

    def model_info(self) -> dict:
        cfg = self.engine.config
        return {
            "n_layers": cfg.n_layers,
            "n_experts": cfg.n_experts,
            "top_k": cfg.top_k,
            "expert_bytes": 3 * cfg.dim * cfg.expert_dim * BYTES_PER_PARAM,
        }

    def check(self, configs: list[RunConfig]) -> None:
        """Unknown policies, budgets out of range and unsupported baselines fail before work."""
        cfg = self.engine.config
        for c in configs:
            if c.budget is not None or c.policy not in BASELINES:
                get_policy(c.policy, **c.options)
            if c.budget is not None:
                try:
                    check_budget(c.budget, cfg.top_k, cfg.n_experts)
                except ValueError as exc:
                    raise ValueError(f"{c.label}: {exc}") from None
            if c.repair and not getattr(self.engine, "supports_repair", False):
                raise ValueError(
                    f"{c.label}: repair needs an engine that can re-run a path unbudgeted; "
                    f"{type(self.engine).__name__} cannot (the reference engine can)"
                )
            if c.kind == "depth-width":
                params = inspect.signature(self.engine.generate_speculative).parameters
                if "tree_size" not in params:
                    raise ValueError(
                        "the depth-width baseline needs an engine whose generate_speculative "
                        "takes tree_size= (choose the tree per step); this engine does not"
                    )

    def encoded(self, prompt: str) -> list[int]:
        """``prompt``'s token ids, encoded once."""
        if prompt not in self.ids:
            self.ids[prompt] = self.engine.encode(prompt)
        return self.ids[prompt]

    def check_room(self, configs: list[RunConfig], prompts: list[str], max_new: int) -> None:
        """Refuse, before any run, an arm that does not fit the model's context beside the
        longest prompt, naming the arm and the prompt (from 1). Engines without
        ``tree_scratch`` and ``max_len`` are not checked."""
        if not prompts or not all(hasattr(self.engine, a) for a in ("tree_scratch", "max_len")):
            return
        n, ids = max(enumerate(map(self.encoded, prompts), 1), key=lambda p: len(p[1]))
        for c in configs:
            try:
                self.check_arm_room(c, ids, max_new)
            except ValueError as exc:
                raise ValueError(f"{c.label}: prompt {n}: {exc}") from None

    def check_arm_room(self, config: RunConfig, ids: list[int], max_new: int) -> None:
        """Whether the prompt ``ids``, ``max_new`` tokens and ``config``'s tree (none for an
        autoregressive arm) fit; the refusal names what to lower and its largest value."""
        from moe_spec.cli import check_tree_room  # not at the top: the CLI imports moe_spec.ab

        if config.kind != "autoregressive":
            return check_tree_room(self.engine, ids, max_new, config.spec(), TREE_KEYS)
        max_len = self.engine.max_len
        where = f"the {len(ids)}-token prompt and the new tokens must fit the model's {max_len}"
        if len(ids) >= max_len:
            raise ValueError(f"{where} positions; allowed: prompts of at most {max_len - 1} tokens")
        if max_new > max_len - len(ids):
            raise ValueError(
                f"--max-new-tokens is {max_new}; allowed here: at most {max_len - len(ids)} "
                f"({where} positions)"
            )

    def run(self, config: RunConfig, index: int, prompt: str, seed: int, max_new: int):
        ids = self.encoded(prompt)
        if config.kind == "autoregressive":
            result = self.engine.generate_autoregressive(ids, max_new, config.temperature, seed)
        elif config.kind == "depth-width":
            cfg = self.engine.config
            trees = candidate_trees(config.num_tokens, config.width, config.depth)
            pick = DepthWidthController(self.cost, self.shape, cfg.top_k, cfg.n_experts, trees)
            result = self.engine.generate_speculative(
                ids, max_new, config.spec(), seed=seed, tree_size=pick
            )
        else:
            result = self.engine.generate_speculative(ids, max_new, config.spec(), seed=seed)
        steps = [
            Step(
                s.committed,
                s.num_tokens or config.num_tokens,
                s.width if s.guard else s.width or config.width,  # a guard's decode: 0
                s.depth if s.guard else s.depth or config.depth,
                list(s.distinct_before_L),
                list(s.distinct_after_L),
                list(s.distinct_path_L),
                s.repair_tokens,
                list(s.distinct_repair_L),
                s.guard,
                s.reason,
                s.ranked,
                s.ranked_after,
            )
            for s in result.steps
        ]
        logprobs = None
        if hasattr(self.engine, "score") and result.tokens:
            logprobs = float(sum(self.engine.score(ids, list(result.tokens))))
        verify_ct = len(steps) if config.kind != "autoregressive" else None
        return RunRecord(
            config.label,
            index,
            seed,
            list(result.tokens),
            result.seconds,
            steps,
            verify_ct,
            logprobs,
        )
