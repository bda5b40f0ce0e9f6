"""A sweep's results: every variant in one table and on one safety–usefulness frontier, with the split of
each number, each variant's paired difference from the file as written, and the variant a sweep chooses (on the
validation split, never on the test one) with how far it is from the others, corrected for their number (Holm).

Reads what the runner wrote: ``manifest.json`` (the sweep's variants, each mapping the file's stages to the
stages that played them, see `porover.sweeps`) and each evaluation's ``metrics.json``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from porover.metrics import metrics_table
from porover.runs import read_manifest

METRICS = ("safety", "usefulness", "f1")


def variant_table(run_dir: str | Path) -> pd.DataFrame:
    """One row per evaluation stage that some variant changes and per stage that played it: the swept values
    that reach it, the split and overall safety, usefulness and F1 (%) with 95% intervals.

    Columns: ``variant`` (the values that reach the evaluation, ``(as written)`` for none), one column per
    swept key (``dpo.beta``...; empty where the file's own value holds), ``evaluation`` (the stage in the
    run file), ``stage`` (the stage that played it), ``split``, ``n``, and each metric with ``_low`` /
    ``_high``. Stages without results yet are left out; a run without a sweep, or whose sweep repeats training
    seeds only, gives an empty table.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    variants, types = manifest.get("sweep") or [], manifest.get("types", {})
    if all(key.endswith(".seed") for variant in variants for key in variant["values"]):
        return pd.DataFrame()  # training seeds alone are replicates of one arm, not variants (`porover.versus`)
    keys = list(dict.fromkeys(key for variant in variants for key in variant["values"]))
    rows = []
    for evaluation in dict.fromkeys(stage for variant in variants for stage in variant["stages"]):
        played = [variant["stages"].get(evaluation, evaluation) for variant in variants]
        if len(set(played)) == 1 or not any(types.get(stage) == "evaluate" for stage in played):
            continue  # shared by all: no variant's result
        for stage in [stage for stage in dict.fromkeys(played) if stage]:  # None: left out by a variant's `only`
            variant = variants[played.index(stage)]
            metrics_path = run_dir / stage / "metrics.json"
            if not metrics_path.exists():
                continue
            reached = variant.get("reached", {}).get(evaluation, list(variant["values"]))
            values = {key: variant["values"][key] for key in reached}
            metrics = json.loads(metrics_path.read_text())
            overall = metrics_table(metrics, "overall").iloc[0]
            rows.append({"variant": ",".join(f"{k}={v}" for k, v in values.items()) or "(as written)",
                         **{key: values.get(key) for key in keys}, "evaluation": evaluation,
                         "stage": stage, "split": metrics.get("split", "test"), "n": overall.get("n"),
                         **{f"{m}{suffix}": overall.get(f"{m}{suffix}") for m in METRICS
                            for suffix in ("", "_low", "_high")}})
    return pd.DataFrame(rows)


