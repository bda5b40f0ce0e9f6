"""Prompt datasets for the POROver Workbench, behind one loader.

Every dataset comes back as row dicts (`load_rows`) or a :class:`datasets.Dataset` (`load_prompts`) whose first five columns are
``id``, ``prompt``, ``label`` ("safe" / "unsafe" / None), ``category`` and ``source``.
Some datasets add string columns of their own, e.g. ``focus``/``note`` (XSTest),
``reference_response`` (Saferpaca safety data), ``response``/``human_label``/``model``
(XSTest human labels) and ``split`` where a dataset has splits. Known datasets are read
only from the copies vendored under ``porover/data/`` (see ``porover/data/README.md``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable

from porover.data_files import read_csv_rows as _read_csv
from porover.data_files import read_json_records as _read_json

DATA_DIR = Path(__file__).parent / "data"
_COLUMNS = ("id", "prompt", "label", "category", "source")
_PROMPT_COLUMNS = ("prompt", "instruction", "goal", "question")
_SUFFIXES = (".csv", ".jsonl", ".json")


def _row(id_: Any, prompt: str, label: str | None, category: str | None = None, **extra: Any) -> dict:
    return {"id": str(id_), "prompt": prompt.strip(), "label": label, "category": category, **extra}


def _hash_split(prompt: str) -> str:
    """Stable train / val / test assignment from the prompt text alone: test is half (as it always was); a
    quarter of the other half is val, for sweeps to choose settings on, and never seen by training."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    if digest[0] % 2:
        return "test"
    return "val" if digest[1] % 4 == 0 else "train"


def _table(rel: str, name: str, column: str, label: str | None, category: str | None = None,
           hash_split: bool = False) -> list[dict]:
    rows = []
    path = DATA_DIR / rel
    for i, r in enumerate(_read_csv(path) if path.suffix == ".csv" else _read_json(path)):
        row = _row(f"{name}-{i}", r[column], label, r[category] if category else None)
        if hash_split:
            row["split"] = _hash_split(row["prompt"])
        rows.append(row)
    return rows


def _xstest(keep: str | None = None) -> list[dict]:
    return [_row(r["id"], r["prompt"], r["label"], r["type"], focus=r["focus"], note=r["note"])
            for r in _read_csv(DATA_DIR / "xstest/xstest_prompts.csv") if keep in (None, r["label"])]


# XSTest's five human-labelled completion files: model -> family (the unit a judge must generalise across).
XSTEST_LABELLED_MODELS = {"gpt4": "openai", "llama2orig": "llama2", "llama2new": "llama2",
                          "mistralinstruct": "mistral", "mistralguard": "mistral"}


def _xstest_human_labels(models: tuple[str, ...] = ("gpt4", "mistralinstruct"), family: bool = False) -> list[dict]:
    rows = []
    for model in models:
        for r in _read_csv(DATA_DIR / f"xstest/human_labeled_completions/xstest_v2_completions_{model}.csv"):
            label = "unsafe" if r["type"].startswith("contrast_") else "safe"
            extra = {"family": XSTEST_LABELLED_MODELS[model]} if family else {}
            rows.append(_row(f"{model}/{r['id']}", r["prompt"], label, r["type"], response=r["completion"],
                             human_label=r["final_label"].split("_", 1)[1], model=model, **extra))
    return rows


def _harmbench() -> list[dict]:
    return [_row(r["BehaviorID"], r["Behavior"], "unsafe", r["SemanticCategory"], split=split)
            for split in ("test", "val")
            for r in _read_csv(DATA_DIR / f"harmbench/harmbench_behaviors_text_{split}.csv")
            if r["FunctionalCategory"] == "standard"]


def _do_not_answer() -> list[dict]:
    rows: list[dict] = []
    for path in sorted((DATA_DIR / "do_not_answer").glob("*.jsonl")):
        for r in _read_json(path):
            rows.append(_row(f"do_not_answer-{len(rows)}", r["prompt"], "unsafe", path.stem))
    return rows


