"""Scenarios that run the real SGLang 0.5.23 on CPU, one per process.

SGLang's plugin loader and HookRegistry patch classes process-wide, so every
scenario runs in a fresh interpreter (``python -m tests.integration.sglang.scenarios
NAME``) and prints one JSON object on its last line for the tests to check.
The environment (MOE_SPEC_*, SGLANG_PLUGINS) comes from the calling test.
"""

from __future__ import annotations

import atexit
import json
import shutil
import socket
import sys
import tempfile
from types import SimpleNamespace

import torch

from moe_spec.kernels.budget_select_torch import RANK, REST, REST_SCORED

BUDGET_LAYERS = {0: "qwen3_moe", 1: "olmoe"}


def hot_path(runtime) -> None:
    """Mark every MoE layer's policy output as checked: a layer's first eager verify pass
    runs the policy's value checks (host reads; ``test_runtime_rows.py``), and what these
    scenarios record is the hot path after it."""
    runtime.checked.update(runtime.layer_index.values())


def publish_runtime() -> None:
    """Publish SGLang's runtime context and single-rank process groups on CPU."""
    from sglang.srt.distributed.parallel_state import (
        init_distributed_environment,
        initialize_model_parallel,
    )
    from sglang.srt.runtime_context import SpawnRanks, publish
    from sglang.srt.server_args import ServerArgs

    model_dir = tempfile.mkdtemp(prefix="moe-spec-scenario-")
    atexit.register(shutil.rmtree, model_dir, ignore_errors=True)  # /tmp is shared (CI)
    qwen3_config().save_pretrained(model_dir)
    publish(
        ServerArgs(model_path=model_dir, device="cpu"),
        role="scheduler",
        ranks=SpawnRanks(world_rank=0),
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    init_distributed_environment(
        world_size=1,
        rank=0,
        local_rank=0,
        distributed_init_method=f"tcp://127.0.0.1:{port}",
        backend="gloo",
    )
    initialize_model_parallel(backend="gloo")


def qwen3_config():
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        max_position_embeddings=128,
        architectures=["Qwen3MoeForCausalLM"],
    )


def build_model() -> torch.nn.ModuleList:
    """Two real SGLang MoE blocks: Qwen3-MoE (E=8, top-2, renormalised), OLMoE (E=16, top-4)."""
    from sglang.srt.models.olmoe import OlmoeMoE
    from sglang.srt.models.qwen3_moe import Qwen3MoeSparseMoeBlock

    torch.manual_seed(0)
    model = torch.nn.ModuleList(
        [
            Qwen3MoeSparseMoeBlock(layer_id=0, config=qwen3_config()),
            OlmoeMoE(num_experts=16, top_k=4, hidden_size=32, intermediate_size=16, layer_id=1),
        ]
    )
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model


def sglang_args(*extra: str):
    from moe_spec.integration.sglang.serve import parse_sglang_args

    return parse_sglang_args(
        [
            "--model-path",
            "unused",
            "--speculative-algorithm",
            "EAGLE3",
            "--speculative-eagle-topk",
            "4",
            *extra,
        ]
    )


def tree_batch(mode_name: str, depths: list[list[int]], non_padded: int | None = None):
    """A ForwardBatch stand-in: requests' tree depths -> positions (prefix length + depth)."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    prefix = torch.tensor([7 + 3 * i for i in range(len(depths))])
    positions = torch.cat([p + torch.tensor(d) for p, d in zip(prefix, depths, strict=True)])
    bound = None if non_padded is None else torch.tensor(non_padded)
    return SimpleNamespace(
        forward_mode=getattr(ForwardMode, mode_name),
        positions=positions,
        seq_lens=prefix,
        moe_num_token_non_padded=lambda: bound,
    )


def run_blocks(model, x_TD, batch) -> list[dict]:
    """Each block's output and the top-k output its FusedMoE received (measured inside)."""
    from sglang.srt.model_executor.forward_context import ForwardContext, forward_context

    received = {}

    def record(module, args):
        received[module.layer_id] = args[1]

    handles = [blk.experts.register_forward_pre_hook(record) for blk in model]
    try:
        if batch is None:
            with forward_context(ForwardContext(attn_backend=None)):
                outs = [blk(x_TD) for blk in model]
        else:
            with forward_context(ForwardContext(attn_backend=None), forward_batch=batch):
                outs = [blk(x_TD) for blk in model]
    finally:
        for h in handles:
            h.remove()
    return [
        {
            "out": out,
            "ids": received[blk.experts.layer_id].topk_ids,
            "weights": received[blk.experts.layer_id].topk_weights,
            "logits": received[blk.experts.layer_id].router_logits,
            "type": type(received[blk.experts.layer_id]).__name__,
        }
        for blk, out in zip(model, outs, strict=True)
    ]


def dense_TE(ids_TK, weights_TK, E: int) -> torch.Tensor:
    """The combine weight each token gives each expert (repeated ids add up)."""
    dense = torch.zeros(ids_TK.shape[0], E)
    return dense.scatter_add_(1, ids_TK.long(), weights_TK.float())


