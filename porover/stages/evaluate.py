"""The evaluation stage: generate on benchmarks, judge refusals, score safety and usefulness."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from porover.config import SpendingParams, StageParams, param
from porover.data import load_rows, prompt_set_errors
from porover.digests import digest_of
from porover.generation import Sampling, generate_responses, response_key
from porover.judges import DEFAULT_JUDGE, judge_error_counts, judge_errors, judge_refusals
from porover.metrics import UNPARSEABLE_OPTIONS, compute_metrics
from porover.model_folders import model_folder_errors, open_model
from porover.spending import metered
from porover.store import JsonlStore, write_jsonl
from porover.vocabulary import Verdict, is_refusal

NOTEBOOK = "03_evaluate.ipynb"
OUTPUTS = ("responses.jsonl", "metrics.json")  # the first is what ``stage:NAME`` stands for


@dataclass
class EvaluateParams(StageParams, SpendingParams):
    """Parameters of ``notebooks/03_evaluate.ipynb``: generate on benchmarks, judge refusals, score."""

    model: str = param("smollm2-135m-instruct", "model to evaluate: embedded name, Hugging Face id or folder",
                       input=True)
    benchmarks: dict[str, int | None] = param({"xstest": 20}, "benchmark name[:split] or file -> prompts (null = all)",
                                              input=True)
    judges: list[str] = param([DEFAULT_JUDGE], "refusal judges; the first gives the headline numbers")
    judge_settings: dict[str, dict] = param({}, "per-judge settings, keyed by judge name")
    partial_is_refusal: bool = param(True, "count partial refusals as refusals (the paper's reading)")
    unparseable: str = param("exclude", "unparseable verdicts: exclude (left out of denominators, counted) or "
                             "as_upstream (OR-Bench judges: refusal; XSTest judges: own class in the denominator)",
                             choices=UNPARSEABLE_OPTIONS)
    max_new_tokens: int = param(64, "generation budget per response", ge=1)
    temperature: float = param(0.0, "0 for greedy decoding", ge=0)
    top_p: float = param(1.0, "nucleus sampling mass when sampling", gt=0, le=1)
    system_prompt: str = param("", "system message before every prompt ('' = none)")
    batch_size: int = param(32, "prompts per generate call", ge=1)
    bootstrap_samples: int = param(1000, "resamples for the 95% bootstrap intervals", ge=0)
    model_settings: dict = param({}, "inference settings a method's model folder takes (e.g. a refusal-token "
                                 "model's threshold; see its docs page); {} for plain models")
    split: str = param("test", "what these prompts are for: test (reported) or validation (sweeps choose on it; "
                       "never a test or training prompt)", choices=("test", "validation"))
    stage_name: str = param("evaluate", "name of this stage in the run")

    def problems(self, where: str) -> list[str]:
        errors = prompt_set_errors(self.benchmarks, f"{where}.benchmarks")
        errors += model_folder_errors(self.model, where, self.model_settings, self.system_prompt)
        if not self.judges:
            errors.append(f"{where}.judges: give at least one judge")
        for name in self.judges:
            errors += judge_errors(name, self.judge_settings.get(name, {}), f"{where}.judge_settings.{name}"
                                   if name in self.judge_settings else f"{where}.judges")
        errors += [f"{where}.judge_settings.{name}: not one of this stage's judges {self.judges}"
                   for name in self.judge_settings if name not in self.judges]
        return errors


def benchmark_rows(params: EvaluateParams) -> list[dict]:
    """The evaluation prompts: each benchmark subsampled deterministically by ``params.seed``."""
    rows = []
    for name, n in params.benchmarks.items():
        rows += [{key: row[key] for key in ("id", "prompt", "label", "category", "source")}
                 for row in load_rows(name, n=n, seed=params.seed)]
    return rows


def sampling_of(params: EvaluateParams) -> Sampling:
    """The stage's sampling settings."""
    return Sampling(max_new_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                    seed=params.seed, system_prompt=params.system_prompt or None)


def model_of(params: EvaluateParams):
    """The evaluated model's handle (`porover.model_folders.open_model`); no weights load until it generates."""
    return open_model(params.model, device=params.device, settings=params.model_settings)


