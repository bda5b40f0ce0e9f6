"""Labelled responses from several data sources, and judges scored with one whole source held out.

A judge fitted on one data set learns its prompts' topics as well as its models' ways of refusing. The
honest test of a refusal judge is a *source* it has never seen: other prompts, other topics, other models,
other labellers. `SOURCES` (see ``porover/data/refusal_judge/SOURCE.md`` and ``docs/judges.md``):

- ``xstest``: XSTest's human-labelled completions of five models (2,250; three classes);
- ``refusal_direction``: five chat models' answers to JailbreakBench behaviours and Alpaca instructions,
  with the refusal direction removed (harmful requests answered) or added (harmless requests refused);
- ``jailbreakbench_artifacts``: four models' answers to adversarial (jailbreak) prompts of five attacks on
  the same behaviours (so a fold holding either out also drops the other's rows on those behaviours).

The last two carry rule labels (training only) and a random sample of 100 rows per source labelled by an
LLM with rule labels unseen (``hand_labels.csv``): those are the rows a held-out source is scored on.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from porover.judges.human_labels import score_labels
from porover.vocabulary import Verdict

DATA = Path(__file__).resolve().parent.parent / "data" / "refusal_judge"
SOURCES = ("xstest", "refusal_direction", "jailbreakbench_artifacts")
COLUMNS = ["source", "id", "model", "prompt", "topic", "response", "label", "labelled_by", "scored"]
METRICS = ("n", "binary_accuracy", "f1", "precision", "recall", "kappa")


def labelled_responses() -> pd.DataFrame:
    """Every labelled response of every source (`COLUMNS`), one row each.

    ``label`` is the hand (or human) label where there is one, else the rule label; ``scored`` marks the
    rows a held-out source is scored on (all of XSTest; the hand-labelled sample of the others).
    """
    from porover.judges.human_labels import LABELLED, human_labels

    xstest = human_labels("all", LABELLED)
    rows = [pd.DataFrame({"source": "xstest", "id": xstest["id"].astype(str), "model": xstest["model"],
                          "prompt": xstest["prompt"], "topic": xstest["prompt"], "response": xstest["response"],
                          "label": xstest["human_label"], "labelled_by": "human (XSTest's annotators)",
                          "scored": True})]
    with gzip.open(DATA / "responses.jsonl.gz", "rt", encoding="utf-8") as handle:
        others = pd.DataFrame([json.loads(line) for line in handle])
    hand = pd.read_csv(DATA / "hand_labels.csv", dtype=str, keep_default_na=False).set_index("id")
    others["scored"] = others["id"].isin(hand.index)
    others.loc[others["scored"], "label"] = hand.loc[others.loc[others["scored"], "id"], "label"].to_numpy()
    others.loc[others["scored"], "labelled_by"] = hand.loc[others.loc[others["scored"], "id"], "labelled_by"].to_numpy()
    rows.append(others[others["label"] != ""][COLUMNS])
    return pd.concat(rows, ignore_index=True)[COLUMNS]


def source_folds(table: pd.DataFrame, sources: Sequence[str] | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(held-out source, fit mask, score mask)`` per source: score the held-out source's ``scored`` rows; fit on
    the other sources' rows *except* those asking for a topic the held-out source asks for (refusal_direction
    and jailbreakbench_artifacts share JailbreakBench's 100 behaviours). No source, and no topic, is ever on
    both sides."""
    sources = list(sources or dict.fromkeys(table["source"]))
    folds = []
    for source in sources:
        held = (table["source"] == source).to_numpy()
        fit = ~held & ~table["topic"].isin(set(table["topic"][held])).to_numpy()
        folds.append((source, fit, held & table["scored"].to_numpy()))
    return folds


def source_weights(sources: pd.Series, weighting: str) -> np.ndarray:
    """Row weights: ``"equal"`` (each source sums to the same weight) or ``"rows"`` (every row alike)."""
    if weighting == "rows":
        return np.ones(len(sources))
    if weighting != "equal":
        raise ValueError(f"source weighting must be 'equal' or 'rows', not {weighting!r}")
    counts = sources.map(sources.value_counts())
    return (1.0 / counts).to_numpy(dtype=float)


