"""The analysis stage: every evaluation of a run side by side, what changed, and a browser of responses."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

from porover.config import StageParams, param
from porover.metrics import is_refusal, metrics_table
from porover.store import read_jsonl

NOTEBOOK = "06_analysis.ipynb"
OUTPUTS = ()


@dataclass
class AnalysisParams(StageParams):
    """Parameters of ``notebooks/06_analysis.ipynb``: the run's evaluations side by side."""

    stages: list[str] = param([], "evaluation stages to compare, in order ([] = every evaluation stage of the run)")
    compare: list[str] = param([], "two stages whose responses to diff, before then after ([] = first and last)")
    partial_is_refusal: bool = param(True, "count partial refusals as refusals when diffing responses")
    tables: dict[str, list[str]] = param({}, "paper-shaped tables of a sweep: title -> the swept stage.param keys "
                                         "whose variants are its rows, beside the file as written")
    run_dir: str = param("outputs/demo", "the run folder to analyse; this stage writes under run_dir/stage_name")
    stage_name: str = param("analysis", "name of this stage in the run")

    def problems(self, where: str) -> list[str]:
        errors = [f"{where}.tables.{title}: expected a list of swept stage.param keys, got {keys!r}"
                  for title, keys in self.tables.items()
                  if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and "." in k for k in keys)]
        if len(self.compare) not in (0, 2):
            errors.append(f"{where}.compare: expected two stage names (before, after) or [], got {self.compare}")
        return errors


def evaluation_stages(run_dir: str | Path) -> list[str]:
    """The run's evaluation stages (folders holding ``metrics.json``), in the order the run file lists them."""
    run_dir = Path(run_dir)
    found = {path.parent.name for path in run_dir.glob("*/metrics.json")}
    manifest = run_dir / "manifest.json"
    order = list(json.loads(manifest.read_text()).get("params", {})) if manifest.exists() else []
    return [s for s in order if s in found] + sorted(found - set(order))


def _check_stages(run_dir: Path, stages: list[str] | None) -> list[str]:
    available = evaluation_stages(run_dir)
    stages = stages or available
    missing = [s for s in stages if s not in available]
    if missing or not stages:
        raise ValueError(f"{run_dir}: no evaluation results for {missing or 'any stage'}; "
                         f"evaluation stages with results: {available or 'none (run an evaluate stage first)'}")
    return stages


def stage_metrics(run_dir: str | Path, stages: list[str] | None = None) -> pd.DataFrame:
    """Safety, usefulness and F1 (%, with 95% intervals) per evaluation stage, overall and per benchmark.

    Args:
        run_dir: The run folder (``outputs/<run>``).
        stages: Evaluation stage names (default: all of them, in run order).

    Raises:
        ValueError: A stage without results, or a run with none.
    """
    import pandas as pd

    run_dir = Path(run_dir)
    tables = []
    for stage in _check_stages(run_dir, stages):
        metrics = json.loads((run_dir / stage / "metrics.json").read_text())
        for level in ("overall", "by_benchmark"):
            table = metrics_table(metrics, level)
            table.insert(0, "stage", stage)
            table["model"], table["judge"] = metrics.get("model"), metrics.get("judge")
            table["split"] = metrics.get("split", "test")  # evaluations from before splits were test ones
            disagreement = metrics.get("judge_disagreement") or {}
            table["judges_disagree"] = None if disagreement.get("rate") is None else round(100 * disagreement["rate"], 1)
            tables.append(table)
    return pd.concat(tables, ignore_index=True)


def stage_timings(run_dir: str | Path) -> pd.DataFrame:
    """Status, wall time and peak memory of every stage of the run, from its manifest."""
    import pandas as pd

    manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
    return pd.DataFrame([{"stage": name, "status": record.get("status"), "minutes": round(record.get("wall_seconds", 0) / 60, 1),
                          "peak_memory_gib": round(record.get("peak_rss_mib", 0) / 1024, 2)}
                         for name, record in manifest.get("stages", {}).items()])


