"""Training and evaluation text that exists offline: the CPython standard library source.

The corpus is every ``.py`` file under the running interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``), skipping ``site-packages``, caches and
files over 200 kB (generated tables). ``HELD_OUT`` files are never trained on:
they are the evaluation prompts and the held-out loss. A different Python
version has a different standard library, so the exact corpus depends on it;
the checkpoint's ``training.json`` records the version and file count it saw.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

SKIP_DIRS = frozenset({"site-packages", "__pycache__", "lib-dynload"})
MAX_FILE_BYTES = 200_000

#: Held-out files (relative to the stdlib root): evaluation only, never trained on.
HELD_OUT: tuple[str, ...] = (
    "argparse.py",
    "bisect.py",
    "calendar.py",
    "csv.py",
    "fractions.py",
    "heapq.py",
    "json/decoder.py",
    "json/encoder.py",
    "shlex.py",
    "statistics.py",
    "string.py",
    "textwrap.py",
)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(root: Path | None = None) -> list[Path]:
    """Every corpus file, sorted by relative path (held-out ones included)."""
    root = root or stdlib_root()
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if SKIP_DIRS.intersection(rel.parts[:-1]) or rel.parts[0].startswith("config-"):
            continue
        if path.is_file() and path.stat().st_size <= MAX_FILE_BYTES:
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def split_files(root: Path | None = None) -> tuple[list[Path], list[Path]]:
    """``(train, held_out)``; raises if a held-out file is missing from this stdlib."""
    root = root or stdlib_root()
    held = {name for name in HELD_OUT}
    files = corpus_files(root)
    train = [p for p in files if p.relative_to(root).as_posix() not in held]
    held_out = [root / name for name in HELD_OUT]
    missing = [str(p) for p in held_out if not p.is_file()]
    if missing:
        raise ValueError(f"held-out files missing from the standard library at {root}: {missing}")
    return train, held_out


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")
