"""Learn the split of SmolLM2's FFNs: shared neurons, routed groups and routers (run once here).

Shape legend: T calibration tokens, D hidden size, F FFN neurons, E routed experts, L layers.

``learn_split`` runs the dense model over calibration text (stdlib training files,
never the held-out ones), and per layer: takes the FFN input ``x [T, D]``, computes the
neuron activations, picks the shared neurons and clusters the rest (``grouping.py``),
labels each token with the oracle's top-k experts (largest output norm) and fits the
router to them (``router.py``). ``save_split`` writes what ships in
``moe_spec/assets/smollm2-moe/``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from moe_spec.models.calibration import ffn_activations, ffn_inputs
from moe_spec.models.grouping import split_neurons
from moe_spec.models.router import (
    expert_output_norms,
    fit_router,
    fit_temperature,
    oracle_topk,
    recall,
    topk_target,
)
from moe_spec.models.simulate import LayerSplit


@dataclass(frozen=True)
class SplitConfig:
    """Sizes of the split: ``shared`` neurons always on, ``n_experts`` groups, top-``top_k``."""

    shared: int
    n_experts: int
    top_k: int
    router_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("shared", "n_experts", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.n_experts < 1 or not 1 <= self.top_k <= self.n_experts:
            raise ValueError(
                f"need 1 <= top_k={self.top_k} <= n_experts={self.n_experts}, n_experts >= 1"
            )
        if not self.router_scale >= 0:
            raise ValueError(f"router_scale must be >= 0, got {self.router_scale!r}")


def learn_layer(
    mlp, x_TD: torch.Tensor, config: SplitConfig, seed: int
) -> tuple[LayerSplit, float]:
    """One layer's split and router; the router's recall of the oracle's experts."""
    E, K, S = config.n_experts, config.top_k, config.shared
    with torch.no_grad():
        act_TF = ffn_activations(mlp, x_TD)
        w_down_DF = mlp.down_proj.weight
        perm_F = split_neurons(act_TF, w_down_DF, S, E, seed=seed)
        norms_TE = expert_output_norms(act_TF, w_down_DF, perm_F, S, E)
    oracle_TK = oracle_topk(norms_TE, K)
    router_ED = fit_router(x_TD, norms_TE)
    logits_TE = x_TD @ router_ED.T
    router_ED = router_ED * fit_temperature(logits_TE, topk_target(oracle_TK, E))
    pred_TK = logits_TE.topk(K, dim=1).indices
    return LayerSplit(perm_F, S, router_ED), recall(pred_TK, oracle_TK)


def learn_split(
    model, sequences: list[list[int]], config: SplitConfig, seed: int = 0
) -> tuple[list[LayerSplit], list[float]]:
    """Every layer's split (seeded per layer: ``seed + layer``) and router recall."""
    x_per_layer = ffn_inputs(model, sequences)
    splits, recalls = [], []
    for i, layer in enumerate(model.model.layers):
        split, rec = learn_layer(layer.mlp, x_per_layer[i], config, seed + i)
        splits.append(split)
        recalls.append(rec)
    return splits, recalls


def save_split(folder: Path, splits: list[LayerSplit], config: SplitConfig, record: dict) -> None:
    """``split.safetensors`` (``perms_LF`` int32, ``routers_LED`` fp32) and ``moe.json``."""
    from moe_spec.models.build import SPEC_FORMAT
    from moe_spec.models.wheel import DISTRIBUTION, GGUF_NAME, GGUF_SHA256, VERSION

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "perms_LF": torch.stack([s.perm_F for s in splits]).to(torch.int32).contiguous(),
        "routers_LED": torch.stack([s.router_ED for s in splits]).float().contiguous(),
    }
    save_file(tensors, str(folder / "split.safetensors"))
    spec = {
        "format": SPEC_FORMAT,
        "base": {
            "distribution": DISTRIBUTION,
            "version": VERSION,
            "gguf": GGUF_NAME,
            "gguf_sha256": GGUF_SHA256,
        },
        **asdict(config),
        "learned": record,
    }
    (folder / "moe.json").write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
