"""What the plugin can serve correctly, checked before any request runs.

Two checks share one vocabulary of findings: :func:`check_server_args` reads
SGLang's server arguments (in ``moe-spec serve`` before launch, and again in
every rank when the target model has loaded), :func:`check_topk_layer` reads one
built ``TopK`` module (its routing convention and output format).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from packaging.version import InvalidVersion, Version

#: SGLang releases whose verify path and hook points this plugin was written against.
SUPPORTED_SGLANG = (Version("0.5.23"), Version("0.6"))
SUPPORTED_TEXT = ">=0.5.23,<0.6"
TREE_ALGORITHMS = ("EAGLE", "EAGLE3")
#: Names SGLang resolves to a tree algorithm (NEXTN: DeepSeek-style MTP heads, run as EAGLE).
ALGORITHM_ALIASES = {"NEXTN": "EAGLE"}
#: MoE runners whose TopK output routes inside the kernel (ids cannot be rewritten).
KERNEL_ROUTING_RUNNERS = ("triton_kernel", "flashinfer_trtllm", "flashinfer_mxfp4")


#: SGLang's verify steps, whose results carry the acceptance an adaptive policy learns from.
VERIFY_TARGETS = {
    False: "sglang.srt.speculative.eagle_worker_v2.EAGLEWorkerV2.verify",
    True: "sglang.srt.speculative.multi_layer_eagle_worker_v2.MultiLayerEagleWorkerV2.verify",
}
#: The worker whose adaptive controller (``--speculative-adaptive``) ``auto`` drives.
# the methods the plugin hooks (SGLang applies them by name, and only logs one it cannot)
FORWARD_CONTEXT = "sglang.srt.model_executor.forward_context.forward_context"
TOPK_FORWARD = "sglang.srt.layers.moe.topk.TopK.forward"
LOAD_MODEL = "sglang.srt.model_executor.model_runner.ModelRunner.load_model"
INIT_GRAPHS = "sglang.srt.model_executor.model_runner.ModelRunner.init_cuda_graphs"
RUNNER_FORWARD = "sglang.srt.model_executor.model_runner.ModelRunner.forward"
# after the target's graphs, this captures the draft's and, with --speculative-adaptive, a
# target-verify graph per other depth, whose warm-up passes run the TopK hook
WORKER_GRAPHS = "sglang.srt.speculative.eagle_worker_v2.EAGLEWorkerV2.init_cuda_graphs"
ADAPTIVE_WORKER_INIT = "sglang.srt.speculative.eagle_worker_v2.EAGLEWorkerV2.__init__"
#: Where a plain decode of an adaptive chain builds its 1-token verify input, while
#: ``batch.spec_info`` still holds the draft's guess at the token it decodes (``auto``'s shadows).
DECODE_INPUT = "sglang.srt.speculative.eagle_worker_v2.EAGLEWorkerV2._build_trivial_verify_input"


class UnsupportedSetupError(RuntimeError):
    """SGLang is configured in a way the budgeting hook cannot serve correctly."""


@dataclass
class Findings:
    """Refusals (``errors``) and advice (``warnings``), each a full sentence."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def extend(self, other: Findings) -> None:
        self.errors += other.errors
        self.warnings += other.warnings

    def raise_errors(self) -> None:
        """Raise :class:`UnsupportedSetupError` listing every refusal, if any."""
        if self.errors:
            lines = "\n".join(f"  - {e}" for e in self.errors)
            raise UnsupportedSetupError(f"moe-spec cannot budget this SGLang setup:\n{lines}")


def installed_sglang_version() -> str | None:
    """The installed sglang distribution's version, or None when it is not installed."""
    try:
        return metadata.version("sglang")
    except metadata.PackageNotFoundError:
        return None


def check_sglang_version(version: str | None) -> Findings:
    """Refuse an SGLang outside :data:`SUPPORTED_SGLANG`, naming the supported range."""
    found = Findings()
    if version is None:
        found.errors.append(f"sglang is not installed; supported versions: sglang{SUPPORTED_TEXT}")
        return found
    try:
        parsed = Version(version)
    except InvalidVersion:
        found.errors.append(f"sglang version {version!r} is unreadable; supported {SUPPORTED_TEXT}")
        return found
    low, high = SUPPORTED_SGLANG
    if not low <= Version(parsed.base_version) < high:
        found.errors.append(
            f"sglang {version} is installed; moe-spec's plugin supports sglang{SUPPORTED_TEXT}"
        )
    return found


