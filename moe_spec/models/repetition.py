"""How degenerate a generated text is: the share of repeated n-grams.

``repeated_ngram_share(tokens, n)`` is the share of the text's n-grams (token
windows) that already occurred earlier in the same text: 0 for text without a
repeated window, close to 1 for a loop (``"a b a b a b ..."``). Pure Python, so
``moe-spec ab`` and the bench scripts can report it for any engine's output.
"""

from __future__ import annotations

from collections.abc import Sequence


def repeated_ngram_share(tokens: Sequence[int], n: int = 5) -> float:
    """Share of the ``len(tokens) - n + 1`` n-grams seen before in ``tokens``; 0 when none fit."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    total = len(tokens) - n + 1
    if total <= 0:
        return 0.0
    seen: set[tuple[int, ...]] = set()
    repeated = 0
    for i in range(total):
        gram = tuple(tokens[i : i + n])
        if gram in seen:
            repeated += 1
        else:
            seen.add(gram)
    return repeated / total
