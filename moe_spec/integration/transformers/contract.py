"""Check at load that each MoE block's router does what its registered convention says.

Shape legend: T probe tokens, E experts, K top-k.

The budgeting core re-routes tokens with the convention an architecture
declares (scoring, selection bias, renormalisation, scale, output order). If a
registration is wrong, budgeted output would be silently wrong, so every block's
router is probed once with a few seeded random inputs and what it returns is
compared with what the convention computes from its own logits: ids as sets per
token, weights per id. A mismatch is refused naming the block, the field and
both values.
"""

from __future__ import annotations

import torch

from moe_spec.integration.transformers.architectures import RouterConvention, UnsupportedModelError
from moe_spec.routing import RoutingRecord, sparsemixer_topk

PROBE_TOKENS = 8


def convention_topk(
    logits_TE: torch.Tensor, convention: RouterConvention, top_k: int, bias_E: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``(ids_TK, weights_TK)`` the convention derives from router logits."""
    if convention.scoring == "sparsemixer":
        weights_TK, ids_TK = sparsemixer_topk(logits_TE, top_k, convention.sparsemixer_eps)
        return ids_TK, weights_TK * convention.scale
    probe = RoutingRecord(
        logits_TE.float(),
        torch.zeros(logits_TE.shape[0], top_k, dtype=torch.long),
        torch.zeros(logits_TE.shape[0], top_k),
        scoring=convention.scoring,
        renormalize=convention.renormalize,
        correction_bias_E=None if bias_E is None else bias_E.float(),
    )
    ids_TK = probe.choice_scores_TE().topk(top_k, dim=-1).indices
    weights_TK = probe.gate_weights_TE().gather(1, ids_TK)
    if convention.renormalize:
        weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
    return ids_TK, weights_TK * convention.scale


def check_router_contract(block, convention: RouterConvention, hidden_size: int) -> None:
    """Probe ``block.router``; raise :class:`UnsupportedModelError` if it breaks ``convention``."""
    router = block.router
    weight = next(router.parameters())
    g = torch.Generator().manual_seed(block.layer_idx)
    x_TD = torch.randn(PROBE_TOKENS, hidden_size, generator=g).to(weight.device, weight.dtype)
    name = f"MoE block {block.layer_idx} ({type(router).__name__})"
    try:
        output = router(x_TD)
    except Exception as exc:
        raise UnsupportedModelError(f"{name}: probing its router failed: {exc!r}") from exc
    if not isinstance(output, tuple) or len(output) != 3:
        raise UnsupportedModelError(
            f"{name}: its router returned {type(output).__name__}; the convention expects a "
            f"tuple ordered {convention.returns}"
        )
    logits, weights, ids = convention.split(output)
    shapes = {"logits": logits, "weights": weights, "ids": ids}
    for field, tensor in shapes.items():
        if not isinstance(tensor, torch.Tensor):
            raise UnsupportedModelError(f"{name}: router output {field!r} is not a tensor")
    if ids.is_floating_point() or not weights.is_floating_point():
        raise UnsupportedModelError(
            f"{name}: router returned ids of {ids.dtype} and weights of {weights.dtype}; is the "
            f"output order {convention.returns} right?"
        )
    logits_TE = logits.reshape(-1, block.num_experts)
    want_ids, want_weights = convention_topk(
        logits_TE, convention, block.top_k, block.correction_bias_E
    )
    got_ids = ids.reshape(-1, block.top_k).long()
    if not torch.equal(
        got_ids.sort(dim=-1).values, want_ids.sort(dim=-1).values.to(got_ids.device)
    ):
        raise UnsupportedModelError(
            f"{name}: field ids differs from the registered convention: router "
            f"{got_ids[0].tolist()}, convention {want_ids[0].tolist()} (token 0)"
        )
    got_w = weights.reshape(-1, block.top_k).float()
    order_got, order_want = got_ids.argsort(dim=-1), want_ids.argsort(dim=-1)
    got_w = got_w.gather(1, order_got)
    want_w = want_weights.gather(1, order_want).to(got_w.device)
    tol = 1e-5 if weights.dtype in (torch.float32, torch.float64) else 2e-2
    if not torch.allclose(got_w, want_w, rtol=tol, atol=tol):
        row = int((got_w - want_w).abs().amax(dim=-1).argmax())
        raise UnsupportedModelError(
            f"{name}: field weights differs from the registered convention (scoring="
            f"{convention.scoring}, renormalize={convention.renormalize}, scale="
            f"{convention.scale}): router {[round(w, 4) for w in got_w[row].tolist()]}, "
            f"convention {[round(w, 4) for w in want_w[row].tolist()]} (token {row}, by expert id)"
        )