def resolved(server_args: Any) -> Any:
    """What SGLang runs: its resolved view of ``server_args`` (SGLang 0.5 records the sizes
    it derives or adjusts, e.g. EAGLE's draft tokens, beside the fields as given, which it
    leaves unchanged); the arguments as they are where this SGLang has no such view."""
    try:
        from sglang.srt.arg_groups.model_override_base import resolved_view
    except ImportError:
        return server_args
    try:
        return resolved_view(server_args)
    except Exception:  # noqa: BLE001 (not a ServerArgs: a test's stand-in, checked as given)
        return server_args


def check_server_args(args: Any, guards_chains: bool = False) -> Findings:
    """Refusals and warnings for SGLang server arguments (a namespace or ServerArgs);
    ``guards_chains``: the policy's guard chooses an adaptive chain's depth (``auto``), so
    a chain served with ``--speculative-adaptive`` is no mistake to warn about."""
    found = Findings()
    opt = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    algorithm = opt("speculative_algorithm")
    name = getattr(algorithm, "name", algorithm)  # resolved ServerArgs may hold an enum
    name = None if name is None else ALGORITHM_ALIASES.get(str(name).upper(), str(name).upper())
    if name not in TREE_ALGORITHMS:
        allowed = ", ".join((*TREE_ALGORITHMS, *ALGORITHM_ALIASES))
        given = "not given" if algorithm is None else f"is {algorithm!r}"
        found.errors.append(
            f"--speculative-algorithm {given}; MoE-Spec budgets the verify pass of "
            f"tree speculation, allowed: {allowed}"
        )
    topk = opt("speculative_eagle_topk")
    guarded = guards_chains and adaptive_chain(args)
    if (topk is None or int(topk) <= 1) and not guarded:
        found.warnings.append(
            f"--speculative-eagle-topk is {topk!r}: the draft is a chain (SGLang's default for "
            "MoE targets), whose few verify tokens touch few experts, so budgeting saves "
            "little; pass --speculative-eagle-topk 4 (or more) for a tree"
        )
    if opt("enable_dp_attention", False) or int(opt("attn_dp_size", 1) or 1) > 1:
        found.errors.append(
            "DP-attention (--enable-dp-attention / --attn-dp-size > 1) is on: each rank's MoE "
            "rows are other tokens, so ranks would keep different experts; serve with plain "
            "--tp instead"
        )
    pp = int(opt("pp_size", 1) or 1)
    if pp > 1:
        found.errors.append(
            f"--pp-size {pp}: pipeline parallelism splits the MoE layers over stages, which would "
            "each budget and learn from their own layers with their own plans; not supported, "
            "serve with --pp-size 1 (plain --tp)"
        )
    a2a = opt("moe_a2a_backend")
    if a2a not in (None, "none"):
        found.errors.append(
            f"--moe-a2a-backend {a2a} dispatches tokens across ranks (expert-parallel "
            "all-to-all); a global budget would need agreement across ranks, which this plugin "
            "does not implement; use --moe-a2a-backend none"
        )
    if opt("enable_eplb", False) or int(opt("ep_num_redundant_experts", 0) or 0) > 0:
        found.errors.append(
            "EPLB / redundant experts are on: top-k ids are physical replicas, not the router's "
            "experts; turn off --enable-eplb and --ep-num-redundant-experts"
        )
    location = opt("init_expert_location", "trivial")
    if location not in (None, "trivial"):
        found.errors.append(
            f"--init-expert-location {location}: remapped expert placement is not supported; "
            "use the default 'trivial'"
        )
    runner = opt("moe_runner_backend")
    if runner in KERNEL_ROUTING_RUNNERS:
        found.errors.append(
            f"--moe-runner-backend {runner} routes inside the MoE kernel, so the top-k ids "
            "cannot be rewritten; use triton, deep_gemm, cutlass or auto"
        )
    if opt("enable_torch_compile", False):
        found.errors.append(
            "--enable-torch-compile: the hook learns which forward runs from Python state that a "
            "compiled graph would bake in at trace time; not supported yet (CUDA graphs are)"
        )
    if opt("enable_nvidia_megakernel", False):
        found.errors.append(
            "--enable-nvidia-megakernel runs the model in one fused kernel that routes inside "
            "it, so the top-k ids cannot be rewritten; serve without it"
        )
    if opt("expert_distribution_recorder_mode"):
        found.warnings.append(
            "the expert-distribution recorder counts top-k ids before the budget; the "
            "plugin's own log line reports distinct experts after it"
        )
    return found


