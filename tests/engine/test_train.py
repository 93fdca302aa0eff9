"""``moe-spec train``: the README's from-scratch recipe runs end to end (a few steps), and
gradients reach every expert routing picked."""

from __future__ import annotations

import json

import torch

from moe_spec.cli import main
from moe_spec.engine.config import ModelConfig
from moe_spec.engine.model import MoETransformer
from moe_spec.engine.train import TrainConfig, train_target


def test_train_writes_a_checkpoint_that_generates(tmp_path, capsys):
    """Two optimizer steps of each model (the full recipe takes hours)."""
    out = tmp_path / "model"
    assert main(["train", "--out", str(out), "--target-steps", "2", "--draft-steps", "2"]) == 0
    log = [json.loads(line) for line in (out / "train.log").read_text().splitlines()]
    assert [e["step"] for e in log if e["phase"] == "target" and "step" in e] == [0, 1]
    assert [e["step"] for e in log if e["phase"] == "draft" and "step" in e] == [0, 1]
    capsys.readouterr()
    args = ["generate", "def f(x):", "--checkpoint", str(out), "--max-new-tokens", "4"]
    assert main(args) == 0
    assert "[4 tokens," in capsys.readouterr().err  # the text on stdout, the stats here


def test_a_target_step_moves_every_expert_routing_picked():
    """The experts' weights train through the fused MoE (whose inference path writes its
    matmuls in place, which autograd refuses): each expert some token picked gets a
    gradient, the others none, and the router and attention train too."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, n_experts=8, top_k=2,
                      expert_dim=16, max_seq_len=64)  # fmt: skip
    target = MoETransformer(cfg)
    batch = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(1))
    out = target(batch[:, :-1])
    loss = torch.nn.functional.cross_entropy(out.logits_BQV.flatten(0, 1), batch[:, 1:].flatten())
    loss.backward()
    for name, p in target.named_parameters():
        assert p.grad is not None and p.grad.isfinite().all(), name
        if name.endswith(("w13_EFD", "w2_EDF")):
            picked_E = p.grad.flatten(1).abs().sum(1) > 0
            assert picked_E.any() and picked_E.sum() >= cfg.top_k, name
        else:
            assert p.grad.abs().sum() > 0, name
    before = {k: v.clone() for k, v in target.state_dict().items()}
    stream = torch.randint(0, 64, (400,), generator=torch.Generator().manual_seed(2))
    train = TrainConfig(seq_len=16, batch_size=2, target_steps=2, warmup_steps=1)
    train_target(target, stream, train, log=lambda entry: None)
    after = target.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)
