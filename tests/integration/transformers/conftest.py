"""Tiny random-initialised transformers models (built from transformers' own config classes).

transformers' config and model classes import Triton; they are looked up only when a
test runs, because collecting them earlier would switch Triton on before
``tests/kernels/conftest.py`` can select its interpreter (a whole-suite run breaks).

float64 and a wide initialiser keep routing and argmax decisions far from ties,
so a tree forward and a plain forward agree on every top-k and every token.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch.overrides import TorchFunctionMode

from moe_spec.engine.tree import DraftTree
from tests.tiny_models import ARCH_CONFIGS, COMMON, VOCAB, tiny_config  # noqa: F401 (shared)

REQUIRED = ("qwen3_moe", "olmoe", "mixtral")
EXTRA = (
    "qwen2_moe", "deepseek_v2", "gpt_oss", "glm4_moe", "deepseek_v3", "granitemoe",
    "granitemoeshared", "phimoe",
)  # fmt: skip


def build(config, seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, experts_implementation="eager")
    for module in model.modules():  # a selection bias that matters (initialised to zero)
        if hasattr(module, "e_score_correction_bias"):
            module.e_score_correction_bias.copy_(torch.randn(module.num_experts) * 0.3)
    return model.to(torch.float64).eval().requires_grad_(False)


@pytest.fixture(scope="session", params=REQUIRED + EXTRA)
def moe_model(request):
    return build(tiny_config(request.param))


@pytest.fixture(scope="session")
def dense_draft():
    config = transformers.Qwen3Config(**COMMON, head_dim=8, intermediate_size=32)
    return build(config, seed=1)


def hand_tree(tokens: list[int], parents: list[int]) -> DraftTree:
    """A DraftTree from tokens and parent indices (topological order)."""
    depth = [0]
    for p in parents[1:]:
        depth.append(depth[p] + 1)
    return DraftTree(
        tokens_N=torch.tensor(tokens),
        parent_N=torch.tensor(parents),
        depth_N=torch.tensor(depth),
        logprob_N=-torch.arange(len(tokens), dtype=torch.float32),
    )


class ExpertAccessCounter(TorchFunctionMode):
    """Which expert weight slices each experts module actually reads (an independent count).

    Any torch call that receives a slice ``param[e]`` of a registered experts
    parameter (``gate_up_proj``, the first weight every expert computation reads)
    records expert ``e`` for that layer, in the current ``window``.
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.params = {}
        experts = [m for m in model.modules() if type(m).__name__.endswith("Experts")]
        for layer, module in enumerate(experts):
            self.params[module.gate_up_proj.untyped_storage().data_ptr()] = (layer, module)
        self.window = 0
        self.seen: dict[tuple[int, int], set[int]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        for arg in list(args) + list((kwargs or {}).values()):
            if isinstance(arg, torch.Tensor) and arg.dim() == 2:
                hit = self.params.get(arg.untyped_storage().data_ptr())
                if hit is not None:
                    layer, module = hit
                    expert = arg.storage_offset() // module.gate_up_proj.stride(0)
                    self.seen.setdefault((self.window, layer), set()).add(expert)
        return func(*args, **(kwargs or {}))

    def distinct(self, window: int, layers: int) -> list[int]:
        return [len(self.seen.get((window, layer), ())) for layer in range(layers)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls gain nothing from threads; on a shared 2-core box they lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
