"""The evaluation stage: generate on benchmarks, judge refusals, score safety and usefulness."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from porover.config import StageParams, param
from porover.data import load_rows, prompt_set_errors
from porover.digests import digest_of
from porover.generation import Sampling, TransformersBackend, generate_responses, response_key
from porover.judges import DEFAULT_JUDGE, judge_error_counts, judge_errors, judge_refusals
from porover.metrics import UNPARSEABLE_OPTIONS, compute_metrics
from porover.models import model_errors
from porover.soft_prompt import is_soft_prompt_folder, soft_prompt_backend
from porover.store import JsonlStore, write_jsonl
from porover.vocabulary import Verdict, is_refusal

NOTEBOOK = "03_evaluate.ipynb"
OUTPUTS = ("responses.jsonl", "metrics.json")  # the first is what ``stage:NAME`` stands for


@dataclass
class EvaluateParams(StageParams):
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
    refusal_token_threshold: float | None = param(
        None, "refusal-token models: force the refusal token first iff its P >= this (null = the likelier of it "
        "and [respond])", ge=0, le=1)
    refusal_token_temperature: float = param(1.0, "refusal-token models: softmax temperature of that P", gt=0)
    refusal_token_controlled: list[str] = param([], "category-token models: the tokens the threshold controls ([] = all)")
    split: str = param("test", "what these prompts are for: test (reported) or validation (sweeps choose on it; "
                       "never a test or training prompt)", choices=("test", "validation"))
    stage_name: str = param("evaluate", "name of this stage in the run")

    def problems(self, where: str) -> list[str]:
        errors = prompt_set_errors(self.benchmarks, f"{where}.benchmarks")
        if not is_soft_prompt_folder(self.model):  # a DRO soft prompt is evaluated here, and by no other stage
            errors += model_errors(self.model, f"{where}.model")
        if not self.judges:
            errors.append(f"{where}.judges: give at least one judge")
        for name in self.judges:
            errors += judge_errors(name, self.judge_settings.get(name, {}), f"{where}.judge_settings.{name}"
                                   if name in self.judge_settings else f"{where}.judges")
        errors += [f"{where}.judge_settings.{name}: not one of this stage's judges {self.judges}"
                   for name in self.judge_settings if name not in self.judges]
        if self.system_prompt and is_soft_prompt_folder(self.model):
            errors.append(f"{where}.system_prompt: must be '' for a DRO soft prompt ({self.model}): the soft prompt "
                          "is the system turn")
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


def steering_of(params: EvaluateParams):
    """How a refusal-token model's first token is forced (`porover.refusal_tokens`); None for other models."""
    from porover.refusal_tokens import Steering, read_spec

    spec = read_spec(params.model)
    return spec and Steering(spec, params.refusal_token_threshold, params.refusal_token_temperature,
                             tuple(params.refusal_token_controlled))


def generations_path(params: EvaluateParams) -> Path:
    """Store of generated responses, one file per (model content, sampling, steering): a retrained model or
    changed settings never reuse a stored row."""
    from porover.models import model_digest

    settings = asdict(sampling_of(params))
    if params.temperature > 0:  # sampled responses are seeded per row (`row_seed`): older stores are not reused
        settings["seeding"] = "per_row"
    key = [model_digest(params.model), settings]
    steering = steering_of(params)
    return params.stage_dir / "generations" / f"{digest_of(key + [steering.settings()] if steering else key)}.jsonl"


def generate_for_benchmarks(params: EvaluateParams, rows: list[dict]) -> list[dict]:
    """Responses for every row; resumes from the store and loads the model only if something is missing."""
    store = JsonlStore(generations_path(params), key=response_key)
    missing = [row for row in rows if response_key(row) not in store]
    backend = None
    if missing and is_soft_prompt_folder(params.model):  # a DRO stage's soft prompt: the base model + it
        backend = soft_prompt_backend(params.model, device=params.device, batch_size=params.batch_size)
    elif missing:
        from porover.models import load_model

        model, tokenizer = load_model(params.model, device=params.device)
        backend = TransformersBackend(model, tokenizer, batch_size=params.batch_size)
        if steering := steering_of(params):  # a refusal-token model: its first token is forced
            from porover.refusal_tokens import steered_backend

            backend, decided = steered_backend(model, tokenizer, missing, steering, params.system_prompt or None,
                                               params.batch_size)
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
    if steering := steering_of(params):
        from porover.refusal_tokens import agreement

        metrics["refusal_tokens"] = {**steering.settings(), "agreement": agreement(
            rows, steering.spec, partial_is_refusal=params.partial_is_refusal)}
    metrics["by_judge"] = {name: compute_metrics(rows, refusal_key=f"refusal:{name}", judge=name, **options)["overall"]
                           for name in params.judges}
    out = params.stage_dir
    write_jsonl(out / "responses.jsonl", rows)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return rows, metrics
