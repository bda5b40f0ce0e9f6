"""Re-judge an existing run's evaluation responses with another refusal judge, without re-running anything.

Usage:
    python benchmarks/rejudge_run.py outputs/demo [--judge act_lr] [--bootstrap 1000]

For every stage folder of the run with a ``responses.jsonl`` and a ``metrics.json`` (the evaluation stages),
the stored responses are judged again with ``--judge`` and scored as the evaluation stage scores them (same
partial/unparseable settings, the judge's measured error for the corrected rates). Prints, per stage, the
stored judge's overall safety / usefulness / F1 beside the new judge's, the new judge's corrected rates and
how often the two judges disagree on refusal. Writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pandas as pd

from porover.judges import judge_error_counts, judge_refusals
from porover.metrics import compute_metrics
from porover.vocabulary import is_refusal


def rejudge_stage(stage_dir: Path, judge: str, bootstrap: int) -> dict:
    """One stage's stored and re-judged overall numbers (percentages)."""
    metrics = json.loads((stage_dir / "metrics.json").read_text())
    rows = [json.loads(line) for line in (stage_dir / "responses.jsonl").read_text().splitlines() if line.strip()]
    settings = metrics.get("settings", {})
    partial = settings.get("partial_is_refusal", True)
    verdicts = judge_refusals([r["prompt"] for r in rows], [r.get("response") or "" for r in rows], judge=judge)
    rejudged = [{**row, "refusal": v.label} for row, v in zip(rows, verdicts)]
    new = compute_metrics(rejudged, partial_is_refusal=partial, bootstrap_samples=bootstrap,
                          seed=settings.get("seed", 0), judge=judge, judge_error=judge_error_counts(judge))["overall"]
    old = metrics["overall"]
    pairs = [(is_refusal(r.get("refusal"), partial), is_refusal(v.label, partial)) for r, v in zip(rows, verdicts)]
    pairs = [p for p in pairs if None not in p]

    def pct(group: dict, key: str) -> float | None:
        value = group.get(key, {}).get("value")
        return None if value is None else round(100 * value, 1)

    return {"stage": stage_dir.name, "stored_judge": metrics.get("judge"), "n": len(rows),
            **{f"stored_{m}": pct(old, m) for m in ("safety", "usefulness", "f1")},
            **{f"{judge}_{m}": pct(new, m) for m in ("safety", "usefulness", "f1")},
            f"{judge}_safety_corrected": pct(new, "safety_corrected"),
            f"{judge}_usefulness_corrected": pct(new, "usefulness_corrected"),
            "disagree_%": round(100 * sum(a != b for a, b in pairs) / len(pairs), 1) if pairs else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--judge", default="act_lr")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    if not args.run_dir.is_dir():
        raise SystemExit(f"{args.run_dir}: no such run folder")
    stages = sorted(p.parent for p in args.run_dir.glob("*/metrics.json") if (p.parent / "responses.jsonl").is_file())
    if not stages:
        raise SystemExit(f"{args.run_dir}: no evaluation stage (a folder with responses.jsonl and metrics.json)")
    table = pd.DataFrame([rejudge_stage(stage, args.judge, args.bootstrap) for stage in stages])
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
