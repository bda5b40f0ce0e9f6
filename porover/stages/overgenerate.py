"""The overgeneration stage: N teacher completions per prompt, scored, and one selected per prompt.

Every completion is appended to ``completions.jsonl`` as soon as its batch exists, keyed by
(settings digest, source, id, sample index), so a killed run resumes with nothing duplicated or lost
and a finished run loads no model at all. Sample ``s`` of every prompt is drawn with its own seed
(`row_seed` of the run seed, source, id and ``s``), so samples differ, and a resumed run draws exactly what
an uninterrupted one draws.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass

from porover.config import EndpointParams, SpendingParams, StageParams, looks_like_path, param
from porover.data import load_rows, prompt_set_errors
from porover.generation import BACKENDS, RECORDED_TEACHERS, Sampling, completion_key, make_backend, sample_completions
from porover.judges import DEFAULT_JUDGE, judge_errors, safety_judge_errors
from porover.models import is_model_folder
from porover.selection import (CRITERIA, agreement_with_random, group_candidates, is_empty, is_truncated,
                               reward_scores, select)
from porover.spending import metered
from porover.store import JsonlStore, write_jsonl
from porover.vocabulary import REFUSALS

NOTEBOOK = "01_overgenerate.ipynb"
OUTPUTS = ("sft.jsonl", "candidates.jsonl")  # the first is what ``stage:NAME`` stands for


@dataclass
class OvergenerateParams(StageParams, EndpointParams, SpendingParams):
    """Parameters of ``notebooks/01_overgenerate.ipynb``: N teacher completions per prompt, select one.

    A teacher is an embedded name, Hugging Face id or folder (transformers, vllm), a served model id (openai,
    e.g. "gpt-4o"), or "recorded:<dataset>" for the completions a dataset ships (`RECORDED_TEACHERS`).
    """

    teacher: str = param("smollm2-135m-instruct", "teacher of the general prompts (see the class docstring)",
                         input=True)
    toxic_teacher: str = param("", "teacher of the toxic prompts ('' = the same as teacher)", input=True)
    backend: str = param("transformers", "transformers, vllm, openai or recorded", choices=BACKENDS)
    general_prompts: dict[str, int | None] = param({"alpaca": 6}, "general prompt sets -> number of prompts (null = all)",
                                                   input=True)
    toxic_prompts: dict[str, int | None] = param({"saferpaca_safety": 4},
                                                 "toxic prompt sets -> number: the paper's added safety data (0 = none)",
                                                 input=True)
    n_samples: int = param(2, "completions per prompt (the paper: 8); recorded teachers have one", ge=1)
    temperature: float = param(0.7, "sampling temperature (> 0 when n_samples > 1)", ge=0)
    top_p: float = param(0.95, "nucleus sampling mass", gt=0, le=1)
    max_new_tokens: int = param(32, "generation budget per completion", ge=1)
    system_prompt: str = param("", "teacher's system message ('' = none); not copied into the SFT data")
    batch_size: int = param(16, "prompts per generate call (transformers) or per chunk (vllm)", ge=1)
    price_per_1m_input: float | None = param(None, "USD per million prompt tokens, for the cost estimate", ge=0)
    price_per_1m_output: float | None = param(None, "USD per million completion tokens", ge=0)
    selection: str = param("random", "criterion choosing one completion per prompt", choices=CRITERIA)
    min_reward: float | None = param(None, "drop candidates with a lower reward-model score (null = no threshold)")
    min_p_safe: float | None = param(None, "drop candidates with a lower safety-judge P(safe)", ge=0, le=1)
    safe_threshold: float = param(0.5, "P(safe) from which a completion counts as safe", ge=0, le=1)
    drop_truncated: bool = param(False, "never select a completion cut off by max_new_tokens (empty ones never are)")
    reward_model: str = param("", "sequence-classification reward model, Hugging Face id or folder ('' = none)",
                              input=True)
    safety_judge: str = param("", "safety judge: llama_guard or llm_safety ('' = none)")
    safety_judge_settings: dict = param({}, "its settings, e.g. {model: meta-llama/Meta-Llama-Guard-2-8B}")
    refusal_judge: str = param(DEFAULT_JUDGE, "refusal judge run on every candidate")
    refusal_judge_settings: dict = param({}, "its settings")
    stage_name: str = param("overgenerate", "name of this stage in the run")

    def problems(self, where: str) -> list[str]:
        # A count of 0 is allowed here (no added safety data); it means the set is skipped.
        errors = prompt_set_errors({k: v or None for k, v in self.general_prompts.items()}, f"{where}.general_prompts")
        errors += prompt_set_errors({k: v or None for k, v in self.toxic_prompts.items()}, f"{where}.toxic_prompts")
        if not any(n != 0 for n in [*self.general_prompts.values(), *self.toxic_prompts.values()]):
            errors.append(f"{where}: give general_prompts or toxic_prompts")
        errors += teacher_errors(self.teacher, self.backend, self.general_prompts, f"{where}.teacher")
        errors += teacher_errors(self.toxic_teacher or self.teacher, self.backend, self.toxic_prompts,
                                 f"{where}.toxic_teacher")
        if (self.selection == "reward" or self.min_reward is not None) and not self.reward_model:
            errors.append(f"{where}.reward_model: selection by reward (or min_reward) needs a reward model")
        if (self.selection == "safety" or self.min_p_safe is not None) and not self.safety_judge:
            errors.append(f"{where}.safety_judge: selection by safety (or min_p_safe) needs a safety judge")
        if looks_like_path(self.reward_model) and not is_model_folder(self.reward_model):
            errors.append(f"{where}.reward_model: no model folder (with a config.json) at {self.reward_model}")
        errors += judge_errors(self.refusal_judge, self.refusal_judge_settings, f"{where}.refusal_judge")
        errors += safety_judge_errors(self.safety_judge, self.safety_judge_settings, f"{where}.safety_judge")
        generated = [t for t, sets in ((self.teacher, self.general_prompts), (self.toxic_teacher or self.teacher,
                     self.toxic_prompts)) if any(n != 0 for n in sets.values()) and not t.startswith("recorded:")]
        if self.n_samples > 1 and self.temperature == 0 and generated:
            errors.append(f"{where}.temperature: greedy decoding makes all {self.n_samples} samples the same; set it > 0")
        return errors + self.endpoint_problems(where)

    def price_table(self) -> dict[str, list[float]]:
        """``prices``, with ``price_per_1m_input`` / ``price_per_1m_output`` as the teacher's price."""
        table = dict(self.prices)
        if self.price_per_1m_input is not None or self.price_per_1m_output is not None:
            table.setdefault(self.teacher, [self.price_per_1m_input or 0.0, self.price_per_1m_output or 0.0])
        return table

    def environment_problems(self, where: str) -> list[str]:
        teachers = [t for t, sets in ((self.teacher, self.general_prompts), (self.toxic_teacher or self.teacher,
                    self.toxic_prompts)) if any(n != 0 for n in sets.values()) and not t.startswith("recorded:")]
        return self.key_problems(where, [self.backend] if teachers else [])


