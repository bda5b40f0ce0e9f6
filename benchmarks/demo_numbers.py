"""The demo's numbers in one place: read them from a run, write `docs/demo_results.yaml`, render the docs' blocks.

The pages that quote the demo (README.md, docs/demo.md, each method page's "Demo numbers") hold marked blocks,

    <!-- demo:arms evaluate_base evaluate_dro -->   (the results table; no names = every arm)
    ...rendered text...
    <!-- /demo -->

(``demo:stages`` for the stage times, ``demo:run`` for the run's one-line summary, ``demo:versus`` for the paired
comparisons of each arm with the arm it was trained from; no names = every row; ``demo:judges`` for the main
comparison under each judge the evaluations recorded), rendered from the YAML file
alone, so a figure is written once and a page never carries a stale copy (`tests/test_docs.py` checks each block
against its rendering).

    python benchmarks/demo_numbers.py outputs/demo     # after `make demo`: rewrite the YAML from the run
    python benchmarks/demo_numbers.py --write-docs     # re-render every block from the YAML
    python benchmarks/demo_numbers.py outputs/demo --write-docs   # both

Editorial fields of the YAML (an arm's ``label``, a stage's ``note``, the run's ``wall_note``, the ``earlier``
rows kept from previous runs) survive a rewrite; the measured ones come from the run: each evaluation's
``metrics.json`` (overall and per-benchmark safety, usefulness, F1 with 95% intervals), the paired comparisons
(`porover.versus.versus_table`: each arm against its parent and its base, pooled over training seeds), the
manifest's stage wall times, peak memory and git commit, and the run folder's size.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "demo_results.yaml"
# Benchmark sources (`metrics.json`'s by_benchmark keys) as the table heads name them; others keep their key.
BENCHMARK_NAMES = {"xstest": "XSTest", "or_bench_hard": "OR-Hard", "or_bench_toxic": "OR-Toxic", "evolved": "evolved",
                   "jailbreak_gptfuzz_short": "Jailbreak", "jailbreak_gptfuzz": "Jailbreak"}
BLOCK = re.compile(r"<!-- demo:(?P<kind>[a-z]+)(?P<args>[^>]*?) -->\n(?P<body>.*?)<!-- /demo -->", re.S)
HEADER = ("# The demo's numbers (`make demo`), the one source the docs' <!-- demo:... --> blocks are rendered from.\n"
          "# Measured fields: `python benchmarks/demo_numbers.py outputs/demo`; then `--write-docs` re-renders the pages.\n"
          "# Editorial fields (label, note, wall_note, earlier) are kept across rewrites.\n")


def _triple(group: dict, metric: str) -> list | None:
    """``[value, low, high]`` in %, value to one decimal and the interval to whole points (as the tables show)."""
    part = group.get(metric) or {}
    if part.get("value") is None:
        return None
    low, high = part.get("low"), part.get("high")
    return [round(100 * part["value"], 1), None if low is None else round(100 * low), None if high is None else round(100 * high)]


def _folder_mb(folder: Path) -> int:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6)


def _stage_outputs_mb(run_dir: Path, stages: set[str]) -> int:
    """MB of what these stages wrote: their folders, executed notebooks and HTML pages."""
    paths = [p for p in run_dir.iterdir() if p.name in stages or (p.suffix in (".ipynb", ".html") and p.stem in stages)]
    return round(sum(q.stat().st_size for p in paths for q in ([p] if p.is_file() else p.rglob("*"))
                     if q.is_file() and not q.is_symlink()) / 1e6)


def collect(run_dir: str | Path, previous: dict | None = None) -> dict:
    """The demo's numbers from a finished run folder, keeping ``previous``'s editorial fields.

    Args:
        run_dir: The run folder (``outputs/demo``).
        previous: The YAML's current content, if any.

    Raises:
        FileNotFoundError: The folder has no manifest, or an evaluation no ``metrics.json``.
    """
    run_dir, previous = Path(run_dir), previous or {}
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path}: no manifest; run `make demo` first")
    manifest = json.loads(manifest_path.read_text())
    records = manifest.get("stages", {})
    old_arms = {arm["stage"]: arm for arm in previous.get("arms", [])}
    old_stages = previous.get("stages", {})
    arms, prompts, most = [], None, 0
    for stage, record in records.items():
        if record.get("type") != "evaluate" or record.get("status") != "finished":
            continue
        metrics_path = run_dir / stage / "metrics.json"
        if not metrics_path.exists():
            raise FileNotFoundError(f"{metrics_path}: missing; the stage's manifest record says finished")
        metrics = json.loads(metrics_path.read_text())
        arm = {"stage": stage, "label": old_arms.get(stage, {}).get("label", stage)}
        for metric in ("safety", "usefulness", "f1"):
            arm[metric] = _triple(metrics["overall"], metric)
        arm["benchmarks"] = {source: {m: _triple(group, m)[0] for m in ("safety", "usefulness") if _triple(group, m)}
                             for source, group in metrics.get("by_benchmark", {}).items()}
        arm["prompts"] = metrics["overall"].get("n")
        prompts = arm["prompts"] if prompts is None else min(prompts, arm["prompts"])
        most = max(most, arm["prompts"] or 0)
        arms.append(arm)
    stages = {}
    for stage, record in records.items():
        if record.get("status") == "finished":
            entry = {"seconds": round(record.get("wall_seconds", 0)), "peak_gib": round(record.get("peak_rss_mib", 0) / 1024, 1)}
            if old_stages.get(stage, {}).get("note"):
                entry["note"] = old_stages[stage]["note"]
            stages[stage] = entry
    demo_stages = _demo_stage_names()
    run = {"commit": (manifest.get("git_commit") or "unknown")[:7] + ("-dirty" if "dirty" in (manifest.get("git_commit") or "") else ""),
           "wall_s": sum(entry["seconds"] for stage, entry in stages.items() if stage in demo_stages),
           "more_wall_s": sum(entry["seconds"] for stage, entry in stages.items() if stage not in demo_stages),
           "wall_note": previous.get("run", {}).get("wall_note", "the sum of the stages' wall times in the manifest"),
           "outputs_mb": _folder_mb(run_dir), "demo_outputs_mb": _stage_outputs_mb(run_dir, demo_stages),
           "prompts": prompts, "prompts_max": most}
    result = {"run": run, "arms": arms, "versus": _versus(run_dir), "judges": _main_comparison_by_judge(run_dir),
              "stages": stages}
    if previous.get("earlier"):
        result["earlier"] = previous["earlier"]
    return result


def _demo_stage_names() -> set[str]:
    """The stages of ``make demo`` (params/demo.yaml, seed copies included); the others are ``make demo-more``'s."""
    from porover.run_file import load_run_params

    return set(load_run_params(ROOT / "params" / "demo.yaml", environment=False).stages)


