"""The report's refusal browser: every judged response in one offline DataTable (itables), with filter panes.

Prompts and responses are untrusted: every cell is escaped with `html.escape` before it reaches the table.
(itables' own escaping would do, but it writes line breaks as a literal ``\\n`` (itables 2.9); escaping
here lets a line break become ``<br>`` and nothing else become markup.)
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from porover.report.pages import page

# Columns with a filter pane above the table; free text goes through the table's search box.
FILTER_COLUMNS = ("run", "stage", "source", "category", "label", "verdict", "judges disagree")
LONG_TEXT_COLUMNS = ("prompt", "response", "judges", "lineage")
BROWSER_CSS = """
body { max-width: none; }
table.dataTable { font-size: 0.85em; }
table.dataTable td.wrap { white-space: pre-wrap; word-break: break-word; min-width: 14em; max-width: 30em; }
table.dataTable td { vertical-align: top; }
div.dtsp-searchPane div.dt-scroll-body { max-height: 8em !important; }
"""


def browser_table_html(rows: pd.DataFrame) -> str:
    """The interactive table (itables, offline: DataTables is inlined once, no network needed)."""
    from itables import to_html_datatable
    from itables.javascript import generate_init_offline_itables_html
    from itables.options import dt_bundle

    # one run: no run column; the primary judge's name is in the judges text
    rows = rows.drop(columns=[c for c in ("judge",) if c in rows]
                     + (["run"] if "run" in rows and rows["run"].nunique() == 1 else [])).fillna("")
    rows = rows.apply(lambda column: column.map(lambda value: html.escape(str(value)).replace("\n", "<br>")))
    columns = list(rows.columns)
    panes = [columns.index(c) for c in FILTER_COLUMNS if c in columns and rows[c].nunique() > 1]
    wrap = [columns.index(c) for c in LONG_TEXT_COLUMNS if c in columns]
    table = to_html_datatable(
        rows, connected=False, allow_html=True, table_id="refusals", showIndex=False, maxBytes=0, classes="display compact",
        pageLength=10, lengthMenu=[10, 25, 100, -1], autoWidth=False,
        layout={"top1": "searchPanes", "topStart": "pageLength", "topEnd": "search"},
        searchPanes={"columns": panes, "cascadePanes": True, "viewTotal": True, "initCollapsed": False,
                     "layout": f"columns-{min(max(len(panes), 1), 4)}"},
        columnDefs=[{"targets": wrap, "className": "wrap"}],
        style={"width": "100%", "table-layout": "auto"})
    return generate_init_offline_itables_html(dt_bundle) + table


# ``browser.html#q=words`` opens the browser searched for those words (the report's lists of flipped prompts link
# here); the words go into the search box as its value (text), and DataTables filters on its input event.
SEARCH_FROM_LINK = """<script>
(function () {
  function apply() {
    var query = new URLSearchParams(location.hash.slice(1)).get("q");
    if (query === null) return true;
    var box = document.querySelector("div.dt-search input");
    if (!box) return false;
    box.value = query;
    box.dispatchEvent(new Event("input", {bubbles: true}));
    return true;
  }
  var tries = 0;
  (function wait() { if (!apply() && tries++ < 400) setTimeout(wait, 50); })();
  window.addEventListener("hashchange", apply);
})();
</script>"""


def browser_page(rows: pd.DataFrame, title: str) -> str:
    """The browser page: what each column means, then the table."""
    if rows.empty:
        body = "<h1>Refusal browser</h1><p>No judged responses in this run yet.</p>"
    else:
        body = ("<h1>Refusal browser</h1><p class='muted'>One row per judged response: evaluation responses and the "
                "preference-data stage's student samples. Click values in the panes to filter (stage, benchmark, "
                "category, prompt label, the first judge's verdict, judge disagreement); the search box matches "
                "any text. <b>judges</b> lists every judge's verdict and raw output; <b>lineage</b> the SFT example, "
                "preference pair and teacher candidates the run built from the same prompt.</p>"
                f"<style>{BROWSER_CSS}</style>{browser_table_html(rows)}{SEARCH_FROM_LINK}")
    return page(title, body)


def write_browser(rows: pd.DataFrame, folder: Path, title: str = "Refusal browser") -> Path:
    """Write ``browser.html`` (and ``responses.csv``, the same rows for pandas) into the report folder."""
    rows.to_csv(folder / "responses.csv", index=False)
    path = folder / "browser.html"
    path.write_text(browser_page(rows, title), encoding="utf-8")
    return path