def run_topks(model, x_TD, batch) -> list[dict]:
    """Each block's TopK output (after the plugin's hook) for a forward batch."""
    from sglang.srt.model_executor.forward_context import ForwardContext, forward_context

    with forward_context(ForwardContext(attn_backend=None), forward_batch=batch):
        outs = [blk.topk(x_TD, blk.gate(x_TD)[0]) for blk in model]
    return [{"ids": o.topk_ids, "weights": o.topk_weights} for o in outs]


def plugin_state() -> dict:
    """What load_plugins() registered: our hook targets and whether they are applied."""
    from sglang.srt.layers.moe.topk import TopK
    from sglang.srt.plugins.hook_registry import HookRegistry

    from moe_spec.integration.sglang import plugin

    ours = sorted(
        target
        for target, hooks in HookRegistry._hooks.items()
        if any(src is not None and src.plugin_name == "moe_spec" for _, _, src in hooks)
    )
    runtime = plugin.RUNTIME
    return {
        "targets": ours,
        "patched": sorted(t for t in ours if t in HookRegistry._patched),
        "topk_wrapped": hasattr(TopK.forward, "__wrapped__"),
        "settings": None
        if runtime is None
        else {
            "policy": runtime.settings.policy,
            "budget": runtime.settings.budget,
            "mode": runtime.settings.mode,
            "options": runtime.settings.options,
        },
    }


def scenario_load() -> dict:
    """SGLang's own load_plugins(), as every scheduler rank runs it; then a model load."""
    import logging

    from sglang.srt.plugins import load_plugins
    from sglang.srt.plugins.hook_registry import HookRegistry

    from moe_spec.integration.sglang.plugin import LOAD_MODEL

    load_plugins()
    state = plugin_state()
    if state["settings"] is None:  # the notice hooks: what they log at model load
        notices = []
        handler = logging.Handler()
        handler.emit = lambda record: notices.append(record.getMessage())
        logger = logging.getLogger("moe_spec.sglang")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        Qwen2MoeForCausalLM = type("Qwen2MoeForCausalLM", (), {})  # noqa: N806 (SGLang's name)
        runner = SimpleNamespace(is_draft_worker=False, tp_rank=0, model=Qwen2MoeForCausalLM())
        for _, hook, _ in HookRegistry._hooks.get(LOAD_MODEL, []):
            hook(None, runner)
        state["notices"] = notices
        state["accessor_added"] = hasattr(Qwen2MoeForCausalLM, "get_embed_and_head")
    return state


def scenario_refusal() -> dict:
    """A bad configuration: the hook on ModelRunner.load_model refuses every model load."""
    from sglang.srt.plugins import load_plugins
    from sglang.srt.plugins.hook_registry import HookRegistry

    from moe_spec.integration.sglang.plugin import LOAD_MODEL

    load_plugins()
    state = plugin_state()
    state["refused"] = []
    for _, hook, _ in HookRegistry._hooks.get(LOAD_MODEL, []):
        try:  # an AFTER hook: (result of the original load_model, the runner)
            hook(None, SimpleNamespace(is_draft_worker=False))
        except Exception as exc:  # noqa: BLE001
            state["refused"].append(f"{type(exc).__name__}: {exc}")
    return state


