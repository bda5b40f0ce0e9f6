"""Training, validation and test prompts: which stage draws which, and a check that they never meet.

Three roles: a stage *trains* on prompts (the preference data, after dropping its ``eval_sets``; MOSR; the
refusal-direction and false-refusal stages read their directions from them), an evaluation stage with
``split: validation`` or a stage's own validation sets give the numbers settings are *chosen* on, and an
evaluation with ``split: test`` (the default) gives the numbers that are *reported*. Each stage module declares
which of its parameters play which role (`ROLE_ATTRIBUTES`). Choosing on the test prompts, or
training on either, makes the reported numbers optimistic, so a run whose stages would do so is refused
before anything runs. The vendored OR-Bench-Hard and OKTest have a ``val`` split for this, disjoint from
``train`` and ``test`` (`porover.data`); HarmBench has its own ``val`` split.
"""

from __future__ import annotations

import re
import unicodedata

from porover.config import STAGE_REF
from porover.data import load_rows, split_name

SPLITS = ("test", "validation")  # what an evaluation stage's prompts are for


def normalise(text: str) -> str:
    """Text for overlap checks: Unicode-normalised, lower-cased, punctuation and spacing collapsed."""
    return " ".join(re.sub(r"[^\w\s]", " ", unicodedata.normalize("NFKC", text).lower()).split())


def load_sets(sets: dict[str, int | None], seed: int, kind: str | None = None) -> list[dict]:
    """Prompt rows of every ``name[:split] -> n`` set, subsampled by ``seed``, without duplicates."""
    rows = {}
    for spec, n in sets.items():
        if spec.startswith(STAGE_REF):
            continue
        name, split = split_name(spec)
        for row in load_rows(name, n=n, seed=seed, split=split):
            rows.setdefault((row["source"], row["id"]), {
                **{k: row[k] for k in ("id", "prompt", "label", "category", "source")},
                "reference_response": row.get("reference_response"), "kind": kind})
    return list(rows.values())


def hold_out(rows: list[dict], eval_sets: dict[str, int | None], seed: int,
             on_overlap: str = "drop") -> tuple[list[dict], list[dict]]:
    """Rows whose prompt is in none of the evaluation sets, and the dropped ones.

    Raises:
        ValueError: ``on_overlap == "fail"`` and some prompt is also an evaluation prompt.
    """
    held = {normalise(r["prompt"]) for r in load_sets(eval_sets, seed)} if eval_sets else set()
    kept = [r for r in rows if normalise(r["prompt"]) not in held]
    dropped = [r for r in rows if normalise(r["prompt"]) in held]
    if dropped and on_overlap == "fail":
        raise ValueError(f"{len(dropped)} training prompt(s) also appear in the evaluation sets {list(eval_sets)}, "
                         f"e.g. {dropped[0]['source']}/{dropped[0]['id']}: {dropped[0]['prompt'][:80]!r}; use a "
                         "train split (e.g. 'or_bench_hard:train'), or on_eval_overlap: drop")
    return kept, dropped


def _local(sets: dict) -> dict:
    """The sets that load offline: known datasets and files (stage outputs and hub ids are checked at run time)."""
    return {spec: n for spec, n in sets.items() if not spec.startswith(STAGE_REF)
            and ("/" not in split_name(spec)[0] or split_name(spec)[0].endswith((".csv", ".jsonl", ".json")))}


# What a stage does with its prompt sets, declared in its module: TRAINING_SETS (parameters naming prompts it
# trains on or reads a direction from), VALIDATION_SETS (prompts it chooses settings on) and HELD_OUT_SETS (the one
# parameter naming sets it removes from its training prompts by normalised text).
ROLE_ATTRIBUTES = {"train": "TRAINING_SETS", "validation": "VALIDATION_SETS", "held_out": "HELD_OUT_SETS"}


def _sets(value) -> dict:
    """A prompt-set parameter as ``name -> n``: a mapping as given, a single name (DRO's) as ``{name: None}``."""
    if isinstance(value, dict):
        return value
    return {value: None} if isinstance(value, str) and value else {}


def split_errors(stages: dict[str, tuple[str, dict]], path: str, roles: dict[str, dict] | None = None) -> list[str]:
    """Problems where training, validation and test prompts of a run meet (normalised text).

    Args:
        stages: Stage name -> (stage type, its validated flat parameters).
        path: The run file, named in every problem.
        roles: Stage type -> ``{"train": keys, "validation": keys, "held_out": key}`` (`ROLE_ATTRIBUTES`, read
            from each stage module by `porover.run_file`): training sets never meet validation or test prompts
            (unless held out), validation sets never meet test prompts. Evaluation stages are known here.

    Returns:
        One problem per pair of stages that share prompts, naming the file, the stage and key, how many
        prompts and one of them.
    """
    roles = roles or {}
    if not any(roles.get(kind, {}).get("train") or roles.get(kind, {}).get("validation")
               or (kind == "evaluate" and params.get("split") == "validation") for kind, params in stages.values()):
        return []  # nothing trains on prompts here and nothing chooses on validation: no data to load
    cache: dict[str, list[dict]] = {}

    def rows_of(sets: dict, seed: int) -> list[dict]:
        key = repr((sorted(sets.items()), seed))
        if key not in cache:
            cache[key] = load_sets(_local(sets), seed)
        return cache[key]

    evaluations = {name: (params.get("split", "test"), {normalise(r["prompt"]): r for r in
                                                         rows_of(params["benchmarks"], params["seed"])})
                   for name, (kind, params) in stages.items() if kind == "evaluate"}
    errors = []
    for name, (kind, params) in stages.items():
        role = roles.get(kind, {})
        held_key = role.get("held_out")
        held = {normalise(r["prompt"]) for r in rows_of(_sets(params[held_key]), params["seed"])} if held_key else set()
        for key, allowed in [(key, ("test", "validation")) for key in role.get("train", ())] + \
                            [(key, ("test",)) for key in role.get("validation", ())]:
            sets = _sets(params[key])
            if key in role.get("validation", ()):  # drawn from what the stage's training sets leave: any could be
                sets = dict.fromkeys(sets)
            mine = {normalise(r["prompt"]): r for r in rows_of(sets, params["seed"])}
            for other, (split, prompts) in evaluations.items():
                shared = [mine[p] for p in mine if p in prompts and p not in held]
                if split not in allowed or not shared:
                    continue
                kind_of = "training" if len(allowed) == 2 else "validation"
                fix = f"add that stage's benchmarks to {held_key} or use a train split" if held_key else (
                    "use a train split" if kind_of == "training" else
                    "choose on a split the test stages never use (e.g. or_bench_hard:val, harmbench:val)")
                errors.append(f"{path}: stages.{name}.{key}: {len(shared)} {kind_of} prompt(s) are also {split} "
                              f"prompts of stage {other!r}, e.g. {shared[0]['source']}/{shared[0]['id']}: "
                              f"{shared[0]['prompt'][:60]!r}; {fix}")
    for name, (split, prompts) in evaluations.items():
        if split != "validation":
            continue
        for other, (other_split, test) in evaluations.items():
            shared = [prompts[p] for p in prompts if p in test]
            if other_split == "test" and shared:
                errors.append(f"{path}: stages.{name}.benchmarks: {len(shared)} validation prompt(s) are also test "
                              f"prompts of stage {other!r}, e.g. {shared[0]['source']}/{shared[0]['id']}; choose on "
                              "a split the test stages never use (e.g. or_bench_hard:val, harmbench:val)")
    return errors
