"""Prompts for an A/B run: a JSONL file with a ``prompt`` field, or plain text one per line.

A file whose first non-blank line starts with ``{`` is read as JSONL; anything
else is plain text (blank lines skipped, ``\\n`` escapes kept literally).
"""

from __future__ import annotations

import json
from pathlib import Path

from moe_spec.engine.data import HELD_OUT
from moe_spec.engine.demo import held_out_prompts


class PromptsError(ValueError):
    """The prompts file is missing, empty or malformed."""


def check_file(path: Path, what: str) -> None:
    """``PromptsError`` (a ``ValueError``) unless ``path`` is a regular file, saying what it is."""
    if path.is_file():
        return
    if not path.exists():
        problem = "does not exist"
    elif path.is_dir():
        problem = "is a directory; name a file"
    else:
        problem = "is not a regular file (a device, pipe or socket); name a file"
    raise PromptsError(f"{what} {str(path)!r} {problem}")


def load_prompts(path: str | Path) -> list[str]:
    """The prompts in ``path``, in file order."""
    path = Path(path)
    check_file(path, "prompts file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PromptsError(f"{path}: not UTF-8 text ({exc.reason})") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise PromptsError(f"{path}: no prompts (the file is empty)")
    if lines[0][1].lstrip().startswith("{"):
        return [parse_jsonl_line(path, n, line) for n, line in lines]
    return [line for _, line in lines]


def parse_jsonl_line(path: Path, n: int, line: str) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise PromptsError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
        raise PromptsError(f'{path}:{n}: expected an object with a string "prompt" field')
    if not obj["prompt"]:
        raise PromptsError(f"{path}:{n}: the prompt is empty")
    return obj["prompt"]


def held_out_benchmark_prompts(count: int = 20, chars: int = 1200) -> list[str]:
    """``count`` deterministic prompts from the held-out files (never trained on).

    The first 12 are ``held_out_prompts(HELD_OUT)``; the rest are the code that
    follows each of those prompts (the next ``chars`` characters), file by file.
    """
    first = held_out_prompts(HELD_OUT, chars=chars)
    second = held_out_prompts(HELD_OUT, chars=2 * chars)
    more = [b[len(a) :] for a, b in zip(first, second, strict=True)]
    prompts = first + [m for m in more if m.strip()]
    if count > len(prompts):
        raise PromptsError(f"only {len(prompts)} held-out prompts available, asked for {count}")
    return prompts[:count]
