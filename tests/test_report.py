"""The static report, the headline table and the lineage, on a run folder built with the real judges."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import PAYLOADS
from porover import runs
from porover.report import build_report, headline_table, headline_text
from porover.report.pages import notebook_html
from porover.stages import analysis

ROOT = Path(__file__).resolve().parent.parent


def test_headline_table_has_the_papers_layout(payload_run):
    table = headline_table(payload_run)
    assert list(table.index) == ["base", "dpo"]
    assert list(table.columns.get_level_values(0).unique()) == ["overall", "xstest", "or_bench_toxic"]
    assert list(table["overall"].columns) == ["safety", "usefulness", "f1"]
    metrics = analysis.stage_metrics(payload_run)
    base = metrics[(metrics["stage"] == "base") & (metrics["group"] == "overall")].iloc[0]
    assert table.loc["base", ("overall", "safety")] == \
        f"{base['safety']:.1f} [{base['safety_low']:.1f}, {base['safety_high']:.1f}]"
    assert table.loc["base", ("or_bench_toxic", "usefulness")] == "–"  # no safe prompt in that benchmark


def test_headline_text_fits_a_terminal(payload_run):
    text = headline_text(payload_run)
    lines = text.splitlines()
    assert all(len(line) <= 100 for line in lines)
    assert [line.split()[0] for line in lines[2:4]] == ["base", "dpo"]
    assert "F1 per benchmark: xstest" in text


def test_report_folder_is_self_contained(payload_run, tmp_path):
    index = build_report([payload_run], tmp_path / "report")
    folder = index.parent
    pages = sorted(folder.rglob("*.html"))
    assert {p.relative_to(folder).as_posix() for p in pages} >= {
        "index.html", "browser.html", "payloads/refusal_tokens.html"}
    assert len(list(folder.rglob("plotly*.js"))) == 1
    plotly_js = (folder / "plotly.min.js").read_text()[:200]
    for page in pages:
        text = page.read_text()
        assert plotly_js[:120] not in text, f"{page.name} inlines plotly.js"
        # nothing is fetched from the network: every script and stylesheet is in the folder or inline
        assert not re.search(r"<(script|link)[^>]+(src|href)=[\"']?(https?:)?//", text), page.name
    index_text = index.read_text()
    assert all(f"payloads_{name}" in index_text for name in ("headline.csv", "headline.tex", "stage_metrics.csv"))
    assert pd.read_csv(folder / "payloads_headline.csv", header=[0, 1], index_col=0).shape == (2, 9)
    assert (folder / "payloads_headline.tex").read_text().startswith("\\begin{table}")
    # the stage of a type the report does not know is listed with its page
    assert "<a href='payloads/refusal_tokens.html'>refusal_tokens</a>" in index_text
    assert "Training curves" not in index_text  # no training stage in this run


def test_report_shows_corrected_rates_and_judge_disagreement_per_stage(payload_run, tmp_path):
    table = analysis.judge_error_table(analysis.stage_metrics(payload_run))
    assert list(table.index) == ["base", "dpo"]
    assert {"safety, corrected", "usefulness, corrected", "judges disagree %"} <= set(table.columns)
    # the rate the evaluation stored is the rate the table shows
    stored = analysis.stage_metrics(payload_run)
    overall = stored[stored["group"] == "overall"].set_index("stage")
    assert table.loc["base", "judges disagree %"] == overall.loc["base", "judges_disagree"]
    assert overall["safety_corrected"].notna().any()
    index_text = build_report([payload_run], tmp_path / "report").read_text()
    assert "corrected for the judge's measured error" in index_text and "judges disagree %" in index_text


def test_several_runs_share_one_tradeoff_figure(payload_run, tmp_path):
    index = build_report([payload_run, payload_run], tmp_path / "two")
    text = index.read_text()
    assert 'id="payloads"' in text.replace("'", '"') and 'id="payloads-2"' in text.replace("'", '"')
    tables = {"a": analysis.stage_metrics(payload_run), "b": analysis.stage_metrics(payload_run)}
    figure = analysis.tradeoff_figure(tables)
    runs_drawn = [trace for trace in figure.data if trace.name in tables]
    assert len(runs_drawn) == 2
    assert all(trace.error_x.array is not None and trace.error_y.array is not None for trace in runs_drawn)
    arrows = [a for a in figure.layout.annotations if a.showarrow]
    assert len(arrows) == 2  # base -> dpo, once per run
    assert any((a.text or "").startswith("F1 ") for a in figure.layout.annotations)


def test_lineage_joins_training_data_to_the_prompt(payload_run):
    rows = runs.browser_rows(payload_run)
    assert runs.stage_types(payload_run)["overgenerate"] == "overgenerate"  # recognised by its files
    knife = rows[(rows["stage"] == "dpo") & (rows["id"] == "3")].iloc[0]
    assert "SFT example: [overgenerate] Teacher says: carve slowly" in knife["lineage"]
    assert "chosen: Chosen: carve slowly" in knife["lineage"]
    assert "teacher candidate: [overgenerate · teacher-model #1" in knife["lineage"]
    assert rows[rows["id"] == "1"]["lineage"].eq("").all()
    assert "xstest_string_match:" in knife["judges"] and "phrase_lr:" in knife["judges"]
    assert set(rows["judges disagree"]) <= {"yes", "no"}


def test_stage_page_escapes_untrusted_outputs(payload_run):
    page = notebook_html(payload_run / "refusal_tokens.ipynb", "t")
    assert "window.__pwned" in page  # the payload text is there ...
    for payload in PAYLOADS:
        assert payload not in page  # ... but never as markup
    assert "&lt;script&gt;" in page
    assert "window.__pwned = 4" not in page  # javascript outputs are dropped
    assert page.count("Plotly.newPlot") == 1 and "../plotly.min.js" in page
    assert "jp-CodeMirrorEditor" not in page  # no code cells by default


def test_widget_browser_filters_and_shows_lineage(payload_run):
    rows = runs.browser_rows(payload_run)
    browser = analysis.refusal_browser(rows)
    counter, view = browser.children[2].children[1], browser.children[3]
    assert counter.value == f"{len(rows)} responses match"
    search = browser.children[1].children[-1]
    search.value = "zebracorn"
    assert counter.value == "2 responses match"
    assert "Teacher says: carve slowly" in view.value and "<b>Lineage</b>" in view.value
    search.value = "onerror"
    assert "<img" not in view.value and "&lt;img" in view.value


def test_report_command_does_not_import_torch(payload_run, tmp_path):
    code = ("import sys; from porover.cli import main; "
            f"code = main(['report', {str(payload_run)!r}, '--out', {str(tmp_path / 'r')!r}]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert f"report: {tmp_path / 'r' / 'index.html'}" in done.stdout
    assert "base " in done.stdout and "safety" in done.stdout


def test_report_refuses_a_missing_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        build_report([tmp_path / "nope"])


def test_plots_import_leaves_the_renderer_alone():
    code = ("import plotly.io as pio; before = pio.renderers.default; import porover.plots; "
            "assert pio.renderers.default == before, pio.renderers.default")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_paper_table_matches_stage_metrics_numbers(payload_run):
    table = analysis.stage_metrics(payload_run)
    paper = analysis.paper_table(table)
    dpo = table[(table["stage"] == "dpo") & (table["group"] == "xstest")].iloc[0]
    assert paper.loc["dpo", ("xstest", "f1")].startswith(f"{dpo['f1']:.1f} [")
    assert isinstance(paper, pd.DataFrame) and paper.shape == (2, 9)


def test_runner_html_copy_is_sanitised_and_standalone(payload_run, tmp_path):
    from porover.runner import export_html

    notebook = tmp_path / "stage.ipynb"
    notebook.write_bytes((payload_run / "refusal_tokens.ipynb").read_bytes())
    text = export_html(notebook).read_text()
    for payload in PAYLOADS:
        assert payload not in text
    assert "&lt;script&gt;" in text and "jp-CodeMirrorEditor" in text  # code cells are kept in the notebook's copy
    assert text.count("Plotly.newPlot") == 1 and not re.search(r"<script[^>]+src=", text)


def test_clean_html_keeps_tables_drops_styles_escapes_the_rest():
    from porover.report.pages import clean_html

    cleaned = clean_html('<style scoped>.dataframe {}</style><table><tr><th>a</th><td onclick="x()">1</td></tr></table>'
                         + PAYLOADS[1] + PAYLOADS[2])
    assert "dataframe" not in cleaned and "<th>a</th><td>1</td>" in cleaned  # no onclick either
    assert "&lt;img" in cleaned and "<img" not in cleaned and 'href="javascript' not in cleaned


def test_report_never_deletes_a_folder_that_is_not_a_report(payload_run):
    with pytest.raises(FileExistsError, match="not a report folder"):
        build_report([payload_run], out=payload_run)  # e.g. --out pointing at the run itself
    assert (payload_run / "manifest.json").exists()
    first = build_report([payload_run], out=payload_run / "report")
    assert build_report([payload_run], out=payload_run / "report") == first  # an earlier report is replaced


def test_report_shows_each_stages_spent_and_estimated_endpoint_cost(payload_run, tmp_path):
    import json
    import shutil

    run = tmp_path / "payloads"
    shutil.copytree(payload_run, run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"]["base"].update(spent_usd=0.8123, estimated_usd=0.89)
    manifest.setdefault("params", {})["base"] = {"max_cost_usd": 1.07}
    (run / "manifest.json").write_text(json.dumps(manifest))
    text = build_report([run], tmp_path / "report").read_text()
    assert "Endpoint cost (USD)" in text
    assert "<tr><td>base</td><td>0.8123</td><td>0.89</td><td>1.07</td></tr>" in text
    assert "Endpoint cost" not in build_report([payload_run], tmp_path / "plain").read_text()  # none spent: no table