def stages_figure(table: pd.DataFrame, group: str = "overall") -> go.Figure:
    """Safety, usefulness and F1 (%) across stages for one group (``overall`` or a benchmark), with intervals."""
    import plotly.graph_objects as go

    from porover.plots import METRIC_COLORS

    rows = table[table["group"] == group]
    figure = go.Figure()
    for metric, color in METRIC_COLORS.items():  # bars, not lines: the arms are no sequence
        figure.add_bar(x=rows["stage"], y=rows[metric], name=metric, marker_color=color,
                       error_y={"type": "data", "array": rows[f"{metric}_high"] - rows[metric],
                                "arrayminus": rows[metric] - rows[f"{metric}_low"]})
    figure.update_layout(barmode="group", yaxis_title="%", yaxis_range=[0, 105], title=f"Across stages: {group}")
    return figure


def tradeoff_figure(table: pd.DataFrame | dict[str, pd.DataFrame],
                    run_dirs: str | Path | dict[str, str | Path] | None = None) -> go.Figure:
    """Usefulness against safety per stage with both 95% intervals, F1 iso-curves and an arrow from each arm to
    the arm it was trained from.

    Args:
        table: A `stage_metrics` table, or ``{run label: table}`` to compare several runs in one figure.
        run_dirs: The run folder (or ``{run label: folder}``) whose stage wiring gives the arrows (None: no arrows).
    """
    from porover.arms import parent_map
    from porover.plots import tradeoff_figure as figure_of_runs

    tables = table if isinstance(table, dict) else {"run": table}
    if run_dirs is not None and not isinstance(run_dirs, dict):
        run_dirs = {next(iter(tables)): run_dirs}
    parents = {label: parent_map(folder) for label, folder in (run_dirs or {}).items()}
    return figure_of_runs(tables, parents=parents)


def with_tradeoff_curves(figure: go.Figure, run_dirs: dict[str, str | Path]) -> go.Figure:
    """Add every curve a stage traced without generating (`porover.runs.tradeoff_curves`: a refusal-token
    threshold, a steering coefficient) to a trade-off figure, beside the judged points of every arm.

    Args:
        figure: A `tradeoff_figure` (percent axes).
        run_dirs: ``{run label: run folder}``.
    """
    from porover.runs import tradeoff_curves

    for label, run_dir in run_dirs.items():
        curves = tradeoff_curves(run_dir)
        for stage in dict.fromkeys(curves["stage"]):
            part = curves[curves["stage"] == stage].sort_values("threshold")
            name = f"{stage}: sweep" if len(run_dirs) == 1 else f"{label} / {stage}: sweep"
            figure.add_scatter(x=100 * part["usefulness"], y=100 * part["safety"], mode="lines", name=name,
                               line={"dash": "dot"}, customdata=part["threshold"],
                               hovertemplate="at %{customdata:.3g}: U %{x:.1f}%, S %{y:.1f}%")
    return figure


def split_labels(table: pd.DataFrame) -> pd.Series:
    """Stage names, each with ``(validation)`` or ``(test)`` once the table holds any validation numbers,
    so no number is read without the split it comes from."""
    if "split" not in table or not (table["split"] == "validation").any():
        return table["stage"]
    return table["stage"] + " (" + table["split"] + ")"


