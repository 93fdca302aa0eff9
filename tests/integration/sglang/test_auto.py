"""``auto`` in the SGLang plugin: per-layer budgets from a device tensor, no host reads."""

from __future__ import annotations

from tests.integration.sglang.conftest import run_scenario


def test_per_layer_budgets_change_in_place_between_passes():
    result = run_scenario("auto", MOE_SPEC_POLICY="auto", MOE_SPEC_BUDGET="16")
    assert result["host_syncs"] == []
    assert result["same_tensor"]  # rewritten in place: a captured graph stays valid
    assert not result["record_routing"]
    assert result["distinct"]["[8, 16]"] == result["before"]  # B >= E: nothing cut
    assert result["before"][0] > 3 and result["before"][1] > 6  # something to cut
    for budgets in ([3, 6], [2, 4]):
        got = result["distinct"][str(budgets)]
        assert got == budgets, (budgets, got)
