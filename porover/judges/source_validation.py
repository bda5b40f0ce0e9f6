"""Every offline judge scored with one whole data source held out, and as shipped on the external checks.

The harness over `porover.judges.sources` (the labelled sources, their folds, the metrics) and
`porover.judges.encoder_validation` (``act_encoder`` from cached token states): rule judges are scored as
published, fitted judges are re-fitted on each fold with their shipped settings, so no judge has seen the source
it is scored on. ``benchmarks/judge_validation.py`` prints its tables and writes ``judge_error.json`` from
`error_counts`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from porover.judges.encoder_validation import refitted_encoder_labels, shipped_encoder_verdicts
from porover.judges.human_labels import score_labels
from porover.judges.sources import METRICS, labelled_responses, leave_one_source_out, source_weights
from porover.vocabulary import REFUSAL_CLASSES


def _rule(judge: str) -> Callable[[pd.DataFrame, pd.DataFrame], list[str]]:
    from porover.judges import judge_refusals

    return lambda fit_rows, rows: [v.label or "full_compliance" for v in judge_refusals(
        rows["prompt"].tolist(), rows["response"].tolist(), judge=judge)]


def _refitted(judge: str) -> Callable[[pd.DataFrame, pd.DataFrame], list[str]]:
    """``judge`` re-fitted on the fold's rows with its shipped settings, then applied to the held-out rows."""
    def run(fit_rows: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
        p, r, y = fit_rows["prompt"].tolist(), fit_rows["response"].tolist(), fit_rows["label"].tolist()
        if judge == "act_encoder":
            return refitted_encoder_labels(fit_rows, rows)
        if judge == "phrase_lr":
            from porover.judges import phrase_lr
            from porover.judges.human_labels import DEFAULT_FIT

            weights, predict = phrase_lr.fit(p, r, y, **DEFAULT_FIT), phrase_lr.predict_proba
        elif judge == "minilm_lr":
            from porover.judges import minilm_lr

            weights, predict = minilm_lr.refit(p, r, y), minilm_lr.predict_proba
        else:
            from porover.judges import act_lr

            shipped = act_lr.load_weights()
            weights = act_lr.fit(p, r, y, shipped["blocks"], shipped["l2"], shipped["max_class_weight"],
                                 source_weights(fit_rows["source"], shipped.get("weighting", "equal")))
            predict = act_lr.predict_proba
        probs = predict(rows["prompt"].tolist(), rows["response"].tolist(), weights)
        return [REFUSAL_CLASSES[i] for i in probs.argmax(1)]

    return run


OFFLINE_JUDGES = ("xstest_string_match", "orbench_keyword", "phrase_lr", "minilm_lr", "act_lr", "act_encoder")


def offline_judges_held_out(table: pd.DataFrame | None = None) -> pd.DataFrame:
    """`leave_one_source_out` of every offline judge: rule judges as published, fitted judges re-fitted on
    each fold with their shipped settings (so no judge has seen the source it is scored on)."""
    judges = {name: _rule(name) if name in ("xstest_string_match", "orbench_keyword") else _refitted(name)
              for name in OFFLINE_JUDGES}
    return leave_one_source_out(judges, table)


def error_counts(results: pd.DataFrame, per_source: int = 100) -> dict[str, dict[str, int]]:
    """Each judge's held-out confusion counts, every source scaled to ``per_source`` responses before they are
    summed (XSTest's 2,250 would otherwise outweigh the other sources' 100 each), as
    `porover.judges.judge_error_counts` reads them."""
    held = results[results["held_out"] != "mean"]
    out = {}
    for judge, rows in held.groupby("judge", sort=False):
        scaled = [rows[k] * per_source / rows[["tp", "fn", "tn", "fp"]].sum(axis=1) for k in ("tp", "fn", "tn", "fp")]
        out[judge] = {k: int(round(float(v.sum()))) for k, v in zip(("tp", "fn", "tn", "fp"), scaled)}
    return out


def workbench_responses() -> pd.DataFrame:
    """The external check (`COLUMNS`): the demo base model's 140 answers (SmolLM2-135M, 64 tokens, XSTest and
    OR-Bench prompts), hand-labelled; never fitted on and never used to choose a judge."""
    return labelled_responses(["workbench_smollm"])


def shipped_judges_on(table: pd.DataFrame, judges: Sequence[str] = OFFLINE_JUDGES) -> pd.DataFrame:
    """Every judge *as shipped* on ``table``'s rows (for data none of them was fitted on): `METRICS` and counts."""
    from porover.judges import judge_refusals

    rows = []
    for name in judges:
        verdicts = (shipped_encoder_verdicts(table) if name == "act_encoder"  # cached token states: same numbers
                    else judge_refusals(table["prompt"].tolist(), table["response"].tolist(), judge=name))
        result = score_labels(table["label"].tolist(), verdicts)
        rows.append({"judge": name, **{m: result[m] for m in METRICS}})
    return pd.DataFrame(rows)
