"""A sweep's results: every variant in one table and on one safety–usefulness frontier, with the split of
each number, and the variant a sweep chooses (on the validation split, never on the test one).

Reads what the runner wrote: ``manifest.json`` (the sweep's variants, each mapping the file's stages to the
stages that played them, see `porover.sweeps`) and each evaluation's ``metrics.json``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

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
    ``_high``. Stages without results yet are left out; a run without a sweep gives an empty table.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    variants, types = manifest.get("sweep") or [], manifest.get("types", {})
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
    """The row of the variant with the highest ``metric`` on ``evaluation``, among numbers of ``split``.

    Raises:
        ValueError: No such numbers (choosing on another split than asked would leak the test set).
    """
    rows = table[(table["evaluation"] == evaluation) & (table["split"] == split)] if len(table) else table
    if rows.empty:
        raise ValueError(f"no {split} results of evaluation {evaluation!r} in the sweep; evaluations with "
                         f"{split} results: {sorted(set(table[table['split'] == split]['evaluation'])) if len(table) else []}")
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