def _saferpaca_safety() -> list[dict]:
    records = _read_json(DATA_DIR / "safety_tuned_llamas/training/safety_only_data_Instructions.json")
    return [_row(f"saferpaca_safety-{i}", r["instruction"], "unsafe", reference_response=r["output"])
            for i, r in enumerate(records)]


def _stl_eval(stem: str, name: str, label: str | None) -> list[dict]:
    obj = _read_json(DATA_DIR / f"safety_tuned_llamas/evaluation/{stem}.json")
    tags = obj.get("tags") or [None] * len(obj["instructions"])
    return [_row(f"{name}-{i}", p, label, t) for i, (p, t) in enumerate(zip(obj["instructions"], tags))]


def _hh_rlhf_harmless() -> list[dict]:
    rows, seen = [], set()
    with gzip.open(DATA_DIR / "hh_rlhf_harmless/harmless-base_test.jsonl.gz", "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            prompt = re.match(r"\n\nHuman: (.*?)\n\nAssistant:", json.loads(line)["chosen"], re.S).group(1).strip()
            if prompt and prompt not in seen:
                seen.add(prompt)
                rows.append(_row(f"hh_rlhf_harmless-{i}", prompt, "unsafe"))
    return rows


JAILBREAK_PLACEHOLDER = "[INSERT PROMPT HERE]"  # GPTFuzz's (gptfuzzer/utils/template.py)


def _jailbreak(templates_file: str) -> list[dict]:
    """Every HarmBench *test* behaviour wrapped in every GPTFuzz template (gptfuzz/SOURCE.md), labelled unsafe."""
    templates = [(r.get("id") or str(i), r["text"]) for i, r in enumerate(_read_csv(DATA_DIR / "gptfuzz" / templates_file))]
    questions = [r for r in _harmbench() if r["split"] == "test"]
    return [_row(f"{template_id}/{q['id']}", text.replace(JAILBREAK_PLACEHOLDER, q["prompt"]), "unsafe", q["category"],
                 template=template_id, question=q["prompt"]) for template_id, text in templates for q in questions]


def _stratified(rows: list[dict], n: int | None, seed: int, keys: tuple[str, ...]) -> list[dict]:
    """``n`` rows spread over the values of ``keys`` in turn: each pick is a row whose first key's value is used
    least so far, then the second's, ...; ties broken by a shuffle seeded by ``seed``; returned in file order."""
    import numpy as np

    if n is None or n >= len(rows):
        return rows
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    codes = [np.unique([str(rows[i][key]) for i in order], return_inverse=True)[1] for key in keys]
    counts = [np.zeros(code.max() + 1, dtype=np.int64) for code in codes]
    taken, weight = np.zeros(len(order), dtype=bool), n + 1
    for _ in range(n):
        # One number per row ranks (first key's use, second key's use, ...); argmin takes the first in shuffled order.
        score = sum(count[code] * weight ** (len(keys) - 1 - j) for j, (count, code) in enumerate(zip(counts, codes)))
        score[taken] = np.iinfo(np.int64).max
        best = int(np.argmin(score))
        taken[best] = True
        for count, code in zip(counts, codes):
            count[code[best]] += 1
    return [rows[i] for i in sorted(np.asarray(order)[taken].tolist())]


def _lines(rel: str, name: str, label: str) -> list[dict]:
    """One prompt per non-empty line of a text file."""
    lines = (DATA_DIR / rel).read_text(encoding="utf-8").splitlines()
    return [_row(f"{name}-{i}", p, label) for i, p in enumerate(lines) if p.strip()]


_STL_EVAL = {  # file stem -> (name, label); labels follow safety_tuned_llamas/SOURCE.md
    "I-Alpaca": ("stl_i_alpaca", "safe"),
    "I-CoNa": ("stl_i_cona", "unsafe"),
    "I-Controversial": ("stl_i_controversial", "unsafe"),
    "I-MaliciousInstructions": ("stl_i_malicious_instructions", "unsafe"),
    "I-PhysicalSafetySafe": ("stl_i_physical_safety_safe", "safe"),
    "I-PhysicalSafetyUnsafe": ("stl_i_physical_safety_unsafe", "unsafe"),
    "Q-Harm": ("stl_q_harm", None),  # HH red-team questions, many plainly benign: mixed, unlabelled
}

#: Known dataset names -> zero-argument readers returning row dicts (vendored files only).
DATASETS: dict[str, Callable[[], list[dict]]] = {
    "xstest": _xstest,
    "xstest_safe": partial(_xstest, "safe"),
    "xstest_unsafe": partial(_xstest, "unsafe"),
    "xstest_human_labels": _xstest_human_labels,
    "xstest_human_labels_all": partial(_xstest_human_labels, tuple(XSTEST_LABELLED_MODELS), family=True),
    "or_bench_hard": partial(_table, "or_bench/or-bench-hard-1k.csv", "or_bench_hard", "prompt", "safe",
                             "category", hash_split=True),
    "or_bench_toxic": partial(_table, "or_bench/or-bench-toxic.csv", "or_bench_toxic", "prompt", "unsafe",
                              "category"),
    "oktest": partial(_table, "oktest/OKTest.csv", "oktest", "prompt", "safe", hash_split=True),
    "oktest_heldout": partial(_table, "oktest/OKTest_heldout.csv", "oktest_heldout", "prompt", "safe"),
    "evorefuse_test": partial(_table, "evorefuse/evo_test.jsonl", "evorefuse_test", "instruction", "safe"),
    "advbench": partial(_table, "advbench/harmful_behaviors.csv", "advbench", "goal", "unsafe"),
    "harmbench": _harmbench,
    "jailbreakbench": lambda: [_row(r[""], r["Goal"], "unsafe", r["Category"])
                               for r in _read_csv(DATA_DIR / "jailbreakbench/jbb_behaviors_harmful.csv")],
    "strongreject": partial(_table, "strongreject/strongreject_dataset.csv", "strongreject", "forbidden_prompt",
                            "unsafe", "category"),
    "do_not_answer": _do_not_answer,
    "malicious_instruct": partial(_lines, "malicious_instruct/MaliciousInstruct.txt", "malicious_instruct", "unsafe"),
    # DRO's training queries: harmful line i and harmless line i share their verb (dro/SOURCE.md)
    "dro_harmful": partial(_lines, "dro/harmful_custom.txt", "dro_harmful", "unsafe"),
    "dro_harmless": partial(_lines, "dro/harmless_custom.txt", "dro_harmless", "safe"),
    "hh_rlhf_harmless": _hh_rlhf_harmless,
    "saferpaca_safety": _saferpaca_safety,
    "alpaca": partial(_table, "alpaca/alpaca_instructions_no_input.json", "alpaca", "instruction", None),
    # harmful questions inside published jailbreak templates: safety under attack (gptfuzz/SOURCE.md)
    "jailbreak_gptfuzz": partial(_jailbreak, "GPTFuzzer.csv"),
    "jailbreak_gptfuzz_short": partial(_jailbreak, "seed_short_25.csv"),
    **{name: partial(_stl_eval, stem, name, label) for stem, (name, label) in _STL_EVAL.items()},
}


# Datasets whose draws are stratified by these columns in turn (`_stratified`) rather than by label.
STRATA = {"jailbreak_gptfuzz": ("template", "category", "question"),
          "jailbreak_gptfuzz_short": ("template", "category", "question")}


@lru_cache(maxsize=None)
def _known_rows(name: str) -> tuple[dict, ...]:
    return tuple(DATASETS[name]())


def _normalise(records: list, name: str, origin: str) -> list[dict]:
    """Map free-form records (local file or hub) onto the uniform columns."""
    records = [{"prompt": r} if isinstance(r, str) else r for r in records]
    if not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{origin}: expected a list of objects (or strings), one per prompt")
    columns = list(dict.fromkeys(k for r in records for k in r))
    lower = {str(c).lower(): c for c in columns}
    prompt_col = next((lower[c] for c in _PROMPT_COLUMNS if c in lower), None)
    if prompt_col is None:
        raise ValueError(f"{origin} has no prompt column (looked for {', '.join(_PROMPT_COLUMNS)}, "
                         f"case-insensitive); its columns are: {columns}")
    id_col, label_col, cat_col = lower.get("id"), lower.get("label"), lower.get("category")
    rows = []
    for i, r in enumerate(records):
        prompt = str(r.get(prompt_col) or "").strip()
        if not prompt:
            raise ValueError(f"{origin}: row {i} has an empty {prompt_col!r}")
        label = str(r.get(label_col) or "").strip().lower() or None
        if label not in (None, "safe", "unsafe"):
            raise ValueError(f"{origin}: row {i} has label {r.get(label_col)!r}; use 'safe', 'unsafe' or empty")
        rid, cat = r.get(id_col), r.get(cat_col)
        extra = {str(k): None if v is None else str(v) for k, v in r.items()
                 if k not in (prompt_col, id_col, label_col, cat_col) and str(k).lower() != "source"}
        rows.append(_row(f"{name}-{i}" if rid in (None, "") else rid, prompt, label,
                         None if cat in (None, "") else str(cat), **extra))
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{origin}: ids are not unique")
    return rows


# Hub datasets whose rows carry no label column but whose every prompt has one label by construction: OR-Bench's
# configurations (80k and Hard-1K are seemingly toxic safe prompts, Toxic is toxic). Without it their prompts would
# be unlabeled, and a curve or metric that needs safe and unsafe prompts would find none.
HUB_LABELS = {"bench-llm/or-bench:or-bench-80k": "safe", "bench-llm/or-bench:or-bench-hard-1k": "safe",
              "bench-llm/or-bench:or-bench-toxic": "unsafe"}


def _hub_rows(name: str, split: str | None) -> list[dict]:
    import datasets

    repo, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None, split=split)
    except Exception as e:
        raise RuntimeError(f"could not load {name!r} from the Hugging Face Hub (hub unreachable from this machine, "
                           f"or no such dataset): {type(e).__name__}: {e}. Known local datasets: "
                           f"{', '.join(known_datasets())}") from e
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds and len(ds) != 1:
            raise ValueError(f"{name!r} has splits {list(ds)}; pass split=...")
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    rows = _normalise(ds.to_list(), name, f"hub dataset {name!r}")
    return [{**row, "label": row["label"] or HUB_LABELS.get(name)} for row in rows]


