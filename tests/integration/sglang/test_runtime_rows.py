"""The runtime's verify-pass rewrite on its own: padded requests, SGLang's -1 rows, its cost.

The TopK module and output are stand-ins with the fields the runtime reads; the
policy, the budget and the counters are the real ones.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from moe_spec.integration.sglang.batch import real_rows_T, running_batch
from moe_spec.integration.sglang.metrics import ExpertCounters
from moe_spec.integration.sglang.runtime import SKIP_LINES, BudgetRuntime
from moe_spec.integration.sglang.settings import ServeSettings
from tests.host_sync import HostSyncRecorder

# The runtime recognises SGLang's output by its class name and rebuilds it positionally.
StandardTopKOutput = namedtuple("StandardTopKOutput", "topk_weights topk_ids router_logits")
E, K, N, B = 16, 2, 4, 4
DEPTHS = [0, 1, 1, 2]


def runtime(counters: bool = True, layers: int = 1) -> BudgetRuntime:
    rt = BudgetRuntime(ServeSettings("router-mass", budget=B, counters=counters))
    rt.layer_index = {layer_id: i for i, layer_id in enumerate(range(layers))}
    rt.ready = True
    if counters:
        rt.counters = ExpertCounters(layers, "cpu", interval_s=30.0)
    return rt


def topk_module(layer_id: int = 0):
    config = SimpleNamespace(scoring_func="softmax", renormalize=True, correction_bias=None)
    return SimpleNamespace(is_draft=False, layer_id=layer_id, topk_config=config)


def verify_batch(seq_lens: list[int], padded: int = 0):
    """``len(seq_lens)`` real requests of N tokens, then ``padded`` requests as a CUDA-graph
    replay pads them (``seq_lens`` = fill value 1, positions zeroed)."""
    positions = [s + d for s in seq_lens for d in DEPTHS] + [0] * (N * padded)
    return SimpleNamespace(
        positions=torch.tensor(positions), seq_lens=torch.tensor(seq_lens + [1] * padded)
    )


def routing(logits_TE: torch.Tensor) -> StandardTopKOutput:
    weights_TK, ids_TK = torch.softmax(logits_TE, -1).topk(K, dim=-1)
    weights_TK = weights_TK / weights_TK.sum(-1, keepdim=True)
    return StandardTopKOutput(weights_TK, ids_TK.to(torch.int32), logits_TE)


def test_padded_requests_are_found_from_the_batch():
    real_T = real_rows_T(verify_batch([7, 12], padded=1), 3 * N, torch.device("cpu"))
    assert real_T.tolist() == [True] * 2 * N + [False] * N
    unknown = real_rows_T(SimpleNamespace(), 5, torch.device("cpu"))
    assert unknown.tolist() == [True] * 5  # no positions: every row counts


def test_padded_rows_neither_score_nor_escape_the_budget():
    g = torch.Generator().manual_seed(0)
    real_TE = torch.randn(2 * N, E, generator=g)
    real_TE[:, 8:] -= 4.0  # real tokens prefer experts 0-7 ...
    pad_TE = torch.randn(N, E, generator=g)
    pad_TE[:, 12:] += 8.0  # ... padded rows (garbage) shout for 12-15
    rt = runtime()
    with running_batch(verify_batch([7, 12], padded=1)):
        padded = rt.budget_standard(topk_module(), routing(torch.cat([real_TE, pad_TE])), 0)
    with running_batch(verify_batch([7, 12])):
        alone = rt.budget_standard(topk_module(), routing(real_TE), 0)
    assert torch.equal(padded.topk_ids[: 2 * N], alone.topk_ids)  # same kept set, same routing
    assert torch.equal(padded.topk_weights[: 2 * N], alone.topk_weights)
    kept = set(alone.topk_ids.flatten().tolist())
    assert set(padded.topk_ids.flatten().tolist()) <= kept  # the kernel reads <= B experts
    assert len(kept) <= B and not kept & {12, 13, 14, 15}


@pytest.mark.parametrize("mode", ["substitution", "truncation"])
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_rows_sglang_masked_keep_minus_one(kernels, mode, monkeypatch):
    """SGLang's masked rows (-1) come back as they came and never count, on the policy's
    kernel (which skips them itself) as on its torch path."""
    g = torch.Generator().manual_seed(1)
    logits_TE = torch.randn(2 * N, E, generator=g)
    out = routing(logits_TE)
    logits_TE[-1, 12:] += 20.0  # a masked row that counted would pull in experts 12-15
    out.topk_ids[-1] = -1
    rt = runtime()
    rt.settings = replace(rt.settings, mode=mode)
    monkeypatch.setenv("MOE_SPEC_KERNELS", kernels)
    with running_batch(verify_batch([7, 12])):
        got = rt.budget_standard(topk_module(), out, 0)
        alone = runtime().budget_standard(topk_module(), routing(logits_TE[:-1]), 0)
    assert got.topk_ids[-1].tolist() == [-1] * K
    assert torch.equal(got.topk_weights[-1], out.topk_weights[-1])
    assert len(set(got.topk_ids[:-1].flatten().tolist())) <= B
    assert rt.counters.snapshot().max_after_L == [len(set(got.topk_ids[:-1].flatten().tolist()))]
    if mode == "substitution":  # the others route as without the masked row
        assert torch.equal(got.topk_ids[:-1], alone.topk_ids)
    assert got.topk_ids.dtype == out.topk_ids.dtype


def auto_runtime(mode: str = "substitution") -> BudgetRuntime:
    """``auto`` as a server prepares it (its device buffers; each layer's budget B; the
    server's cap E)."""
    rt = BudgetRuntime(ServeSettings("auto", budget=E, mode=mode, counters=False))
    rt.layer_index, rt.ready = {0: 0}, True
    rt.policy.validate, rt.policy.record_routing = False, False
    rt.policy.prepare(1, E, K, E, torch.device("cpu"))
    rt.policy.record_to_device(2 * N, K)
    rt.policy.device_state["budget_L"].fill_(B)
    return rt


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_auto_ranks_and_records_as_without_sglang_masked_rows(kernels, monkeypatch):
    """A padded request SGLang masked (-1 ids, logits that shout for experts 12-15): ``auto``
    keeps, re-routes, ranks and records the real requests' rows as if it were not there,
    and hands the masked rows back as they came."""
    monkeypatch.setenv("MOE_SPEC_KERNELS", kernels)
    g = torch.Generator().manual_seed(3)
    real_TE = torch.randn(2 * N, E, generator=g)
    pad_TE = torch.randn(N, E, generator=g)
    pad_TE[:, 12:] += 20.0
    out = routing(torch.cat([real_TE, pad_TE]))
    out.topk_ids[2 * N :] = -1
    rt, alone = auto_runtime(), auto_runtime()
    with running_batch(verify_batch([7, 12], padded=1)):
        got = rt.budget_standard(topk_module(), out, 0)
    with running_batch(verify_batch([7, 12])):
        want = alone.budget_standard(topk_module(), routing(real_TE), 0)
    assert torch.equal(got.topk_ids[: 2 * N], want.topk_ids)
    torch.testing.assert_close(got.topk_weights[: 2 * N], want.topk_weights)
    assert torch.equal(got.topk_ids[2 * N :], out.topk_ids[2 * N :])
    assert torch.equal(got.topk_weights[2 * N :], out.topk_weights[2 * N :])
    assert len(set(want.topk_ids.flatten().tolist())) <= B
    for name in ("rank_LE", "ids_LRK", "depth_R"):  # what the feed copies for observe
        assert torch.equal(rt.policy.device_state[name], alone.policy.device_state[name]), name


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_autos_truncation_under_a_cap_of_e_reads_only_its_kept_experts(kernels, monkeypatch):
    """Truncation gives each row distinct ids from the kept set (SGLang's kernels break on
    repeats) at auto's per-layer budget B, though the server's cap is E."""
    monkeypatch.setenv("MOE_SPEC_KERNELS", kernels)
    out = routing(torch.randn(2 * N, E, generator=torch.Generator().manual_seed(4)))
    assert len(set(out.topk_ids.flatten().tolist())) > B  # the budget binds
    with running_batch(verify_batch([7, 12])):
        got = auto_runtime("truncation").budget_standard(topk_module(), out, 0)
    assert len(set(got.topk_ids.flatten().tolist())) <= B
    assert all(len(set(row)) == K for row in got.topk_ids.tolist())
    for t in range(2 * N):  # survivors share the weight (renormalised), newcomers get 0
        before = dict(zip(out.topk_ids[t].tolist(), out.topk_weights[t].tolist(), strict=True))
        after = dict(zip(got.topk_ids[t].tolist(), got.topk_weights[t].tolist(), strict=True))
        kept = {e: w for e, w in before.items() if e in after}
        if not kept:  # a token that lost every expert: its best kept one, alone
            assert sorted(after.values()) == [0.0, pytest.approx(1.0)], (t, after)
            continue
        want = {e: kept.get(e, 0.0) / sum(kept.values()) for e in after}
        assert after == pytest.approx(want, abs=1e-6), (t, after, want)


def test_a_periodic_report_that_fails_turns_the_reports_off_not_the_server(caplog):
    rt = runtime()
    rt.counters.due = lambda: True

    def broken():
        raise OSError("prometheus multiprocess dir is gone")

    rt.counters.report = broken
    rt.after_forward()  # SGLang's forward hook catches nothing: this must not raise
    rt.after_forward()
    assert rt.reports_off and caplog.text.count("periodic reports are off") == 1


def test_a_layer_read_past_the_budget_is_warned_about_once_at_report_time(caplog):
    """A server's hot path does not check kept-set sizes; the counters' maxima show them."""
    rt = runtime(layers=3)
    rt.counters.due = lambda: True
    before_TK = torch.arange(2 * B).reshape(B, 2)
    within_TK = before_TK % B  # B distinct: the budget itself
    over_TK = before_TK % (B + 1)  # B + 1 distinct
    for layer, after_TK in enumerate((within_TK, over_TK, over_TK)):
        rt.counters.add(layer, before_TK, after_TK, 4 * B)
    with caplog.at_level("WARNING", logger="moe_spec.sglang"):
        rt.after_forward()
        rt.counters.add(0, before_TK, over_TK, 4 * B)
        rt.after_forward()  # the maxima stay: one warning
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"policy 'router-mass' read more than B={B} experts in one verify pass" in line
    assert f"(MoE layer 1: {B + 1}, MoE layer 2: {B + 1})" in line


def test_passes_before_each_graph_init_returns_are_not_counted():
    """The target runner's and the EAGLE worker's ``init_cuda_graphs`` (registered on both:
    the worker captures the other depths' target-verify graphs after the target's) forget
    what their capture and warm-up passes counted; a draft runner's does not."""
    from moe_spec.integration.sglang.plugin import reset_after_capture

    rt = runtime()
    hook = reset_after_capture(rt)
    out = routing(torch.randn(2 * N, E, generator=torch.Generator().manual_seed(6)))

    def counted() -> tuple[list[int], list[int]]:
        snap = rt.counters.snapshot(reset=False)
        return snap.passes_L, snap.max_after_L

    for runner, forgets in (
        (SimpleNamespace(is_draft_worker=True), False),
        (SimpleNamespace(is_draft_worker=False), True),
        (SimpleNamespace(), True),
    ):  # fmt: skip  (the worker: no flag)
        with running_batch(verify_batch([7, 12])):
            rt.budget_standard(topk_module(), out, 0)
        before = counted()
        assert before[0][0] >= 1
        hook(None, runner)
        assert counted() == (([0], [0]) if forgets else before)


class AtenOps(TorchDispatchMode):
    """Counts the aten ops that run (what a CUDA graph would capture as kernels or views)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


def ops_per_layer(counters: bool) -> int:
    """Aten ops of one MoE layer's rewrite in steady state (per-forward values already made)."""
    rt = runtime(counters, layers=2)
    out = routing(torch.randn(3 * N, E, generator=torch.Generator().manual_seed(2)))
    with running_batch(verify_batch([7, 12, 20])):
        rt.budget_standard(topk_module(0), out, 0)  # the first layer builds depth and rows
        with AtenOps() as mode:
            rt.budget_standard(topk_module(1), out, 1)
    return len(mode.ops)


def test_counters_cost_a_dozen_ops_per_moe_layer_and_nothing_when_off():
    with_counters, without = ops_per_layer(True), ops_per_layer(False)
    print(f"aten ops per MoE layer: budget {without}, budget + counters {with_counters}")
    assert 0 < with_counters - without <= 14  # the old counters took about 26


def test_expert_layers_are_found_by_type_not_by_weight_name():
    """GPTQ/AWQ layers hold w13_qweight, compressed-tensors w13_weight_packed: still FusedMoE."""
    from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE

    from moe_spec.integration.sglang.runtime import moe_modules

    def fused(layer_id: int, weight_name: str) -> FusedMoE:
        layer = FusedMoE.__new__(FusedMoE)  # the attributes the runtime reads, no kernels
        torch.nn.Module.__init__(layer)
        layer.layer_id, layer.num_experts = layer_id, 64
        layer.register_parameter(weight_name, torch.nn.Parameter(torch.zeros(1)))
        return layer

    impostor = torch.nn.Module()  # has the old marker attributes but is no FusedMoE
    impostor.w13_weight, impostor.num_experts, impostor.layer_id = torch.zeros(1), 8, 9
    model = torch.nn.ModuleList(
        [fused(0, "w13_qweight"), fused(1, "w13_weight_packed"), fused(2, "w13_weight"), impostor]
    )
    assert moe_modules(model) == ([], {0: 64, 1: 64, 2: 64})


def raising_passes(caplog, raises, passes: int = 3) -> list[str]:
    """Run ``passes`` verify passes of two layers whose policy calls ``raises(call)``; each
    layer passes through unbudgeted; the runtime's error lines."""
    rt = runtime(layers=2)
    calls = []

    def broken(record, budget, mode):
        calls.append(1)
        raises(len(calls))

    rt.policy.apply = broken
    batch = verify_batch([7, 12])
    batch.forward_mode = SimpleNamespace(is_target_verify=lambda: True)
    out = routing(torch.randn(2 * N, E, generator=torch.Generator().manual_seed(3)))
    with caplog.at_level("ERROR", logger="moe_spec.sglang"):
        for _ in range(passes):
            with running_batch(batch):
                assert rt.budget(topk_module(0), out) is out
                assert rt.budget(topk_module(1), out) is out
    assert len(calls) == 2 * passes
    return [r.getMessage() for r in caplog.records]


def test_a_raising_policy_is_logged_once_and_its_layers_pass_through(caplog):
    def same(call):
        raise RuntimeError("bad value")

    (line,) = raising_passes(caplog, same)
    assert "policy 'router-mass' raised RuntimeError('bad value')" in line
    assert "first seen in MoE layer 0" in line


def test_a_layers_policy_output_is_checked_until_one_eager_pass_passes(caplog):
    """A server's hot path reads nothing on the host; the policy's value checks run on a
    layer's passes until one passes them, so a policy whose kept set is always malformed
    leaves its layers unbudgeted (logged once), and a sound one costs host reads once."""
    rt = runtime(layers=1)
    fewer = K - 1  # a kept set below top-k

    def too_few(record, budget):
        keep_E = torch.zeros(record.num_experts, dtype=torch.bool)
        keep_E[:fewer] = True
        return keep_E

    rt.policy.keep = too_few
    batch = verify_batch([7, 12])
    batch.forward_mode = SimpleNamespace(is_target_verify=lambda: True)
    out = routing(torch.randn(2 * N, E, generator=torch.Generator().manual_seed(4)))
    with caplog.at_level("ERROR", logger="moe_spec.sglang"), running_batch(batch):
        for _ in range(3):
            assert rt.budget(topk_module(0), out) is out  # unbudgeted, every pass
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"keep() kept {fewer} experts; allowed: top-k={K} to budget B={B}" in line
    assert rt.checked == set() and rt.policy.validate is False

    sound = runtime(layers=1)
    syncs = []
    with running_batch(batch):
        for _ in range(2):
            with HostSyncRecorder() as recorder:
                got = sound.budget(topk_module(0), out)
            syncs.append(recorder.syncs)
            assert got is not out and got.topk_ids.unique().numel() <= B
    assert syncs[0] and not syncs[1]  # the checks on the first pass only
    assert sound.checked == {0} and sound.policy.validate is False


def test_each_cause_of_a_raising_policy_is_logged_up_to_a_few_of_one_kind(caplog):
    """A second cause is not hidden behind the first; a message that changes every pass
    logs ``SKIP_LINES`` lines and one saying the rest are not logged."""

    def two_causes(call):
        raise ValueError("no layer table" if call % 2 else "empty tree")

    lines = raising_passes(caplog, two_causes)
    assert len(lines) == 2
    assert "raised ValueError('no layer table') (first seen in MoE layer 0" in lines[0]
    assert "raised ValueError('empty tree') (first seen in MoE layer 1" in lines[1]
    caplog.clear()

    def counting(call):
        raise RuntimeError(f"bad value {call}")

    lines = raising_passes(caplog, counting)
    assert len(lines) == SKIP_LINES + 1
    for call, line in enumerate(lines[:SKIP_LINES], 1):
        assert f"raised RuntimeError('bad value {call}')" in line
    assert f"{SKIP_LINES} failures of this kind logged; further ones are not" in lines[-1]


def test_the_start_line_says_what_b_means_for_the_model():
    """``serve`` warns that B >= E budgets nothing; every rank's start line says so too."""
    assert runtime().budget_note(E, K) == f" of E={E} (top-k={K})"
    past = BudgetRuntime(ServeSettings("router-mass", budget=E, counters=False))
    assert past.budget_note(E, K) == f" (not below E={E}: every verify pass runs unbudgeted)"
    auto = BudgetRuntime(ServeSettings("auto", budget=4 * E, counters=False))
    assert auto.budget_note(E, K) == f" (a cap: each layer's budget from top-k={K} to {E} of E={E})"
