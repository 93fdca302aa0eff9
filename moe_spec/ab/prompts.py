"""Prompts for an A/B run: JSONL, a JSON array, or plain text one prompt per line.

A file whose first non-blank line starts with ``{`` is read as JSONL (an object with a
string ``prompt`` field per line). A file that parses whole as a JSON array is read as one:
its items are strings or such objects. A first line starting with ``[`` then ``"``, ``{`` or
nothing (spaces aside) must be a valid JSON array. Anything else is plain text (blank lines
skipped, ``\\n`` escapes kept literally), ``[INST] ...`` included. Prompts may not be empty.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from moe_spec.engine.data import HELD_OUT
from moe_spec.engine.demo import held_out_prompts

ARRAY_START = re.compile(r'\[\s*(["{]|$)')  # a first line that starts a JSON array


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
        what = "is empty" if not text else "holds only blank lines"
        raise PromptsError(f"{path}: no prompts (the file {what})")
    first = lines[0][1].lstrip()
    items = json_array(path, text, first) if first.startswith("[") else None
    if items is not None:
        if not items:
            raise PromptsError(f"{path}: no prompts (the JSON array is empty)")
        return [prompt_of(item, f"{path}: item {n}", True) for n, item in enumerate(items, 1)]
    if first.startswith("{"):
        return [parse_jsonl_line(path, n, line) for n, line in lines]
    return [line for _, line in lines]


def json_array(path: Path, text: str, first: str) -> list | None:
    """The file's items if it parses as a JSON array, None if it is plain text that starts
    with ``[``; ``PromptsError`` if its ``first`` line starts like an array but it is not."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if not ARRAY_START.match(first):
            return None  # "[INST] ..."
        raise PromptsError(
            f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}); a file "
            'whose first line starts with [ then ", { or nothing must be a JSON array'
        ) from None
    return data if isinstance(data, list) else None


def parse_jsonl_line(path: Path, n: int, line: str) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise PromptsError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
    return prompt_of(obj, f"{path}:{n}")


def prompt_of(obj, where: str, bare: bool = False) -> str:
    """The non-empty prompt of a JSONL line's or a JSON array item's value (``bare``: a
    string is the prompt itself); ``where`` names the line or item in errors."""
    if bare and isinstance(obj, str):
        obj = {"prompt": obj}
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
        what = "a string or an object" if bare else "an object"
        raise PromptsError(f'{where}: expected {what} with a string "prompt" field')
    if not obj["prompt"]:
        raise PromptsError(f"{where}: the prompt is empty")
    return obj["prompt"]


def held_out_benchmark_prompts(count: int = 20, chars: int = 1200) -> list[str]:
    """``count`` deterministic prompts from the held-out files (never trained on).

    The first 12 are ``held_out_prompts(HELD_OUT)``; the rest are the code that
    follows each of those prompts (the next ``chars`` characters), file by file.
    """
    prompts = held_out_prompts(HELD_OUT, chars=chars)
    prompts += held_out_deep_prompts(len(HELD_OUT), chars, skip=chars)
    if count > len(prompts):
        raise PromptsError(f"only {len(prompts)} held-out prompts available, asked for {count}")
    return prompts[:count]


def held_out_deep_prompts(count: int = 11, chars: int = 1200, skip: int = 4800) -> list[str]:
    """Up to ``count`` deterministic prompts from deep inside the held-out files: the code
    ``skip`` to ``skip + chars`` characters after each file's first ``def``/``class`` (cut at
    whole lines), in file order, files too short for it left out (11 of the 12 at the
    defaults)."""
    ends = held_out_prompts(HELD_OUT, chars=skip + chars)
    starts = held_out_prompts(HELD_OUT, chars=skip)
    deep = [end[len(start) :] for end, start in zip(ends, starts, strict=True)]
    return [d for d in deep if d.strip()][:count]


# User turns for chat prompts, written for the benchmarks (not drawn from a dataset, not tuned
# on): everyday requests of the kinds a served assistant gets, prose more than code, so that a
# draft trained on Python code is judged where its acceptance is low.
CHAT_QUESTIONS: tuple[str, ...] = (
    "Explain why the sky is blue in a short paragraph.",
    "What are three tips for writing clear emails?",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "How do I make a cup of green tea that is not bitter?",
    "Summarize the main causes of the French Revolution.",
    "What is the difference between weather and climate?",
    "Give me a packing list for a three-day hiking trip.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Why do cats purr? Answer for a curious ten-year-old.",
    "Describe how a bill becomes a law in the United States.",
    "Suggest five names for a small bakery and say why each fits.",
    "What should I consider when choosing my first houseplant?",
)


def chat_prompts(template: Callable[[list[dict[str, str]]], str], count: int = 8) -> list[str]:
    """The first ``count`` of :data:`CHAT_QUESTIONS`, each one user turn written out by
    ``template`` (a chat template: messages to the prompt text, the assistant's turn opened),
    e.g. :func:`chat_template_of` a transformers tokenizer."""
    if not 1 <= count <= len(CHAT_QUESTIONS):
        raise PromptsError(f"chat prompts: count must be 1 to {len(CHAT_QUESTIONS)}, got {count}")
    return [template([{"role": "user", "content": q}]) for q in CHAT_QUESTIONS[:count]]


def chat_template_of(tokenizer) -> Callable[[list[dict[str, str]]], str]:
    """``tokenizer``'s chat template as a function of the messages (the generation prompt
    added); ``PromptsError`` for a tokenizer without one (the shipped toy model's: it knows
    only Python code)."""
    if not getattr(tokenizer, "chat_template", None):
        raise PromptsError(
            "chat prompts need a model whose tokenizer has a chat template "
            f"(e.g. smollm2-moe); {type(tokenizer).__name__} has none"
        )

    def template(messages: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return template