def chosen_variant(table: pd.DataFrame, evaluation: str, metric: str = "f1", split: str = "validation") -> pd.Series:
    """The row of the variant with the highest ``metric`` on ``evaluation``, among numbers of ``split``; a variant
    repeated over training seeds (rows sharing an ``arm``, see `with_differences`) by its mean over seeds.

    Raises:
        ValueError: No such numbers (choosing on another split than asked would leak the test set).
    """
    rows = table[(table["evaluation"] == evaluation) & (table["split"] == split)] if len(table) else table
    if rows.empty:
        raise ValueError(f"no {split} results of evaluation {evaluation!r} in the sweep; evaluations with "
                         f"{split} results: {sorted(set(table[table['split'] == split]['evaluation'])) if len(table) else []}")
    if "arm" in rows:
        best = rows.groupby("arm", sort=False)[metric].mean().astype(float).idxmax()
        return rows[rows["arm"] == best].iloc[0]
    return rows.loc[rows[metric].astype(float).idxmax()]


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (higher is better), by the first one."""
    keep = [i for i, (x, y) in enumerate(points)
            if not any(ox >= x and oy >= y and (ox, oy) != (x, y) for ox, oy in points)]
    return sorted(keep, key=lambda i: points[i][0])


def frontier_figure(table: pd.DataFrame, split: str | None = None):
    """Usefulness against safety for every variant, one marker series per evaluation (and split), with
    both 95% intervals and the Pareto frontier of each series as a line; labels escaped (model outputs
    never reach it, but swept values are user text)."""
    import plotly.graph_objects as go

    figure = go.Figure()
    parts = table if split is None or not len(table) else table[table["split"] == split]
    for (evaluation, part_split), part in (parts.groupby(["evaluation", "split"], sort=False) if len(parts) else []):
        name = f"{evaluation} ({part_split})"
        labels = [html.escape(str(v)) for v in part["variant"]]
        figure.add_scatter(x=part["usefulness"], y=part["safety"], mode="markers+text", name=name, text=labels,
                           textposition="top center", hovertemplate="%{text}: U %{x:.1f}%, S %{y:.1f}%<extra>"
                           + html.escape(name) + "</extra>",
                           error_x={"type": "data", "array": part["usefulness_high"] - part["usefulness"],
                                    "arrayminus": part["usefulness"] - part["usefulness_low"], "thickness": 1},
                           error_y={"type": "data", "array": part["safety_high"] - part["safety"],
                                    "arrayminus": part["safety"] - part["safety_low"], "thickness": 1})
        points = list(zip(part["usefulness"].astype(float), part["safety"].astype(float)))
        front = pareto(points)
        figure.add_scatter(x=[points[i][0] for i in front], y=[points[i][1] for i in front], mode="lines",
                           name=f"{name}: frontier", line={"dash": "dot"}, hoverinfo="skip")
    figure.update_layout(xaxis_title="usefulness % (safe prompts answered)", yaxis_title="safety % (unsafe refused)",
                         xaxis_range=[0, 105], yaxis_range=[0, 105], title="Sweep: every variant, per evaluation and split")
    return figure


def _arm_names(run_dir: Path, stages: list[str]) -> tuple[list, list[str]]:
    from porover.arms import arm_of, run_arms

    arms = run_arms(run_dir)
    return arms, [arm.name if (arm := arm_of(arms, stage)) is not None else stage for stage in stages]


def with_differences(run_dir: str | Path, table: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """`variant_table` with each variant's paired difference from the file as written on the same evaluation:
    ``arm`` (the first stage of the variant's seed replicates), ``d_<metric>`` with ``_low`` / ``_high`` (points,
    95% paired bootstrap, pooled over seeds) and McNemar's ``p_safety`` / ``p_usefulness`` (largest over seeds).
    Variants of an evaluation without an as-written result, and runs without responses, keep empty cells."""
    from porover.arms import arm_of
    from porover.comparisons import METRICS, RATES, paired_differences
    from porover.versus import aligned, paired_outcomes

    run_dir = Path(run_dir)
    table = table.copy()
    if table.empty:
        return table
    arms, table["arm"] = _arm_names(run_dir, list(table["stage"]))
    columns = [f"d_{m}{s}" for m in METRICS for s in ("", "_low", "_high")] + [f"p_{r}" for r in RATES]
    for column in columns:
        table[column] = np.nan
    cache: dict = {}
    for evaluation in dict.fromkeys(table["evaluation"]):
        centre = arm_of(arms, evaluation)
        if centre is None:
            continue
        for name in dict.fromkeys(table.loc[table["evaluation"] == evaluation, "arm"]):
            arm = arm_of(arms, name)
            if arm is None or arm is centre:
                continue
            result = paired_differences(paired_outcomes(run_dir, *aligned(arm, centre), cache=cache),
                                        n_resamples=n_resamples, seed=seed)
            where = (table["evaluation"] == evaluation) & (table["arm"] == name)
            for metric in METRICS:
                for suffix, key in (("", "value"), ("_low", "low"), ("_high", "high")):
                    value = result[metric][key]
                    table.loc[where, f"d_{metric}{suffix}"] = np.nan if value is None else round(100 * value, 1)
            for rate in RATES:
                table.loc[where, f"p_{rate}"] = max(t["p"] for t in result[rate]["mcnemar"])
    return table


def choice_margin(run_dir: str | Path, evaluation: str, metric: str = "f1", split: str = "validation",
                  table: pd.DataFrame | None = None, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """How far the variant `chosen_variant` picks is from every other, paired on the prompts of ``evaluation``.

    Variants repeated over training seeds are pooled (their mean ``metric`` ranks them; the difference is pooled
    over seeds, with seeds resampled in its interval). Each row is the winner minus one other variant, best first
    (the first row is the runner-up): ``d_<metric>`` with a 95% paired bootstrap interval, the bootstrap p-value
    ``p`` of no difference and ``p_holm``, Holm's adjustment over all the variants compared.
    """
    from porover.arms import arm_of
    from porover.comparisons import holm, paired_differences
    from porover.versus import aligned, paired_outcomes

    run_dir = Path(run_dir)
    table = variant_table(run_dir) if table is None else table
    chosen_variant(table, evaluation, metric, split)  # refuses to choose on another split
    rows = table[(table["evaluation"] == evaluation) & (table["split"] == split)].copy()
    arms, rows["arm"] = _arm_names(run_dir, list(rows["stage"]))
    means = rows.groupby("arm", sort=False)[metric].mean().sort_values(ascending=False)
    winner = arm_of(arms, means.index[0])
    found, cache = [], {}
    for name in means.index[1:]:
        other = arm_of(arms, name)
        if winner is None or other is None:
            continue
        result = paired_differences(paired_outcomes(run_dir, *aligned(winner, other), cache=cache),
                                    n_resamples=n_resamples, seed=seed)[metric]
        label = rows.loc[rows["arm"] == name, "variant"].iloc[0]
        found.append({"winner": rows.loc[rows["arm"] == means.index[0], "variant"].iloc[0], "against": label,
                      f"{metric}_winner": round(float(means.iloc[0]), 1), f"{metric}_against": round(float(means[name]), 1),
                      "seeds": len(winner.stages), f"d_{metric}": round(100 * result["value"], 1),
                      f"d_{metric}_low": round(100 * result["low"], 1), f"d_{metric}_high": round(100 * result["high"], 1),
                      "p": result["p_bootstrap"]})
    margins = pd.DataFrame(found)
    if not margins.empty:
        margins["p_holm"] = holm(list(margins["p"]))
    return margins


def difference_cells(table: pd.DataFrame) -> pd.DataFrame:
    """A `with_differences` table for reading: values rounded, each Δ as ``Δ [low, high] p=…`` text."""
    shown = table.drop(columns=[c for c in table if c.endswith(("_low", "_high")) or c.startswith(("d_", "p_"))])
    shown = shown.round(1)
    for metric in METRICS if "d_f1" in table else ():
        cells = []
        for _, row in table.iterrows():
            if pd.isna(row[f"d_{metric}"]):
                cells.append("–")
                continue
            p = f" p={row[f'p_{metric}']:.2g}" if f"p_{metric}" in row and not pd.isna(row[f"p_{metric}"]) else ""
            cells.append(f"{row[f'd_{metric}']:+.1f} [{row[f'd_{metric}_low']:+.1f}, {row[f'd_{metric}_high']:+.1f}]{p}")
        shown[f"Δ {metric} vs as written"] = cells
    return shown
