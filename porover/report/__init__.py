"""A static report of one or more runs: open ``index.html`` from disk or any static host, no Jupyter, no network.

The folder holds an index (headline table in the paper's layout, the safety–usefulness trade-off, training
curves, stage timings), one page per stage rendered from its executed notebook without code, a refusal
browser, the tables as CSV and LaTeX, and one copy of plotly.js shared by every page::

    python -m porover report outputs/demo [outputs/other ...] [--out DIR]
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path

import pandas as pd

from porover.report.browser import write_browser
from porover.report.pages import (NOTEBOOK_CSS, PLOTLY_JS, figure_html, notebook_css, notebook_html, page,
                                  write_plotly_js)
from porover.report.tables import headline_table, headline_text, run_label, write_tables

__all__ = ["build_report", "headline_table", "headline_text"]


def _unique_labels(run_dirs: list[Path]) -> list[str]:
    labels: list[str] = []
    for run_dir in run_dirs:
        label = run_label(run_dir)
        labels.append(label if label not in labels else f"{label}-{len(labels) + 1}")
    return labels


def _stage_pages(run_dir: Path, label: str, folder: Path, code: bool) -> list[dict]:
    """Render each stage's executed notebook into ``folder/<label>/<stage>.html``; one record per stage."""
    from porover.runs import read_manifest, stage_types

    manifest = read_manifest(run_dir)
    records = []
    for stage, kind in stage_types(run_dir).items():
        record = manifest["stages"].get(stage, {})
        notebook = Path(record.get("notebook") or run_dir / f"{stage}.ipynb")
        if not notebook.exists():  # the manifest's path is relative to where the run started, or the run moved
            notebook = run_dir / notebook.name
        href = None
        if notebook.exists():
            (folder / label).mkdir(exist_ok=True)
            href = f"{label}/{stage}.html"
            (folder / href).write_text(notebook_html(notebook, f"{label} · {stage}", code=code), encoding="utf-8")
        records.append({"stage": stage, "type": kind, "status": record.get("status"), "href": href})
    return records


def _sweep_section(run_dir: Path, label: str) -> str:
    """Every variant of the run's sweep in one table and on one frontier, each number with its split."""
    from porover.variants import frontier_figure, variant_table

    table = variant_table(run_dir)
    if table.empty:
        return ""
    from porover.runs import read_manifest
    from porover.stages.analysis import sweep_tables

    shown = table.drop(columns=[c for c in table if c.endswith(("_low", "_high"))]).round(1)
    manifest = read_manifest(run_dir)
    titles = {title: keys for stage, kind in manifest.get("types", {}).items() if kind == "analysis"
              for title, keys in (manifest.get("params", {}).get(stage, {}).get("tables") or {}).items()}
    paper = "".join(f"<h4>{html.escape(title)}</h4>" + layout.to_html(classes="headline", na_rep="–")
                    for title, layout in sweep_tables(run_dir, titles).items())
    return (f"<h3>Sweep: {len(set(table['variant']))} variants</h3><p class='muted'>Overall safety, usefulness and F1 "
            "(%) of every evaluation a variant changes; <b>split</b> says which prompts each number comes from: "
            "choose on <i>validation</i>, report <i>test</i>.</p>" + shown.to_html(classes="headline", index=False,
                                                                                  na_rep="–")
            + figure_html(frontier_figure(table).update_layout(title=f"Sweep frontier: {label}")) + paper)


def _cost_section(run_dir: Path) -> str:
    """What each stage that calls a priced endpoint spent, its worst-case estimate and its cap (USD); empty if none."""
    from porover.runs import read_manifest

    manifest = read_manifest(run_dir)
    rows = []
    for stage, record in manifest.get("stages", {}).items():
        spent, estimate = record.get("spent_usd"), record.get("estimated_usd")
        if spent is None and not estimate:
            continue
        cap = manifest.get("params", {}).get(stage, {}).get("max_cost_usd")
        cells = [stage, "–" if spent is None else f"{spent:,.4f}", "–" if estimate is None else f"{estimate:,.2f}",
                 "none" if cap is None else f"{cap:,.2f}"]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells) + "</tr>")
    if not rows:
        return ""
    return ("<h3>Endpoint cost (USD)</h3><p class='muted'>Spent: from the usage the API reported, at the run file's "
            "prices (every run of the stage in this folder); estimate: the worst case before the run (every "
            "generation at its full token budget); cap: the stage's max_cost_usd.</p><table class='headline'><tr>"
            "<th>stage</th><th>spent</th><th>worst-case estimate</th><th>cap</th></tr>" + "".join(rows) + "</table>")


