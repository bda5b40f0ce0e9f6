"""Refusal judges against labelled responses: the tables ``docs/judges.md`` and the notebook report.

Usage:
    python benchmarks/judge_validation.py [--write-error] [--xstest] [--split test] [--llm-sample 16] [--cv] [--refit]

First, leave one *source* out (`porover.judges.sources`): every offline judge scored on each labelled data
source it was not fitted on (fitted judges re-fitted without it), then every judge as shipped on each `EXTERNAL`
check (GPTFuzz's and RBR's test splits, the workbench's SmolLM2 answers); ``--write-error`` stores each judge's
held-out confusion counts in ``porover/judges/judge_error.json`` (what rates are corrected with). With
``--xstest``, also the older XSTest-only tables: every offline judge (`porover.judges.held_out.OFFLINE_JUDGES`) is scored on the test-split prompts of five
models' completions as shipped, then with one model family / one model held out (re-fitted without
it where the judge is fitted; `porover.judges.held_out`). The LLM judges run the embedded SmolLM2 on a random
sample of ``--llm-sample`` completions (0 skips them). Speeds are seconds per 100 responses here.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pandas as pd

from porover.judges.held_out import generalisation, summary
from porover.judges.source_validation import (OFFLINE_JUDGES, error_counts, offline_judges_held_out,
                                             shipped_judges_on)
from porover.judges.sources import EXTERNAL, labelled_responses
from porover.judges import judge_refusals
from porover.judges.human_labels import (LABELLED, cross_validate_default_judge, fit_default_judge, human_labels,
                                validate_against_human_labels, validation_table)


def speed(judge: str, n: int = 200) -> dict:
    """Seconds per 100 responses: the first call in this process (``cold``: loads models) and the next."""
    table = human_labels("test", LABELLED).head(n)
    # Unseen texts each time, so a judge's embedding cache cannot flatter the warm figure.
    timings = []
    for suffix in (" ", "  "):
        start = time.perf_counter()
        judge_refusals(table["prompt"].tolist(), [r + suffix + "." for r in table["response"]], judge=judge)
        timings.append(100 * (time.perf_counter() - start) / len(table))
    return {"judge": judge, "cold_s_per_100": round(timings[0], 3), "warm_s_per_100": round(timings[1], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="test", choices=("train", "test", "all"))
    parser.add_argument("--llm-sample", type=int, default=0, help="completions per LLM judge (0: skip)")
    parser.add_argument("--llm-model", default="smollm2-135m-instruct")
    parser.add_argument("--refit", action="store_true", help="re-fit phrase_lr on its train split first")
    parser.add_argument("--cv", action="store_true", help="print the cross-validation that chose phrase_lr's settings")
    parser.add_argument("--no-held-out", action="store_true", help="skip the leave-one-model/family-out tables")
    parser.add_argument("--xstest", action="store_true", help="also the XSTest-only tables (prompt split, families)")
    parser.add_argument("--write-error", action="store_true", help="write porover/judges/judge_error.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    speeds = [speed(judge) for judge in OFFLINE_JUDGES]  # first, so the cold figures are cold
    held = offline_judges_held_out()
    with pd.option_context("display.width", 220, "display.max_columns", 30):
        print("Leave one source out (refusal = positive; partial counts as refusal)")
        print(held.round(3).to_string(index=False))
        for source in EXTERNAL:  # published test splits and the workbench's answers: never fitted or chosen on
            print(f"\nExternal check {source}, judges as shipped")
            print(shipped_judges_on(labelled_responses([source])).round(3).to_string(index=False))
    if args.write_error:
        from porover.judges import JUDGE_ERROR_PATH

        JUDGE_ERROR_PATH.write_text(json.dumps({
            "about": "held-out confusion counts per offline judge (leave one source out; each source scaled to 100 "
                     "responses; refusal = positive): benchmarks/judge_validation.py --write-error",
            "judges": error_counts(held)}, indent=1) + "\n")
        print(f"wrote {JUDGE_ERROR_PATH}")
    if not args.xstest:
        print("\nSpeed on this machine (seconds per 100 responses; cold = first call, loads any model)")
        print(pd.DataFrame(speeds).to_string(index=False))
        return
    if args.cv:
        print(cross_validate_default_judge().round(3).to_string(index=False), end="\n\n")
    if args.refit:
        fit_default_judge()
    results = [validate_against_human_labels(judge, split=args.split) for judge in OFFLINE_JUDGES]
    for judge in ("xstest_llm", "orbench_llm") if args.llm_sample else ():
        # OR-Bench's judge explains before its [[class]]; 96 tokens keeps SmolLM2 on CPU tolerable.
        tokens = {"orbench_llm": 96}.get(judge)
        results.append(validate_against_human_labels(judge, split=args.split, limit=args.llm_sample,
                                                     model=args.llm_model, max_new_tokens=tokens))
    with pd.option_context("display.width", 220, "display.max_columns", 30):
        print(f"All five models' completions, {args.split} split, judges as shipped")
        print(validation_table(results).to_string(index=False))
        for result in results:
            print(f"\n{result['judge']} on {result['split']} (rows: human, columns: judge)")
            print(result["confusion"].to_string())
        if not args.no_held_out:
            table = generalisation()
            print("\nHeld out (fit on the train prompts of the other models/families, score the held-out test prompts)")
            print(summary(table).to_string())
            print()
            print(table.round(3).to_string(index=False))
        print("\nSpeed on this machine (seconds per 100 responses; cold = first call, loads any model)")
        print(pd.DataFrame(speeds).to_string(index=False))


if __name__ == "__main__":
    main()
