"""Shared vocabulary: the refusal classes and the verdict records every judge, stage and metric speaks.

This module is a leaf: it imports nothing from the package, so any module may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

REFUSAL_CLASSES = ("full_compliance", "full_refusal", "partial_refusal")
REFUSALS = ("full_refusal", "partial_refusal")
# A stage whose method traces a safety-usefulness curve without generating (a refusal-token threshold, a steering
# coefficient) writes it to this file in its folder: columns group, threshold (the swept value), safety and
# usefulness (shares in [0, 1]); the analysis and the report draw every such curve beside the judged points.
CURVE_FILE = "sweep.csv"


@dataclass(frozen=True)
class Verdict:
    """One refusal judge's reading of one response.

    Attributes:
        label: One of `REFUSAL_CLASSES`, or None when the judge's output could not be parsed.
        status: ``"parsed"`` or ``"unparseable"``; unparseable verdicts are never counted as either class.
        judge: The judge's name.
        raw: The judge's raw output (for rule-based judges, the rule that fired).
        native: The judge's own class name where it differs (e.g. OR-Bench's ``indirect_refusal``).
        score: P(refusal) (full or partial) where the judge gives one (``minilm_lr``, ``phrase_lr``), for
            threshold sweeps and EvoRefuse's fitness.
    """

    label: str | None
    status: str
    judge: str
    raw: str
    native: str | None = None
    score: float | None = None


@dataclass(frozen=True)
class SafetyVerdict:
    """One safety judge's reading of one response.

    Attributes:
        verdict: ``"safe"``, ``"unsafe"``, or None when unparseable.
        categories: Violated categories as the judge names them (Llama Guard 3: ``S1``..``S14``).
        p_unsafe: P(the verdict token is "unsafe") where the judge gives it, else None.
        status: ``"parsed"`` or ``"unparseable"``.
        raw: The judge's raw output.
        judge: The judge's name.
    """

    verdict: str | None
    categories: tuple[str, ...]
    p_unsafe: float | None
    status: str
    raw: str
    judge: str


def is_refusal(label: str | None, partial_is_refusal: bool = True) -> bool | None:
    """Map a refusal class to refused / not refused (None for an unparseable verdict)."""
    if label is None:
        return None
    if label == "partial_refusal":
        return partial_is_refusal
    return label == "full_refusal"