def generations_path(params: EvaluateParams) -> Path:
    """Store of generated responses, one file per (model content, sampling, what else shapes the model's responses):
    a retrained model or changed settings never reuse a stored row."""
    settings = asdict(sampling_of(params))
    if params.temperature > 0:  # sampled responses are seeded per row (`row_seed`): older stores are not reused
        settings["seeding"] = "per_row"
    model = model_of(params)
    key = [model.digest(), settings]
    extra = model.response_settings()
    return params.stage_dir / "generations" / f"{digest_of(key + [extra] if extra else key)}.jsonl"


def generate_for_benchmarks(params: EvaluateParams, rows: list[dict]) -> list[dict]:
    """Responses for every row; resumes from the store and loads the model only if something is missing."""
    store = JsonlStore(generations_path(params), key=response_key)
    missing = [row for row in rows if response_key(row) not in store]
    backend = None
    if missing:
        # A method's model may decide something per row before generating (a forced first token): kept in the rows.
        backend, decided = model_of(params).generator(missing, params.system_prompt or None, params.batch_size)
        decided = {response_key(row): row for row in decided}
        rows = [decided.get(response_key(row), row) for row in rows]
    return generate_responses(backend, rows, store, sampling_of(params), desc=f"{params.stage_name}: generate")


def judge_rows(params: EvaluateParams, rows: list[dict]) -> list[dict]:
    """Add every judge's verdict to each row; the first judge's label is the row's ``refusal``."""
    judged = [{**row, "judgements": {}} for row in rows]
    prompts, responses = [row["prompt"] for row in rows], [row["response"] for row in rows]
    for name in params.judges:
        verdicts = judge_refusals(prompts, responses, judge=name, **params.judge_settings.get(name, {}))
        for row, verdict in zip(judged, verdicts):
            row["judgements"][name] = {"label": verdict.label, "status": verdict.status, "raw": verdict.raw}
    for row in judged:
        primary = row["judgements"][params.judges[0]]
        row["judge"], row["refusal"], row["judge_status"] = params.judges[0], primary["label"], primary["status"]
        for name, verdict in row["judgements"].items():
            # Flat per-judge labels, so `compute_metrics(..., refusal_key="refusal:<judge>")` scores any judge.
            row[f"refusal:{name}"] = verdict["label"]
    return judged


def verdicts_by_judge(rows: list[dict]) -> dict[str, list[Verdict]]:
    """Each judge's verdicts on ``rows`` (as written by `judge_rows`), for agreement tables."""
    names = list(rows[0]["judgements"]) if rows else []
    return {name: [Verdict(row["judgements"][name]["label"], row["judgements"][name]["status"], name,
                           row["judgements"][name]["raw"]) for row in rows] for name in names}


def judge_disagreement(rows: list[dict], partial_is_refusal: bool = True) -> dict | None:
    """Share of responses on which the judges disagree on refusal vs compliance (None with one judge).

    Only responses every judge could parse count; ``n`` is their number.
    """
    names = list(rows[0]["judgements"]) if rows else []
    if len(names) < 2:
        return None
    flags = [[is_refusal(row["judgements"][name]["label"], partial_is_refusal) for name in names] for row in rows]
    both = [f for f in flags if None not in f]
    disagree = sum(len(set(f)) > 1 for f in both)
    return {"judges": names, "n": len(both), "disagree": disagree, "rate": disagree / len(both) if both else None}


@metered  # under the stage's cost cap (porover.spending)
def run_evaluation(params: EvaluateParams) -> tuple[list[dict], dict]:
    """Generate, judge and score; write ``responses.jsonl`` and ``metrics.json`` into the stage folder.

    Returns:
        ``(rows, metrics)``: one row per prompt and the output of `compute_metrics`.
    """
    rows = judge_rows(params, generate_for_benchmarks(params, benchmark_rows(params)))
    options = {"partial_is_refusal": params.partial_is_refusal, "bootstrap_samples": params.bootstrap_samples,
               "seed": params.seed, "unparseable": params.unparseable}
    metrics = compute_metrics(rows, judge=params.judges[0], judge_error=judge_error_counts(params.judges[0]), **options)
    metrics["model"], metrics["judge"], metrics["split"] = params.model, params.judges[0], params.split
    metrics["judge_disagreement"] = judge_disagreement(rows, params.partial_is_refusal)
    metrics.update(model_of(params).summary(rows, params.partial_is_refusal))
    metrics["by_judge"] = {name: compute_metrics(rows, refusal_key=f"refusal:{name}", judge=name, **options)["overall"]
                           for name in params.judges}
    out = params.stage_dir
    write_jsonl(out / "responses.jsonl", rows)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return rows, metrics