def _run_section(run_dir: Path, label: str, folder: Path, stages: list[dict]) -> tuple[str, pd.DataFrame | None]:
    from porover.stages import analysis

    escape = html.escape
    parts = [f"<h2 id='{escape(label)}'>Run {escape(label)}</h2>"]
    table = None
    try:
        table = analysis.stage_metrics(run_dir)
        files = write_tables(run_dir, folder)
        parts.append("<p class='muted'>Safety, usefulness and F1 in %, 95% bootstrap intervals in brackets "
                     f"(judge {escape(str(table['judge'].iloc[0]))}). Also as "
                     f"<a href='{escape(files['csv'])}'>CSV</a> and <a href='{escape(files['tex'])}'>LaTeX</a>; the numbers "
                     f"alone in <a href='{escape(files['numbers'])}'>{escape(files['numbers'])}</a>.</p>")
        parts.append(headline_table(run_dir).to_html(classes="headline", na_rep="–"))
        errors = analysis.judge_error_table(table)
        if errors is not None:
            parts.append("<p class='muted'>The same rates corrected for the judge's measured error (Rogan–Gladen, with "
                         "sensitivity and specificity from held-out labelled sources; the interval also carries their "
                         "uncertainty), and the share of responses on which the stage's judges disagree on refusal.</p>"
                         + errors.to_html(classes="headline", na_rep="–"))
    except ValueError as error:
        parts.append(f"<p>No evaluation results: {escape(str(error))}</p>")
    parts.append(_sweep_section(run_dir, label))
    timings = analysis.stage_timings(run_dir) if (run_dir / "manifest.json").exists() else pd.DataFrame()
    links = {s["stage"]: s for s in stages}
    rows = []
    for _, row in timings.iterrows():
        record = links.get(row["stage"], {})
        name = escape(str(row["stage"]))
        link = f"<a href='{escape(record['href'])}'>{name}</a>" if record.get("href") else name
        rows.append(f"<tr><td>{link}</td><td>{escape(str(record.get('type', '?')))}</td>"
                    f"<td>{escape(str(row['status']))}</td><td>{row['minutes']}</td><td>{row['peak_memory_gib']}</td></tr>")
    parts.append("<h3>Stages</h3><p class='muted'>Each page is the stage's executed notebook without code "
                 "(the notebooks under the run folder stay the source).</p><table class='headline stages'><tr><th>stage</th>"
                 "<th>type</th><th>status</th><th>minutes</th><th>peak memory (GiB)</th></tr>" + "".join(rows) + "</table>")
    parts.append(_cost_section(run_dir))
    logs = analysis.training_logs(run_dir)
    if logs:
        from porover.plots import training_figure

        parts.append(figure_html(training_figure(logs).update_layout(title=f"Training curves: {label}")))
    return "".join(parts), table


def build_report(run_dirs: list[str | Path], out: str | Path | None = None, code: bool = False) -> Path:
    """Write the static report of one or more runs.

    Args:
        run_dirs: Run folders (``outputs/<run>``); several are compared in one trade-off figure.
        out: The report folder (default ``<first run>/report/``); an earlier report there is replaced.
        code: Show code cells on the stage pages.

    Returns:
        The path of ``index.html``.

    Raises:
        FileNotFoundError: A run folder does not exist.
        FileExistsError: ``out`` exists, is not empty and is not an earlier report (it is never deleted).
    """
    from porover.plots import tradeoff_figure
    from porover.runs import browser_rows
    from porover.stages.analysis import with_tradeoff_curves

    run_dirs = [Path(r) for r in run_dirs]
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise FileNotFoundError(f"{run_dir}: no such run folder")
    folder = Path(out) if out is not None else run_dirs[0] / "report"
    if folder.exists() and any(folder.iterdir()):
        if not (folder / "index.html").exists() or not (folder / PLOTLY_JS).exists():
            raise FileExistsError(f"{folder}: exists and is not a report folder; choose another --out")
        shutil.rmtree(folder)  # an earlier report: replaced whole, so no stale stage page stays
    folder.mkdir(parents=True)
    write_plotly_js(folder)
    (folder / NOTEBOOK_CSS).write_text(notebook_css(), encoding="utf-8")
    labels = _unique_labels(run_dirs)
    sections, tables, browsed = [], {}, []
    for run_dir, label in zip(run_dirs, labels):
        section, table = _run_section(run_dir, label, folder, _stage_pages(run_dir, label, folder, code))
        sections.append(section)
        if table is not None:
            tables[label] = table
        browsed.append(browser_rows(run_dir, run=label))
    write_browser(pd.concat(browsed, ignore_index=True), folder)
    title = "POROver report: " + ", ".join(labels)
    intro = (f"<h1>{html.escape(title)}</h1><p class='muted'>Safety: share of unsafe prompts refused. Usefulness: "
             "share of safe prompts not refused. F1: their harmonic mean. Read the responses behind the numbers in "
             "the <a href='browser.html'>refusal browser</a>.</p>")
    curves = dict(zip(labels, run_dirs))
    trade_off = figure_html(with_tradeoff_curves(tradeoff_figure(tables), curves)) if tables else ""
    index = folder / "index.html"
    index.write_text(page(title, intro + trade_off + "".join(sections), plotly=True), encoding="utf-8")
    return index