def scenario_verify() -> dict:
    """Real SGLang MoE blocks on CPU through every forward mode, with the plugin loaded."""
    from sglang.srt.plugins import load_plugins

    from moe_spec.integration.sglang import plugin
    from moe_spec.kernels.fused_moe_reference import fused_moe_reference
    from moe_spec.policies import get_policy
    from moe_spec.routing import RoutingRecord
    from tests.host_sync import HostSyncRecorder

    publish_runtime()
    load_plugins()
    runtime = plugin.RUNTIME
    model = build_model()
    runtime.prepare(model, sglang_args(), "cpu")
    depths = [[0, 1, 1, 1, 2, 2, 3], [0, 1, 2, 2, 3, 3, 3]]  # two requests x N=7
    g = torch.Generator().manual_seed(1)
    x_TD = torch.randn(14, 32, generator=g)
    plain = run_blocks(model, x_TD, None)
    modes = {}
    for mode in ("DECODE", "EXTEND", "DRAFT_EXTEND_V2", "IDLE"):
        got = run_blocks(model, x_TD, tree_batch(mode, depths))
        modes[mode] = all(
            torch.equal(a["ids"], b["ids"]) and torch.equal(a["out"], b["out"])
            for a, b in zip(got, plain, strict=True)
        )
    recorder = HostSyncRecorder()
    hot_path(runtime)
    budget_standard = runtime.budget_standard

    def recorded(*args):  # only the plugin's own work, not SGLang's CPU expert loop
        with recorder:
            return budget_standard(*args)

    runtime.budget_standard = recorded
    verify = run_blocks(model, x_TD, tree_batch("TARGET_VERIFY", depths))
    runtime.budget_standard = budget_standard
    settings = runtime.settings
    layers = []
    for blk, v, p in zip(model, verify, plain, strict=True):
        cfg = blk.topk.topk_config
        E = blk.experts.num_experts
        depth_T = torch.tensor(sum(depths, []))
        want = get_policy(settings.policy, **settings.options).apply(
            RoutingRecord(
                p["logits"],
                p["ids"],
                p["weights"],
                depth_T=depth_T,
                layer_idx=runtime.layer_index[blk.experts.layer_id],
                num_layers=2,
                renormalize=cfg.renormalize,
            ),
            settings.budget,
            mode=settings.mode,
        )
        reference = fused_moe_reference(
            x_TD, blk.experts.w13_weight, blk.experts.w2_weight, v["ids"], v["weights"]
        )
        layers.append(
            {
                "layer_id": blk.experts.layer_id,
                "type": v["type"],
                "distinct_before": int(p["ids"].unique().numel()),
                "distinct_after": int(v["ids"].unique().numel()),
                "ids_equal_core": torch.equal(v["ids"].long(), want.topk_ids_TK.long()),
                "routing_equal_core": torch.allclose(
                    dense_TE(v["ids"], v["weights"], E),
                    dense_TE(want.topk_ids_TK, want.topk_weights_TK, E),
                    atol=1e-6,
                ),
                "distinct_ids_per_row": all(len(set(r)) == len(r) for r in v["ids"].tolist()),
                "min_id": int(v["ids"].min()),
                "out_vs_loop_reference": float((v["out"] - reference).abs().max()),
                "out_changed": not torch.equal(v["out"], p["out"]),
            }
        )
    # SGLang writes -1 into padded rows' ids (its CPU expert loop cannot run them), so
    # padded batches stop at the TopK modules.
    padded = run_topks(model, x_TD, tree_batch("TARGET_VERIFY", depths, non_padded=9))
    padded_plain = run_topks(model, x_TD, tree_batch("DECODE", depths, non_padded=9))
    snap = runtime.counters.snapshot()
    return {
        "untouched_modes": modes,
        "layers": layers,
        "host_syncs": recorder.syncs,
        "padded_rows_as_sglang_wrote": all(
            torch.equal(pd["ids"][9:], pp["ids"][9:])
            for pd, pp in zip(padded, padded_plain, strict=True)
        ),
        "sglang_padded_ids": [sorted(set(pp["ids"][9:].flatten().tolist())) for pp in padded_plain],
        "padded_distinct_after": [int(pd["ids"][:9].unique().numel()) for pd in padded],
        "counters": {"passes": snap.passes_L, "before": snap.before_L, "after": snap.after_L},
        "log_line": snap.line(),
    }