def _differences(row) -> dict:
    """One versus-table row's differences in points ([value, low, high]), McNemar's p, flips and detectable sizes."""
    entry = {metric: [None if pd_isna(row[f"d_{metric}{s}"]) else float(row[f"d_{metric}{s}"]) for s in ("", "_low", "_high")]
             for metric in ("safety", "usefulness", "f1")}
    for rate in ("safety", "usefulness"):
        entry[f"{rate}_p"] = float(f"{row[f'p_{rate}']:.3g}")
        entry[f"{rate}_flips"] = row[f"flips_{rate}"]
        entry[f"{rate}_detectable"] = None if pd_isna(row[f"detectable_{rate}"]) else float(row[f"detectable_{rate}"])
    return entry


def _versus(run_dir: Path) -> list[dict]:
    """Each arm against its parent and its base: Δ [low, high] in points, McNemar's p, flips, detectable difference."""
    from porover.versus import versus_table

    return [{"stage": row["arm"], "against": row["against"], "relation": row["relation"], "seeds": int(row["seeds"]),
             "prompts": [int(row["n_unsafe"]), int(row["n_safe"])], **_differences(row)}
            for _, row in versus_table(run_dir).iterrows()]


def _main_comparison_by_judge(run_dir: Path, arm: str = "evaluate_dpo", against: str = "evaluate_sft") -> list[dict]:
    """The main comparison (POROver's DPO against SFT, seeds pooled) under every judge the evaluations recorded."""
    from porover.versus import versus_table

    metrics = json.loads((run_dir / against / "metrics.json").read_text()) if (run_dir / against).exists() else {}
    rows = []
    for judge in metrics.get("by_judge", {}):  # the judges it recorded, the headline judge first
        table = versus_table(run_dir, judge=judge)
        match = table[(table["arm"] == arm) & (table["against"] == against)]
        if not match.empty:
            rows.append({"judge": judge, "seeds": int(match.iloc[0]["seeds"]), **_differences(match.iloc[0])})
    return rows


