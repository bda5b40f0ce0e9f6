"""The run's headline numbers in the paper's layout: a DataFrame, plain text for the terminal, CSV and LaTeX."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from porover.stages import analysis


def run_label(run_dir: str | Path) -> str:
    """How a run is named in the report: its folder name."""
    return Path(run_dir).resolve().name


def headline_table(run_dir: str | Path) -> pd.DataFrame:
    """Rows = evaluation stages, columns = (benchmark, safety / usefulness / F1), cells ``value [low, high]`` (%).

    Raises:
        ValueError: The run has no evaluation results yet.
    """
    return analysis.paper_table(analysis.stage_metrics(run_dir))


def _interval(row: pd.Series, metric: str) -> str:
    if pd.isna(row[metric]):
        return "–"
    if pd.isna(row.get(metric)):
        return "–"
    if pd.isna(row[f"{metric}_low"]):
        return f"{row[metric]:.1f}"
    return f"{row[metric]:.1f} [{row[f'{metric}_low']:.0f}–{row[f'{metric}_high']:.0f}]"


def headline_text(run_dir: str | Path, width: int = 100) -> str:
    """The headline numbers for a terminal: overall safety, usefulness and F1 with 95% intervals per stage,
    then F1 per benchmark; lines fit in ``width`` columns."""
    table = analysis.stage_metrics(run_dir)
    table = table.assign(stage=analysis.split_labels(table))
    overall = table[table["group"] == "overall"]
    benchmarks = [g for g in dict.fromkeys(table["group"]) if g != "overall"]
    judge = overall["judge"].dropna().iloc[0] if overall["judge"].notna().any() else "?"
    name_width = max(5, *(len(s) for s in overall["stage"]))
    lines = [f"{run_label(run_dir)}: safety / usefulness / F1 in % [95% interval], judge {judge}",
             f"{'stage':<{name_width}}  {'safety':<16} {'usefulness':<16} {'F1':<16}"]
    for _, row in overall.iterrows():
        lines.append(f"{row['stage']:<{name_width}}  " + " ".join(f"{_interval(row, m):<16}"
                                                                   for m in ("safety", "usefulness", "f1")))
    if benchmarks:
        lines.append("F1 per benchmark: " + "; ".join(
            f"{b} " + "/".join("–" if pd.isna(v) else f"{v:.0f}" for v in table[table["group"] == b]["f1"])
            for b in benchmarks))
    return "\n".join(line.rstrip() if len(line) <= width else line[:width - 1] + "…" for line in lines)


def judge_error_table(run_dir: str | Path) -> pd.DataFrame | None:
    """Per stage: raw and judge-error-corrected safety and usefulness (%, 95% interval) and the share of
    responses on which the stage's judges disagree; None when no stage has corrected numbers."""
    table = analysis.stage_metrics(run_dir)
    overall = table[table["group"] == "overall"].assign(stage=lambda t: analysis.split_labels(t))
    if "safety_corrected" not in overall or overall["safety_corrected"].isna().all():
        return None
    rows = {row["stage"]: {"judge": row["judge"], "safety": _interval(row, "safety"),
                           "safety, corrected": _interval(row, "safety_corrected"),
                           "usefulness": _interval(row, "usefulness"),
                           "usefulness, corrected": _interval(row, "usefulness_corrected"),
                           "judges disagree %": row.get("judges_disagree")}
            for _, row in overall.iterrows()}
    return pd.DataFrame.from_dict(rows, orient="index")


def write_tables(run_dir: str | Path, folder: Path) -> dict[str, str]:
    """Write the headline table in the paper's layout as CSV and LaTeX, and its numbers as a flat CSV.

    Returns:
        ``{"csv", "tex", "numbers"}``: file names relative to ``folder`` (``numbers``: one row per stage
        and group, values and interval bounds in separate columns, for pandas).
    """
    label = run_label(run_dir)
    files = {"csv": f"{label}_headline.csv", "tex": f"{label}_headline.tex", "numbers": f"{label}_stage_metrics.csv"}
    analysis.stage_metrics(run_dir).to_csv(folder / files["numbers"], index=False)
    table = headline_table(run_dir)
    table.to_csv(folder / files["csv"])
    latex = table.to_latex(escape=True, multicolumn_format="c",
                           caption="Safety, usefulness and F1 (\\%, 95\\% interval), run "
                                   + re.sub(r"([&%$#_{}])", r"\\\1", label))
    (folder / files["tex"]).write_text(latex, encoding="utf-8")
    return files
