"""The checkpoint (a 2-layer slice with the shipped EAGLE head) runs in the transformers engine."""

from __future__ import annotations

import shutil

import pytest
import torch

from moe_spec.engine.generate import SpecConfig
from moe_spec.integration.transformers import load_engine
from moe_spec.models.build import ASSETS, write_checkpoint


@pytest.fixture(scope="module")
def slice_dir(tmp_path_factory, sliced, shipped_split, gguf_path):
    spec, perms, routers = shipped_split
    shape, state = sliced
    path = tmp_path_factory.mktemp("smollm2-moe-slice")
    write_checkpoint(path, shape, state, spec, perms, routers, gguf_path)
    shutil.copytree(ASSETS / "eagle", path / "eagle")
    return path


def test_engine_loads_slice_with_eagle_head(slice_dir, shipped_split):
    spec = shipped_split[0]
    engine = load_engine(
        str(slice_dir), str(slice_dir / "eagle"), device="cpu", dtype=torch.float32
    )
    assert (engine.n_experts, engine.top_k) == (spec["n_experts"], spec["top_k"])
    assert engine.n_moe_layers == 2
    prompt = engine.encode("def fibonacci(n):\n    if n < 2:\n        return n\n")
    expected = engine.generate_autoregressive(prompt, 12).tokens
    result = engine.generate_speculative(prompt, 12, SpecConfig(width=4, depth=3, num_tokens=12))
    assert result.tokens == expected  # greedy, unbudgeted: the target's own output
    assert all(len(s.distinct_before_L) == 2 for s in result.steps)
    budgeted = engine.generate_speculative(
        prompt,
        12,
        SpecConfig(width=4, depth=3, num_tokens=12, policy="router-mass", budget=spec["top_k"]),
    )
    assert all(max(s.distinct_after_L) <= spec["top_k"] for s in budgeted.steps)


def test_the_shipped_head_drafts_the_same_from_its_sglang_export(slice_dir):
    """``eagle-sglang/`` (the build writes it for an sglang-layout head) is the same draft."""
    from moe_spec.integration.sglang.eagle_draft import load_sglang_draft
    from moe_spec.integration.transformers.loading import read_head_config
    from moe_spec.models.build import write_sglang_draft

    layout = read_head_config(slice_dir / "eagle")[0].layout
    written = write_sglang_draft(slice_dir)
    assert (written is not None) == (layout == "sglang")
    if written is None:
        return
    engine = load_engine(
        str(slice_dir), str(slice_dir / "eagle"), device="cpu", dtype=torch.float32
    )
    exported = load_engine(str(slice_dir), str(written), device="cpu", dtype=torch.float32)
    shipped, head = engine.draft.head.state_dict(), load_sglang_draft(written)[0].state_dict()
    assert shipped.keys() == head.keys() and all(torch.equal(shipped[k], head[k]) for k in head)
    prompt = engine.encode("import os\n\ndef walk(path):\n")
    spec = SpecConfig(width=4, depth=3, num_tokens=12)
    a, b = (e.generate_speculative(prompt, 10, spec) for e in (engine, exported))
    assert a.tokens == b.tokens and [s.committed for s in a.steps] == [s.committed for s in b.steps]
