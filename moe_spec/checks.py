"""Value checks shared by the commands and configurations, made before any work starts.

Each raises ``ValueError`` naming the flag (or field), the value and what is
allowed, so a long run never fails at its end on something wrong at its start.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

MIN_TEMPERATURE = 1e-6  # below it logits / T overflows float32 for ordinary logits
TRUE_WORDS = ("1", "true", "yes", "on")  # an on/off environment variable's spellings
FALSE_WORDS = ("0", "false", "no", "off")


def flag_value(raw: str | None, default: bool) -> bool | None:
    """An on/off word (any case, spaces ignored) as a bool, ``default`` where unset or empty,
    None where it is no such word (the caller names the variable in its error)."""
    word = (raw or "").strip().lower()
    if not word:
        return default
    return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Check, without creating anything, that ``path`` is or can be made a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a file; name a folder (it is created if new)")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {str(path)!r}: the folder is not writable")
        return path
    parent = next(p for p in path.absolute().parents if p.exists())  # the root exists
    if not parent.is_dir():
        problem = f"{parent} is a file, not a folder"
    elif not os.access(parent, os.W_OK | os.X_OK):
        problem = f"{parent} is not writable"
    else:
        return path
    raise ValueError(f"{flag} {str(path)!r}: cannot create the folder ({problem})")


def prepare_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create the output folder ``path`` (parents too) once :func:`check_output_dir` passes."""
    path = check_output_dir(path, flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"{flag} {str(path)!r}: cannot create the folder ({exc.strerror or exc})"
        ) from None
    return path


def check_positive(flag: str, value: int) -> int:
    """An integer flag that must be at least 1 (token counts, prompt counts)."""
    if value < 1:
        raise ValueError(f"{flag} must be >= 1, got {value}")
    return value


def check_temperature(value: float, flag: str = "--temperature") -> float:
    """0 (greedy) or a finite temperature large enough to divide logits by."""
    if not math.isfinite(value) or value < 0 or 0 < value < MIN_TEMPERATURE:
        raise ValueError(
            f"{flag} is {value!r}; allowed: 0 (greedy) or a finite value >= "
            f"{MIN_TEMPERATURE:g} (sampling)"
        )
    return value


def check_seed(value: int, flag: str = "--seed") -> int:
    """A seed torch's generators accept: 0 <= seed < 2**63."""
    if not 0 <= value < 2**63:
        raise ValueError(f"{flag} is {value}; allowed: 0 <= seed < 2**63")
    return value