def scenario_draft_and_formats() -> dict:
    """A draft TopK in a verify pass is untouched; unsupported setups are refused at load."""
    from sglang.srt.layers.moe.topk import (
        BypassedTopKOutput,
        StandardTopKOutput,
        TopK,
        TopKOutputFormat,
    )
    from sglang.srt.plugins import load_plugins

    from moe_spec.integration.sglang import plugin
    from moe_spec.integration.sglang.compat import UnsupportedSetupError

    publish_runtime()
    load_plugins()
    runtime = plugin.RUNTIME
    model = build_model()
    runtime.prepare(model, sglang_args(), "cpu")
    result = {}
    draft = TopK(top_k=2, layer_id=0, is_draft=True, renormalize=True)
    from sglang.srt.model_executor.forward_context import ForwardContext, forward_context

    logits = torch.randn(14, 8, generator=torch.Generator().manual_seed(2))
    batch = tree_batch("TARGET_VERIFY", [[0, 1, 1, 1, 2, 2, 3]] * 2)
    with forward_context(ForwardContext(attn_backend=None), forward_batch=batch):
        draft_out = draft(torch.zeros(14, 32), logits)
        bypassed = BypassedTopKOutput(torch.zeros(14, 32), logits, model[0].topk.topk_config)
        passed = runtime.budget(model[0].topk, bypassed)
    result["draft_distinct"] = int(draft_out.topk_ids.unique().numel())
    result["bypassed_passed_through"] = passed is bypassed
    result["skipped_logged"] = sorted(runtime.skipped)
    refusals = {}
    cases = {
        "bypassed_format": lambda t: setattr(
            t.topk_config, "output_format", TopKOutputFormat.BYPASSED
        ),
        "fused_shared_experts": lambda t: setattr(
            t.topk_config,
            "shared_experts",
            type(t.topk_config.shared_experts)(num_fused_shared_experts=1),
        ),
        # ERNIE-4.5's routing: a softmax router with a selection bias
        "softmax_bias": lambda t: setattr(t.topk_config, "correction_bias", torch.zeros(8)),
    }
    for name, spoil in cases.items():
        spoiled = build_model()
        spoil(spoiled[0].topk)
        try:
            runtime.prepare(spoiled, sglang_args(), "cpu")
            refusals[name] = None
        except UnsupportedSetupError as exc:
            refusals[name] = str(exc)
    for name, extra in {
        "dp_attention": ["--enable-dp-attention", "--dp", "2"],
        "deepep": ["--moe-a2a-backend", "deepep"],
        "budget_below_topk": None,
    }.items():
        try:
            if extra is None:
                runtime.settings = type(runtime.settings)(policy="router-mass", budget=3)
                runtime.prepare(build_model(), sglang_args(), "cpu")
            else:
                runtime.prepare(build_model(), sglang_args(*extra), "cpu")
            refusals[name] = None
        except UnsupportedSetupError as exc:
            refusals[name] = str(exc)
    # two target TopKs with one layer_id (ERNIE-4.5-VL's text and vision routers): refused
    from sglang.srt.layers.moe.topk import TopK as SGLangTopK

    runtime.settings = type(runtime.settings)(policy="router-mass", budget=4)  # else fine
    twice = build_model()
    twice[0].vision_topk = SGLangTopK(top_k=2, layer_id=0, renormalize=True)
    try:
        runtime.prepare(twice, sglang_args(), "cpu")
        refusals["shared_layer_id"] = None
    except UnsupportedSetupError as exc:
        refusals["shared_layer_id"] = str(exc)
    # an SGLang where the hooks the budget runs in could not be applied (it only logs that)
    from sglang.srt.plugins.hook_registry import HookRegistry

    from moe_spec.integration.sglang.compat import FORWARD_CONTEXT, INIT_GRAPHS, TOPK_FORWARD

    runtime.settings = type(runtime.settings)(policy="router-mass", budget=4)
    for target in (TOPK_FORWARD, FORWARD_CONTEXT, INIT_GRAPHS):
        HookRegistry._patched.discard(target)
        try:
            found = runtime.prepare(build_model(), sglang_args(), "cpu")
            refusals[f"unhooked {target}"] = None
            result[f"warned {target}"] = found.warnings
        except UnsupportedSetupError as exc:
            refusals[f"unhooked {target}"] = str(exc)
        finally:
            HookRegistry._patched.add(target)
    # GLM-4.5's routing: a biased grouped top-k (one group) left at scoring_func "softmax",
    # its bias [1, E] as on CUDA; SGLang scores it by sigmoid, and so does the plugin
    runtime.settings = type(runtime.settings)(policy="router-mass", budget=4)
    grouped = build_model()
    cfg = grouped[0].topk.topk_config
    cfg.use_grouped_topk, cfg.num_expert_group, cfg.topk_group = True, 1, 1
    cfg.correction_bias = torch.linspace(-0.1, 0.1, 8)[None]
    runtime.prepare(grouped, sglang_args(), "cpu")
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(14, 8, generator=g)
    gates = logits.sigmoid()
    ids = (gates + cfg.correction_bias).topk(2, dim=-1).indices
    weights = gates.gather(1, ids)
    weights = weights / weights.sum(-1, keepdim=True)
    with forward_context(ForwardContext(attn_backend=None), forward_batch=batch):
        out = StandardTopKOutput(weights, ids.to(torch.int32), logits)
        got = runtime.budget(grouped[0].topk, out)
    result["grouped_bias"] = {
        "budgeted": got is not out,
        "distinct": int(got.topk_ids.unique().numel()),
        "before": int(ids.unique().numel()),
        "skipped": sorted(runtime.skipped),
    }
    # a per-layer budget table for another model: refused at load, not per verify pass
    from moe_spec.policies import get_policy

    runtime.settings = type(runtime.settings)(policy="layer-adaptive", budget=4)
    runtime.policy = get_policy("layer-adaptive", budgets=[4, 4, 4])
    try:
        runtime.prepare(build_model(), sglang_args(), "cpu")
        refusals["layer_budgets"] = None
    except UnsupportedSetupError as exc:
        refusals["layer_budgets"] = str(exc)
    result["refusals"] = refusals
    return result