def pd_isna(value) -> bool:
    return value is None or value != value  # NaN is the one value unequal to itself


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _interval(triple: list | None) -> str:
    if triple is None:
        return "–"
    value, low, high = triple
    return f"{value:.1f}" if low is None else f"{value:.1f} [{low}, {high}]"


def _benchmark_columns(arms: list[dict]) -> list[tuple[str, list[str]]]:
    """(source, metrics shown) per benchmark, in order of first appearance."""
    columns: dict[str, list[str]] = {}
    for arm in arms:
        for source, values in arm.get("benchmarks", {}).items():
            shown = columns.setdefault(source, [])
            shown += [m for m in ("safety", "usefulness") if m in values and m not in shown]
    return [(source, sorted(shown, key=("safety", "usefulness").index)) for source, shown in columns.items()]


def render_arms(data: dict, stages: list[str]) -> str:
    """The results table: every arm (with the ``earlier`` rows, in italics, after the arm they follow), or those named."""
    arms = data["arms"]
    if stages:
        known = {arm["stage"]: arm for arm in arms}
        missing = [s for s in stages if s not in known]
        if missing:
            raise KeyError(f"demo results have no arm {', '.join(missing)}; arms: {', '.join(known)}")
        rows = [known[s] for s in stages]
    else:
        rows = []
        for arm in arms:
            rows.append(arm)
            rows += [{**row, "italic": True} for row in data.get("earlier", []) if row.get("after") == arm["stage"]]
    columns = _benchmark_columns(rows)
    head = ["stage", "safety %", "usefulness %", "F1 %"] + [
        f"{BENCHMARK_NAMES.get(source, source)} {' / '.join(m[0].upper() for m in shown)}" for source, shown in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["label"]] + [_interval(row.get(m)) for m in ("safety", "usefulness", "f1")]
        for source, shown in columns:
            values = row.get("benchmarks", {}).get(source, {})
            cells.append(" / ".join(f"{values[m]:.1f}" if m in values else "–" for m in shown) if values else "–")
        if row.get("italic"):
            cells = [f"*{cell}*" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_stages(data: dict, names: list[str]) -> str:
    """Stage wall times and peak memory, two stages per row."""
    entries = [(stage, entry) for stage, entry in data["stages"].items() if not names or stage in names]
    cells = [(f"{stage} ({entry['note']})" if entry.get("note") else stage, _duration(entry["seconds"]),
              f"{entry['peak_gib']:.1f} GiB") for stage, entry in entries]
    half = (len(cells) + 1) // 2
    lines = ["| stage | time | memory | stage | time | memory |", "|---|---|---|---|---|---|"]
    for left, right in zip(cells[:half], cells[half:] + [("", "", "")]):
        lines.append("| " + " | ".join([*left, *right]) + " |")
    return "\n".join(lines)


def render_run(data: dict, _names: list[str]) -> str:
    """One sentence: commit, wall time, output size, prompts."""
    run = data["run"]
    most = run.get("prompts_max") or run["prompts"]
    prompts = (f"every evaluation reads the same {run['prompts']} test prompts" if most == run["prompts"] else
               f"evaluations read {run['prompts']} to {most} test prompts")
    demo_mb = f" (`make demo`'s stages {run['demo_outputs_mb']} MB)" if run.get("demo_outputs_mb") else ""
    more = f", `make demo-more` **{_duration(run['more_wall_s'])}** more" if run.get("more_wall_s") else ""
    return (f"Commit {run['commit']}: `make demo` **{_duration(run['wall_s'])}**{more}; {run['wall_note']}. "
            f"**{run['outputs_mb']} MB of outputs** in all{demo_mb}; {prompts}.")


def _difference(triple: list) -> str:
    value, low, high = triple
    return "–" if value is None else f"{value:+.1f}" + ("" if low is None else f" [{low:+.1f}, {high:+.1f}]")


def render_versus(data: dict, stages: list[str]) -> str:
    """The paired comparisons: each arm (those named, or all) against its parent and its base."""
    labels = {arm["stage"]: arm["label"] for arm in data["arms"]}
    rows = [row for row in data.get("versus", []) if not stages or row["stage"] in stages]
    lines = ["| arm | against | seeds | prompts (unsafe / safe) | Δ safety, points [95%], McNemar p (flips +/−) | "
             "Δ usefulness, points [95%], McNemar p (flips +/−) | Δ F1, points [95%] | detectable S / U |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        rates = [f"{_difference(row[r])}, p {row[f'{r}_p']:.2g} ({row[f'{r}_flips']})" for r in ("safety", "usefulness")]
        detectable = " / ".join("–" if row[f"{r}_detectable"] is None else f"±{row[f'{r}_detectable']:.1f}"
                                for r in ("safety", "usefulness"))
        arm = labels.get(row["stage"], row["stage"])
        if row["seeds"] > 1:  # pooled over the seeds: the first replicate's label without its seed
            arm = re.sub(r",? seed \d+$", "", arm)
        lines.append(f"| {arm} | {labels.get(row['against'], row['against'])} "
                     f"({row['relation']}) | {row['seeds']} | {row['prompts'][0]} / {row['prompts'][1]} | "
                     f"{rates[0]} | {rates[1]} | {_difference(row['f1'])} | {detectable} |")
    return "\n".join(lines)


def render_judges(data: dict, _names: list[str]) -> str:
    """The main comparison under each recorded judge: does POROver's difference depend on who reads the answers?"""
    lines = ["| judge | Δ safety, points [95%], McNemar p (flips +/−) | Δ usefulness, points [95%], McNemar p (flips +/−) "
             "| Δ F1, points [95%] |", "|---|---|---|---|"]
    for row in data.get("judges", []):
        rates = [f"{_difference(row[r])}, p {row[f'{r}_p']:.2g} ({row[f'{r}_flips']})" for r in ("safety", "usefulness")]
        lines.append(f"| `{row['judge']}` | {rates[0]} | {rates[1]} | {_difference(row['f1'])} |")
    return "\n".join(lines)


RENDERERS = {"arms": render_arms, "stages": render_stages, "run": render_run, "versus": render_versus,
             "judges": render_judges}


def render(kind: str, args: str, data: dict) -> str:
    """The text of one marked block (``<!-- demo:KIND ARGS -->``), without its markers."""
    if kind not in RENDERERS:
        raise KeyError(f"unknown demo block 'demo:{kind}'; known: {', '.join(RENDERERS)}")
    return RENDERERS[kind](data, args.split()) + "\n"


def rendered(text: str, data: dict) -> str:
    """``text`` with every marked block re-rendered from ``data``."""
    return BLOCK.sub(lambda m: f"<!-- demo:{m['kind']}{m['args']} -->\n{render(m['kind'], m['args'], data)}<!-- /demo -->",
                     text)


def doc_pages(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def load(path: Path = RESULTS) -> dict:
    return yaml.safe_load(path.read_text())


def write_docs(data: dict, root: Path = ROOT) -> list[Path]:
    """Re-render every block of every page; returns the pages that changed."""
    changed = []
    for page in doc_pages(root):
        text = page.read_text()
        new = rendered(text, data)
        if new != text:
            page.write_text(new)
            changed.append(page)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", help="a finished demo run folder, e.g. outputs/demo")
    parser.add_argument("--out", default=str(RESULTS), help="the YAML file (default: docs/demo_results.yaml)")
    parser.add_argument("--write-docs", action="store_true", help="re-render the marked blocks of README.md and docs/")
    args = parser.parse_args(argv)
    if not args.run_dir and not args.write_docs:
        parser.error("give a run folder, --write-docs, or both")
    out = Path(args.out)
    if args.run_dir:
        data = collect(args.run_dir, yaml.safe_load(out.read_text()) if out.exists() else None)
        out.write_text(HEADER + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120, default_flow_style=None))
        print(f"{out}: {len(data['arms'])} arms, {len(data['stages'])} stages from {args.run_dir}")
    if args.write_docs:
        for page in write_docs(load(out)):
            print(f"re-rendered {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
