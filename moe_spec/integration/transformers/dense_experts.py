"""``experts_implementation="dense"``: every routed expert in two matmuls, for CPUs.

transformers' ``grouped_mm`` and ``batched_mm`` gather the chosen experts and multiply
them one group at a time. With many small experts (smollm2-moe: 32 experts of 12
neurons per layer) a CPU spends a forward on the dozens of small ops that gathering
takes, not on arithmetic. Here every token runs through every expert of the layer in
one matmul ([T, D] x [D, E*2F]), the routing weights scatter into a dense gate
[T, E] (zero for experts a token did not choose), and one more matmul sums the
weighted expert outputs ([T, E*F] x [E*F, D]). The result is what the sparse
implementations compute (up to summation order; tested), but every expert's weights are
read whatever the routing: a budget then saves no time, only the experts' reads that it
would save on a GPU. Use it where the forward is bound by dispatch, not bytes.

Legend: T tokens, K top-k, E experts, F expert dim, D model dim.
"""

from __future__ import annotations

import torch

NAME = "dense"


def down_rows(experts: torch.nn.Module) -> torch.Tensor:
    """``down_proj`` [E, D, F] laid out as one matrix [D, E*F], cached on the module.

    Rebuilt when the weight is replaced or changed in place (its version counter moves).
    """
    w_EDF = experts.down_proj
    key = (w_EDF.data_ptr(), w_EDF._version, w_EDF.dtype)
    cached = getattr(experts, "_dense_down", None)
    if cached is None or cached[0] != key:
        E, D, F = w_EDF.shape
        cached = (key, w_EDF.detach().permute(1, 0, 2).reshape(D, E * F).contiguous())
        experts._dense_down = cached
    return cached[1]


def dense_experts_forward(
    self: torch.nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """Experts' output [T, D] for ``hidden_states`` [T, D] routed by ``top_k_index`` and
    ``top_k_weights`` [T, K].

    The layout transformers' MoE experts share: ``gate_up_proj`` [E, 2F, D] (gate rows
    first), ``down_proj`` [E, D, F], no bias, not transposed.
    """
    if not self.has_gate or self.has_bias or self.is_transposed or not self.is_concatenated:
        raise ValueError(
            f'experts_implementation="{NAME}" supports gated experts without bias in '
            f"transformers' concatenated, untransposed layout; {type(self).__name__} is not "
            "(use grouped_mm or batched_mm)"
        )
    x_TD = hidden_states
    T = x_TD.shape[0]
    E, F2, D = self.gate_up_proj.shape
    gate_up_TEF2 = (x_TD @ self.gate_up_proj.reshape(E * F2, D).T).view(T, E, F2)
    h_TEF = self._apply_gate(gate_up_TEF2)
    gate_TE = torch.zeros(T, E, dtype=h_TEF.dtype, device=x_TD.device)
    gate_TE.scatter_add_(1, top_k_index, top_k_weights.to(h_TEF.dtype))
    h_TX = (h_TEF * gate_TE.unsqueeze(-1)).reshape(T, -1)  # X = E*F
    return (h_TX @ down_rows(self).T).to(hidden_states.dtype)


def register() -> None:
    """Make ``experts_implementation="dense"`` known to transformers (idempotent)."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    if NAME not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(NAME, dense_experts_forward)