def scenario_auto() -> dict:
    """``auto`` in the plugin: per-layer budgets rewritten in place between verify passes."""
    from sglang.srt.plugins import load_plugins

    from moe_spec.integration.sglang import plugin
    from tests.host_sync import HostSyncRecorder

    publish_runtime()
    load_plugins()
    runtime = plugin.RUNTIME
    model = build_model()
    runtime.prepare(model, sglang_args(*TREE_7), "cpu")
    # the first plan ranks after the forward (budgets at the cap): set budgets and rank
    runtime.policy.flag_rest(RANK)
    budget_L = runtime.policy.device_state["budget_L"]
    address = budget_L.data_ptr()
    depths = [[0, 1, 1, 1, 2, 2, 3], [0, 1, 2, 2, 3, 3, 3]]
    x_TD = torch.randn(14, 32, generator=torch.Generator().manual_seed(1))
    recorder = HostSyncRecorder()
    hot_path(runtime)
    budget_standard = runtime.budget_standard

    def recorded(*args):
        with recorder:
            return budget_standard(*args)

    runtime.budget_standard = recorded
    distinct = {}
    for budgets in ([8, 16], [3, 6], [2, 4]):
        budget_L.copy_(torch.tensor(budgets))  # between passes, as a controller would
        verify = run_blocks(model, x_TD, tree_batch("TARGET_VERIFY", depths))
        distinct[str(budgets)] = [int(v["ids"].unique().numel()) for v in verify]
    plain = run_blocks(model, x_TD, None)
    # at the cap: ranked in the forward, then rested with the scores kept and ranked after
    policy, batch = runtime.policy, tree_batch("TARGET_VERIFY", depths)
    budget_L.copy_(torch.tensor([8, 16]))
    rank_LE = policy.device_state["rank_LE"]
    ranked = run_blocks(model, x_TD, batch)
    inside = rank_LE.clone()
    rested = {}
    for flag in (REST, REST_SCORED):
        policy.flag_rest(flag)
        rank_LE.fill_(-1)
        verify = run_blocks(model, x_TD, batch)
        if flag == REST_SCORED:
            policy.rank_scored()
        rested[flag] = {
            "rows_unchanged": all(
                torch.equal(v["ids"], r["ids"]) for v, r in zip(verify, ranked, strict=True)
            ),
            "ranks": rank_LE.tolist(),
        }
    # a plain decode (one row per request: SGLang's depth-0 verify) at budgets that would
    # cut its rows: auto's rests, so the plugin leaves it without a selection; a policy
    # that budgets decodes is called
    policy.flag_rest(RANK)
    budget_L.copy_(torch.tensor([2, 4]))
    decode_batch = tree_batch("TARGET_VERIFY", [[0]] * 6)
    x6_TD = torch.randn(6, 32, generator=torch.Generator().manual_seed(2))
    plain6 = run_blocks(model, x6_TD, None)
    decodes, calls = {}, []

    def counted(*args):
        calls.append(1)
        return recorded(*args)

    runtime.budget_standard = counted
    for budgets_decodes in (False, True):
        policy.budgets_plain_decodes = budgets_decodes
        calls.clear()
        verify = run_blocks(model, x6_TD, decode_batch)
        decodes[str(budgets_decodes)] = {
            "calls": len(calls),
            "rows_unchanged": all(
                torch.equal(v["ids"], p["ids"]) for v, p in zip(verify, plain6, strict=True)
            ),
            "distinct": [int(v["ids"].unique().numel()) for v in verify],
        }
    del policy.budgets_plain_decodes  # the class's again
    runtime.budget_standard = budget_standard
    return {
        "before": [int(p["ids"].unique().numel()) for p in plain],
        "distinct": distinct,
        "decodes": decodes,
        "decode_distinct": [int(p["ids"].unique().numel()) for p in plain6],
        "host_syncs": recorder.syncs,
        "same_tensor": budget_L.data_ptr() == address,
        "record_routing": runtime.policy.record_routing,
        "ranked_inside": inside.tolist(),
        "rested": rested[REST],
        "rested_scored": rested[REST_SCORED],
    }


#: The tree of ``DEPTHS``: 7 draft tokens per request, 4 wide, 3 deep.
TREE_7 = ("--speculative-num-draft-tokens", "7", "--speculative-num-steps", "3")
DEPTHS = [[0, 1, 1, 1, 2, 2, 3], [0, 1, 2, 2, 3, 3, 3]]
#: Accepted rows per request (rows of the whole batch, root first, -1 padded), as
#: SGLang's verify returns them: request 0 takes its node 1, request 1 its nodes 1 and 2.
ACCEPT_INDEX = [[0, 1, -1, -1], [7, 8, 9, -1]]


ROOT_ONLY = [[0, -1, -1, -1], [7, -1, -1, -1]]


def verify_result(accept_index: list[list[int]]) -> SimpleNamespace:
    """What SGLang's verify returns for these accepted rows (bonus token included)."""
    lens = [sum(i >= 0 for i in rows) for rows in accept_index]
    return SimpleNamespace(accept_lens=torch.tensor(lens), accept_index=torch.tensor(accept_index))


