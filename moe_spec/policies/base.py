"""The policy interface: rank a layer's experts, keep at most B of them.

Shape legend: T tokens, E experts, K top-k, B budget (see ``moe_spec.routing``).

A policy subclasses :class:`Policy`, names itself, and implements
:meth:`Policy.score` (one number per expert, higher is more important). The
default :meth:`Policy.keep` keeps the B best-scored experts; a policy that wants
a different kept set (a budget that varies by layer, say) overrides ``keep``.
Both run inside the verify forward: use tensor operations only, no ``.item()``
and no branches on tensor values, so they stay CUDA-graph and
``torch.compile`` safe.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, ClassVar

import torch

from moe_spec.budget import (
    BudgetedTopK,
    Mode,
    apply_budget,
    check_budget,
    check_mode,
    reroute,
    select_kept,
    validation_enabled,
    with_masked_rows,
    without_masked_rows,
)
from moe_spec.kernels.budget_select_torch import ScoreRule
from moe_spec.kernels.dispatch import choose_backend
from moe_spec.routing import RoutingRecord, check_values

if TYPE_CHECKING:
    from moe_spec.control.steps import StepOutcome, StepPlan


class PolicyError(ValueError):
    """A policy is unknown, misconfigured, or returned something malformed."""


class Policy:
    """Base class of budgeting policies.

    Subclasses set ``name`` (lower-case, dashes) and ``description`` (one line)
    and accept their options as keyword arguments of ``__init__``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: Where the policy came from; set by the registry ("built-in" or a package), and
    #: "unregistered" on an instance made from its class directly (a plugin's own tests).
    origin: str = "unregistered"
    #: Value checks (NaN scores, kept-set size; they read tensors on the host):
    #: None runs them outside torch.compile and CUDA-graph capture; a server's
    #: eager hot path sets False.
    validate: bool | None = None
    #: An adaptive policy picks its own per-layer budget (at most the call's B) and is
    #: consulted even when B >= E; it may also plan each step (:meth:`plan_step`).
    adaptive: ClassVar[bool] = False
    #: An adaptive policy that neither ranks nor budgets the current step (all its budgets
    #: are at least E): the verify then runs as if unbudgeted, without calling it.
    resting: bool = False
    #: A resting step the policy still learns from: the engines keep each MoE layer's
    #: :class:`RoutingRecord` (``StepOutcome.routing_L``) and it ranks them after the forward.
    ranking_after: bool = False
    #: Why the fused selection kernel could not run here (its first error), after which
    #: :meth:`apply` takes the torch path; None while it runs.
    fused_error: str | None = None

    #: Whether :meth:`draft_matched` is to be told the draft's guesses at decoded tokens
    #: (the engines then run the draft's LM head over them).
    wants_guesses: bool = False
    #: Whether a server's plain decode (a verify of one token per request: SGLang's
    #: depth-0 step on an adaptive chain) goes through the policy. False where the policy
    #: rests there anyway: SGLang's plugin then leaves those forwards, captured graphs
    #: included, without a selection (the engines never call a policy on a decode).
    budgets_plain_decodes: ClassVar[bool] = True

    def __init__(self, **options: object) -> None:
        if options:
            raise PolicyError(
                f"policy {self.name!r} takes no options; got {', '.join(sorted(options))}"
            )

    def score(self, record: RoutingRecord) -> torch.Tensor:
        """float ``[E]``: importance of each expert for this verify pass."""
        raise NotImplementedError(f"policy {self.name!r} must implement score() or keep()")

    def keep(self, record: RoutingRecord, budget: int) -> torch.Tensor | None:
        """bool ``[E]``: experts to keep (at most ``budget``), or None for no budget."""
        scores_E = self.checked_scores(record)
        return select_kept(scores_E, budget, record.used_E())

    def check_model(self, num_layers: int, num_experts: int, top_k: int) -> None:
        """Refuse (``PolicyError``) options that do not fit the model: called before any
        verify, by the engines and by a server as it loads (default: every model fits)."""
        return None

    def model_check(self, num_layers: int, num_experts: int, top_k: int) -> None:
        """:meth:`check_model` as the engines and servers call it: whatever it raises becomes
        a :class:`PolicyError` that names this policy and its plugin (a plugin's bug, a
        ``KeyError``, is not a raw traceback; its own ``PolicyError`` gets the same prefix).
        Called before a generation or a server's first forward, never in a compiled graph."""
        try:
            self.check_model(num_layers, num_experts, top_k)
        except PolicyError as exc:
            if str(exc).startswith(f"policy {self.name!r}"):
                raise
            raise self.error(str(exc)) from exc
        except Exception as exc:
            raise self.raised("check_model()", exc) from exc

    def prepare(
        self, num_layers: int, num_experts: int, top_k: int, cap: int, device: torch.device
    ) -> None:
        """Create any device state before a server captures graphs (default: none)."""
        return None

    def plan_step(self, tree: tuple[int, int, int], repair: bool) -> StepPlan | None:
        """Before a speculative step: the step to run, or None for the configured tree.

        ``tree`` is the configured ``(num_tokens, width, depth)``, the largest allowed;
        ``repair`` whether the engine re-runs what the budget changed. Called outside
        the forward; a planning policy updates its device state here.
        """
        return None

    def start_request(self) -> None:
        """Before the first step of a new request (a new generation); outside the forward."""
        return None

    def prefilled(self, tokens: int, seconds: float) -> None:
        """After the prompt's forward: its ``tokens`` and wall ``seconds`` (engines whose own
        speed is measured report it; a server does not); outside the forward."""
        return None

    def draft_caught_up(self, tokens: int, seconds: float) -> None:
        """After the draft read ``tokens`` tokens it had not seen (a prompt, decoded tokens,
        an accepted path) before a planned tree, in wall ``seconds``; outside the forward."""
        return None

    def draft_matched(self, matched: list[bool]) -> None:
        """With :attr:`wants_guesses`, after the draft read decoded tokens (plain decodes a
        planning policy chose; before a planned tree, or after decodes planned with
        ``StepPlan.read``): ``matched[i]``, whether its most likely next token before the i-th
        was that token (the teacher-forced first draft); outside the forward."""
        return None

    def gate(self, logprob_W: torch.Tensor) -> str | None:
        """Before growing a planned tree: None to grow and verify it, or why to decode the
        root alone instead (default: always grow). ``logprob_W``: float ``[W]``, the
        draft's log-probabilities of the root's ``width`` most likely children."""
        return None

    def observe(self, outcome: StepOutcome) -> None:
        """After a step's acceptance: what was committed (outside the forward)."""
        return None

    def fused_rule(self, record: RoutingRecord) -> ScoreRule | None:
        """:meth:`score` as a rule the fused budget-selection kernel computes, or None.

        When not None and the kernels run on Triton (CUDA, or forced with
        ``MOE_SPEC_KERNELS=triton``), :meth:`apply` scores, keeps and re-routes in
        two kernel launches instead of :meth:`keep` + :func:`apply_budget`. ``record``
        is :meth:`apply`'s, masked rows included (the kernel skips them).
        """
        return None

    def apply(
        self,
        record: RoutingRecord,
        budget: int,
        *,
        mode: Mode = "substitution",
    ) -> BudgetedTopK:
        """Budget one layer's routing: :meth:`keep`, checked, then :func:`apply_budget`.

        A record with :attr:`~RoutingRecord.masked_rows` hands its masked rows back as they
        came; :meth:`keep` and :meth:`score` never see them (the fused kernel skips them
        itself). Value checks follow :attr:`validate` (default: eager mode only).
        """
        check_mode(mode)
        budget = check_budget(budget, record.top_k, record.num_experts)
        validating = validation_enabled(record.topk_ids_TK, self.validate)
        if validating:
            check_values(without_masked_rows(record)[0])
        budgeting = budget < record.num_experts or self.adaptive
        fusable = record.scoring != "sparsemixer"  # the kernel has no sparsemixer rule
        fused = self.fused_error is None and budgeting and fusable
        if fused and choose_backend(record.router_logits_TE.device) == "triton":
            # the kernel skips masked rows itself: no ops around it
            rule = self.guarded("fused_rule()", self.fused_rule, record)
            out = None if rule is None else self.try_fused(record, budget, rule, mode, validating)
            if out is not None:
                return out
        unmasked, routed_T = without_masked_rows(record)
        budgeted = self.apply_torch(unmasked, budget, mode, budgeting, validating)
        return with_masked_rows(budgeted, record, routed_T)

    def apply_torch(
        self, record: RoutingRecord, budget: int, mode: Mode, budgeting: bool, validating: bool
    ) -> BudgetedTopK:
        """:meth:`apply`'s torch path (a record without masked rows): :meth:`keep`, checked,
        then the rewrite."""
        keep = self.guarded("keep()", self.keep, record, budget) if budgeting else None
        if keep is None:
            return apply_budget(record, record.num_experts, mode=mode, validate=False)
        keep_E = self.checked_keep(keep, record, budget, validating)
        if budget >= record.num_experts:  # an adaptive policy's own budgets, up to E
            return reroute(record, keep_E, mode)
        return apply_budget(record, budget, keep_E, mode=mode, validate=False)

    def try_fused(
        self, record: RoutingRecord, budget: int, rule: ScoreRule, mode: Mode, validating: bool
    ) -> BudgetedTopK | None:
        """:meth:`apply_fused`, or None where the kernel cannot run here (Triton cannot build
        or launch it on this device): then :attr:`fused_error` is set, one warning says so
        and :meth:`apply` takes the torch path from then on, so a server keeps serving. The
        policy's own errors (:class:`PolicyError`) are raised."""
        return self.try_kernel(self.apply_fused, record, budget, rule, mode, validating)

    def try_kernel(self, kernel, *args, what: str = "budget-selection"):
        """``kernel(*args)`` (a Triton path), or None where it cannot run here: then
        :attr:`fused_error` is set (every Triton path of this policy then leaves the work
        to torch, so its selections and rankings stay alike) and one warning names
        ``what`` failed (:meth:`try_fused`)."""
        if torch.compiler.is_compiling():
            return kernel(*args)
        try:
            return kernel(*args)
        except PolicyError:
            raise
        except Exception as exc:
            self.fused_error = repr(exc)
            warnings.warn(
                f"policy {self.name!r}: the fused {what} kernel failed ({exc!r}); "
                "this policy uses its torch path from now on (same selection, more device ops)",
                RuntimeWarning,
                stacklevel=4,
            )
            return None

    def guarded(self, what: str, method, *args):
        """``method(*args)``; an exception it raises becomes a PolicyError naming the plugin.

        Under ``torch.compile`` the call is made plainly (no try block in the graph).
        """
        if torch.compiler.is_compiling():
            return method(*args)
        try:
            return method(*args)
        except PolicyError:
            raise
        except Exception as exc:
            raise self.raised(what, exc) from exc

    def raised(self, what: str, exc: Exception) -> PolicyError:
        """The :class:`PolicyError` for ``exc`` raised in ``what`` (a method of this policy),
        at the plugin's own file and line where its code raised."""
        from moe_spec.policies.registry import plugin_line  # (it imports this module)

        line = plugin_line(exc)  # a plugin's own frame (None: moe_spec's code raised)
        at = "" if line is None else f" at {line[0]}:{line[1]}"
        return self.error(f"{what} raised {exc!r}{at}")

    def apply_fused(
        self,
        record: RoutingRecord,
        budget: int,
        rule: ScoreRule,
        mode: Mode,
        validating: bool,
        **device_args: torch.Tensor,
    ) -> BudgetedTopK:
        """Score, keep and re-route with the Triton budget-selection kernel (two launches);
        ``device_args``: :func:`~moe_spec.kernels.budget_select_triton.select_budget_triton`'s
        ``limit_1`` and ``rank_E``."""
        from moe_spec.kernels.budget_select_triton import select_budget_triton

        budgeted, scores_E = select_budget_triton(record, budget, rule, mode, **device_args)
        if validating and not bool(torch.isfinite(scores_E).all()):
            raise self.error(f"score() returned NaN or inf: {scores_E.tolist()[:8]}...")
        return budgeted

    def checked_keep(
        self, keep: torch.Tensor, record: RoutingRecord, budget: int, check_values: bool
    ) -> torch.Tensor:
        """``keep()``'s answer as a bool ``[E]`` mask; malformed answers name the plugin."""
        E = record.num_experts
        if not isinstance(keep, torch.Tensor):
            raise self.error(
                f"keep() returned a {type(keep).__name__}; allowed: a bool tensor [E] (the kept "
                "mask), an integer tensor of expert ids, or None (no budget)"
            )
        if keep.dtype == torch.bool:
            if tuple(keep.shape) != (E,):
                raise self.error(
                    f"keep() returned a mask of shape {tuple(keep.shape)}; expected [E={E}]"
                )
            keep_E = keep
        elif not keep.is_floating_point() and keep.dim() == 1:  # expert ids
            if check_values and bool(((keep < 0) | (keep >= E)).any()):
                raise self.error(
                    f"keep() returned expert ids {keep.tolist()}; ids must be in [0, E={E})"
                )
            keep_E = torch.zeros(E, dtype=torch.bool, device=keep.device)
            keep_E = keep_E.scatter(0, keep.long(), True)
        else:
            raise self.error(
                f"keep() returned {keep.dtype} of shape {tuple(keep.shape)}; expected a bool "
                f"mask [E={E}] or 1-D integer expert ids"
            )
        if check_values:
            K = record.top_k
            if keep.dtype != torch.bool and keep.numel() != keep.unique().numel():
                mask = keep.numel() == E and bool(((keep == 0) | (keep == 1)).all())
                hint = " (a 0/1 mask? return it as bool: keep_E.bool())" if mask else ""
                raise self.error(
                    f"keep() returned expert ids {keep.tolist()} with repeats; each id once{hint}"
                )
            kept = int(keep_E.sum())
            if not min(K, E) <= kept <= budget:
                raise self.error(
                    f"keep() kept {kept} experts; allowed: top-k={K} to budget B={budget} "
                    "(a token needs room for its k experts)"
                )
        return keep_E

    def checked_scores(self, record: RoutingRecord) -> torch.Tensor:
        """``self.score(record)``, checked for shape and (in eager mode) finiteness."""
        scores_E = self.guarded("score()", self.score, record)
        E = record.num_experts
        if not isinstance(scores_E, torch.Tensor):
            raise self.error(
                f"score() returned a {type(scores_E).__name__}; expected a float tensor of "
                f"shape [E={E}]"
            )
        if tuple(scores_E.shape) != (E,):
            raise self.error(
                f"score() returned shape {tuple(scores_E.shape)}; expected a tensor of shape "
                f"[E={E}]"
            )
        if not scores_E.is_floating_point():
            scores_E = scores_E.float()
        if validation_enabled(scores_E, self.validate) and not bool(torch.isfinite(scores_E).all()):
            bad_E = ~torch.isfinite(scores_E)
            first = int(bad_E.nonzero()[0, 0])
            raise self.error(
                f"score() returned {int(bad_E.sum())} NaN or inf values, the first "
                f"{scores_E[first].item()} at expert {first}; scores must be finite"
            )
        return scores_E

    def error(self, message: str) -> PolicyError:
        """A :class:`PolicyError` that names this policy and the plugin it came from."""
        return PolicyError(f"policy {self.name!r} (from {self.origin}): {message}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} from {self.origin}>"
