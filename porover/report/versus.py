"""The report's "versus" section: each arm against the arm it was trained from and against the base, paired on
the prompts they share (`porover.versus`), each arm's spread over training seeds, and the prompts that flipped,
each linked to the refusal browser searched for it.

Prompts are untrusted text: escaped in the lists, and the browser link carries only the prompt's leading words
(letters and digits), which the browser puts into its search box as text.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from urllib.parse import quote

BROWSER_SEARCH_WORDS = 10


def browser_link(prompt: str, root: str = "") -> str:
    """The refusal browser searched for a prompt's leading words (every stage's response to it)."""
    words = re.findall(r"\w+", str(prompt or ""))[:BROWSER_SEARCH_WORDS]
    return f"{root}browser.html#q={quote(' '.join(words))}"


def _flips_html(run_dir: Path, before: str, after: str, limit: int) -> str:
    from porover.stages.analysis import changed_responses, load_responses

    responses = load_responses(run_dir, [before, after])
    changed = changed_responses(responses, before, after)
    if changed.empty:
        return f"<p class='muted'>{html.escape(after)} vs {html.escape(before)}: no prompt flipped.</p>"
    counts = changed.groupby(["label", "change"]).size()
    summary = ", ".join(f"{label} prompts {change}: {n}" for (label, change), n in counts.items())
    items = "".join(f"<li>[{html.escape(str(row['label']))} · {html.escape(str(row['source']))} · "
                    f"{html.escape(str(row['change']))}] <a href='{html.escape(browser_link(row['prompt']))}'>"
                    f"{html.escape(str(row['prompt'])[:160])}</a></li>" for _, row in changed.head(limit).iterrows())
    more = f"<li class='muted'>… and {len(changed) - limit} more</li>" if len(changed) > limit else ""
    return (f"<details><summary>{html.escape(after)} vs {html.escape(before)}: {len(changed)} prompts flipped "
            f"({html.escape(summary)})</summary><ul class='flips'>{items}{more}</ul></details>")


def versus_section(run_dir: str | Path, label: str, folder: Path | None = None, limit: int = 200) -> str:
    """The section's HTML (empty for a run without an arm trained from another evaluated one).

    Args:
        run_dir: The run folder.
        label: The run's label in the report.
        folder: The report folder, to write ``<label>_versus.csv`` into (None: no file).
        limit: Flipped prompts listed per comparison.
    """
    from porover.arms import run_arms
    from porover.versus import seed_table, versus_cells, versus_table

    run_dir = Path(run_dir)
    table = versus_table(run_dir)
    if table.empty:
        return ""
    csv = ""
    if folder is not None:
        table.to_csv(folder / f"{label}_versus.csv", index=False)
        csv = f" The numbers: <a href='{html.escape(label)}_versus.csv'>{html.escape(label)}_versus.csv</a>."
    parts = [f"<h3>Versus: paired differences</h3><p class='muted'>Each arm against the arm it was trained from "
             "(<i>parent</i>) and against the base model's arm, on the prompts both answered: after − before in "
             "percentage points with a 95% paired bootstrap interval (prompts resampled jointly within benchmark × "
             "label; with several training seeds, seeds resampled too, so the interval carries the seed-to-seed "
             "noise), McNemar's exact p on the prompts that flipped (with seeds: the largest over seeds), the flips "
             "per seed (+ became good / − became bad), and the smallest difference this comparison could detect "
             f"(80% power at 5%, from its observed flips).{csv}</p>",
             versus_cells(table).to_html(classes="headline versus", index=False, na_rep="–")]
    seeds = seed_table(run_dir)
    if not seeds.empty:
        parts.append("<h4>Spread over training seeds</h4><p class='muted'>Overall safety, usefulness and F1 (%) of each "
                     "arm repeated over seeds: mean, standard deviation, lowest and highest.</p>"
                     + seeds.to_html(classes="headline", index=False, na_rep="–"))
    arms = run_arms(run_dir)
    flips = [_flips_html(run_dir, before, after, limit) for arm in arms for before, after in zip(arm.parents, arm.stages)
             if before is not None]
    if flips:
        parts.append("<h4>Prompts that flipped</h4><p class='muted'>Per arm (and seed) against its parent; each prompt "
                     "opens the refusal browser searched for it.</p>" + "".join(flips))
    return "".join(parts)