def topk_scoring(cfg: Any) -> tuple[str, Any]:
    """``(scoring, bias_E)`` a ``TopKConfig`` routes with: a biased grouped top-k scores by
    sigmoid whatever ``scoring_func`` says (SGLang's ``biased_grouped_topk``, GLM-4.5's
    default ``"softmax"`` included); the selection bias flattened (``[1, E]`` on CUDA)."""
    bias = cfg.correction_bias
    if bias is None:
        return cfg.scoring_func, None
    return ("sigmoid" if cfg.use_grouped_topk else cfg.scoring_func), bias.reshape(-1)


def check_topk_layer(topk: Any) -> Findings:
    """Refusals for one built SGLang ``TopK`` module whose routing cannot be rewritten."""
    found = Findings()
    cfg = topk.topk_config
    where = f"MoE layer {topk.layer_id}"
    fmt = getattr(cfg.output_format, "name", cfg.output_format)
    if fmt not in (None, "STANDARD"):
        found.errors.append(
            f"{where}: TopK output format {fmt} routes inside the kernel; only STANDARD "
            "top-k ids can be budgeted (pick another --moe-runner-backend)"
        )
    if cfg.fused_gate_packed_ids:
        found.errors.append(f"{where}: packed top-k ids (fused gate) cannot be rewritten")
    if cfg.num_shared_topk_slots:
        found.errors.append(
            f"{where}: shared experts are fused into the top-k ids; pass "
            "--disable-shared-experts-fusion"
        )
    if cfg.custom_routing_function is not None:
        found.errors.append(f"{where}: a custom routing function is not supported")
    if cfg.use_grouped_topk and cfg.topk_group != cfg.num_expert_group:
        found.errors.append(
            f"{where}: group-limited routing (topk_group={cfg.topk_group} of "
            f"num_expert_group={cfg.num_expert_group}) is not supported"
        )
    scoring, bias = topk_scoring(cfg)
    if scoring not in ("softmax", "sigmoid"):
        found.errors.append(f"{where}: scoring function {scoring!r}; supported: softmax, sigmoid")
    elif bias is not None and scoring != "sigmoid":
        found.errors.append(
            f"{where}: a selection bias (correction_bias) on a {scoring} router (ERNIE-4.5 "
            "style) is not supported; supported: a bias on sigmoid routers (DeepSeek-V3 style)"
        )
    if cfg.apply_routed_scaling_factor_on_output and cfg.routed_scaling_factor not in (None, 1.0):
        found.errors.append(
            f"{where}: routed_scaling_factor={cfg.routed_scaling_factor} is folded into the "
            "top-k weights; re-routed weights would miss it"
        )
    if getattr(topk, "enable_waterfill", False):
        found.errors.append(f"{where}: Waterfill shared-expert balancing is not supported")
    return found


def check_core_hooks() -> Findings:
    """Refuse a start where SGLang could not apply the hooks the budget runs in (the TopK's
    forward, the forward context that says which batch it serves): nothing would be
    budgeted while the plugin says it budgets. Warn where the counters' hooks are missing
    (capture passes would count; no periodic line)."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    found = Findings()
    for target in (TOPK_FORWARD, FORWARD_CONTEXT):
        if target not in HookRegistry._patched:
            found.errors.append(
                f"the budget runs in a hook on {target}, which this SGLang does not have (or "
                f"the hook could not be applied); supported: sglang{SUPPORTED_TEXT}"
            )
    for target, lost in ((INIT_GRAPHS, "CUDA-graph capture passes count as served ones"),
                         (RUNNER_FORWARD, "no periodic counters line")):  # fmt: skip
        if target not in HookRegistry._patched:
            found.warnings.append(f"no hook on {target} (this SGLang lacks it): {lost}")
    return found


def check_acceptance_hook(server_args: Any, policy_name: str) -> Findings:
    """Refuse an adaptive policy when the verify step of this setup could not be hooked,
    or, on a chain with SGLang's adaptive speculation, the worker that chooses the depth;
    warn where the draft's guesses before plain decodes cannot be read there.

    The hooks are registered by name when the plugin loads; an SGLang whose speculative
    worker moved or was renamed leaves them unapplied (SGLang only logs that), and the
    policy would then never see what was accepted, or SGLang's own adaptive policy would
    choose the depths.
    """
    from sglang.srt.plugins.hook_registry import HookRegistry

    found = Findings()
    multi_layer = bool(getattr(server_args, "enable_multi_layer_eagle", False))
    target = VERIFY_TARGETS[multi_layer]
    if target not in HookRegistry._patched:
        found.errors.append(
            f"policy {policy_name!r} learns from each verify step's acceptance, read after "
            f"{target}, which this SGLang does not have (or the hook could not be applied); "
            f"supported: sglang{SUPPORTED_TEXT}, or pick a fixed policy such as token-priority"
        )
    if adaptive_chain(server_args) and ADAPTIVE_WORKER_INIT not in HookRegistry._patched:
        found.errors.append(
            f"--speculative-adaptive is on: policy {policy_name!r} chooses the draft's depth "
            f"through a hook on {ADAPTIVE_WORKER_INIT}, which this SGLang does not have (or the "
            f"hook could not be applied); supported: sglang{SUPPORTED_TEXT}, or serve without "
            "--speculative-adaptive"
        )
    elif adaptive_chain(server_args) and not skips_depth0_extend() and not reads_guesses():
        found.warnings.append(
            f"{policy_name} on --speculative-adaptive: the draft's guesses at decoded tokens "
            f"are read in a hook on {DECODE_INPUT}, which this SGLang does not have (or the "
            "hook could not be applied); the guard decodes without them (shadow is off)"
        )
    return found


def reads_guesses() -> bool:
    """Whether the hook that reads the draft's guess before each plain decode is applied."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    return DECODE_INPUT in HookRegistry._patched


