"""Refusal judges. Every verdict records the judge, its raw output and whether it parsed.

Judges, by name (`JUDGES`):
    xstest_string_match: XSTest's published prefix list (never yields partial refusal).
    orbench_keyword: OR-Bench's keyword checks (``family`` setting: which model family's list).
    act_lr: the embedded default, logistic regression over feature blocks chosen by leave-one-*source*-out
        over seven labelled data sources (`porover.judges.act_lr`, `porover.judges.sources`); the shipped
        choice is the refusal-phrase block alone with L2 30, fitted on all seven sources (numpy only, no model).
    act_encoder: a small head over a frozen MiniLM's token states of the (prompt, response) pair, with the
        phrase features (`porover.judges.act_encoder`); selectable, not the default (``docs/judges.md``).
    minilm_lr: the previous default, phrase features and a MiniLM embedding of the response's start,
        chosen by leave-one-family-out on XSTest alone (`porover.judges.minilm_lr`).
    phrase_lr: logistic regression over refusal-phrase features alone (`porover.judges.phrase_lr`).
    xstest_llm / orbench_llm: XSTest's and OR-Bench's 3-class LLM-judge prompts through the local
        transformers model or any OpenAI-compatible endpoint (`porover.judges.llm`), cached on disk.

Safety (harmfulness) judges live in `porover.judges.safety` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

from porover.judges.phrase_lr import phrase_lr_judge
from porover.judges.rules import ORBENCH_KEYWORDS, XSTEST_REFUSAL_PREFIXES, orbench_keyword, xstest_string_match
from porover.vocabulary import REFUSAL_CLASSES, SafetyVerdict, Verdict

def _minilm_lr(prompts: Sequence[str], responses: Sequence[str], weights: str | None = None) -> list[Verdict]:
    from porover.judges.minilm_lr import minilm_lr_judge

    return minilm_lr_judge(prompts, responses, weights=weights)


def _act_lr(prompts: Sequence[str], responses: Sequence[str], weights: str | None = None) -> list[Verdict]:
    from porover.judges.act_lr import act_lr_judge

    return act_lr_judge(prompts, responses, weights=weights)


def _act_encoder(prompts: Sequence[str], responses: Sequence[str], weights: str | None = None) -> list[Verdict]:
    from porover.judges.act_encoder import act_encoder_judge

    return act_encoder_judge(prompts, responses, weights=weights)


def _per_response(function, prompts: Sequence[str], responses: Sequence[str], **settings) -> list[Verdict]:
    return [function(response, **settings) for response in responses]


def _llm(style: str, prompts: Sequence[str], responses: Sequence[str], **settings) -> list[Verdict]:
    from porover.judges.llm import llm_refusal_judge

    return llm_refusal_judge(prompts, responses, style=style, **settings)


# name -> function(prompts, responses, **settings) -> list[Verdict]
JUDGES = {
    "xstest_string_match": partial(_per_response, xstest_string_match),
    "orbench_keyword": partial(_per_response, orbench_keyword),
    "phrase_lr": phrase_lr_judge,
    "minilm_lr": _minilm_lr,
    "act_lr": _act_lr,
    "act_encoder": _act_encoder,
    "xstest_llm": partial(_llm, "xstest"),
    "orbench_llm": partial(_llm, "orbench"),
}
DEFAULT_JUDGE = "act_lr"
# The shipped weights each fitted offline judge reads: what a stage judging with it consumes, so a new fit (a package
# update, a re-run of a training script) makes that stage stale (`porover.runner.input_digests`).
WEIGHT_FILES = {name: Path(__file__).with_name(file) for name, file in (
    ("phrase_lr", "phrase_lr_weights.json"), ("minilm_lr", "minilm_lr_weights.json"), ("act_lr", "act_lr_weights.json"),
    ("act_encoder", "act_encoder_head.safetensors"))}


def judges_named(params: object) -> list[str]:
    """The fitted offline judges (`WEIGHT_FILES`) a stage's parameters name anywhere (lists and mappings included)."""
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, str) and value in WEIGHT_FILES and value not in found:
            found.append(value)
        elif isinstance(value, dict):
            for item in (*value.keys(), *value.values()):
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(params)
    return found
