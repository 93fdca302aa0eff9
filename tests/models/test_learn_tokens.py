"""The head's training text as token ids (bench/learn_smollm2_moe.py ``tokens`` and
``draft --token-ids``) and whole files in pieces (``calibration_sequences(chunks=)``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from moe_spec.models.calibration import (
    calibration_files,
    calibration_sequences,
    held_out_sequences,
)
from moe_spec.models.gguf_weights import gguf_tokenizer


class CharTokens:
    """One token per character: the pieces can be checked against the file's text."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 50000 for c in text]


def test_pieces_cover_each_files_start_in_order_and_drop_short_tails():
    tok, n = CharTokens(), 100
    files = calibration_files(3, seed=5)
    one = calibration_sequences(tok, 3, n, seed=5)
    three = calibration_sequences(tok, 3, n, seed=5, chunks=3)
    assert one == [tok.encode(f.read_text())[:n] for f in files if len(f.read_text()) >= 16]
    expected = []
    for f in files:
        ids = tok.encode(f.read_text())[: 3 * n]
        expected += [ids[i : i + n] for i in range(0, len(ids), n) if len(ids[i : i + n]) >= 16]
    assert three == expected and len(three) > len(one)
    with pytest.raises(ValueError, match="chunks must be a positive integer, got 0"):
        calibration_sequences(tok, 3, n, chunks=0)


def test_ids_and_lengths_round_trip(learn):
    seqs = [[1, 2, 3], [65535], [0, 7]]
    packed = learn.ids_and_lengths(seqs)
    assert packed["ids"].dtype == np.uint16
    assert learn.split_ids(packed["ids"], packed["lengths"]) == seqs


def test_tokens_writes_the_drafts_text_that_draft_reads_back(learn, tmp_path, gguf_path):
    out = tmp_path / "ids.safetensors"
    argv = ["tokens", "--files", "3", "--chunks", "2", "--eval-tokens", "600", "--out", str(out)]
    args = learn.parser().parse_args(argv)
    args.func(args)
    train, held, record = learn.read_token_ids(out)
    tok = gguf_tokenizer(gguf_path)
    assert train == learn.draft_sequences(tok, 3, 512, 0, chunks=2)
    assert held == held_out_sequences(tok, 600, 512)
    assert record["files"] == 3 and record["chunks"] == 2
    assert record["tokens"] == sum(map(len, train)) and record["eval_tokens"] == 600
    with pytest.raises(SystemExit, match="exists"):
        args.func(args)  # never written over


def test_a_file_that_is_not_from_tokens_is_refused(learn, tmp_path):
    bare = tmp_path / "bare.safetensors"
    save_file({"ids": np.zeros(3, dtype=np.uint16)}, str(bare))
    with pytest.raises(SystemExit, match="is not a file of `learn_smollm2_moe.py tokens`"):
        learn.read_token_ids(bare)
    partial = tmp_path / "partial.safetensors"
    save_file({"train_ids": np.zeros(3, dtype=np.uint16)}, str(partial), {"record": json.dumps({})})
    with pytest.raises(SystemExit, match="is not a file"):
        learn.read_token_ids(partial)


def test_token_ids_do_not_mix_with_tokenized_parts(learn):
    args = learn.parser().parse_args(
        ["draft", "--token-ids", "ids.safetensors", "--extra-files", "10"]
    )
    with pytest.raises(SystemExit, match="--token-ids brings its own text"):
        learn.training_text(args, None, {}, [], None)