def teacher_errors(teacher: str, backend: str, sets: dict, where: str) -> list[str]:
    """A recorded teacher that has completions for every set it serves, or a model folder that exists."""
    sets = {name: n for name, n in sets.items() if n != 0}
    if teacher.startswith("recorded:"):
        dataset = teacher.removeprefix("recorded:")
        if dataset not in RECORDED_TEACHERS:
            return [f"{where}: no recorded completions in {dataset!r}; datasets with some: "
                    f"{', '.join(sorted(RECORDED_TEACHERS))}"]
        return [f"{where}: {teacher} has no completions for the prompts of {name!r}" for name in sets if name != dataset]
    if backend == "recorded" and sets:
        return [f"{where}: the recorded backend needs a teacher 'recorded:<dataset>', got {teacher!r}"]
    if looks_like_path(teacher) and not teacher.startswith("stage:") and not is_model_folder(teacher):
        return [f"{where}: no model folder (with a config.json) at {teacher}"]
    return []

_PROMPT_FIELDS = ("id", "prompt", "label", "category", "source")


def prompt_rows(params: OvergenerateParams) -> list[dict]:
    """General-purpose then toxic prompts, each set subsampled by ``params.seed``, with their ``kind``."""
    rows = []
    for kind, sets in (("general", params.general_prompts), ("toxic", params.toxic_prompts)):
        for name, n in sets.items():
            if n == 0:  # {"saferpaca_safety": 0}: the paper's "no added safety data" arm
                continue
            rows += [{**{k: row[k] for k in _PROMPT_FIELDS}, "kind": kind} for row in load_rows(name, n=n, seed=params.seed)]
    return rows