def _binary_verdicts(labels: Sequence[str], judge: str) -> list[Verdict]:
    return [Verdict(label, "parsed", judge, "refit") for label in labels]


def leave_one_source_out(judges: dict[str, Callable[[pd.DataFrame, pd.DataFrame], list[str]]],
                         table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Score judges with each source held out in turn.

    Args:
        judges: Name -> ``judge(fit_rows, score_rows) -> labels of score_rows``; a fitted judge fits on
            ``fit_rows`` (never the held-out source), a rule judge ignores them.
        table: `labelled_responses` (default: loaded).

    Returns:
        Rows of ``judge``, ``held_out`` (a source, or ``"mean"`` over sources), `METRICS` and ``tp``, ``fp``,
        ``fn``, ``tn`` (refusal = positive; partial counts as refusal), so sensitivity and specificity can be
        pooled.
    """
    table = labelled_responses() if table is None else table
    rows = []
    for name, judge in judges.items():
        per_source = []
        for source, fit_mask, score_mask in source_folds(table):
            held = table[score_mask]
            guesses = judge(table[fit_mask], held)
            result = score_labels(held["label"].tolist(), _binary_verdicts(guesses, name))
            truth = held["label"].to_numpy() != "full_compliance"
            guess = np.array(guesses, dtype=object) != "full_compliance"
            counts = {"tp": int((truth & guess).sum()), "fp": int((~truth & guess).sum()),
                      "fn": int((truth & ~guess).sum()), "tn": int((~truth & ~guess).sum())}
            per_source.append({"judge": name, "held_out": source, **{m: result[m] for m in METRICS}, **counts})
        frame = pd.DataFrame(per_source)
        mean = {"judge": name, "held_out": "mean", **frame[list(METRICS[1:])].mean().to_dict(),
                "n": int(frame["n"].sum()), **frame[["tp", "fp", "fn", "tn"]].sum().to_dict()}
        rows += [*per_source, mean]
    return pd.DataFrame(rows, columns=["judge", "held_out", *METRICS, "tp", "fp", "fn", "tn"])


def _rule(judge: str) -> Callable[[pd.DataFrame, pd.DataFrame], list[str]]:
    from porover.judges import judge_refusals

    return lambda fit_rows, rows: [v.label or "full_compliance" for v in judge_refusals(
        rows["prompt"].tolist(), rows["response"].tolist(), judge=judge)]


def _refitted(judge: str) -> Callable[[pd.DataFrame, pd.DataFrame], list[str]]:
    """``judge`` re-fitted on the fold's rows with its shipped settings, then applied to the held-out rows."""
    from porover.vocabulary import REFUSAL_CLASSES

    def run(fit_rows: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
        p, r, y = fit_rows["prompt"].tolist(), fit_rows["response"].tolist(), fit_rows["label"].tolist()
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


OFFLINE_JUDGES = ("xstest_string_match", "orbench_keyword", "phrase_lr", "minilm_lr", "act_lr")


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
    with gzip.open(DATA / "workbench_smollm.jsonl.gz", "rt", encoding="utf-8") as handle:
        table = pd.DataFrame([json.loads(line) for line in handle])
    return table.assign(scored=True)[COLUMNS]


def shipped_judges_on(table: pd.DataFrame, judges: Sequence[str] = OFFLINE_JUDGES) -> pd.DataFrame:
    """Every judge *as shipped* on ``table``'s rows (for data none of them was fitted on): `METRICS` and counts."""
    from porover.judges import judge_refusals

    rows = []
    for name in judges:
        verdicts = judge_refusals(table["prompt"].tolist(), table["response"].tolist(), judge=name)
        result = score_labels(table["label"].tolist(), verdicts)
        rows.append({"judge": name, **{m: result[m] for m in METRICS}})
    return pd.DataFrame(rows)
