"""On a GPU: ``auto``'s verify work captured in a CUDA graph, fed by :class:`AcceptanceFeed`.

The plugin's forward-side work (record the routing, keep ``rank < B_l``) is captured once;
the feed copies each step's acceptance and recording off the device without blocking,
folds each step in at the next one and rewrites the budgets in place; replays must then
keep at most the new ``B_l`` experts.
The same loop runs eagerly on the CPU (on the torch path, and on the Triton kernel that CUDA
runs, interpreted); the CUDA case (graph capture, non-blocking copies) is skipped without a
GPU (``make test`` on a CPU): a device check runs it.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from moe_spec.integration.sglang.feed import AcceptanceFeed
from moe_spec.kernels.budget_select_torch import RANK, REST_SCORED
from moe_spec.policies import get_policy
from moe_spec.routing import RoutingRecord

CUDA = pytest.param(
    "cuda",
    marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
)
#: CUDA on the policy's torch path: a captured graph cannot read the host's rest flag
CUDA_TORCH = pytest.param(
    "cuda-torch",
    marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
)
L, E, K, N, BS = 3, 16, 2, 7, 2
DEPTH_N = [0, 1, 1, 1, 2, 2, 3]


@contextlib.contextmanager
def no_host_sync(device: str):
    """On CUDA: fail on any operation that makes the host wait for the device."""
    if device != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def served(device: str, monkeypatch) -> tuple[object, str]:
    """An ``auto`` as SGLang's plugin holds it on ``device`` (``cpu-triton``: the CPU on the
    fused Triton path, interpreted, which CUDA runs; ``cuda-torch``: CUDA on the torch path,
    as after the kernel failed there)."""
    if device == "cpu-triton":
        monkeypatch.setenv("MOE_SPEC_KERNELS", "triton")
        device = "cpu"
    elif device == "cuda-torch":
        monkeypatch.setenv("MOE_SPEC_KERNELS", "torch")
        device = "cuda"
    policy = get_policy("auto")
    policy.validate, policy.record_routing = False, False
    policy.for_server()
    policy.prepare(L, E, K, E, torch.device(device))
    return policy, device


def verify_of(policy, logits_LTE: torch.Tensor, depth_T: torch.Tensor):
    """The plugin's work in one verify forward: each layer's top-k of ``logits_LTE`` (read
    at run time: rewrite it between replays), then the policy's budget."""

    def verify() -> list[torch.Tensor]:
        out = []
        for layer in range(L):
            weights_TK, ids_TK = torch.topk(torch.softmax(logits_LTE[layer], -1), K)
            record = RoutingRecord(
                logits_LTE[layer], ids_TK, weights_TK, depth_T=depth_T, layer_idx=layer,
                num_layers=L,
            )  # fmt: skip
            out.append(policy.apply(record, E).topk_ids_TK)
        return out

    return verify


def captured(verify, device: str):
    """A function that runs ``verify``: on CUDA replays of one captured graph (warmed up on a
    side stream), elsewhere eagerly."""
    if device != "cuda":
        return verify
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        verify()  # warm-up outside the graph
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = verify()

    def replay():
        graph.replay()
        return out

    return replay


def served_verify(device: str, monkeypatch, seed: int):
    """A served ``auto`` with its device buffers, one request's verify of random routing
    (``DEPTH_N``) captured: ``(policy, rank_LE, plain top-k per layer, run)``."""
    policy, device = served(device, monkeypatch)
    rank_LE = policy.record_to_device(N, K)["rank_LE"]
    g = torch.Generator(device=device).manual_seed(seed)
    logits_LTE = torch.randn(L, N, E, device=device, generator=g) * 3
    depth_T = torch.tensor(DEPTH_N, device=device)
    plain = [torch.topk(torch.softmax(logits_LTE[layer], -1), K) for layer in range(L)]
    return policy, rank_LE, plain, captured(verify_of(policy, logits_LTE, depth_T), device)