def check_adaptive_chain(server_args: Any, policy_name: str, options: dict) -> Findings:
    """Refuse ``guard=false`` where SGLang runs its adaptive speculation on a chain: there
    the policy's guard chooses each step's depth (``depth.py``), and without it SGLang's
    own choice would run depths the policy does not plan for. Say what
    ``SGLANG_SPEC_SKIP_ZERO_STEP_DRAFT_EXTEND`` does there (a warning)."""
    found = Findings()
    if not adaptive_chain(server_args):
        return found
    if options.get("guard") is False:
        found.errors.append(
            f"policy option guard=false ({policy_name}) with --speculative-adaptive: on a "
            "chain the guard chooses each step's draft depth; leave guard unset, or serve "
            "without --speculative-adaptive"
        )
    elif skips_depth0_extend():
        found.warnings.append(
            f"{SKIP_EXTEND}={os.environ[SKIP_EXTEND]} with {policy_name} on "
            "--speculative-adaptive: the guard's plain decodes skip SGLang's draft extend "
            "except the last of each run (the chain after it drafts from a current state; "
            "the decoded tokens stay out of the draft's cache), and are priced without it; "
            "the draft then makes no guesses at the decoded tokens, so the guard does not "
            "see what the chain would commit while it decodes (shadow is off)"
        )
    return found


SKIP_EXTEND = "SGLANG_SPEC_SKIP_ZERO_STEP_DRAFT_EXTEND"


def skips_depth0_extend() -> bool:
    """Whether SGLang skips the draft extend after a depth-0 step (an experimental switch
    of SGLang 0.5.23, read as SGLang reads it)."""
    if SKIP_EXTEND not in os.environ:
        return False
    try:
        from sglang.srt.environ import envs

        return bool(getattr(envs, SKIP_EXTEND).get())
    except (ImportError, AttributeError):  # another SGLang: read it as a flag
        return os.environ[SKIP_EXTEND].strip().lower() in ("1", "true", "yes", "on")


def parallel_rank(name: str, runner: Any = None) -> int:
    """This process's ``tp_rank`` or ``dp_rank``: the ModelRunner's attribute where it has
    one, else SGLang's published runtime context (0 where neither says: no such
    parallelism, tests, other SGLang versions)."""
    rank = getattr(runner, name, None)
    if rank is None:
        try:
            from sglang.srt.runtime_context import get_parallel

            rank = getattr(get_parallel(), name, None)
        except Exception:  # no published runtime context
            rank = None
    return 0 if rank is None else int(rank)


def adaptive_chain(server_args: Any) -> bool:
    """Whether SGLang runs its adaptive speculation (``--speculative-adaptive``) for these
    arguments: it can then run the chain at other depths (it turns the mode off, with a
    warning, for a tree: its adaptive worker drafts chains only)."""
    if not getattr(server_args, "speculative_adaptive", False):
        return False
    try:
        from sglang.srt.speculative.adaptive_spec_params import adaptive_unsupported_reason
    except ImportError:  # another SGLang: its adaptive mode is not known here
        return True
    try:
        return adaptive_unsupported_reason(server_args) is None
    except Exception:  # arguments SGLang's own check cannot read: assume it runs
        return True
