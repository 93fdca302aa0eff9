"""Published speed figures the calibrated cost model is fitted to, each with its source.

Three kinds of point:

- ``spec_over_ar``: tree speculative decoding (EAGLE-3, unbudgeted or budgeted) over
  autoregressive decoding, ``acceptance * t_decode / (t_draft + t_verify)``;
- ``budget_gain``: budgeted over unbudgeted speculation on the same tree,
  ``(t_draft + t_verify(distinct)) / (t_draft + t_verify(B)) * acceptance_ratio``;
- ``expert_slope``: seconds one more distinct expert adds to a verify forward;
- ``forward_seconds``: one measured target forward over ``num_tokens`` tokens reading
  ``distinct`` experts per MoE layer, budgeted when ``budget`` is set (the GPU check's
  points, ``moe_spec.costmodel.measured``).

What is *not* here, and why:

- Mixtral-8x7B: the paper evaluates it, but no speed figure of it reached us (the notes
  and the summaries we can read quote only OLMoE and Qwen3 examples). Add it when read.
- The paper's acceptance lengths: not quoted by the summaries either. ``spec_over_ar``
  points therefore carry an *assumed* acceptance (``ASSUMED_ACCEPTANCE``), inside the
  range public EAGLE-3 heads reach at batch 1 and T=0 on the same model family
  (Qwen3-Coder-30B-A3B SpecForge head: 3.50 MT-bench, 5.33 HumanEval,
  https://huggingface.co/xinjiahui/Qwen3-Coder-30B-A3B-Instruct-FP8-EAGLE3 ; EAGLE-3 on
  LLaMA-3.1-8B: 6.48 GSM8K, arXiv 2503.01840 Table 1). ``bench/costmodel_fit.py`` reports
  how the fit moves with it.
- TreeMoE-Spec's 2.48x (Mixtral offloaded to host memory on an RTX 4090): a PCIe-bound
  regime this model does not describe.
- The llama.cpp CPU port's +7.3% / +22.3% verify throughput: unknown CPU and kernels.
- Served (CUDA-graph) stacks, candidates for a second overhead set: AngelSlim's EAGLE-3
  table gives Qwen3-30B-A3B 320.87 -> 438.07 tok/s at acceptance 2.04 (mean of four
  benchmarks, https://angelslim.readthedocs.io/ , "Speculative decoding benchmarks"), but
  neither the GPU nor the tree is stated beside it; a Qwen3-Coder-30B-A3B + EAGLE-3 study on
  one H100 with SGLang (https://jinnpan.com/en/blog/eagle3-qwen3-benchmark) whose result
  table we could not read. Mixing them with the paper's eager-PyTorch points under one set
  of overheads would be wrong: ``Overheads`` are per stack.

The tree's draft width and depth are not reported either: we assume EAGLE-3's usual
width 8 and depth 8 (255 tokens) or 6 (63 tokens), as ``moe_spec.costmodel.paper`` did.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("spec_over_ar", "budget_gain", "expert_slope", "forward_seconds")
ASSUMED_ACCEPTANCE = 5.0  # tokens per verify step; see the module docstring
PAPER = "MoE-Spec, arXiv 2602.16052 (https://arxiv.org/abs/2602.16052)"
PAPER_NOTE = (
    "the paper's worked examples as quoted by secondary summaries (../shared/notes/"
    "moe-spec-method.md, 'Experiments'); not checked against its tables"
)
PAPER_ACCEPTANCE_DROP = 0.014  # acceptance length under the budget, about -1.4%


@dataclass(frozen=True)
class PublishedPoint:
    """One published figure and the configuration it was measured on."""

    name: str
    kind: str
    shape: str  # a name in moe_spec.costmodel.SHAPES
    gpu: str  # a name in moe_spec.costmodel.GPUS
    value: float  # the ratio; seconds per expert (expert_slope); seconds (forward_seconds)
    num_tokens: int  # verify tokens (the tree)
    distinct: float  # distinct experts per MoE layer of the unbudgeted verify
    source: str
    width: int = 8
    depth: int = 6
    budget: int | None = None  # budgeted verify reads min(budget, distinct)
    acceptance: float | None = None  # spec_over_ar: tokens per verify step (assumed)
    acceptance_ratio: float = 1.0  # budget_gain: budgeted / unbudgeted acceptance

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        if not self.value > 0:
            raise ValueError(f"{self.name}: value must be > 0, got {self.value}")
        if self.kind == "spec_over_ar" and not (self.acceptance or 0) >= 1:
            raise ValueError(f"{self.name}: spec_over_ar needs acceptance >= 1")
        if self.kind == "budget_gain" and self.budget is None:
            raise ValueError(f"{self.name}: budget_gain needs a budget")


PUBLISHED: tuple[PublishedPoint, ...] = (
    PublishedPoint(
        "paper OLMoE EAGLE-3 / AR",
        "spec_over_ar",
        "OLMoE-1B-7B",
        "A100-80GB",
        2.1,
        num_tokens=255,
        distinct=54,
        depth=8,
        acceptance=ASSUMED_ACCEPTANCE,
        source=f"{PAPER}: OLMoE tree 255, 54 distinct experts, 2.1x over AR; {PAPER_NOTE}",
    ),
    PublishedPoint(
        "paper OLMoE B=32 / EAGLE-3",
        "budget_gain",
        "OLMoE-1B-7B",
        "A100-80GB",
        2.5 / 2.1,
        num_tokens=255,
        distinct=54,
        depth=8,
        budget=32,
        acceptance_ratio=1 - PAPER_ACCEPTANCE_DROP,
        source=f"{PAPER}: OLMoE tree 255, 54 -> B=32, 2.1x -> 2.5x over AR; {PAPER_NOTE}",
    ),
    PublishedPoint(
        "paper Qwen3 EAGLE-3 / AR",
        "spec_over_ar",
        "Qwen3-30B-A3B",
        "A100-80GB",
        1.9,
        num_tokens=63,
        distinct=80,
        acceptance=ASSUMED_ACCEPTANCE,
        source=f"{PAPER}: Qwen3-30B-A3B tree 63, ~80 distinct experts, 1.9x over AR; " + PAPER_NOTE,
    ),
    PublishedPoint(
        "paper Qwen3 B=64 / EAGLE-3",
        "budget_gain",
        "Qwen3-30B-A3B",
        "A100-80GB",
        2.4 / 1.9,
        num_tokens=63,
        distinct=80,
        budget=64,
        acceptance_ratio=1 - PAPER_ACCEPTANCE_DROP,
        source=f"{PAPER}: Qwen3-30B-A3B tree 63, ~80 -> B=64, 1.9x -> 2.4x over AR; " + PAPER_NOTE,
    ),
    PublishedPoint(
        "Limits of Speculation: ms per unique expert",
        "expert_slope",
        "Qwen3-30B-A3B",  # Qwen3-Coder-30B-A3B has the same architecture
        "A100-80GB",
        0.26e-3,
        num_tokens=63,
        distinct=80,
        source="'Limits of Speculation', arXiv 2609.22156 (https://arxiv.org/abs/2609.22156): "
        "a linear model of verify time against the expert union, about +0.26 ms per extra "
        "unique expert on an A100 (Qwen3-Coder-30B); quoted from a summary "
        "(../shared/notes/moe-spec-method.md), the tree size is not quoted (63 assumed)",
    ),
)
