"""AcceptanceEstimates against a tree worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moe_spec.control import AcceptanceEstimates, StepOutcome, candidate_trees

# root 0; nodes 1 (q=.62) and 2 (q=.33) below it; node 3 (q=.47) below node 1
LOGPROB_N = torch.tensor([0.0, math.log(0.62), math.log(0.33), math.log(0.47)])
DEPTH_N = torch.tensor([0, 1, 1, 2])
PATH = [0, 1, 3]
RANK_LE = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])  # layer 0: expert e ranks e-th
IDS_LNK = torch.tensor([[0, 2, 1, 3], [0, 1, 2, 3]])[..., None]  # top-1 of each node


def observed() -> AcceptanceEstimates:
    est = AcceptanceEstimates(2, 4, [4, 2], window=8, bins=10, prior=4.0)
    outcome = StepOutcome("tree", PATH, DEPTH_N, LOGPROB_N, (4, 2, 2))
    est.observe(outcome, RANK_LE, IDS_LNK)
    return est


def test_calibration_is_counts_with_a_prior_at_the_bin_centre():
    want = (np.arange(10) + 0.5) / 10
    want[6] = (1 + 4 * 0.65) / 5  # node 1: q=.62, accepted
    want[3] = (0 + 4 * 0.35) / 5  # node 2: q=.33, rejected
    want[4] = (1 + 4 * 0.45) / 5  # node 3: q=.47, accepted
    np.testing.assert_allclose(observed().accept_B(), want)


def test_the_first_level_has_a_calibration_of_its_own():
    want = (np.arange(10) + 0.5) / 10
    want[6] = (1 + 4 * 0.65) / 5  # node 1: depth 1, accepted
    want[3] = (0 + 4 * 0.35) / 5  # node 2: depth 1, rejected (node 3, depth 2, not counted)
    np.testing.assert_allclose(observed().accept_first_B(), want)


def test_bins_and_log_edges_agree_with_bucketize():
    est = observed()
    lp = torch.log(torch.tensor([0.05, 0.15, 0.62, 0.99, 1.0]))
    got = torch.bucketize(lp, torch.tensor(est.logprob_edges()), right=True)
    assert got.tolist() == est.bin_of(lp.numpy()).tolist() == [0, 1, 6, 9, 9]


def test_acceptance_per_depth():
    reach_D = observed().reach_D()
    # depths 1 and 2 tried and reached once; prior: one pseudo-step reaching depth d w.p. 2**-d
    assert reach_D[:4].tolist() == [1.0, 1.5 / 2, 1.25 / 2, 0.125]


def test_window_step_needs_committed_and_used_counts():
    (step,) = observed().window
    # layer 0: path experts 0, 2, 3 rank 0, 2, 3 -> budgets 1, 3, 4; layer 1: 0, 1, 3 rank
    # 3, 2, 0 -> 4, 3, 1, a running maximum along the path -> 4, 4, 4
    assert step.need_LP.tolist() == [[1, 3, 4], [4, 4, 4]]
    # nodes by path probability: 0, 1, 3, 2; the 2 best hold the path's first 2 nodes
    assert step.committed_C.tolist() == [3, 2]
    assert step.used_CL.tolist() == [[4, 4], [2, 2]]


def test_a_smaller_tree_says_nothing_about_a_larger_candidate():
    est = AcceptanceEstimates(2, 4, [8, 4], window=8)
    est.observe(StepOutcome("tree", PATH, DEPTH_N, LOGPROB_N, (4, 2, 2)), RANK_LE, IDS_LNK)
    assert est.window[0].committed_C.tolist() == [-1, 3]
    exact_SLB, committed_S, _ = est.arrays(0)
    assert committed_S.size == 0 and exact_SLB.shape == (0, 2, 5)
    exact_SLB, committed_S, used_SL = est.arrays(1)
    # needs 1, 3, 4 and 4, 4, 4: positions kept by budgets 0..4
    assert exact_SLB[0].tolist() == [[0, 1, 1, 2, 3], [0, 0, 0, 0, 3]]
    assert committed_S.tolist() == [3] and used_SL.tolist() == [[4, 4]]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="window >= 1"):
        AcceptanceEstimates(2, 4, [4], window=0)
    with pytest.raises(ValueError, match=r"levels must be ascending budgets; got \[4, 2\]"):
        AcceptanceEstimates(2, 4, [4], levels=[4, 2])


def test_tables_at_levels_are_the_full_tables_columns():
    full = AcceptanceEstimates(2, 4, [4, 2], window=8)
    at_levels = AcceptanceEstimates(2, 4, [4, 2], window=8, levels=[1, 3, 4])
    for est in (full, at_levels):
        est.observe(StepOutcome("tree", PATH, DEPTH_N, LOGPROB_N, (4, 2, 2)), RANK_LE, IDS_LNK)
    levels_V = np.array([1, 3, 4])
    np.testing.assert_array_equal(at_levels.arrays(1)[0], full.arrays(1)[0][:, :, levels_V])
    np.testing.assert_array_equal(at_levels.arrays(1, levels_V)[0], full.arrays(1, levels_V)[0])
    with pytest.raises(ValueError, match=r"levels \[2\] are not all among the window's"):
        at_levels.arrays(1, np.array([2]))


def test_candidate_trees_halve_down_to_four_tokens_and_a_chain_ends_at_one_draft():
    assert candidate_trees(32, 8, 6) == [(32, 8, 6), (16, 8, 6), (8, 7, 6), (4, 3, 3)]
    assert candidate_trees(3, 2, 2) == [(3, 2, 2)]
    # a chain down to one draft (2 tokens): the cheapest speculation
    assert candidate_trees(8, 1, 7) == [(8, 1, 7), (4, 1, 3), (2, 1, 1)]
    assert candidate_trees(4, 1, 3) == [(4, 1, 3), (2, 1, 1)]
    assert candidate_trees(6, 1, 5) == [(6, 1, 5), (2, 1, 1)]  # no halving at 4 or more
    assert candidate_trees(2, 1, 1) == [(2, 1, 1)]


def test_a_candidate_that_ran_often_enough_is_judged_by_its_own_steps():
    est = AcceptanceEstimates(2, 4, [4, 2], window=8)
    est.observe(StepOutcome("tree", PATH, DEPTH_N, LOGPROB_N, (4, 2, 2)), RANK_LE, IDS_LNK)
    small = StepOutcome("tree", [0], DEPTH_N[:2], LOGPROB_N[:2], (2, 1, 1))  # draft rejected
    for n in range(4):
        assert est.arrays(1)[1].tolist() == [2] + [1] * n  # the larger tree's guess stays in
        est.observe(small, RANK_LE, IDS_LNK[:, :2])
    assert est.arrays(1)[1].tolist() == [1, 1, 1, 1]  # four of its own: only those


def test_without_draft_scores_calibration_stays_and_nodes_go_by_depth():
    """SGLang keeps no draft log-probabilities: nothing to calibrate, shallower nodes first."""
    est = AcceptanceEstimates(2, 4, [4, 3], window=8, bins=10, prior=4.0)
    est.observe(StepOutcome("tree", [0, 2], DEPTH_N, None, (4, 2, 2)), RANK_LE, IDS_LNK)
    np.testing.assert_allclose(est.accept_B(), (np.arange(10) + 0.5) / 10)  # the prior
    assert est.reach_D()[:3].tolist() == [1.0, 1.5 / 2, 0.25 / 2]
    (step,) = est.window
    # by depth the 3 best nodes are 0, 1, 2 and hold the path [0, 2]; by path probability
    # (0, 1, 3, 2) they would hold only its root
    assert step.committed_C.tolist() == [2, 2]
    with_scores = AcceptanceEstimates(2, 4, [4, 3], window=8)
    with_scores.observe(
        StepOutcome("tree", [0, 2], DEPTH_N, LOGPROB_N, (4, 2, 2)), RANK_LE, IDS_LNK
    )
    assert with_scores.window[0].committed_C.tolist() == [2, 1]
    with pytest.raises(ValueError, match="needs logprob_N or depth_N"):
        est.observe(StepOutcome("tree", [0], None, None, (4, 2, 2)), RANK_LE, IDS_LNK)


def test_reach_per_depth_is_unconditional():
    """Half the paths reach depth 3, the rest stop at the root: P(reach d) is 1/2 at every
    depth (a running product of the per-depth figures would put depth 3 near 1/8)."""
    est = AcceptanceEstimates(2, 4, [4], window=8)
    depth_N = torch.tensor([0, 1, 2, 3])
    for path in ([0, 1, 2, 3], [0]) * 5:
        est.observe(StepOutcome("tree", path, depth_N, None, (4, 1, 3)), None, None)
    want = [1.0] + [(5 + 0.5**d) / 11 for d in (1, 2, 3)]
    np.testing.assert_allclose(est.reach_D()[:4], want)


def test_forget_keeps_the_latest_window_steps_and_the_calibration():
    est = observed()
    for _ in range(3):
        est.observe(StepOutcome("tree", [0, 2], DEPTH_N, LOGPROB_N, (4, 2, 2)), RANK_LE, IDS_LNK)
    accept_B = est.accept_B().copy()
    assert len(est.window) == 4 and est.arrays(1)[1].tolist() == [2, 1, 1, 1]
    est.forget(2)
    assert len(est.window) == 2 and est.arrays(1)[1].tolist() == [1, 1]
    assert est.arrays(0)[1].tolist() == [2, 2]
    np.testing.assert_array_equal(est.accept_B(), accept_B)
    est.forget(5)  # keeping more than there is changes nothing
    assert len(est.window) == 2


def test_recent_need_reads_the_latest_window_steps_through_the_ring():
    est = AcceptanceEstimates(2, 4, [4, 2], window=3)
    rank_LE = torch.stack([RANK_LE[0]] * 2)
    for step in range(7):  # the ring wraps twice; each step's path needs another budget
        ids_LNK = torch.full((2, 4, 1), step % 4)
        est.observe(StepOutcome("tree", PATH, DEPTH_N, LOGPROB_N, (4, 2, 2)), rank_LE, ids_LNK)
        want = [s.path_need for s in est.window]
        assert est.recent_need(len(est.window)).tolist() == want
        assert est.recent_need(2).tolist() == want[-2:]
    est.forget(1)
    # the last step's nodes all picked expert 6 % 4 = 2, ranked 2nd in both layers: budget 3
    assert est.recent_need(5).tolist() == [est.window[-1].path_need] == [3.0]


def test_reads_are_kept_until_the_next_step_and_shared_read_only():
    est = observed()
    accept_B, reach_D, rows = est.accept_B(), est.reach_D(), est.rows(1)
    assert est.accept_B() is accept_B and est.rows(1, 4) is rows  # defaults: the same read
    with pytest.raises(ValueError, match="read-only"):
        accept_B[0] = 1.0
    est.observe(StepOutcome("tree", [0], DEPTH_N, LOGPROB_N, (4, 2, 2)), RANK_LE, IDS_LNK)
    assert est.accept_B() is not accept_B and not np.array_equal(est.accept_B(), accept_B)
    assert est.reach_D()[1] < reach_D[1]  # a path that stopped at the root


def test_a_step_that_was_not_ranked_enters_with_its_tokens_and_experts():
    est = observed()  # one ranked step
    rested = StepOutcome("tree", PATH, DEPTH_N, LOGPROB_N, (4, 2, 2))
    est.observe(rested, None, IDS_LNK)  # a resting step: its top-k, no ranking
    ranked_step, rested_step = est.window
    assert rested_step.need_LP is None and math.isnan(rested_step.path_need)
    assert rested_step.committed_C.tolist() == ranked_step.committed_C.tolist() == [3, 2]
    assert rested_step.used_CL.tolist() == ranked_step.used_CL.tolist()
    assert est.ranked_S(0).tolist() == [True, False]
    exact_SLB, committed_S, used_SL = est.arrays(0)
    assert committed_S.tolist() == [3, 3] and used_SL.tolist() == [[4, 4], [4, 4]]
    assert exact_SLB[1].tolist() == [[3] * 5] * 2  # counted as kept at every budget
    assert est.recent_need(2).tolist() == [ranked_step.path_need]  # the ranked step's alone
    est.observe(rested, None, None)  # neither: calibration and depths only
    assert len(est.window) == 2 and est.tried_D[1] == 3
