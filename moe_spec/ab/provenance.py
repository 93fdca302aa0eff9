"""What an A/B run's stored results depend on: fingerprints a resumed run must match.

``--resume`` may reuse a finished run only if everything that shaped its tokens
is unchanged:

- the model: a content hash of the checkpoint files (engine backend), or the
  model each server reports (sglang backend);
- the code: the package sources that produce tokens (engine, budgeting core,
  policies, kernels, transformers adapter, the engine backend) and torch's version;
- the arm: its full configuration (a label that stayed while a budget changed
  is a different arm).

Files up to ``FULL_HASH_BYTES`` are hashed whole; a larger file (a real model's
shard) by its size and its first and last ``EDGE_BYTES``, so that a resume does
not read tens of GB: a change that keeps a shard's size and both ends is missed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import moe_spec
from moe_spec.ab.configs import RunConfig

FULL_HASH_BYTES = 256 << 20
EDGE_BYTES = 16 << 20
#: Sources (relative to the package) whose changes can change generated tokens.
TOKEN_SOURCES = (
    "engine",
    "budget.py",
    "routing.py",
    "policies",
    "kernels",
    "integration/transformers",
    "ab/engine_backend.py",
    "ab/depth_width.py",
)


def file_sha(path: Path) -> str:
    """sha256 of a file: whole up to ``FULL_HASH_BYTES``, else size + both ends."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(f"size={size}".encode())
            digest.update(f.read(EDGE_BYTES))
            f.seek(size - EDGE_BYTES)
            digest.update(f.read(EDGE_BYTES))
    return digest.hexdigest()


def tree_sha(paths: list[Path], suffixes: tuple[str, ...] = ()) -> str:
    """One sha256 over the files in ``paths`` (folders: every file below), names included."""
    digest = hashlib.sha256()
    for root in paths:
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            if suffixes and path.suffix not in suffixes:
                continue
            name = path.relative_to(root) if root.is_dir() else Path(path.name)
            digest.update(f"{name.as_posix()}\0{file_sha(path)}\n".encode())
    return digest.hexdigest()[:16]


def model_sha(paths: list[str | Path]) -> str:
    """Content hash of the model folders (or files) an engine backend loads."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise ValueError(f"model path {missing[0]!r} does not exist")
    return tree_sha([Path(p) for p in paths])


def code_sha() -> str:
    """Hash of the sources that produce tokens, and torch's version."""
    import torch

    package = Path(moe_spec.__file__).parent
    sources = tree_sha([package / s for s in TOKEN_SOURCES], suffixes=(".py",))
    return f"{moe_spec.__version__}+{sources}, torch {torch.__version__}"


def config_sha(config: RunConfig) -> str:
    """Hash of an arm's full configuration."""
    text = json.dumps(asdict(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
