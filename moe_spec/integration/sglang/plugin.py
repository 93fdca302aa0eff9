"""The SGLang plugin: entry point ``moe_spec`` in the group ``sglang.srt.plugins``.

SGLang's ``load_plugins()`` calls :func:`register` in the launcher and in every
scheduler (TP rank) process before the model is built. It registers these hooks
with SGLang's ``HookRegistry``:

- ``forward_context`` (AROUND): remember the running ForwardBatch (its mode, positions);
- ``TopK.forward`` (AFTER): in target verify passes, budget the top-k ids and weights
  before the fused-MoE kernel reads expert weights;
- ``ModelRunner.load_model`` (AFTER): check the setup and find the target's MoE
  layers before CUDA graphs are captured; refuse unsupported setups there;
- ``ModelRunner.init_cuda_graphs`` (AFTER): forget the counts of capture passes;
- ``ModelRunner.forward`` (AFTER): the periodic distinct-experts log line;
- for a policy that learns from acceptance (``auto``), ``EAGLEWorkerV2.verify`` and
  ``MultiLayerEagleWorkerV2.verify`` (AFTER): each verify step's accepted paths to the
  policy, which then rewrites its per-layer budgets in place (``feed.py``); and
  ``EAGLEWorkerV2.__init__`` (AFTER): with ``--speculative-adaptive`` on a chain, the
  policy's guard chooses each step's draft depth, 0 included (``depth.py``); and
  ``EAGLEWorkerV2._build_trivial_verify_input`` (AFTER): before such a plain decode, the
  draft's guess at the token it decodes (``feed.py``: what the chain would commit).

Whatever the settings (switched off included), one more ``ModelRunner.load_model``
(AFTER) hook gives a target that lacks it the ``get_embed_and_head()`` accessor EAGLE
needs (``eagle_target.py``): without it SGLang 0.5.23 cannot run EAGLE on a Qwen2-MoE,
OLMoE or Mixtral target at all, budgeted or not.
"""

from __future__ import annotations

import logging
from typing import Any

from moe_spec.integration.sglang.compat import (
    ADAPTIVE_WORKER_INIT,
    DECODE_INPUT,
    FORWARD_CONTEXT,
    INIT_GRAPHS,
    LOAD_MODEL,
    RUNNER_FORWARD,
    TOPK_FORWARD,
    VERIFY_TARGETS,
    WORKER_GRAPHS,
    parallel_rank,
)
from moe_spec.integration.sglang.eagle_target import add_embed_and_head, notice
from moe_spec.integration.sglang.runtime import BudgetRuntime
from moe_spec.integration.sglang.settings import (
    ENV_DISABLE,
    plugin_disabled,
    settings_from_environ,
)
from moe_spec.policies import plugin_failures

logger = logging.getLogger("moe_spec.sglang")


#: The runtime of this process (None until :func:`register` configured one).
RUNTIME: BudgetRuntime | None = None


def register() -> None:
    """Entry point: read the environment and register the hooks (or nothing when off).

    SGLang calls this before it configures logging in the rank processes, and it
    swallows what this raises; so what there is to say is said from the target's
    ``load_model`` (TP rank 0 only), and a bad configuration (including a broken
    policy plugin) makes that model load fail: the server refuses to start.
    """
    global RUNTIME
    register_eagle_accessor()
    try:
        if plugin_disabled():
            register_notice(f"moe-spec: plugin loaded but switched off ({ENV_DISABLE})")
            return
        settings = settings_from_environ()
        if settings is None:
            register_notice("moe-spec: plugin loaded; no MOE_SPEC_POLICY set, nothing to budget")
            return
        RUNTIME = BudgetRuntime(settings)
    except Exception as exc:  # settings, unknown policy, bad options, broken policy plugins
        register_refusal(f"moe-spec: invalid configuration: {exc}")
        return
    register_hooks(RUNTIME)
    for why in plugin_failures().values():  # the chosen policy loaded; others did not
        register_notice(f"moe-spec: a policy plugin was left out: {why}", logging.WARNING)


