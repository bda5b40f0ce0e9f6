"""Lexical diversity of a prompt set (distinct-n and MSTTR), as the EvoRefuse paper reports it."""

from __future__ import annotations

import re
from collections.abc import Sequence

def _words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def lexical_diversity(texts: Sequence[str], window: int = 50) -> dict:
    """Distinct-1, distinct-2 (unique n-grams / n-grams over the set) and MSTTR (mean type-token ratio over
    consecutive ``window``-word segments; the authors' metric uses 800-word windows on larger sets)."""
    words = [w for t in texts for w in _words(t)]
    bigrams = [tuple(p) for t in texts for p in zip(_words(t), _words(t)[1:])]
    segments = [words[i:i + window] for i in range(0, len(words) - window + 1, window)]
    return {"texts": len(texts), "words": len(words),
            "distinct_1": len(set(words)) / len(words) if words else None,
            "distinct_2": len(set(bigrams)) / len(bigrams) if bigrams else None,
            "msttr": sum(len(set(s)) / window for s in segments) / len(segments) if segments else None,
            "msttr_window": window, "mean_words": len(words) / len(texts) if texts else None}