# Each offline judge's confusion counts on held-out sources (leave-one-source-out, pooled; refusal positive),
# written by benchmarks/judge_validation.py: what `porover.metrics` corrects rates with.
JUDGE_ERROR_PATH = Path(__file__).with_name("judge_error.json")


def judge_error_counts(judge: str) -> dict | None:
    """``{"tp", "fn", "tn", "fp"}`` of ``judge`` on held-out sources, or None where none were measured."""
    import json

    if not JUDGE_ERROR_PATH.is_file():
        return None
    return json.loads(JUDGE_ERROR_PATH.read_text()).get("judges", {}).get(judge)


def _judge_function(judge: str):
    """The function whose keyword arguments are a judge's settings."""
    function = JUDGES[judge]
    if isinstance(function, partial):
        if function.func is _llm:
            from porover.judges.llm import llm_refusal_judge

            return llm_refusal_judge
        return function.args[0]
    return function


def _settings_errors(function, settings: dict, where: str, name: str) -> list[str]:
    """Unknown names, wrong types and known bad values among one judge's settings."""
    import inspect
    import typing

    from porover.config import type_errors
    from porover.models import model_errors

    hints = typing.get_type_hints(function)
    allowed = set(inspect.signature(function).parameters) - {"prompts", "responses", "response", "style"}
    errors = [f"{where}.{key}: unknown setting; {name} takes: {', '.join(sorted(allowed)) or 'none'}"
              for key in settings if key not in allowed]
    for key, value in settings.items():
        if key in allowed and key in hints:
            errors += type_errors(value, hints[key], f"{where}.{key}")
    if errors:
        return errors
    if "family" in settings and settings["family"] not in ORBENCH_KEYWORDS:
        errors.append(f"{where}.family: unknown OR-Bench keyword family {settings['family']!r}; known: "
                      f"{', '.join(ORBENCH_KEYWORDS)}")
    if settings.get("backend", "transformers") not in ("transformers", "openai"):
        errors.append(f"{where}.backend: expected transformers or openai, got {settings['backend']!r}")
    if isinstance(settings.get("model"), str):
        errors += model_errors(settings["model"], f"{where}.model")
    for key in ("batch_size", "concurrency", "max_new_tokens"):
        if isinstance(settings.get(key), int) and settings[key] < 1:
            errors.append(f"{where}.{key}: expected a positive integer, got {settings[key]}")
    return errors


def judge_setting_names(judge: str) -> set[str]:
    """The settings a judge accepts (its keyword arguments besides prompts and responses)."""
    import inspect

    return set(inspect.signature(_judge_function(judge)).parameters) - {"prompts", "responses", "response", "style"}


def judge_errors(judge: str, settings: dict, where: str) -> list[str]:
    """Problems with a refusal judge's name and settings (names *and* values), found before anything runs.

    Args:
        judge: A name from `JUDGES`.
        settings: Its settings, as a parameters file gives them.
        where: Where they come from, e.g. ``"params/demo.yaml: stages.sft.refusal_judge_settings"``.
    """
    if judge not in JUDGES:
        return [f"{where}: unknown judge {judge!r}; known: {', '.join(sorted(JUDGES))}"]
    return _settings_errors(_judge_function(judge), settings, where, judge)


def safety_judge_errors(judge: str, settings: dict, where: str) -> list[str]:
    """Problems with a safety judge's name and settings (see `judge_errors`); ``""`` (none) passes."""
    from porover.judges.safety import SAFETY_JUDGES

    if not judge:
        return []
    if judge not in SAFETY_JUDGES:
        return [f"{where}: unknown safety judge {judge!r}; known: {', '.join(sorted(SAFETY_JUDGES))}"]
    return _settings_errors(SAFETY_JUDGES[judge], settings, where, judge)


