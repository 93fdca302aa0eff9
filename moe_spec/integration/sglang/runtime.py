"""The budget applied inside SGLang: one :class:`BudgetRuntime` per rank process.

Shape legend: T tokens (verify rows), K top-k, E experts, L MoE layers.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

import torch

from moe_spec.budget import (
    BudgetedTopK,
    check_budget,
    reroute,
    with_masked_rows,
    without_masked_rows,
)
from moe_spec.integration.sglang.batch import (
    current_batch,
    is_target_verify,
    once_per_forward,
    one_row_per_request,
    real_rows_T,
    tree_depth_T,
)
from moe_spec.integration.sglang.compat import (
    Findings,
    adaptive_chain,
    check_acceptance_hook,
    check_adaptive_chain,
    check_core_hooks,
    check_server_args,
    check_sglang_version,
    check_topk_layer,
    installed_sglang_version,
    parallel_rank,
    reads_guesses,
    resolved,
    skips_depth0_extend,
    topk_scoring,
)
from moe_spec.integration.sglang.depth import drive_depth
from moe_spec.integration.sglang.feed import AcceptanceFeed, tree_of
from moe_spec.integration.sglang.metrics import (
    ExpertCounters,
    PrometheusGauges,
    prometheus_gauges,
)
from moe_spec.integration.sglang.settings import ServeSettings, server_option_errors
from moe_spec.kernels.dispatch import capturing
from moe_spec.policies import PolicyError, get_policy
from moe_spec.routing import RoutingRecord

logger = logging.getLogger("moe_spec.sglang")
SKIP_LINES = 3  # failures of one kind logged one by one (BudgetRuntime.skip)


class BudgetRuntime:
    """Applies the configured policy to the target model's TopK outputs in verify passes."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.policy = get_policy(settings.policy, **settings.options)
        self.policy.validate = False  # server hot path: no value checks that read the device
        self.feed: AcceptanceFeed | None = None  # adaptive policies: acceptance after verify
        self.layer_index: dict[int, int] = {}  # SGLang layer_id -> MoE layer index
        self.num_experts: dict[int, int] = {}  # SGLang layer_id -> E
        self.counters: ExpertCounters | None = None
        self.ready = False
        self.tp_rank = 0
        self.skipped: set[object] = set()  # the keys skip() has seen
        self.skip_lines: dict[object, int] = {}  # distinct reasons per kind of failure
        self.reports_off = False  # a periodic report failed once (after_forward)
        self.warned_over = False  # a layer read more than B experts (warn_over_budget)
        self.checked: set[int] = set()  # MoE layers whose policy output passed the checks

    def prepare(
        self, model: Any, server_args: Any, device: torch.device | str, tp_rank: int = 0
    ) -> Findings:
        """Find the target's MoE layers, check them and the server arguments; set up counters.

        ``server_args``: the rank's ``ServerArgs``, read through SGLang's resolved view
        (:func:`~moe_spec.integration.sglang.compat.resolved`: the tree it runs, not the
        sizes as given). Raises :class:`~moe_spec.integration.sglang.compat.UnsupportedSetupError`
        (so the server refuses to start) when the setup cannot be budgeted correctly.
        """
        server_args = resolved(server_args)
        found = check_sglang_version(installed_sglang_version())
        found.extend(check_core_hooks())
        adaptive = adaptive_chain(server_args)  # SGLang's adaptive speculation on a chain
        found.extend(check_server_args(server_args, guards_chains=self.learns))
        found.errors += server_option_errors(self.settings, adaptive)
        topks, experts = moe_modules(model)
        if not topks:
            found.errors.append(
                f"the target model ({type(model).__name__}) has no SGLang TopK MoE layers"
            )
        for layer_id, n in sorted(Counter(t.layer_id for t in topks).items()):
            if n > 1:
                found.errors.append(
                    f"MoE layer {layer_id}: {n} target TopK modules share this layer_id (one "
                    "per layer is allowed: the budget and the counters are per layer)"
                )
        for topk in topks:
            found.extend(check_topk_layer(topk))
            E = experts.get(topk.layer_id)
            if E is None:
                found.errors.append(f"MoE layer {topk.layer_id}: no FusedMoE experts found")
                continue
            try:
                check_budget(self.settings.budget, topk.topk_config.top_k, E)
            except ValueError as exc:
                found.errors.append(f"MoE layer {topk.layer_id}: {exc}")
        dims = None  # (MoE layers, E, top-k): every layer needs room for its E and k
        if topks and all(t.layer_id in experts for t in topks):
            dims = (
                len(topks),
                max(experts[t.layer_id] for t in topks),
                max(t.topk_config.top_k for t in topks),
            )
            try:
                self.policy.model_check(*dims)
            except PolicyError as exc:
                found.errors.append(str(exc))
        if self.learns:
            found.extend(check_acceptance_hook(server_args, self.settings.policy))
            found.extend(
                check_adaptive_chain(server_args, self.settings.policy, self.settings.options)
            )
        found.raise_errors()
        if tp_rank == 0:
            for warning in found.warnings:
                logger.warning("moe-spec: %s", warning)
        layer_ids = sorted(t.layer_id for t in topks)
        # SGLang runs the configured tree every step, or with its adaptive speculation a
        # chain at the depth the guard chooses (``depth.py``)
        chains = self.learns and adaptive
        skip_extend = chains and skips_depth0_extend()  # the guard's decodes skip it (depth.py)
        if hasattr(self.policy, "for_server"):  # auto's (it takes guesses where decodes extend)
            guesses = chains and reads_guesses()
            self.policy.for_server(guard=chains, decode_extend=not skip_extend, guesses=guesses)
        self.tp_rank = tp_rank
        self.layer_index = {layer_id: i for i, layer_id in enumerate(layer_ids)}
        self.num_experts = experts
        # an adaptive policy's device state (auto: per-layer budgets, calibration tables)
        # exists before graph capture and is only ever rewritten in place
        self.policy.record_routing = False  # nothing here reads it back between passes
        self.policy.prepare(*dims, self.settings.budget, device)  # set: no errors above
        if self.learns:
            tree, interval, top_k = tree_of(server_args), self.settings.log_interval_s, dims[2]
            self.feed = AcceptanceFeed(
                self.policy, tree, top_k, interval, tp_rank, chains=chains, skip_extend=skip_extend
            )
        self.ready = True
        if self.settings.counters:
            interval = self.settings.log_interval_s
            self.counters = ExpertCounters(
                len(layer_ids), device, interval, tp_rank, parallel_rank("dp_rank")
            )
            if getattr(server_args, "enable_metrics", False):
                self.counters.gauges = optional_gauges()
        if tp_rank == 0:
            logger.info(
                "moe-spec: budgeting %d MoE layers in verify passes: policy %s, B=%d%s, %s%s%s",
                len(layer_ids),
                self.settings.policy,
                self.settings.budget,
                self.budget_note(*dims[1:]),
                self.settings.mode,
                "" if self.settings.counters else " (counters off)",
                f"; options {json.dumps(self.settings.options)}" if self.settings.options else "",
            )
        return found

    def budget_note(self, num_experts: int, top_k: int) -> str:
        """What B means for this model: `` (a cap: each layer's budget from top-k to ...)``
        for an adaptive policy, a note that B >= E budgets nothing, else the model's E."""
        B, E = self.settings.budget, num_experts
        if self.policy.adaptive:
            return f" (a cap: each layer's budget from top-k={top_k} to {min(B, E)} of E={E})"
        if B >= E:
            return f" (not below E={E}: every verify pass runs unbudgeted)"
        return f" of E={E} (top-k={top_k})"

    @property
    def learns(self) -> bool:
        """Whether the policy learns from acceptance (it is fed after every verify step)."""
        return self.policy.adaptive and hasattr(self.policy, "record_to_device")

    def drive_depth(self, worker: Any) -> None:
        """After SGLang built its EAGLE worker: with ``--speculative-adaptive`` on a chain,
        the policy's guard chooses each step's depth (:mod:`.depth`)."""
        guarded = drive_depth(worker, self.feed)
        if guarded is not None and self.tp_rank == 0:
            logger.info(
                "moe-spec: %s chooses the draft's depth among %s (0: plain decoding) in place "
                "of SGLang's adaptive policy",
                self.settings.policy,
                guarded.candidate_steps,
            )

    def budget(self, topk: Any, output: Any) -> Any:
        """``output`` with at most B distinct experts when this is a target verify pass
        (a plain decode's, one row per request, only where the policy budgets those:
        :attr:`~moe_spec.policies.Policy.budgets_plain_decodes`)."""
        batch = current_batch()
        if topk.is_draft or not self.ready or not is_target_verify(batch):
            return output
        layer = self.layer_index.get(topk.layer_id)
        if layer is None:
            return output
        if type(output).__name__ != "StandardTopKOutput":
            self.skip(f"TopK output {type(output).__name__} cannot be rewritten")
            return output
        rows = output.topk_ids.shape[0]
        if not self.policy.budgets_plain_decodes and one_row_per_request(batch, rows):
            return output  # auto's decodes rest: no selection launched, none captured
        # a layer's passes run the policy's value checks (host reads) until one passes them
        # eagerly; then the hot path reads nothing (a graph replay runs no Python at all)
        checking = layer not in self.checked and not capturing()
        try:
            self.policy.validate = checking
            budgeted = self.budget_standard(topk, output, layer)
        except Exception as exc:  # a policy bug must not take the server down
            self.skip(
                f"policy {self.settings.policy!r} raised {exc!r} (first seen in MoE layer "
                f"{topk.layer_id}; the layers where it raises run unbudgeted)",
                key=(self.settings.policy, repr(exc)),
                kind=(self.settings.policy, type(exc).__name__),
            )
            return output
        finally:
            self.policy.validate = False
        if checking:
            self.checked.add(layer)
        return budgeted

    def budget_standard(self, topk: Any, output: Any, layer: int) -> Any:
        """Rewrite a StandardTopKOutput's ids and weights through the policy (no host sync).

        Rows of padded requests (found from the batch, so it holds in CUDA-graph
        replay) and rows SGLang masked (ids -1) never count towards the scores;
        every row but the masked ones is re-routed into the kept set, because the
        MoE kernel reads experts for padded rows too.
        """
        ids_TK, weights_TK, logits_TE = output.topk_ids, output.topk_weights, output.router_logits
        T, E = logits_TE.shape
        real_T = once_per_forward(
            ("rows", T), lambda: real_rows_T(current_batch(), T, ids_TK.device)
        )
        depth_T = once_per_forward(("depth", T), lambda: tree_depth_T(current_batch(), T))
        scoring, bias_E = topk_scoring(topk.topk_config)
        new_ids_TK, new_weights_TK = budget_rows(
            self.policy,
            RoutingRecord(
                logits_TE,
                ids_TK,
                weights_TK,
                valid_T=real_T,
                depth_T=depth_T,
                layer_idx=layer,
                num_layers=len(self.layer_index),
                scoring=scoring,
                renormalize=topk.topk_config.renormalize,
                correction_bias_E=bias_E,
                masked_rows=True,
            ),
            self.settings.budget,
            self.settings.mode,
        )
        if self.counters is not None:
            self.counters.add(layer, ids_TK, new_ids_TK, E)
        return type(output)(new_weights_TK, new_ids_TK, logits_TE)

    def skip(self, reason: str, key: object = None, kind: object = None) -> None:
        """Log that a pass went unbudgeted, once per ``key`` (default: the reason), up to
        :data:`SKIP_LINES` keys of one ``kind`` of failure (default: the key), then one line
        saying that more of that kind go unlogged: a message that changes every pass must
        not flood the log, nor a first cause hide a second."""
        key = reason if key is None else key
        kind = key if kind is None else kind
        if key in self.skipped:
            return
        self.skipped.add(key)
        lines = self.skip_lines[kind] = self.skip_lines.get(kind, 0) + 1
        if lines <= SKIP_LINES:
            logger.error("moe-spec: verify pass NOT budgeted: %s", reason)
        if lines == SKIP_LINES:
            logger.error(
                "moe-spec: %d failures of this kind logged; further ones are not (the "
                "counters' line says how many layers were budgeted)",
                SKIP_LINES,
            )

    def after_capture(self) -> None:
        """After CUDA-graph capture: forget the capture and warm-up passes."""
        if self.counters is not None:
            self.counters.reset()

    def after_forward(self) -> None:
        """Host side, after a forward returned: the periodic reports when they are due
        (never raises: a report that fails turns the reports off, with one error line)."""
        if capturing() or self.reports_off:
            return
        try:
            if self.counters is not None and self.counters.due():
                self.warn_over_budget(self.counters.report().max_after_L)
            if self.feed is not None and self.feed.due():
                self.feed.report()
        except Exception as exc:  # e.g. Prometheus' multiprocess files: serve on regardless
            self.reports_off = True
            logger.error("moe-spec: the periodic reports are off from here on: %r", exc)

    def warn_over_budget(self, max_after_L: list[int]) -> None:
        """Warn once (each rank) where a layer read more than B experts in one verify pass:
        its policy left it unbudgeted (``keep()`` returned None) or kept more than B, a
        malformed kept set that a server's hot path does not check (no host reads)."""
        B = self.settings.budget
        over = [(layer, n) for layer, n in enumerate(max_after_L) if n > B]
        if over and not self.warned_over:
            self.warned_over = True
            layers = ", ".join(f"MoE layer {layer}: {n}" for layer, n in over[:4])
            logger.warning(
                "moe-spec: policy %r read more than B=%d experts in one verify pass (%s%s): it "
                "left those layers unbudgeted, or kept more than B (a malformed kept set; "
                "`moe-spec generate --policy %s` checks every value)",
                self.settings.policy,
                B,
                layers,
                f"; {len(over)} layers in all" if len(over) > 4 else "",
                self.settings.policy,
            )

    def before_decode(self, worker: Any, batch: Any) -> None:
        """Host side, as SGLang builds a plain decode's verify input: the draft's guess at
        the token it decodes, for the feed (never raises: a layout it cannot read stops the
        guesses only)."""
        feed = self.feed
        if feed is None or capturing():
            return
        try:
            feed.note_guess(worker, batch)
        except Exception as exc:
            feed.guesses = False
            logger.error(
                "moe-spec: policy %r gets no more of the draft's guesses at decoded tokens: %r",
                self.settings.policy,
                exc,
            )

    def after_verify(self, result: Any, batch: Any) -> None:
        """Host side, after a verify step: its acceptance to the policy (never raises).

        A result SGLang lays out differently stops the feed with one error line; the
        server keeps serving with the budgets the policy had.
        """
        feed = self.feed
        if feed is None or feed.stopped or capturing():
            return
        try:
            feed.after_verify(result, batch)
        except Exception as exc:  # an unexpected layout or a policy bug: stop learning only
            feed.stop(exc, "the verify step's feed")