@pytest.mark.parametrize("device", ["cpu", "cpu-triton", CUDA])
def test_budgets_learned_between_replays_of_a_captured_verify(device, monkeypatch):
    """``cpu-triton``: the CPU loop on the fused Triton path (interpreted), which CUDA runs."""
    policy, device = served(device, monkeypatch)
    feed = AcceptanceFeed(policy, (N, 4, 3), K, requests=BS)  # both requests observed
    budget_L = policy.device_state["budget_L"]
    address = budget_L.data_ptr()
    logits_LTE = torch.zeros(L, BS * N, E, device=device)
    depth_T = torch.tensor(DEPTH_N * BS, device=device)

    run = captured(verify_of(policy, logits_LTE, depth_T), device)
    result = SimpleNamespace(
        accept_lens=torch.tensor([1, 1], device=device),  # only the roots: B falls to top-k
        accept_index=torch.tensor([[0, -1, -1, -1], [N, -1, -1, -1]], device=device),
    )
    g = torch.Generator(device=device).manual_seed(0)
    seen = []
    for _ in range(40):
        logits_LTE.copy_(torch.randn(L, BS * N, E, device=device, generator=g) * 3)
        ids_LTK = run()
        budgets = policy.budget_host_L.tolist()  # what the device tensor held for this replay
        distinct = [int(ids.unique().numel()) for ids in ids_LTK]
        seen.append((budgets, distinct))
        with no_host_sync(device):
            feed.after_verify(result, None)
    if device == "cuda":
        torch.cuda.synchronize()
    assert budget_L.data_ptr() == address
    assert budget_L.tolist() == policy.budget_host_L.tolist() == [K] * L
    lag = int(device == "cuda")  # on CUDA a step is folded in at the next one, on every rank
    assert feed.steps == 40 - lag and feed.observed == 2 * feed.steps
    assert all(d <= b for budgets, distinct in seen for d, b in zip(distinct, budgets, strict=True))
    assert seen[0][0] == [E] * L and seen[-1][1] == [K] * L


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_the_drafts_guesses_before_decodes_reach_the_policy_without_a_host_wait(device):
    """An adaptive chain's plain decodes: each guess read from the draft extend's output (in
    the draft's hot vocabulary), matched with the verified token on the device and handed to
    ``draft_matched`` once the step is folded in (a step late on CUDA)."""
    policy = get_policy("auto")
    policy.validate, policy.record_routing = False, False
    policy.for_server(guard=True, guesses=True)
    policy.prepare(L, E, K, E, torch.device(device))
    feed = AcceptanceFeed(policy, (4, 1, 3), K, chains=True)
    given: list[bool] = []
    policy.draft_matched = given.extend
    hot_V = torch.arange(8, device=device) * 5 + 50
    worker = SimpleNamespace(draft_worker=SimpleNamespace(hot_token_id=hot_V))
    right = [i % 3 != 1 for i in range(12)]
    for i, hit in enumerate(right):
        guess = i % 8
        batch = SimpleNamespace(spec_info=SimpleNamespace(
            topk_index=torch.tensor([[guess]], device=device)))  # fmt: skip
        token = hot_V[guess : guess + 1] + (0 if hit else 1)
        result = SimpleNamespace(
            accept_lens=torch.ones(1, dtype=torch.long, device=device),
            accept_index=torch.zeros((1, 1), dtype=torch.long, device=device),
            next_draft_input=SimpleNamespace(bonus_tokens=token.int()),
        )
        with no_host_sync(device):
            feed.note_guess(worker, batch)
            feed.after_verify(result, batch)
    lag = int(device == "cuda")
    assert given + feed.matched == right[: len(right) - lag]
    assert feed.guessed == len(right) - lag and feed.right == sum(right[: len(right) - lag])


@pytest.mark.parametrize("device", ["cpu-triton", CUDA])
def test_the_rest_flag_flips_a_captured_verify_between_ranking_and_resting(device, monkeypatch):
    """One captured verify on the fused kernel: replayed with the rest flag set (budgets at
    E) it keeps the routing as it was and writes no ranking; with the flag cleared and
    budgets lowered (both rewritten in place between replays) it ranks and budgets."""
    policy, rank_LE, plain, run = served_verify(device, monkeypatch, seed=2)
    policy.flag_rest(True)
    rank_LE.fill_(-1)
    rested = [ids.clone() for ids in run()]
    assert all(torch.equal(ids, p[1]) for ids, p in zip(rested, plain, strict=True))
    assert bool((rank_LE == -1).all())  # no ranking written
    policy.flag_rest(False)
    policy.device_state["budget_L"].fill_(K + 1)
    ranked = run()
    assert all(int(ids.unique().numel()) <= K + 1 for ids in ranked)
    assert bool((rank_LE >= 0).all()) and bool((rank_LE < E).all())


@pytest.mark.parametrize("device", ["cpu", "cpu-triton", CUDA, CUDA_TORCH])
def test_a_verify_rested_with_its_scores_is_ranked_after_it_as_inside_it(device, monkeypatch):
    """At REST_SCORED a (captured) verify keeps the routing as it was and leaves the scores
    its selections made; ranked after it (``Auto.rank_scored``) they give the ranking the same
    verify makes inside at RANK. Eagerly and on the kernel no ranking is made inside; a graph
    captured on the torch path, which cannot read the host's flag, ranks on every replay and
    keeps the scores too."""
    policy, rank_LE, plain, run = served_verify(device, monkeypatch, seed=5)
    policy.flag_rest(RANK)
    run()
    inside = rank_LE.clone()
    assert all(sorted(row) == list(range(E)) for row in inside.tolist())
    policy.flag_rest(REST_SCORED)
    rank_LE.fill_(-1)
    rows = [ids.clone() for ids in run()]
    assert all(torch.equal(ids, p[1]) for ids, p in zip(rows, plain, strict=True))
    if device != "cuda-torch":
        assert bool((rank_LE == -1).all())  # no ranking inside
    with no_host_sync(rank_LE.device.type):
        policy.rank_scored()
    assert torch.equal(rank_LE, inside)