def judge_refusals(prompts: Sequence[str], responses: Sequence[str], judge: str = DEFAULT_JUDGE,
                   **settings) -> list[Verdict]:
    """Judge whether each response refuses its prompt.

    Args:
        prompts: The prompts (unused by string-match judges).
        responses: The responses, aligned with ``prompts``.
        judge: A name from `JUDGES`.
        **settings: The judge's settings, e.g. ``family`` for ``orbench_keyword`` or ``backend``,
            ``model``, ``base_url`` for the LLM judges (see `porover.judges.llm.llm_refusal_judge`).
    """
    if judge not in JUDGES:
        raise ValueError(f"unknown judge {judge!r}; known judges: {', '.join(sorted(JUDGES))}")
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return JUDGES[judge](list(prompts), ["" if r is None else str(r) for r in responses], **settings)


def judge_csv(input: str | Path, output: str | Path, judge: str | None = None, prompt_column: str = "prompt",
              response_column: str = "completion", **settings) -> Path:
    """Judge a CSV of prompts and responses; write it back with ``refusal`` and verdict columns.

    Adds ``refusal`` (a class from `REFUSAL_CLASSES`, empty when unparseable), ``refusal_status``,
    ``refusal_judge`` and ``refusal_raw``.

    Args:
        input: CSV with a prompt and a response column.
        output: CSV to write (folders are created).
        judge: A name from `JUDGES` (default `DEFAULT_JUDGE`).
        prompt_column: Column holding the prompts.
        response_column: Column holding the responses.
        **settings: Passed to the judge.

    Returns:
        The output path.

    Raises:
        FileNotFoundError: ``input`` does not exist.
        ValueError: Unknown judge, a missing column, an input with no rows, or one that is not UTF-8 CSV (the
            message names the file and the line).
    """
    import io

    import pandas as pd

    from porover.store import read_text

    judge = judge or DEFAULT_JUDGE
    if judge not in JUDGES:
        raise ValueError(f"unknown judge {judge!r}; known judges: {', '.join(sorted(JUDGES))}")
    input = Path(input)
    if not input.is_file():
        raise FileNotFoundError(f"input file {str(input)!r} does not exist")
    try:
        table = pd.read_csv(io.StringIO(read_text(input)), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"input file {str(input)!r} is empty") from None
    except pd.errors.ParserError as error:  # pandas names the line: "Expected 2 fields in line 3, saw 4"
        raise ValueError(f"{input}: not valid CSV: {str(error).strip()}; expected a header line, then one row per "
                         "line with the header's columns (a field holding a comma, a quote or a line break is "
                         'quoted: "...")') from None
    missing = [column for column in (prompt_column, response_column) if column not in table.columns]
    if missing:
        raise ValueError(f"input file {str(input)!r} has no column {', '.join(map(repr, missing))}; "
                         f"its columns: {', '.join(map(repr, table.columns))} "
                         "(choose others with --prompt-column / --response-column)")
    if table.empty:
        raise ValueError(f"input file {str(input)!r} has a header but no rows")
    verdicts = judge_refusals(table[prompt_column].tolist(), table[response_column].tolist(), judge=judge, **settings)
    table["refusal"] = [v.label or "" for v in verdicts]
    table["refusal_status"] = [v.status for v in verdicts]
    table["refusal_judge"] = [v.judge for v in verdicts]
    table["refusal_raw"] = [v.raw for v in verdicts]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(output, index=False)
    return output


def judge_safety(prompts: Sequence[str], responses: Sequence[str], judge: str = "llama_guard",
                 **settings) -> list[SafetyVerdict]:
    """Judge whether each response is harmful (see `porover.judges.safety`)."""
    from porover.judges.safety import judge_safety as judge

    return judge(prompts, responses, judge, **settings)


__all__ = ["DEFAULT_JUDGE", "JUDGES", "WEIGHT_FILES", "judges_named", "judge_error_counts", "ORBENCH_KEYWORDS", "REFUSAL_CLASSES", "SafetyVerdict",
           "Verdict", "XSTEST_REFUSAL_PREFIXES", "judge_csv", "judge_errors", "judge_refusals", "judge_setting_names", "judge_safety", "safety_judge_errors",
           "orbench_keyword", "phrase_lr_judge", "xstest_string_match"]
