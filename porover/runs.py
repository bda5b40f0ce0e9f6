"""Reading a run folder: what each stage is, every judged response, and the training data built from a prompt.

A stage's type comes from its manifest record (``type``) when the runner wrote one, and otherwise from the
files it left, so runs made before the field existed (and stage types added later) still read.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pandas as pd

from porover.store import read_jsonl
from porover.vocabulary import CURVE_FILE

# file in the stage folder -> the stage type it reveals (first match wins)
_TELLTALE_FILES = (("metrics.json", "evaluate"), ("sft.jsonl", "overgenerate"), ("pairs.jsonl", "preference_data"),
                   ("training_log.json", "training"))
TRAINING_TYPES = ("sft", "preference_optimization")


def tradeoff_curves(run_dir: str | Path, group: str | None = "overall") -> pd.DataFrame:
    """Every curve a stage of the run traced without generating (its `porover.vocabulary.CURVE_FILE`).

    Args:
        run_dir: The run folder (``outputs/<run>``).
        group: Keep this group only (None: every group).

    Returns:
        The curves' rows with a ``stage`` column first (empty when the run has none); ``safety`` and
        ``usefulness`` are shares in [0, 1], as in ``metrics.json``.
    """
    frames = []
    for path in sorted(Path(run_dir).glob(f"*/{CURVE_FILE}")):
        frame = pd.read_csv(path)
        frame.insert(0, "stage", path.parent.name)
        frames.append(frame if group is None else frame[frame["group"] == group])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["stage", "group", "threshold", "safety", "usefulness"])


def read_manifest(run_dir: str | Path) -> dict:
    """The run's ``manifest.json`` (an empty manifest when the folder has none)."""
    path = Path(run_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {"stages": {}, "params": {}}


def stage_type(run_dir: str | Path, stage: str, record: dict | None = None) -> str:
    """The type of one stage (``evaluate``, ``sft``, ...; ``unknown`` when nothing tells).

    Args:
        run_dir: The run folder.
        stage: The stage name.
        record: Its manifest record, if at hand.
    """
    record = record if record is not None else read_manifest(run_dir)["stages"].get(stage, {})
    if record.get("type"):
        return record["type"]
    folder = Path(run_dir) / stage
    for name, kind in _TELLTALE_FILES:
        if (folder / name).exists():
            if kind != "training":
                return kind
            history = json.loads((folder / name).read_text()).get("log_history", [])
            return "preference_optimization" if any("rewards/margins" in h for h in history) else "sft"
    if (folder / "stage_metrics.csv").exists() or stage == "analysis":
        return "analysis"
    return "unknown"


def stage_types(run_dir: str | Path) -> dict[str, str]:
    """Every stage the run's manifest lists, in its order, with its type."""
    manifest = read_manifest(run_dir)
    names = list(manifest.get("stages", {}))
    return {name: stage_type(run_dir, name, manifest["stages"].get(name)) for name in names}


def normalise(text: str | None) -> str:
    """Prompt text compared loosely: case and whitespace do not matter."""
    return re.sub(r"\s+", " ", str(text or "")).strip().lower()


def lineage_index(run_dir: str | Path) -> dict[tuple, dict[str, list[str]]]:
    """What the run built from each prompt: SFT examples, preference pairs and teacher candidates.

    Returns:
        ``{key: {"sft": [...], "pairs": [...], "teacher": [...]}}`` (readable texts), keyed both by
        ``("id", source, id)`` and by ``("prompt", normalised prompt)``.
    """
    index: dict[tuple, dict[str, list[str]]] = defaultdict(lambda: {"sft": [], "pairs": [], "teacher": []})

    def add(row: dict, part: str, text: str) -> None:
        for key in (("id", row.get("source"), str(row.get("id"))), ("prompt", normalise(row.get("prompt")))):
            if key[-1] not in ("", "None"):
                index[key][part].append(text)

    run_dir = Path(run_dir)
    for stage, kind in stage_types(run_dir).items():
        folder = run_dir / stage
        if kind == "overgenerate":
            for row in read_jsonl(folder / "sft.jsonl"):
                prompt = next((m["content"] for m in row.get("messages", []) if m["role"] == "user"), None)
                reply = row.get("messages", [{}])[-1].get("content", "")
                add({**row, "prompt": prompt}, "sft", f"[{stage}] {reply}")
            for row in read_jsonl(folder / "candidates.jsonl"):
                add(row, "teacher", f"[{stage} · {row.get('teacher')} #{row.get('sample_index')}"
                                    f" · {(row.get('scores') or {}).get('refusal')}] {row.get('response')}")
        elif kind == "preference_data":
            for row in read_jsonl(folder / "pairs.jsonl"):
                add(row, "pairs", f"[{stage} · {row.get('kind')}] chosen: {row.get('chosen')}\n"
                                  f"    rejected: {row.get('rejected')}")
            for row in read_jsonl(folder / "teacher_completions.jsonl"):
                add(row, "teacher", f"[{stage} · {row.get('teacher', 'teacher')} #{row.get('sample_index')}]"
                                    f" {row.get('response')}")
    return dict(index)


def lineage_text(index: dict, source: str, row_id: str, prompt: str) -> str:
    """The lineage of one prompt as plain text (empty when the run built nothing from it)."""
    matches = [index.get(("id", source, str(row_id))), index.get(("prompt", normalise(prompt)))]
    titles = {"sft": "SFT example", "pairs": "preference pair", "teacher": "teacher candidate"}
    # an example found by id and by prompt text is listed once
    lines = [f"{titles[part]}: {text}" for part in titles for found in matches if found for text in found[part]]
    return "\n".join(dict.fromkeys(lines))


def _judges_text(judgements: dict) -> tuple[str, bool]:
    labels = {name: verdict.get("label") for name, verdict in judgements.items()}
    text = "\n".join(f"{name}: {verdict.get('label')} ({verdict.get('status')}) — {verdict.get('raw')}"
                     for name, verdict in judgements.items())
    return text, len(set(labels.values())) > 1


def browser_rows(run_dir: str | Path, run: str | None = None) -> pd.DataFrame:
    """Every judged response of the run with its judges and lineage, one row per (stage, prompt, sample).

    Rows follow the manifest's stage order: each evaluation stage's responses, and the preference-data
    stage's student samples (their refusals decided which pairs were built; their verdicts are not stored).

    Args:
        run_dir: The run folder.
        run: A run label to add as the first column (for reports over several runs).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").exists():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no manifest.json)")
    index = lineage_index(run_dir)
    records = []
    for stage, kind in stage_types(run_dir).items():
        if kind == "evaluate":
            rows = read_jsonl(run_dir / stage / "responses.jsonl")
        elif kind == "preference_data":
            rows = read_jsonl(run_dir / stage / "student_samples.jsonl")
        else:
            continue
        for row in rows:
            judgements = row.get("judgements") or {}
            judges, disagree = _judges_text(judgements)
            # student samples are judged in memory only: their verdicts are not in the file
            verdict = row.get("refusal") or (row.get("scores") or {}).get("refusal") or "(not stored)"
            records.append({"stage": stage, "source": row.get("source"), "id": str(row.get("id")),
                            "category": row.get("category") or "(none)", "label": row.get("label") or "(none)",
                            "prompt": row.get("prompt"), "response": row.get("response"), "verdict": verdict,
                            "judge": row.get("judge"), "judges disagree": "yes" if disagree else "no",
                            "judges": judges,
                            "lineage": lineage_text(index, row.get("source"), row.get("id"), row.get("prompt"))})
    table = pd.DataFrame.from_records(records, columns=["stage", "source", "id", "category", "label", "prompt",
                                                        "response", "verdict", "judge", "judges disagree", "judges",
                                                        "lineage"])
    if run is not None:
        table.insert(0, "run", run)
    return table