def scenario_auto_feed() -> dict:
    """``auto`` fed by the verify hook: what observe receives, budgets rewritten in place."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.srt.plugins import load_plugins
    from sglang.srt.plugins.hook_registry import HookRegistry

    from moe_spec.integration.sglang import plugin
    from moe_spec.integration.sglang.compat import VERIFY_TARGETS, UnsupportedSetupError
    from moe_spec.integration.sglang.runtime import BudgetRuntime
    from tests.host_sync import HostSyncRecorder

    publish_runtime()
    load_plugins()
    runtime, policy = plugin.RUNTIME, plugin.RUNTIME.policy
    model = build_model()
    runtime.prepare(model, sglang_args(*TREE_7), "cpu")
    budget_L = policy.device_state["budget_L"]
    address, initial = budget_L.data_ptr(), budget_L.tolist()
    observed = []
    observe = policy.observe

    def spy(outcome, rank_LE=None, ids_LNK=None, rested=None):
        ranking = None if rank_LE is None else rank_LE.clone()  # a step that rested: none
        observed.append((outcome, ranking, ids_LNK.clone()))
        observe(outcome, rank_LE, ids_LNK, rested)

    policy.observe = spy
    recorder = HostSyncRecorder()
    hot_path(runtime)
    budget_standard = runtime.budget_standard

    def recorded(*args):
        with recorder:
            return budget_standard(*args)

    runtime.budget_standard = recorded
    hooks = {t: [h for _, h, _ in HookRegistry._hooks.get(t, [])] for t in VERIFY_TARGETS.values()}
    results = [verify_result(ACCEPT_INDEX), verify_result(ROOT_ONLY)]
    schedule_batch = SimpleNamespace(forward_mode=ForwardMode.TARGET_VERIFY)
    g = torch.Generator().manual_seed(1)
    steps = []
    for step in range(12 + 32):  # deeper paths first, then only the roots (window: 24)
        budgets = budget_L.tolist()  # what this verify pass runs under
        x_TD = torch.randn(14, 32, generator=g)
        plain = run_blocks(model, x_TD, None)
        verify = run_blocks(model, x_TD, tree_batch("TARGET_VERIFY", DEPTHS))
        first = len(observed)
        for hook in hooks[VERIFY_TARGETS[False]]:
            hook(results[step >= 12], SimpleNamespace(), schedule_batch)
        steps.append(step_record(budgets, plain, verify, observed[first:]))
    feed_line = runtime.feed.line()
    stopped = {}
    for name, broken in {
        "no_accept_index": SimpleNamespace(accept_lens=torch.tensor([2, 3])),
        "rows_of_another_request": verify_result([[0, 8, -1, -1]] * 2),
    }.items():
        runtime.feed.stopped = None
        policy.rest_tree = REST_SCORED  # a tree step to be ranked after its forward,
        policy.flag_rest(REST_SCORED)  # as plan_step sets it
        hooks[VERIFY_TARGETS[False]][0](broken, SimpleNamespace(), schedule_batch)
        stopped[name] = runtime.feed.stopped
        stopped[f"{name} rest flag"] = policy.rest_host
    refused = {}
    for multi_layer in (False, True):
        HookRegistry._patched.discard(VERIFY_TARGETS[multi_layer])
        try:
            BudgetRuntime(runtime.settings).prepare(
                build_model(),
                sglang_args(*TREE_7, *["--enable-multi-layer-eagle"] * multi_layer),
                "cpu",
            )
            refused[str(multi_layer)] = None
        except UnsupportedSetupError as exc:
            refused[str(multi_layer)] = str(exc)
    return {
        "hooked": {t: len(h) for t, h in hooks.items()},
        "initial": initial,
        "final": budget_L.tolist(),
        "host_copy": policy.budget_host_L.tolist(),
        "same_tensor": budget_L.data_ptr() == address,
        "reach_D": policy.device_state["reach_D"].tolist(),
        "steps": steps,
        "host_syncs": recorder.syncs,
        "feed_line": feed_line,
        "stopped": stopped,
        "refused": refused,
    }


#: A chain of 7 drafts under SGLang's adaptive speculation (``--speculative-adaptive``).
ADAPTIVE_CHAIN = ("--speculative-eagle-topk", "1", "--speculative-num-steps", "7",
                  "--speculative-num-draft-tokens", "8", "--speculative-adaptive")  # fmt: skip


def scenario_auto_chain() -> dict:
    """``auto`` on an adaptive chain: the plugin turns its guard on and hands it SGLang's
    adaptive controller when the EAGLE worker is built; on a tree or a plain chain, not."""
    from sglang.srt.plugins import load_plugins
    from sglang.srt.plugins.hook_registry import HookRegistry
    from sglang.srt.speculative.adaptive_runtime_state import AdaptiveController
    from sglang.srt.speculative.adaptive_spec_params import AdaptiveSpeculativeParams

    from moe_spec.integration.sglang import plugin
    from moe_spec.integration.sglang.compat import (
        ADAPTIVE_WORKER_INIT,
        DECODE_INPUT,
        UnsupportedSetupError,
    )
    from moe_spec.integration.sglang.runtime import BudgetRuntime

    publish_runtime()
    load_plugins()
    (hook,) = [h for _, h, _ in HookRegistry._hooks[ADAPTIVE_WORKER_INIT]]
    out = {"patched": [t in HookRegistry._patched for t in (ADAPTIVE_WORKER_INIT, DECODE_INPUT)]}
    for name, args in (
        ("chain", ADAPTIVE_CHAIN),
        ("plain_chain", ADAPTIVE_CHAIN[:-1]),
        ("tree", TREE_7),
    ):
        runtime = plugin.RUNTIME if name == "chain" else BudgetRuntime(plugin.RUNTIME.settings)
        runtime.prepare(build_model(), sglang_args(*args), "cpu")
        worker = SimpleNamespace(speculative_num_steps=7)
        worker.adaptive_controller = AdaptiveController(worker, AdaptiveSpeculativeParams(7))
        if name == "chain":
            hook(None, worker, None, 0, 0, None)  # as after EAGLEWorkerV2(server_args, ...)
        else:
            runtime.drive_depth(worker)
        params = worker.adaptive_controller.params
        out[name] = {
            "chains": runtime.feed.chains,
            "guard": runtime.policy.options["guard"],
            "params": type(params).__name__,
            "candidates": params.candidate_steps,
            "guesses": runtime.feed.guesses,  # auto's shadows, from each decode's guess
        }
    HookRegistry._patched.discard(DECODE_INPUT)  # an SGLang without the decode-input hook
    runtime = BudgetRuntime(plugin.RUNTIME.settings)
    found = runtime.prepare(build_model(), sglang_args(*ADAPTIVE_CHAIN), "cpu")
    out["unguessed"] = {"guesses": runtime.feed.guesses, "warnings": found.warnings}
    HookRegistry._patched.discard(ADAPTIVE_WORKER_INIT)
    try:
        BudgetRuntime(plugin.RUNTIME.settings).prepare(
            build_model(), sglang_args(*ADAPTIVE_CHAIN), "cpu"
        )
        out["refused"] = None
    except UnsupportedSetupError as exc:
        out["refused"] = str(exc)
    return out


def step_record(budgets, plain, verify, observed) -> dict:
    """One fed verify step: what observe got, checked against the unbudgeted routing."""
    outcomes = []
    for i, (outcome, _, ids_LNK) in enumerate(observed):
        rows = slice(7 * i, 7 * (i + 1))
        ids_match = []
        for layer, p in enumerate(plain):
            K = p["ids"].shape[1]
            got_NK = ids_LNK[layer]
            ids_match.append(
                torch.equal(got_NK[:, :K], p["ids"][rows].long())
                and torch.equal(got_NK[:, K:], got_NK[:, :1].expand(-1, got_NK.shape[1] - K))
            )
        outcomes.append(
            {
                "path": outcome.path,
                "depth_N": outcome.depth_N.tolist(),
                "tree": list(outcome.tree),
                "logprob_N": outcome.logprob_N,
                "ids_match_unbudgeted": ids_match,
            }
        )
    # the recorded ranking is the one the pass budgeted with: kept = rank < budget; a step
    # that rested (observed without a ranking) ran at the cap, every expert allowed
    rank_LE = observed[0][1] if observed else None
    kept_match = []
    for layer, v in enumerate(verify):
        E = 8 if layer == 0 else 16
        kept = set(v["ids"].unique().tolist())
        if rank_LE is None:
            ranked = set(range(E)) if budgets[layer] >= E else set()
        else:
            ranked = {e for e in range(E) if int(rank_LE[layer, e]) < min(budgets[layer], E)}
        kept_match.append(kept <= ranked)
    return {
        "budgets": budgets,
        "distinct": [int(v["ids"].unique().numel()) for v in verify],
        "outcomes": outcomes,
        "kept_within_ranked": kept_match,
    }


class CausalAttention:
    """A stand-in attention backend: plain causal attention over one sequence (no KV cache;
    grouped-query heads shared as SGLang's backends share them)."""

    def forward(self, q, k, v, layer, _forward_batch, _save_kv_cache=True, **_kwargs):
        C = layer.qk_head_dim
        q_HSC = q.view(-1, layer.tp_q_head_num, C).transpose(0, 1)
        k_HSC = k.view(-1, layer.tp_k_head_num, C).transpose(0, 1)
        v_HSC = v.view(-1, layer.tp_v_head_num, layer.v_head_dim).transpose(0, 1)
        out_HSC = torch.nn.functional.scaled_dot_product_attention(
            q_HSC, k_HSC, v_HSC, is_causal=True, scale=layer.scaling, enable_gqa=True
        )
        return out_HSC.transpose(0, 1).reshape(q_HSC.shape[1], -1)


class PrefillBatch(SimpleNamespace):
    """A ForwardBatch stand-in; attributes it lacks read as None (and are recorded)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        self.__dict__.setdefault("defaulted", set()).add(name)
        return None


def scenario_eagle_draft() -> dict:
    """SGLang's own LlamaForCausalLMEagle on an exported draft (MOE_SPEC_TEST_DRAFT): its
    parameters after load_weights, and its model's output on the saved inputs."""
    import os
    from pathlib import Path

    from safetensors.torch import load_file
    from transformers import LlamaConfig

    publish_runtime()
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.srt.model_executor.forward_context import ForwardContext, forward_context
    from sglang.srt.models.llama_eagle import LlamaForCausalLMEagle

    out = Path(os.environ["MOE_SPEC_TEST_DRAFT"])
    config = LlamaConfig(**json.loads((out / "config.json").read_text()))
    model = LlamaForCausalLMEagle(config).float()
    tensors = load_file(str(out / "model.safetensors"))
    model.load_weights(iter(tensors.items()))
    layer = model.model.layers[0]
    expect = {
        "model.fc.weight": tensors["fc.weight"],
        "model.fc.bias": tensors["fc.bias"],
        "model.layers.0.self_attn.qkv_proj.weight": torch.cat(
            [tensors[f"layers.0.self_attn.{n}_proj.weight"] for n in "qkv"]
        ),
        "model.layers.0.mlp.gate_up_proj.weight": torch.cat(
            [tensors[f"layers.0.mlp.{n}_proj.weight"] for n in ("gate", "up")]
        ),
    }
    params = dict(model.named_parameters())
    inputs = load_file(str(out.parent / "inputs.safetensors"))
    embed_SD, feature_SD = inputs["embed"], inputs["feature"]
    S = len(embed_SD)
    batch = PrefillBatch(
        forward_mode=ForwardMode.EXTEND,
        spec_info=SimpleNamespace(hidden_states=feature_SD),
        residual_stream=None,
        positions=torch.arange(S),
        moe_num_token_non_padded=lambda: None,
    )
    with (
        torch.no_grad(),
        forward_context(ForwardContext(attn_backend=CausalAttention()), forward_batch=batch),
    ):
        hidden_SD = model.model(torch.zeros(S, dtype=torch.long), torch.arange(S), batch, embed_SD)
    return {
        "params": sorted(params),
        "loaded": {k: bool(torch.equal(params[k].data, v.float())) for k, v in expect.items()},
        "has_input_layernorm": hasattr(layer, "input_layernorm"),
        "out": hidden_SD.tolist(),
        "defaulted": sorted(batch.__dict__.get("defaulted", ())),
    }


def scenario_qwen2_moe_greedy() -> dict:
    """SGLang's own Qwen2MoeForCausalLM on a checkpoint (MOE_SPEC_TEST_TARGET), built on CPU
    as a server builds it (the live servers' stand-ins), loaded with its load_weights: the
    last position's logits of the saved prompt and ``MOE_SPEC_TEST_STEPS`` greedy tokens (one
    uncached forward per token, plain causal attention), and what the plugin's accessor gives."""
    import os
    from pathlib import Path

    from moe_spec_live_policies import cpu_stand_ins  # on PYTHONPATH (policy_plugin/)
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from moe_spec.integration.sglang.eagle_target import add_embed_and_head

    publish_runtime()
    cpu_stand_ins()
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.srt.model_executor.forward_context import ForwardContext, forward_context
    from sglang.srt.models.qwen2_moe import Qwen2MoeForCausalLM

    path = Path(os.environ["MOE_SPEC_TEST_TARGET"])
    model = Qwen2MoeForCausalLM(AutoConfig.from_pretrained(path)).float().eval()
    model.load_weights(iter(load_file(str(path / "model.safetensors")).items()))
    ids = load_file(os.environ["MOE_SPEC_TEST_INPUTS"])["ids"].tolist()

    def last_logits_V(tokens: list[int]) -> torch.Tensor:
        S = len(tokens)
        batch = PrefillBatch(
            forward_mode=ForwardMode.EXTEND,
            positions=torch.arange(S),
            residual_stream=None,
            moe_num_token_non_padded=lambda: None,
        )
        attention = ForwardContext(attn_backend=CausalAttention())
        with torch.no_grad(), forward_context(attention, forward_batch=batch):
            hidden_SD = model.model(torch.tensor(tokens), torch.arange(S), batch)
        return hidden_SD[-1] @ model.lm_head.weight.T  # what LogitsProcessor computes

    first_V = last_logits_V(ids)
    tokens = [int(first_V.argmax())]
    for _ in range(int(os.environ["MOE_SPEC_TEST_STEPS"]) - 1):
        tokens.append(int(last_logits_V(ids + tokens).argmax()))
    added = add_embed_and_head(model)
    embed_VD, head_VD = model.get_embed_and_head()
    return {
        "logits": first_V.tolist(),
        "tokens": tokens,
        "accessor_added": added,
        "accessor_is_model_weights": embed_VD is model.model.embed_tokens.weight
        and head_VD is model.lm_head.weight,
    }


def scenario_resolved_tree() -> dict:
    """A rank's ``ServerArgs`` as SGLang resolves them, with EAGLE sizes it adjusts: the
    tree ``auto``'s feed expects, from the fields as given and from what SGLang runs."""
    import tempfile

    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import ServerArgs

    from moe_spec.integration.sglang import plugin
    from moe_spec.integration.sglang.feed import tree_of

    publish_runtime()
    load_plugins()
    folder = tempfile.mkdtemp()
    qwen3_config().save_pretrained(folder)
    sizes = {"speculative_num_steps": 3, "speculative_eagle_topk": 1}
    server_args = ServerArgs(
        model_path=folder,
        device="cpu",
        speculative_algorithm="EAGLE",
        speculative_draft_model_path=folder,
        speculative_num_draft_tokens=8,  # a chain of 3 steps verifies 4: SGLang adjusts it
        **sizes,
    )
    server_args.resolve_once()
    runtime = plugin.RUNTIME
    runtime.prepare(build_model(), server_args, "cpu")
    return {"as_given": list(tree_of(server_args)), "feed": list(runtime.feed.tree)}


SCENARIOS = {
    "resolved_tree": scenario_resolved_tree,
    "qwen2_moe_greedy": scenario_qwen2_moe_greedy,
    "eagle_draft": scenario_eagle_draft,
    "auto": scenario_auto,
    "auto_feed": scenario_auto_feed,
    "auto_chain": scenario_auto_chain,
    "load": scenario_load,
    "refusal": scenario_refusal,
    "verify": scenario_verify,
    "draft_and_formats": scenario_draft_and_formats,
}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]]()))