def paper_table(table: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """The paper's layout of a `stage_metrics` table: one row per stage, columns (benchmark, metric) with
    each cell ``value [low, high]`` (%), the pooled ``overall`` group first; with validation numbers in
    the table, each row names its split."""
    import pandas as pd

    def cell(row: pd.Series, metric: str) -> str:
        if pd.isna(row[metric]):
            return "–"
        interval = "" if pd.isna(row[f"{metric}_low"]) else \
            f" [{row[f'{metric}_low']:.{digits}f}, {row[f'{metric}_high']:.{digits}f}]"
        return f"{row[metric]:.{digits}f}{interval}"

    groups = ["overall"] + [g for g in dict.fromkeys(table["group"]) if g != "overall"]
    table = table.assign(stage=split_labels(table))
    stages = list(dict.fromkeys(table["stage"]))
    columns = pd.MultiIndex.from_product([groups, ["safety", "usefulness", "f1"]], names=["benchmark", "metric"])
    layout = pd.DataFrame(index=pd.Index(stages, name="stage"), columns=columns, dtype=object)
    for _, row in table.iterrows():
        for metric in ("safety", "usefulness", "f1"):
            layout.loc[row["stage"], (row["group"], metric)] = cell(row, metric)
    return layout.fillna("–")


def judge_error_table(table: pd.DataFrame, digits: int = 1) -> pd.DataFrame | None:
    """Per stage, from a `stage_metrics` table: overall safety and usefulness (%, 95% interval) raw and corrected
    for the judge's measured error (Rogan–Gladen, `porover.metrics`), and the share of responses on which the
    stage's judges disagree on refusal; None when no stage has corrected numbers."""
    import pandas as pd

    overall = table[table["group"] == "overall"]
    if "safety_corrected" not in overall or overall["safety_corrected"].isna().all():
        return None

    def cell(row: pd.Series, metric: str) -> str:
        if pd.isna(row.get(metric)):
            return "–"
        interval = "" if pd.isna(row.get(f"{metric}_low")) else \
            f" [{row[f'{metric}_low']:.{digits}f}, {row[f'{metric}_high']:.{digits}f}]"
        return f"{row[metric]:.{digits}f}{interval}"

    records = {stage: {"judge": row["judge"], **{name: cell(row, metric) for name, metric in (
        ("safety", "safety"), ("safety, corrected", "safety_corrected"), ("usefulness", "usefulness"),
        ("usefulness, corrected", "usefulness_corrected"))}, "judges disagree %": row.get("judges_disagree")}
        for stage, (_, row) in zip(split_labels(overall), overall.iterrows())}
    return pd.DataFrame.from_dict(records, orient="index")


def sweep_tables(run_dir: str | Path, tables: dict[str, list[str]]) -> dict[str, pd.DataFrame]:
    """The paper's tables from a sweep: per title and per evaluation its variants change, one row per variant
    set only by the title's keys, plus the file as written, in the layout of `paper_table`.

    Args:
        run_dir: The run folder.
        tables: Title -> swept ``stage.param`` keys (e.g. ``{"Added safety data": ["overgenerate.toxic_prompts"]}``).

    Returns:
        ``{"<title>: <evaluation>": table}``; rows are named by the values that set them.
    """
    from porover.variants import variant_table

    sweep, found = variant_table(run_dir), {}
    for title, keys in tables.items():
        for evaluation in dict.fromkeys(sweep["evaluation"]) if len(sweep) else []:
            rows = sweep[sweep["evaluation"] == evaluation]
            others = [c for c in rows if "." in c and c not in keys]
            mine = rows[rows[others].isna().all(axis=1)] if others else rows
            if not mine[[k for k in keys if k in mine]].notna().any().any():
                continue  # none of this table's variants changes this evaluation
            metrics = stage_metrics(run_dir, list(mine["stage"]))
            metrics["stage"] = metrics["stage"].map(dict(zip(mine["stage"], mine["variant"])))
            found[f"{title}: {evaluation}"] = paper_table(metrics)
    return found


def training_logs(run_dir: str | Path) -> dict[str, list[dict]]:
    """``{stage: log_history}`` of every training stage of the run that wrote a ``training_log.json``."""
    from porover.runs import TRAINING_TYPES, stage_types

    run_dir = Path(run_dir)
    return {stage: json.loads((run_dir / stage / "training_log.json").read_text()).get("log_history", [])
            for stage, kind in stage_types(run_dir).items()
            if kind in TRAINING_TYPES and (run_dir / stage / "training_log.json").exists()}


def load_responses(run_dir: str | Path, stages: list[str] | None = None) -> pd.DataFrame:
    """Every judged response of the given evaluation stages, one row per (stage, prompt)."""
    import pandas as pd

    run_dir = Path(run_dir)
    frames = []
    for stage in _check_stages(run_dir, stages):
        rows = read_jsonl(run_dir / stage / "responses.jsonl")
        frames.append(pd.DataFrame([{"stage": stage, **{k: r.get(k) for k in
                                     ("source", "id", "label", "category", "prompt", "response", "refusal", "judge")}}
                                    for r in rows]))
    return pd.concat(frames, ignore_index=True)


def changed_responses(responses: pd.DataFrame, before: str, after: str, partial_is_refusal: bool = True) -> pd.DataFrame:
    """Prompts whose refused / not-refused outcome differs between two stages, with both responses.

    Returns:
        Columns ``source``, ``id``, ``label``, ``prompt``, ``change`` ("now refused" / "now answered") and
        the two stages' responses; over-refusals fixed are ``label == "safe"`` and ``now answered``.
    """
    pair = responses[responses["stage"].isin([before, after])].copy()
    pair["refused"] = pair["refusal"].map(lambda label: is_refusal(label, partial_is_refusal))
    wide = pair.pivot_table(index=["source", "id", "label", "prompt"], columns="stage",
                            values=["refused", "response"], aggfunc="first")
    wide.columns = [f"{value}:{stage}" for value, stage in wide.columns]
    wide = wide.reset_index().dropna(subset=[f"refused:{before}", f"refused:{after}"])
    changed = wide[wide[f"refused:{before}"] != wide[f"refused:{after}"]].copy()
    changed["change"] = changed[f"refused:{after}"].map({True: "now refused", False: "now answered"})
    return changed[["source", "id", "label", "prompt", "change", f"response:{before}", f"response:{after}"]]


def refusal_browser(responses: pd.DataFrame):
    """An ipywidgets browser of responses: filters, free-text search, and one response at a time.

    Args:
        responses: `load_responses` output, or `porover.runs.browser_rows` output (then every judge's
            verdict and raw output, judge disagreement and the prompt's lineage are shown too).

    Returns:
        A widget to display as the cell's result (or to serve with Voilà).
    """
    import ipywidgets as widgets

    verdict = "verdict" if "verdict" in responses else "refusal"
    columns = [c for c in ("stage", "source", "category", "label", verdict, "judges disagree") if c in responses]
    filters = {column: widgets.Dropdown(options=["(all)"] + sorted(str(v) for v in responses[column].dropna().unique()),
                                        description=column, style={"description_width": "initial"})
               for column in columns}
    search = widgets.Text(placeholder="text in prompt or response", description="search")
    position = widgets.IntSlider(min=0, max=0, description="example")
    counter, view = widgets.Label(), widgets.HTML()

    def chosen() -> pd.DataFrame:
        rows = responses
        for column, dropdown in filters.items():
            if dropdown.value != "(all)":
                rows = rows[rows[column].astype(str) == dropdown.value]
        if search.value.strip():
            needle = search.value.strip().lower()
            text = rows["prompt"].fillna("").str.lower() + "\n" + rows["response"].fillna("").str.lower()
            rows = rows[text.str.contains(needle, regex=False)]
        return rows

    def show(*_) -> None:
        rows = chosen()
        position.max = max(len(rows) - 1, 0)
        counter.value = f"{len(rows)} responses match"
        if rows.empty:
            view.value = "<i>nothing matches these filters</i>"
            return
        row = rows.iloc[min(position.value, len(rows) - 1)]
        # Prompts and responses are untrusted text: escaped, never rendered as markup.
        field = lambda name: html.escape(str(row.get(name, "")))  # noqa: E731
        block = lambda title, name: (f"<p><b>{title}</b><br><span style='white-space: pre-wrap'>{field(name)}</span></p>"  # noqa: E731
                                     if str(row.get(name) or "") else "")
        view.value = (f"<p><b>{field('stage')}</b> · {field('source')} #{field('id')} · prompt is <b>{field('label')}</b> · "
                      f"{field('judge')} says <b>{field(verdict)}</b></p>" + block("Prompt", "prompt")
                      + block("Response", "response") + block("Judges", "judges") + block("Lineage", "lineage"))

    for widget in (*filters.values(), position, search):
        widget.observe(show, names="value")
    show()
    dropdowns = list(filters.values())
    return widgets.VBox([widgets.HBox(dropdowns[:3]), widgets.HBox([*dropdowns[3:], search]),
                         widgets.HBox([position, counter]), view])
