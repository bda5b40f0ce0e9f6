"""The demo's numbers in one place: read them from a run, write `docs/demo_results.yaml`, render the docs' blocks.

The pages that quote the demo (README.md, docs/demo.md, each method page's "Demo numbers") hold marked blocks,

    <!-- demo:arms evaluate_base evaluate_dro -->   (the results table; no names = every arm)
    ...rendered text...
    <!-- /demo -->

(``demo:stages`` for the stage times, ``demo:run`` for the run's one-line summary), rendered from the YAML file
alone, so a figure is written once and a page never carries a stale copy (`tests/test_docs.py` checks each block
against its rendering).

    python benchmarks/demo_numbers.py outputs/demo     # after `make demo`: rewrite the YAML from the run
    python benchmarks/demo_numbers.py --write-docs     # re-render every block from the YAML
    python benchmarks/demo_numbers.py outputs/demo --write-docs   # both

Editorial fields of the YAML (an arm's ``label``, a stage's ``note``, the run's ``wall_note``, the ``earlier``
rows kept from previous runs) survive a rewrite; the measured ones come from the run: each evaluation's
``metrics.json`` (overall and per-benchmark safety, usefulness, F1 with 95% intervals), the manifest's stage
wall times, peak memory and git commit, and the run folder's size.
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
    arms, prompts = [], None
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
        arms.append(arm)
    stages = {}
    for stage, record in records.items():
        if record.get("status") == "finished":
            entry = {"seconds": round(record.get("wall_seconds", 0)), "peak_gib": round(record.get("peak_rss_mib", 0) / 1024, 1)}
            if old_stages.get(stage, {}).get("note"):
                entry["note"] = old_stages[stage]["note"]
            stages[stage] = entry
    run = {"commit": (manifest.get("git_commit") or "unknown")[:7] + ("-dirty" if "dirty" in (manifest.get("git_commit") or "") else ""),
           "wall_s": sum(entry["seconds"] for entry in stages.values()),
           "wall_note": "the sum of the stages' wall times in the manifest",
           "outputs_mb": _folder_mb(run_dir), "prompts": prompts}
    result = {"run": run, "arms": arms, "stages": stages}
    if previous.get("earlier"):
        result["earlier"] = previous["earlier"]
    return result


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
    return (f"Commit {run['commit']}: **{_duration(run['wall_s'])}** ({run['wall_note']}), "
            f"**{run['outputs_mb']} MB of outputs**; every evaluation reads the same {run['prompts']} test prompts.")


RENDERERS = {"arms": render_arms, "stages": render_stages, "run": render_run}


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