def _subsample(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    if n is None or n >= len(rows):
        return rows
    rng = random.Random(seed)
    if {r["label"] for r in rows} == {"safe", "unsafe"}:  # stratify; an odd extra goes to safe
        safe = [i for i, r in enumerate(rows) if r["label"] == "safe"]
        unsafe = [i for i, r in enumerate(rows) if r["label"] == "unsafe"]
        k_safe = min(len(safe), max((n + 1) // 2, n - len(unsafe)))
        picked = rng.sample(safe, k_safe) + rng.sample(unsafe, n - k_safe)
    else:
        picked = rng.sample(range(len(rows)), n)
    return [rows[i] for i in sorted(picked)]


def known_datasets() -> list[str]:
    """Return the names of the vendored datasets that :func:`load_prompts` knows, sorted."""
    return sorted(DATASETS)


def split_name(spec: str) -> tuple[str, str | None]:
    """``"or_bench_hard:train"`` -> ``("or_bench_hard", "train")``; other names (files, hub ids) have no split."""
    name, _, split = spec.rpartition(":")
    return (name, split) if name in DATASETS and split else (spec, None)


def load_rows(name: str, n: int | None = None, seed: int = 0, split: str | None = None) -> list[dict]:
    """Load a prompt dataset as row dicts with uniform columns.

    Args:
        name: A known dataset name (see :func:`known_datasets`), optionally with a split as
            ``name:split`` (e.g. ``"or_bench_hard:test"``), a path to a local
            ``.csv``/``.jsonl``/``.json`` file with a ``prompt`` column (or ``instruction``/
            ``goal``/``question``) and optional ``id``/``label``/``category``, or a Hugging
            Face dataset id ``owner/name`` or ``owner/name:config`` (needs the hub).
        n: Number of rows to draw; ``None`` or ``n >= len`` gives every row in file order.
            Draws are deterministic in ``(name, n, seed, split)``, returned in file order,
            and stratified 50/50 by label (odd extra to "safe") when safe and unsafe mix; the
            jailbreak benchmarks are stratified by template, then harm category, then question (`STRATA`).
        seed: Seed for ``random.Random`` used by the draw.
        split: ``None`` for all rows; otherwise a split the dataset has (``or_bench_hard``
            and ``oktest``: "train"/"val"/"test" by a stable prompt hash; ``harmbench``:
            "test"/"val"; hub datasets: passed to ``datasets.load_dataset``).

    Returns:
        Dicts with id, prompt, label, category, source (+ the dataset's extra columns).

    Raises:
        ValueError: Unknown name, unsupported split, negative n, or a malformed local file.
        FileNotFoundError: ``name`` looks like a data file path that does not exist.
        RuntimeError: A hub dataset could not be loaded (e.g. no internet).
    """
    if n is not None and n < 0:
        raise ValueError(f"n must be None or >= 0, got {n}")
    if split is None:
        name, split = split_name(name)
    path = Path(name)
    if name in DATASETS:
        rows, source = list(_known_rows(name)), name
    elif path.is_file():
        if path.suffix.lower() not in _SUFFIXES:
            raise ValueError(f"{name}: unsupported file type; use one of {', '.join(_SUFFIXES)}")
        records = _read_csv(path) if path.suffix.lower() == ".csv" else _read_json(path)
        if not isinstance(records, list):
            raise ValueError(f"{name}: a .json file must hold a list of objects, one per prompt")
        rows, source = _normalise(records, path.stem, name), path.stem
    elif path.suffix.lower() in _SUFFIXES:
        raise FileNotFoundError(f"no such data file: {name}")
    elif "/" in name:
        rows, source, split = _hub_rows(name, split), name, None
    else:
        raise ValueError(f"unknown dataset {name!r}. Known datasets: {', '.join(known_datasets())}; "
                         "or pass a .csv/.jsonl/.json path or a Hugging Face id 'owner/name[:config]'")
    if split is not None:
        splits = sorted({r["split"] for r in rows if r.get("split")})
        if split not in splits:
            raise ValueError(f"dataset {name!r} has no split {split!r}; its splits: {splits or 'none (use split=None)'}")
        rows = [r for r in rows if r.get("split") == split]
    rows = _stratified(rows, n, seed, STRATA[name]) if name in STRATA else _subsample(rows, n, seed)
    return [{**{c: row.get(c) for c in _COLUMNS}, **{k: v for k, v in row.items() if k not in _COLUMNS}, "source": source}
            for row in rows]


def load_prompts(name: str, n: int | None = None, seed: int = 0, split: str | None = None):
    """`load_rows` as a :class:`datasets.Dataset` of string columns (every row has every column)."""
    import datasets

    rows = load_rows(name, n, seed, split)
    extras = list(dict.fromkeys(k for r in rows for k in r if k not in _COLUMNS))
    data = {c: [r.get(c) for r in rows] for c in (*_COLUMNS, *extras)}
    return datasets.Dataset.from_dict(data, features=datasets.Features({c: datasets.Value("string") for c in data}))


def prompt_set_errors(sets: dict, where: str) -> list[str]:
    """Problems with ``name[:split] -> n`` prompt sets (e.g. ``or_bench_hard:test: 40``), found without a model.

    Stage references (``stage:NAME``) are resolved later by the run file and are not checked here.
    """
    errors, known = [], set(known_datasets())
    for spec, n in sets.items():
        if spec.startswith("stage:"):
            continue
        name, split = split_name(spec)
        if name.startswith(("/", "./", "../", "~")) or name.endswith(_SUFFIXES):
            try:
                load_rows(name, n=0)
            except (FileNotFoundError, ValueError) as error:
                errors.append(f"{where}.{spec}: {error}")
        elif name not in known and "/" not in name:
            errors.append(f"{where}.{spec}: unknown dataset; known: {', '.join(sorted(known))}")
        elif split is not None:
            try:
                load_rows(name, n=0, split=split)
            except ValueError as error:
                errors.append(f"{where}.{spec}: {error}")
        if n is not None and n < 1:
            errors.append(f"{where}.{spec}: expected a positive number of prompts or null, got {n}")
    return errors