def sampling_of(params: OvergenerateParams) -> Sampling:
    """The stage's sampling settings (sample ``s`` of a prompt is seeded by ``row_seed(seed, source, id, s)``)."""
    return Sampling(max_new_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                    seed=params.seed, system_prompt=params.system_prompt or None)


def teacher_of(params: OvergenerateParams, kind: str) -> str:
    """The teacher of ``"general"`` or ``"toxic"`` prompts."""
    return params.toxic_teacher or params.teacher if kind == "toxic" else params.teacher


def score_candidates(params: OvergenerateParams, candidates: list[dict]) -> list[dict]:
    """Add ``scores`` (refusal class and P(refusal), P(safe), reward) to every candidate.

    The refusal judge always runs (its share among candidates is a diagnostic); the safety judge and
    the reward model only when named. Reward scores are stored so that a re-run does not recompute them.
    """
    from porover.judges import judge_refusals
    from porover.judges.safety import judge_safety

    prompts, responses = [c["prompt"] for c in candidates], [c["response"] for c in candidates]
    scored = [{**c, "scores": {"refusal": None, "p_refusal": None, "p_safe": None, "reward": None}} for c in candidates]
    if not candidates:
        return scored
    verdicts = judge_refusals(prompts, responses, judge=params.refusal_judge, **params.refusal_judge_settings)
    for row, verdict in zip(scored, verdicts):
        row["scores"].update(refusal=verdict.label, p_refusal=verdict.score)
    if params.safety_judge:
        for row, verdict in zip(scored, judge_safety(prompts, responses, judge=params.safety_judge,
                                                     **params.safety_judge_settings)):
            p_unsafe = verdict.p_unsafe
            row["scores"]["p_safe"] = 1 - p_unsafe if p_unsafe is not None else {"safe": 1.0, "unsafe": 0.0}.get(verdict.verdict)
    if params.reward_model:
        store = JsonlStore(params.stage_dir / "rewards.jsonl", key=lambda r: (r["reward_model"], *completion_key(r)))
        todo = [c for c in scored if (params.reward_model, *completion_key(c)) not in store]
        if todo:
            values = reward_scores([c["prompt"] for c in todo], [c["response"] for c in todo], params.reward_model,
                                   device=params.device, batch_size=params.batch_size)
            store.append({"reward_model": params.reward_model, **{k: c[k] for k in ("config", "source", "id", "sample_index")},
                          "reward": value} for c, value in zip(todo, values))
        rewards = {key[1:]: row["reward"] for row in store.rows if (key := store.key(row))[0] == params.reward_model}
        for row in scored:
            row["scores"]["reward"] = rewards[completion_key(row)]
    return scored


def sft_row(candidate: dict, n_candidates: int, criterion: str) -> dict:
    """A chat-format SFT example (``messages``) with the provenance of its completion.

    The teacher's system prompt is left out of ``messages`` on purpose: the student learns to answer the
    bare prompt. It stays recorded under ``sampling``.
    """
    provenance = {k: candidate[k] for k in ("source", "id", "label", "category", "kind", "teacher", "backend",
                                            "sample_index", "new_tokens", "scores", "sampling")}
    provenance["finish_reason"] = candidate.get("finish_reason")  # absent from stores written before it was recorded
    return {"messages": [{"role": "user", "content": candidate["prompt"]},
                         {"role": "assistant", "content": candidate["response"]}],
            **provenance, "n_candidates": n_candidates, "criterion": criterion}


