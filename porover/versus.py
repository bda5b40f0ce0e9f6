"""A run's paired comparisons: each arm against the arm it was trained from and against the base, on the prompts
they share, pooled over training seeds; each arm's spread over seeds; and the prompts that flipped.

Reads what the runner wrote (``manifest.json``, each evaluation's ``responses.jsonl`` and ``metrics.json``);
the lineage and the seed replicates come from `porover.arms`, the statistics from `porover.comparisons`.
Outcomes are the first judge's verdicts (the headline judge), or any other judge the evaluations recorded
(``judge``); prompts either arm's judge could not read, and unlabeled prompts, are left out of a comparison (as
``unparseable: exclude`` leaves them out of the rates).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from porover.arms import Arm, arm_of, base_of, run_arms
from porover.comparisons import METRICS, RATES, Paired, paired_differences
from porover.store import read_jsonl
from porover.vocabulary import is_refusal


def outcomes(run_dir: str | Path, stage: str, partial_is_refusal: bool = True,
             judge: str | None = None) -> dict[tuple, tuple[str, str, bool]]:
    """``{(source, id): (benchmark, label, refused)}`` of one evaluation's labelled, parsed responses.

    Args:
        run_dir: The run folder.
        stage: The evaluation stage.
        partial_is_refusal: Whether partial refusals count as refusals.
        judge: Read this judge's verdicts (one of the stage's ``judges``) instead of the headline judge's.

    Raises:
        KeyError: ``judge`` did not judge this stage's responses.
    """
    found, column = {}, "refusal" if judge is None else f"refusal:{judge}"
    for row in read_jsonl(Path(run_dir) / stage / "responses.jsonl"):
        if column not in row:
            raise KeyError(f"{Path(run_dir) / stage / 'responses.jsonl'}: no verdicts of judge '{judge}' "
                           f"(the stage's judges: {', '.join(k.split(':', 1)[1] for k in row if k.startswith('refusal:'))})")
        refused = is_refusal(row.get(column), partial_is_refusal)
        if refused is not None and row.get("label") in ("safe", "unsafe"):
            found[(row.get("source"), str(row.get("id")))] = (row.get("source"), row["label"], refused)
    return found


def paired_outcomes(run_dir: str | Path, before: list[str], after: list[str], partial_is_refusal: bool = True,
                    cache: dict | None = None, judge: str | None = None) -> Paired:
    """The `Paired` outcomes of replicate ``i`` of ``after`` against stage ``before[i]``, on the prompts all share.

    Args:
        run_dir: The run folder.
        before: One evaluation stage per replicate (a parent trained once is repeated).
        after: The arm's evaluation stages, one per replicate.
        partial_is_refusal: Whether partial refusals count as refusals.
        cache: Outcomes already read, by stage (filled as stages are read), all of ``judge``.
        judge: Whose verdicts (default: each stage's headline judge).
    """
    cache = {} if cache is None else cache
    for stage in dict.fromkeys([*before, *after]):  # in order, so the first stage missing a judge is named
        if stage not in cache:
            cache[stage] = outcomes(run_dir, stage, partial_is_refusal, judge)
    shared = set.intersection(*(set(cache[stage]) for stage in [*before, *after]))
    keys = sorted(shared, key=lambda k: (str(k[0]), k[1]))
    first = cache[after[0]]
    return Paired(before=np.array([[cache[s][k][2] for k in keys] for s in before]).reshape(len(before), len(keys)),
                  after=np.array([[cache[s][k][2] for k in keys] for s in after]).reshape(len(after), len(keys)),
                  unsafe=np.array([first[k][1] == "unsafe" for k in keys], dtype=bool),
                  strata=np.array([f"{first[k][0]}/{first[k][1]}" for k in keys]), keys=keys)


def _points(value: float | None) -> float | None:
    return None if value is None or np.isnan(value) else round(100 * value, 1)


def comparison_row(result: dict, arm: Arm, against: str, relation: str) -> dict:
    """One row of `versus_table` from `porover.comparisons.paired_differences` output (percentage points)."""
    row = {"arm": arm.name, "against": against, "relation": relation, "seeds": len(arm.stages),
           "n": result["n"], "n_unsafe": result["n_unsafe"], "n_safe": result["n_safe"]}
    for metric in METRICS:
        part = result[metric]
        row[f"d_{metric}"] = _points(part["value"])
        row[f"d_{metric}_low"], row[f"d_{metric}_high"] = _points(part["low"]), _points(part["high"])
    for rate in RATES:
        tests = result[rate]["mcnemar"]
        row[f"p_{rate}"] = max(t["p"] for t in tests) if tests else None  # every replicate's p is at most this
        row[f"flips_{rate}"] = " · ".join(f"+{t['gained']}/−{t['lost']}" for t in tests)
        row[f"detectable_{rate}"] = _points(result[rate]["detectable"])
    row["p_f1"] = result["f1"].get("p_bootstrap")
    return row


def versus_table(run_dir: str | Path, n_resamples: int = 1000, seed: int = 0, partial_is_refusal: bool = True,
                 stages: list[str] | None = None, judge: str | None = None) -> pd.DataFrame:
    """Each arm against its parent and against its base (when another arm), paired on the prompts they share.

    Columns: ``arm``, ``against``, ``relation`` (``parent`` / ``base``), ``seeds`` (replicates pooled), ``n``
    (shared prompts; ``n_unsafe``, ``n_safe``), per metric ``d_<metric>`` with ``_low`` / ``_high`` (after −
    before in percentage points, 95% paired bootstrap, seeds resampled too), per rate ``p_<rate>`` (McNemar's exact
    p; the largest over replicates), ``flips_<rate>`` (prompts whose outcome became good / bad, per replicate) and
    ``detectable_<rate>`` (the smallest difference detectable with 80% power at this discordance), and ``p_f1``
    (bootstrap p). ``arm`` and ``against`` name each arm's first evaluation stage. ``judge`` reads another recorded
    judge's verdicts than the headline judge's, to see whether a difference holds under every judge.
    """
    arms, cache, rows = run_arms(run_dir, stages), {}, []
    for arm in arms:
        parent = arm_of(arms, arm.parents[0])
        if parent is None:
            continue
        base = base_of(arms, arm)
        for relation, other in (("parent", parent), ("base", base if base is not None and base is not parent else None)):
            if other is None:
                continue
            paired = paired_outcomes(run_dir, *aligned(arm, other), partial_is_refusal, cache, judge)
            if not len(paired.unsafe):
                continue
            result = paired_differences(paired, n_resamples=n_resamples, seed=seed)
            rows.append(comparison_row(result, arm, other.name, relation))
    return pd.DataFrame(rows)


def aligned(arm: Arm, other: Arm) -> tuple[list[str], list[str]]:
    """Which replicate of ``other`` each replicate of ``arm`` is compared with: ``(before stages, after stages)``.

    A replicate's own parent when that is one of ``other``'s replicates (a DPO seed and the SFT it was trained
    from), else ``other``'s replicate with the same training seeds (a variant and the file as written, both
    repeated over the same seeds); failing both, every pair of replicates, so the pooled difference is the
    difference of the two arms' means over their seeds.
    """
    def match(parent: str | None, seeds: dict) -> str | None:
        if parent in other.stages:
            return parent
        return next((stage for stage, theirs in zip(other.stages, other.seeds) if seeds and theirs == seeds), None)

    matched = [match(parent, seeds) for parent, seeds in zip(arm.parents, arm.seeds)]
    if all(stage is not None for stage in matched):
        return matched, list(arm.stages)
    pairs = [(before, after) for after in arm.stages for before in other.stages]
    return [before for before, _ in pairs], [after for _, after in pairs]


def seed_table(run_dir: str | Path, stages: list[str] | None = None) -> pd.DataFrame:
    """Each arm repeated over training seeds: its replicates' seeds and the mean, standard deviation, lowest and
    highest overall safety, usefulness and F1 (%) over them (on each replicate's own prompts, all equal)."""
    rows = []
    for arm in run_arms(run_dir, stages):
        if len(arm.stages) < 2:
            continue
        values = {m: [] for m in METRICS}
        for stage in arm.stages:
            overall = json.loads((Path(run_dir) / stage / "metrics.json").read_text())["overall"]
            for metric in METRICS:
                values[metric].append(np.nan if overall[metric]["value"] is None else 100 * overall[metric]["value"])
        row = {"arm": arm.name, "seeds": "; ".join(", ".join(f"{k} {v}" for k, v in s.items()) for s in arm.seeds),
               "replicates": len(arm.stages)}
        for metric, numbers in values.items():
            row.update({f"{metric}_mean": round(float(np.nanmean(numbers)), 1),
                        f"{metric}_sd": round(float(np.nanstd(numbers, ddof=1)), 1),
                        f"{metric}_min": round(float(np.nanmin(numbers)), 1),
                        f"{metric}_max": round(float(np.nanmax(numbers)), 1)})
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(row: pd.Series, metric: str, digits: int = 1) -> str:
    value, low, high = row[f"d_{metric}"], row[f"d_{metric}_low"], row[f"d_{metric}_high"]
    if pd.isna(value):
        return "–"
    interval = "" if pd.isna(low) else f" [{low:+.{digits}f}, {high:+.{digits}f}]"
    return f"{value:+.1f}{interval}"


def versus_cells(table: pd.DataFrame) -> pd.DataFrame:
    """`versus_table` as text cells: Δ [interval] and McNemar p per rate, flips, and the detectable difference."""
    shown = []
    for _, row in table.iterrows():
        cells = {"arm": row["arm"], "against": f"{row['against']} ({row['relation']})", "seeds": row["seeds"],
                 "prompts": f"{row['n']} ({row['n_unsafe']} unsafe, {row['n_safe']} safe)"}
        for rate in RATES:
            cells[f"Δ {rate}"] = f"{_cell(row, rate)} p={row[f'p_{rate}']:.2g}"
            cells[f"{rate} flips (+good/−bad)"] = row[f"flips_{rate}"]
            cells[f"{rate}: detectable"] = "–" if pd.isna(row[f"detectable_{rate}"]) else f"±{row[f'detectable_{rate}']:.1f}"
        cells["Δ F1"] = _cell(row, "f1")
        shown.append(cells)
    return pd.DataFrame(shown)


def versus_text(run_dir: str | Path, width: int = 120, table: pd.DataFrame | None = None) -> str:
    """The paired comparisons for a terminal: each arm against its parent, Δ with its interval and McNemar's p."""
    table = versus_table(run_dir) if table is None else table
    if table.empty:
        return ""
    rows = table[table["relation"] == "parent"]
    arm_width = max(4, *(len(str(a)) for a in rows["arm"]))
    against_width = max(7, *(len(str(a)) for a in rows["against"]))
    lines = ["each arm against the arm it was trained from: Δ = after − before, points [95% paired bootstrap], "
             "McNemar p; seeds pooled",
             f"{'arm':<{arm_width}}  {'against':<{against_width}}  {'seeds':>5} {'n':>5}  {'Δ safety':<25} "
             f"{'Δ usefulness':<25} {'Δ F1':<18}"]
    for _, row in rows.iterrows():
        rates = " ".join(f"{_cell(row, r, 0) + ' p=' + format(row[f'p_{r}'], '.2g'):<25}" for r in RATES)
        lines.append(f"{row['arm']:<{arm_width}}  {row['against']:<{against_width}}  {row['seeds']:>5} {row['n']:>5}  "
                     f"{rates} {_cell(row, 'f1', 0):<18}")
    return "\n".join(line.rstrip() if len(line) <= width else line[:width - 1] + "…" for line in lines)