def budget_rows(
    policy: Any, served: RoutingRecord, budget: int, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One MoE layer's top-k as SGLang hands it over (``served``: ids ``[T, K]`` with -1 in
    rows SGLang masked, so ``masked_rows`` set, and ``valid_T`` the batch's real rows)
    through ``policy``: the budgeted
    ``(ids_TK, weights_TK)`` in SGLang's dtypes. Masked rows never count towards the scores
    and keep what SGLang wrote (its kernels skip them): the policy's fused kernel skips them
    itself, its torch path works on the record without them
    (:attr:`~moe_spec.routing.RoutingRecord.masked_rows`). Every other row, padded ones too,
    is re-routed into the kept set, because the MoE kernel reads experts for them. Device
    ops only (``bench/gpu_check.py`` times it as the plugin runs it)."""
    if mode == "truncation":  # distinct ids in every row: torch ops after the policy
        unmasked, routed_T = without_masked_rows(served)
        truncated = distinct_slots(unmasked, policy.apply(unmasked, budget, mode=mode))
        budgeted = with_masked_rows(truncated, served, routed_T)
    else:
        budgeted = policy.apply(served, budget, mode=mode)
    ids_TK, weights_TK = served.topk_ids_TK, served.topk_weights_TK
    return budgeted.topk_ids_TK.to(ids_TK.dtype), budgeted.topk_weights_TK.to(weights_TK.dtype)


def distinct_slots(record: RoutingRecord, truncated: BudgetedTopK) -> BudgetedTopK:
    """Truncation's routing with distinct ids in every row, as SGLang's kernels expect.

    Truncation fills a token's empty slots with a repeated kept expert of weight 0;
    SGLang's native MoE path counts ids per row and breaks on repeats. Here the
    slots take the token's substitution choice inside the same kept set (its best
    kept experts, surviving ones included), each weighted by what truncation gave
    that expert: 0 for the newcomers. Same combine, distinct ids, static shapes. At any
    kept-set size: ``auto`` keeps fewer than the server's cap B, which may be E.
    """
    substituted = reroute(record, truncated.keep_E, "substitution")
    weights_TE = torch.zeros_like(record.router_logits_TE, dtype=truncated.topk_weights_TK.dtype)
    weights_TE.scatter_add_(1, truncated.topk_ids_TK.long(), truncated.topk_weights_TK)
    ids_TK = substituted.topk_ids_TK
    return BudgetedTopK(ids_TK, weights_TE.gather(1, ids_TK.long()), truncated.keep_E)


def moe_modules(model: Any) -> tuple[list[Any], dict[int, int]]:
    """The target's (not draft) SGLang ``TopK`` modules and ``{layer_id: num_experts}``.

    Expert layers are found by type (``FusedMoE`` and its subclasses), not by a
    weight name: quantized layers hold ``w13_qweight`` (GPTQ/AWQ) or
    ``w13_weight_packed`` (compressed-tensors) instead of ``w13_weight``.
    """
    from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE
    from sglang.srt.layers.moe.topk import TopK

    topks, experts = [], {}
    for module in model.modules():
        if isinstance(module, TopK) and not module.is_draft:
            topks.append(module)
        elif isinstance(module, FusedMoE):
            experts[int(module.layer_id)] = int(module.num_experts)
    return topks, experts


def optional_gauges() -> PrometheusGauges | None:
    """Prometheus gauges when ``prometheus_client`` is installed (SGLang's metrics use it)."""
    try:
        return prometheus_gauges()
    except ImportError:
        logger.warning("moe-spec: --enable-metrics is on but prometheus_client is missing")
        return None
