"""A safety–usefulness curve over an intervention's coefficient, on validation prompts.

Each point generates greedily on the validation rows with the intervention in place, judges the responses with
the stage's judge and scores them as an evaluation does (`porover.metrics.compute_metrics`: safety = refusals of
unsafe prompts, usefulness = answers to safe ones). Responses are stored per point, keyed by the model, the
intervention and the sampling, so a killed curve resumes at the next batch. The curve is written as
`porover.vocabulary.CURVE_FILE` (``threshold`` = the coefficient), which the analysis and the report draw.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from porover.digests import digest_of
from porover.generation import Sampling, TransformersBackend, generate_responses, response_key
from porover.judges import judge_refusals
from porover.metrics import compute_metrics
from porover.store import JsonlStore
from porover.vocabulary import CURVE_FILE


def curve_point(pair: Callable, rows: Sequence[dict], intervention: Callable, description: dict, folder: Path,
                sampling: Sampling, judge: str, judge_settings: dict | None = None, batch_size: int = 16,
                desc: str = "curve") -> tuple[list[dict], dict]:
    """Judged responses and overall scores of one intervention on ``rows``.

    Args:
        pair: A zero-argument function returning ``(model, tokenizer)``, called only if a response is missing;
            the model is as it was after the call.
        rows: Validation rows with ``source``, ``id``, ``prompt`` and ``label``.
        intervention: A function of the model returning a context manager that puts the intervention in place
            (hooks or orthogonalized weights) and takes it away.
        description: What the intervention is, by content (model digest, kind, coefficient, vector digest...): the
            key of its response store.
        folder: Where the stores live.
        sampling: Generation settings.
        judge: The refusal judge; ``judge_settings`` its settings.

    Returns:
        ``(rows with response and refusal, overall group of compute_metrics: safety, usefulness, f1)``.
    """
    store = JsonlStore(folder / f"{digest_of([description, asdict(sampling)])[:16]}.jsonl", key=response_key)
    todo = [row for row in rows if response_key(row) not in store]
    if todo:
        model, tokenizer = pair()
        with intervention(model):
            generate_responses(TransformersBackend(model, tokenizer, batch_size), todo, store, sampling, desc=desc)
    responses = generate_responses(None, rows, store, sampling)  # every row is stored now: nothing generates
    verdicts = judge_refusals([r["prompt"] for r in responses], [r["response"] for r in responses], judge=judge,
                              **(judge_settings or {}))
    judged = [{**row, "refusal": verdict.label, "judge": judge} for row, verdict in zip(responses, verdicts)]
    overall = compute_metrics(judged, bootstrap_samples=0, judge=judge)["overall"]
    return judged, overall


def point_row(coefficient: float, overall: dict, kind: str) -> dict:
    """One row of the curve file: shares in [0, 1] (as ``metrics.json``), the F1 it was chosen by."""
    value = lambda name: overall[name]["value"]  # noqa: E731
    return {"group": "overall", "threshold": coefficient, "safety": value("safety"), "usefulness": value("usefulness"),
            "f1": value("f1"), "n": overall["n"], "kind": kind, "split": "validation"}


def best_point(points: Sequence[dict], prefer: float = 0.0) -> dict:
    """The point with the highest validation F1; ties go to the coefficient nearest ``prefer`` (the smallest
    intervention: 0 for activation addition, the authors' λ for the false-refusal vector).

    Raises:
        ValueError: No point has an F1 (the validation prompts lack safe or unsafe ones).
    """
    scored = [p for p in points if p["f1"] is not None]
    if not scored:
        raise ValueError("no curve point has both safe and unsafe validation prompts judged; give validation "
                         "benchmarks with both (e.g. or_bench_hard:val and harmbench:val)")
    return max(scored, key=lambda p: (p["f1"], -abs(p["threshold"] - prefer)))


def write_curve(folder: Path, points: Sequence[dict]) -> Path:
    """Write the curve as `porover.vocabulary.CURVE_FILE` in the stage folder."""
    path = folder / CURVE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["group", "threshold", "safety", "usefulness", "f1", "n", "kind", "split"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows([{c: p.get(c) for c in columns} for p in points])
    return path