def register_hooks(runtime: BudgetRuntime) -> None:
    """Register the hooks that apply ``runtime`` in this process."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from moe_spec.integration.sglang.batch import track_forward_batch

    HookRegistry.register(FORWARD_CONTEXT, track_forward_batch, HookType.AROUND)
    HookRegistry.register(TOPK_FORWARD, budget_after_topk(runtime), HookType.AFTER)
    HookRegistry.register(LOAD_MODEL, prepare_after_load(runtime), HookType.AFTER)
    HookRegistry.register(INIT_GRAPHS, reset_after_capture(runtime), HookType.AFTER)
    HookRegistry.register(WORKER_GRAPHS, reset_after_capture(runtime), HookType.AFTER)
    HookRegistry.register(RUNNER_FORWARD, report_after_forward(runtime), HookType.AFTER)
    if runtime.learns:
        for target in VERIFY_TARGETS.values():
            HookRegistry.register(target, feed_after_verify(runtime), HookType.AFTER)
        HookRegistry.register(ADAPTIVE_WORKER_INIT, depth_after_init(runtime), HookType.AFTER)
        HookRegistry.register(DECODE_INPUT, guess_before_decode(runtime), HookType.AFTER)


def register_eagle_accessor() -> None:
    """After the target model loads: add ``get_embed_and_head()`` where SGLang lacks it."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    def hook(result: Any, runner: Any, *args: Any, **kwargs: Any) -> None:
        if getattr(runner, "is_draft_worker", False):
            return None
        added = add_embed_and_head(getattr(runner, "model", None))
        if added and tp_rank_of(runner) == 0:
            logger.info(notice(added))
        return None

    HookRegistry.register(LOAD_MODEL, hook, HookType.AFTER)


def register_notice(message: str, level: int = logging.INFO) -> None:
    """Log ``message`` once the target model has loaded (logging is configured by then)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    def notice(result: Any, runner: Any, *args: Any, **kwargs: Any) -> None:
        if is_target_rank0(runner):
            logger.log(level, message)

    HookRegistry.register(LOAD_MODEL, notice, HookType.AFTER)


def register_refusal(message: str) -> None:
    """Make every model load fail with ``message`` (a clear start-up refusal)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from moe_spec.integration.sglang.compat import UnsupportedSetupError

    def refuse(result: Any, runner: Any, *args: Any, **kwargs: Any) -> None:
        raise UnsupportedSetupError(message)

    HookRegistry.register(LOAD_MODEL, refuse, HookType.AFTER)


def tp_rank_of(runner: Any) -> int:
    """The tensor-parallel rank of a ModelRunner's process (0 when SGLang does not say)."""
    return parallel_rank("tp_rank", runner)


def is_target_rank0(runner: Any) -> bool:
    return not getattr(runner, "is_draft_worker", False) and tp_rank_of(runner) == 0


def budget_after_topk(runtime: BudgetRuntime):
    """AFTER hook of ``TopK.forward``: the budgeted output in target verify passes."""

    def hook(output: Any, topk: Any, *args: Any, **kwargs: Any) -> Any:
        return runtime.budget(topk, output)

    return hook


def prepare_after_load(runtime: BudgetRuntime):
    """AFTER hook of ``ModelRunner.load_model``: check and index the target's MoE layers."""

    def hook(result: Any, runner: Any, *args: Any, **kwargs: Any) -> None:
        if getattr(runner, "is_draft_worker", False):
            return None
        runtime.prepare(runner.model, runner.server_args, runner.device, tp_rank_of(runner))
        return None

    return hook


def reset_after_capture(runtime: BudgetRuntime):
    """AFTER hook of the target's ``ModelRunner.init_cuda_graphs`` and of the EAGLE worker's
    (the draft's graphs and the other depths' target-verify graphs, captured after the
    target's): capture and warm-up passes are not served passes."""

    def hook(result: Any, runner: Any, *args: Any, **kwargs: Any) -> None:
        if not getattr(runner, "is_draft_worker", False):  # a worker has no such flag
            runtime.after_capture()
        return None

    return hook


def report_after_forward(runtime: BudgetRuntime):
    """AFTER hook of ``ModelRunner.forward``: the periodic log line when it is due."""

    def hook(result: Any, runner: Any, *args: Any, **kwargs: Any) -> None:
        if not getattr(runner, "is_draft_worker", False):
            runtime.after_forward()
        return None

    return hook


def feed_after_verify(runtime: BudgetRuntime):
    """AFTER hook of the EAGLE workers' ``verify``: the step's acceptance to the policy."""

    def hook(result: Any, worker: Any, batch: Any = None, *args: Any, **kwargs: Any) -> None:
        runtime.after_verify(result, kwargs.get("batch", batch))
        return None

    return hook


def guess_before_decode(runtime: BudgetRuntime):
    """AFTER hook of ``EAGLEWorkerV2._build_trivial_verify_input`` (a plain decode's input,
    built before its verify): the draft's guess at the token it decodes."""

    def hook(result: Any, worker: Any, batch: Any = None, *args: Any, **kwargs: Any) -> None:
        runtime.before_decode(worker, kwargs.get("batch", batch))
        return None

    return hook


def depth_after_init(runtime: BudgetRuntime):
    """AFTER hook of ``EAGLEWorkerV2.__init__``: the guard chooses an adaptive chain's depth."""

    def hook(result: Any, worker: Any, *args: Any, **kwargs: Any) -> None:
        runtime.drive_depth(worker)
        return None

    return hook