def summarize(params: OvergenerateParams, candidates: list[dict], selected: list[dict], seconds: float) -> dict:
    """Counts, refusal shares, agreement of each criterion with random, token usage and cost."""
    groups = group_candidates(candidates)
    per_prompt = [len(g) for g in groups.values()]
    criteria = ["random", "refusal_aware"] + (["reward"] if params.reward_model else []) + (
        ["safety"] if params.safety_judge else [])
    thresholds = {"min_reward": params.min_reward, "min_p_safe": params.min_p_safe,
                  "safe_threshold": params.safe_threshold, "drop_truncated": params.drop_truncated}
    usage = [c["usage"] for c in candidates if c.get("usage")]
    prompt_tokens = sum(u["prompt_tokens"] for u in usage)
    completion_tokens = sum(u["completion_tokens"] for u in usage)
    cost = None
    if params.price_per_1m_input is not None or params.price_per_1m_output is not None:
        cost = (prompt_tokens * (params.price_per_1m_input or 0) + completion_tokens * (params.price_per_1m_output or 0)) / 1e6
    return {
        "teachers": {kind: teacher_of(params, kind) for kind in ("general", "toxic")},
        "prompts": dict(Counter(g[0]["kind"] for g in groups.values())),
        "completions": len(candidates),
        "completions_per_prompt": {"min": min(per_prompt, default=0), "max": max(per_prompt, default=0),
                                   "mean": sum(per_prompt) / len(per_prompt) if per_prompt else 0.0},
        "selection": params.selection, "thresholds": thresholds,
        "selected": dict(Counter(row["kind"] for row in selected)),
        "dropped_by_thresholds": len(groups) - len(selected),  # prompts with no usable candidate clearing them
        # Completions never selectable: empty ones always, truncated ones (hit max_new_tokens) with drop_truncated.
        "empty_completions": sum(is_empty(c) for c in candidates),
        "truncated_completions": sum(is_truncated(c) for c in candidates),
        "dropped_truncated": sum(is_truncated(c) and not is_empty(c) for c in candidates) if params.drop_truncated else 0,
        # NaN (no prompt with 2+ candidates) is written as null: summary.json stays strict JSON.
        "agreement_with_random": {name: None if share != share else share for name, share in
                                  agreement_with_random(candidates, criteria, params.seed, **thresholds).items()},
        "refusal_share": {kind: sum(c["scores"]["refusal"] in REFUSALS for c in candidates if c["kind"] == kind)
                          / max(1, sum(c["kind"] == kind for c in candidates)) for kind in ("general", "toxic")},
        "usage": {"requests": len(usage), "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        "cost_usd": cost, "seconds": round(seconds, 1),
    }


@metered  # under the stage's cost cap (porover.spending)
def run_overgeneration(params: OvergenerateParams) -> tuple[list[dict], list[dict], dict]:
    """Overgenerate, score, select; write ``completions.jsonl``, ``candidates.jsonl``, ``sft.jsonl``, ``summary.json``.

    Returns:
        ``(candidates, sft_rows, summary)``: every scored candidate, the selected SFT rows, the summary.
    """
    start = time.perf_counter()
    out = params.stage_dir
    # a sweep's copies share the file stage's store: random vs scored selection choose among the same candidates
    store = JsonlStore(params.store_dir / "completions.jsonl", key=completion_key)
    rows, sampling, candidates = prompt_rows(params), sampling_of(params), []
    backends: dict[str, object] = {}  # one model load per teacher, shared by general and toxic prompts

    def backend_of(teacher: str):
        if teacher not in backends:
            backends[teacher] = make_backend(teacher, params.backend, device=params.device, batch_size=params.batch_size,
                                             **params.endpoint_settings())
        return backends[teacher]

    for kind in ("general", "toxic"):
        teacher, kind_rows = teacher_of(params, kind), [r for r in rows if r["kind"] == kind]
        if kind_rows:
            candidates += sample_completions(lambda t=teacher: backend_of(t), kind_rows, store, sampling,
                                       params.n_samples, teacher, desc=f"{params.stage_name}: {kind}")
    candidates = score_candidates(params, candidates)
    selected = select(candidates, params.selection, params.seed, min_reward=params.min_reward,
                      min_p_safe=params.min_p_safe, safe_threshold=params.safe_threshold,
                      drop_truncated=params.drop_truncated)
    sizes = {key: len(group) for key, group in group_candidates(candidates).items()}
    sft = [sft_row(c, sizes[(c["source"], c["id"])], params.selection) for c in selected]
    summary = summarize(params, candidates, selected, time.perf_counter() - start)
    write_jsonl(out / "candidates.jsonl", candidates)
    write_jsonl(out / "sft.jsonl", sft)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if candidates and not sft:  # an empty SFT set would only fail later, in the SFT stage, obscurely
        raise ValueError(f"no candidate of any of the {len(sizes)} prompts clears the thresholds "
                         f"min_reward={params.min_reward}, min_p_safe={params.min_p_safe} (or every one is empty"
                         f"{' or truncated: drop_truncated' if params.drop_truncated else ''}): sft.jsonl is empty; "
                         f"lower them{', raise max_new_tokens' if params.drop_truncated else ''} (candidates and "
                         f"their scores are in {out / 'candidates.jsonl'})")
    return candidates, sft, summary
