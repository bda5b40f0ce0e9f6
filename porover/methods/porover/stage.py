"""The POROver preference-data stage: find where the student over-refuses, pair teacher compliance against it.

1. The student answers seemingly toxic but benign prompts ``k`` times (sampled). Prompts that also appear
   in the evaluation sets (normalised text) are dropped and counted, or fail the stage (``on_eval_overlap``).
2. A refusal judge reads every sample; a prompt is an over-refusal *candidate* when the share of refusals
   among its parsed samples is at least the containment threshold τ (unparseable samples are left out).
3. The teacher writes ``teacher_samples`` completions per candidate. Chosen = one judged compliant and,
   with a safety judge, P(safe) >= ``min_p_safe``; rejected = one of the student's refusals. An empty
   completion is never chosen, nor, with ``drop_truncated``, one cut off by the token budget (both counted).
4. Optional safety anchors on toxic prompts: chosen = a safe refusal (the student's, else the dataset's
   reference response; or the reference alone), rejected = an unsafe compliance of the student, or of
   another model of the run (``anchor_rejected_from``, e.g. the base model, which complies with almost
   everything), so anchors exist even when the student rarely complies. Pairs: `porover.methods.porover.pairs`.
5. CHES (`porover.methods.ches.scores`) of every pair under the student; optionally keep pairs below a CHES quantile.

Student samples, teacher completions and CHES scores live in append-only stores, so a killed run resumes
and a finished run loads no model. Choices among samples are seeded per prompt, hence deterministic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from porover.config import EndpointParams, SpendingParams, StageParams, param
from porover.data import prompt_set_errors, split_name
from porover.digests import digest_of
from porover.generation import Sampling, completion_key, make_backend, sample_completions
from porover.judges import DEFAULT_JUDGE, judge_errors, safety_judge_errors
from porover.methods.porover.pairs import (FUNNEL, OTHER_MODEL, STUDENT_FIRST, build_pairs, filter_by_ches,
                                           refusal_shares)
from porover.models import model_errors
from porover.selection import is_empty, is_truncated, usable
from porover.spending import metered
from porover.splits import hold_out, load_sets, normalise
from porover.stages.overgenerate import teacher_errors
from porover.store import JsonlStore, read_jsonl, write_jsonl

NOTEBOOK = "04_preference_data.ipynb"
OUTPUTS = ("pairs.jsonl",)  # what ``stage:NAME`` stands for
TRAINING_SETS = ("prompts", "safety_anchor_sets")  # prompt sets it trains on (`porover.splits`)
HELD_OUT_SETS = "eval_sets"  # ...less the prompts of these


@dataclass
class PreferenceDataParams(StageParams, EndpointParams, SpendingParams):
    """Parameters of ``notebooks/04_preference_data.ipynb``: POROver pairs where the student over-refuses.

    The endpoint settings (base_url, api_key_env, ...) are the teacher's. Without a safety judge every
    teacher compliance to a benign prompt is assumed safe, every student compliance to a toxic prompt
    unsafe; ``summary.json`` says so.
    """

    student: str = param("smollm2-135m-instruct", "the student to probe (stage:sft in a run)", input=True)
    student_backend: str = param("transformers", "transformers or vllm, for sampling the student",
                                 choices=("transformers", "vllm"))
    prompts: dict[str, int | None] = param({"or_bench_hard:train": 6},
                                           "seemingly toxic but benign prompt sets name[:split] -> number (null = all)",
                                           input=True)
    eval_sets: dict[str, int | None] = param({"or_bench_hard:test": None, "oktest:test": None, "xstest": None},
                                             "evaluation prompts to keep out, as the evaluate stages draw them",
                                             input=True)
    on_eval_overlap: str = param("drop", "drop overlapping prompts (counted) or fail", choices=("drop", "fail"))
    k: int = param(2, "student samples per prompt", ge=1)
    temperature: float = param(0.7, "student sampling temperature (> 0 when k > 1)", ge=0)
    top_p: float = param(0.95, "student nucleus sampling mass", gt=0, le=1)
    max_new_tokens: int = param(24, "student generation budget", ge=1)
    system_prompt: str = param("", "student's system message, as in its evaluation ('' = none)")
    refusal_judge: str = param(DEFAULT_JUDGE, "refusal judge for student and teacher samples")
    refusal_judge_settings: dict = param({}, "its settings")
    partial_is_refusal: bool = param(True, "count partial refusals as refusals in the refusal share")
    containment_threshold: float = param(0.5, "τ: a prompt is a candidate when refusals / parsed samples >= τ",
                                         gt=0, le=1)
    teacher: str = param("smollm2-135m-instruct", "teacher of the chosen completions (as in overgenerate)", input=True)
    backend: str = param("transformers", "teacher backend: transformers, vllm, openai or recorded",
                         choices=("transformers", "vllm", "openai", "recorded"))
    teacher_samples: int = param(2, "teacher completions per candidate prompt", ge=1)
    teacher_temperature: float = param(0.7, "teacher sampling temperature", ge=0)
    teacher_top_p: float = param(0.95, "teacher nucleus sampling mass", gt=0, le=1)
    teacher_max_new_tokens: int = param(32, "teacher generation budget", ge=1)
    teacher_system_prompt: str = param("You are a helpful assistant. Answer the question directly and helpfully.",
                                       "teacher's system message ('' = none)")
    safety_judge: str = param("", "safety judge: llama_guard or llm_safety ('' = none)")
    safety_judge_settings: dict = param({}, "its settings, e.g. {model: meta-llama/Llama-Guard-3-8B}")
    min_p_safe: float = param(0.5, "P(safe) a chosen completion needs (and below which a compliance is unsafe)",
                              ge=0, le=1)
    drop_truncated: bool = param(False, "never choose a teacher completion cut off by teacher_max_new_tokens "
                                 "(empty ones never are)")
    safety_anchor_sets: dict[str, int | None] = param({}, "toxic prompt sets for safety-anchor pairs ({} = none)",
                                                      input=True)
    safety_anchor_ratio: float = param(0.25, "safety-anchor pairs per over-refusal pair", ge=0)
    anchor_chosen: str = param("student", "anchors' chosen refusal: student (its safe refusals, else the dataset's "
                               "reference response) or reference (the recorded teacher's only)",
                               choices=("student", "reference"))
    anchor_rejected_from: str = param("", "another model whose unsafe compliances may be the anchors' rejected side "
                                      "when the student has none (e.g. the base model), or stage:NAME of an evaluation "
                                      "on the anchor prompts ('' = the student's own only)", input=True)
    ches: bool = param(True, "compute CHES (Razin et al.) of every pair under the student")
    ches_score: str = param("ches_normalized", "score for the quantile filter", choices=("ches", "ches_normalized"))
    ches_quantile: float | None = param(None, "keep pairs at or below this CHES quantile, per kind (null = all)",
                                        ge=0, le=1)
    ches_batch_size: int = param(8, "sequences per CHES forward pass", ge=1)
    batch_size: int = param(16, "prompts per generate call", ge=1)
    stage_name: str = param("preference_data", "name of this stage in the run")

    def problems(self, where: str) -> list[str]:
        errors = prompt_set_errors(self.prompts, f"{where}.prompts") + prompt_set_errors(self.eval_sets,
                                                                                        f"{where}.eval_sets")
        errors += prompt_set_errors(self.safety_anchor_sets, f"{where}.safety_anchor_sets")
        if not self.prompts:
            errors.append(f"{where}.prompts: give at least one set of seemingly toxic, benign prompts")
        errors += model_errors(self.student, f"{where}.student")
        errors += teacher_errors(self.teacher, self.backend, dict.fromkeys(split_name(s)[0] for s in self.prompts),
                                 f"{where}.teacher")
        errors += judge_errors(self.refusal_judge, self.refusal_judge_settings, f"{where}.refusal_judge")
        errors += safety_judge_errors(self.safety_judge, self.safety_judge_settings, f"{where}.safety_judge")
        if self.k > 1 and self.temperature == 0:
            errors.append(f"{where}.temperature: greedy decoding makes all k={self.k} student samples the same; set it > 0")
        if self.teacher_samples > 1 and self.teacher_temperature == 0 and not self.teacher.startswith("recorded:"):
            errors.append(f"{where}.teacher_temperature: greedy decoding makes all {self.teacher_samples} teacher "
                          "completions the same; set it > 0")
        if self.anchor_rejected_from and not self.safety_anchor_sets:
            errors.append(f"{where}.anchor_rejected_from: anchors need safety_anchor_sets (toxic prompts)")
        elif self.anchor_rejected_from.endswith(".jsonl"):  # an evaluation's responses (stage:NAME, resolved)
            if not Path(self.anchor_rejected_from).expanduser().is_file():
                errors.append(f"{where}.anchor_rejected_from: no such responses file {self.anchor_rejected_from}")
        elif self.anchor_rejected_from and not self.anchor_rejected_from.startswith("stage:"):
            errors += model_errors(self.anchor_rejected_from, f"{where}.anchor_rejected_from")
        if self.ches_quantile is not None and not self.ches:
            errors.append(f"{where}.ches_quantile: filtering by CHES needs ches: true")
        return errors + self.endpoint_problems(where)

    def environment_problems(self, where: str) -> list[str]:
        return self.key_problems(where, [] if self.teacher.startswith("recorded:") else [self.backend])

def empty_message(counts: dict, params: PreferenceDataParams, shares: dict, n_dropped: int) -> str:
    """Which filter left no over-refusal pair, and what to change."""
    best = max((e["share"] for e in shares.values() if e["share"] is not None), default=None)
    hints = {
        "prompts sampled": f"no training prompt left ({n_dropped} dropped as evaluation prompts); give other `prompts`",
        "with parsed samples": f"the refusal judge {params.refusal_judge!r} parsed none of the student's samples "
                               f"({counts['unparseable samples']} unparseable); raise max_new_tokens or change refusal_judge",
        "candidates (share >= τ)": f"no prompt reached containment_threshold τ={params.containment_threshold} (highest "
                                   f"refusal share {best}); lower containment_threshold, raise k, or add prompts the "
                                   "student refuses (it may simply not over-refuse them)",
        "with a compliant teacher completion": f"the teacher {params.teacher!r} complied in none of its completions for "
                                               "the candidates; raise teacher_samples or use a more helpful teacher or "
                                               "teacher_system_prompt (dropped before judging: "
                                               f"{counts.get('teacher completions dropped: empty', 0)} empty, "
                                               f"{counts.get('teacher completions dropped: truncated', 0)} truncated; "
                                               "raise teacher_max_new_tokens or unset drop_truncated)",
        "with a safe compliant completion": f"no compliant teacher completion had P(safe) >= min_p_safe={params.min_p_safe} "
                                            f"({params.safety_judge}); lower min_p_safe or check the safety judge",
    }
    step = next(s for s in FUNNEL if not counts[s])
    return f"no over-refusal pair: the filter '{step}' left nothing: {hints.get(step, 'see summary.json')}"


def _judge(rows: list[dict], params: PreferenceDataParams) -> list[dict]:
    """Rows with ``refusal`` (a class, or None when unparseable) and ``p_refusal`` from the refusal judge."""
    from porover.judges import judge_refusals

    verdicts = judge_refusals([r["prompt"] for r in rows], [r["response"] for r in rows],
                              judge=params.refusal_judge, **params.refusal_judge_settings) if rows else []
    return [{**r, "refusal": v.label, "p_refusal": v.score, "p_safe": None} for r, v in zip(rows, verdicts)]


def _judge_safety(rows: list[dict], params: PreferenceDataParams) -> list[dict]:
    """Rows with ``p_safe`` from the safety judge (None without one, or when its verdict is unparseable)."""
    from porover.judges.safety import judge_safety

    if not rows or not params.safety_judge:
        return rows
    verdicts = judge_safety([r["prompt"] for r in rows], [r["response"] for r in rows], judge=params.safety_judge,
                            **params.safety_judge_settings)
    # A judge without a soft score (llm_safety) gives its verdict as 0/1.
    return [{**r, "p_safe": 1 - v.p_unsafe if v.p_unsafe is not None else {"safe": 1.0, "unsafe": 0.0}.get(v.verdict)}
            for r, v in zip(rows, verdicts)]


def add_ches(params: PreferenceDataParams, pairs: list[dict], student: str) -> list[dict]:
    """Every pair with ``ches`` and ``ches_normalized`` under the student, stored so a re-run computes none."""
    digest = lambda p: digest_of([student, p["prompt"], p["chosen"], p["rejected"]])  # noqa: E731
    store = JsonlStore(params.store_dir / "ches.jsonl", key=lambda row: row["key"])
    todo = [p for p in pairs if digest(p) not in store]
    if todo:
        from porover.methods.ches.scores import ches_scores
        from porover.model_folders import open_model

        model, tokenizer = open_model(params.student, device=params.device).load()
        scores = ches_scores(model, tokenizer, [p["prompt"] for p in todo], [p["chosen"] for p in todo],
                             [p["rejected"] for p in todo], system_prompt=params.system_prompt or None,
                             batch_size=params.ches_batch_size)
        store.append({"key": digest(p), **s} for p, s in zip(todo, scores))
    found = {row["key"]: row for row in store.rows}
    return [{**p, **{k: v for k, v in found[digest(p)].items() if k != "key"}} for p in pairs]


def anchor_model_samples(params: PreferenceDataParams, toxic: list[dict], sampling: Sampling) -> list[dict]:
    """Another model's responses to the anchor prompts (``origin`` `OTHER_MODEL`): sampled like the student's
    (``k`` per prompt, stored, so a re-run samples nothing), or read from an evaluation's ``responses.jsonl``
    (only its responses to anchor prompts, matched by normalised text)."""
    source = params.anchor_rejected_from
    if source.endswith(".jsonl"):
        by_text = {normalise(r["prompt"]): r for r in toxic}
        return [{**by_text[normalise(r["prompt"])], "response": r["response"], "sample_index": 0, "origin": OTHER_MODEL,
                 "teacher": Path(source).parent.name, "finish_reason": r.get("finish_reason")}
                for r in read_jsonl(Path(source)) if normalise(r["prompt"]) in by_text]
    from porover.models import model_digest

    backend = lambda: make_backend(source, "transformers", device=params.device, batch_size=params.batch_size)  # noqa: E731
    rows = sample_completions(backend, toxic, JsonlStore(params.store_dir / "anchor_model_samples.jsonl", key=completion_key),
                              replace(sampling, system_prompt=None),  # the student's system prompt is not its
                              params.k, model_digest(source), desc=f"{params.stage_name}: anchor model")
    return [{**r, "origin": OTHER_MODEL, "teacher": source} for r in rows]


@metered  # under the stage's cost cap (porover.spending)
def run_preference_data(params: PreferenceDataParams) -> tuple[list[dict], list[dict], dict]:
    """Sample, judge, pair, score; write ``pairs.jsonl``, ``scored_pairs.jsonl``, ``prompts.jsonl``, ``summary.json``.

    Returns:
        ``(pairs, prompts, summary)``: the kept pairs, one row per benign prompt (refusal share,
        candidate or not), and the summary with the filter funnel.

    Raises:
        ValueError: No over-refusal pair survived; the message names the filter that emptied the set
            (empty ``pairs.jsonl`` and ``summary.json`` are written first, for inspection).
    """
    out = params.stage_dir
    rows, dropped = hold_out(load_sets(params.prompts, params.seed, "over_refusal"), params.eval_sets, params.seed,
                             params.on_eval_overlap)
    toxic, dropped_toxic = ([], []) if not params.safety_anchor_sets else hold_out(
        load_sets(params.safety_anchor_sets, params.seed, "safety_anchor"), params.eval_sets, params.seed,
        params.on_eval_overlap)
    from porover.models import model_digest

    student = model_digest(params.student)
    sampling = Sampling(max_new_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                        seed=params.seed, system_prompt=params.system_prompt or None)
    student_backend = lambda: make_backend(params.student, params.student_backend, device=params.device,  # noqa: E731
                                           batch_size=params.batch_size, **params.endpoint_settings())
    samples = sample_completions(student_backend, rows + toxic, JsonlStore(params.store_dir / "student_samples.jsonl", key=completion_key),
                           sampling, params.k, student, desc=f"{params.stage_name}: student")
    samples = [{**s, "origin": "student"} for s in samples]
    benign = _judge([s for s in samples if s["kind"] == "over_refusal"], params)
    shares = refusal_shares(benign, params.partial_is_refusal)
    candidates = [r for r in rows if (shares.get((r["source"], r["id"])) or {}).get("share") is not None
                  and shares[(r["source"], r["id"])]["share"] >= params.containment_threshold]
    candidate_keys = {(r["source"], r["id"]) for r in candidates}
    teacher_sampling = Sampling(max_new_tokens=params.teacher_max_new_tokens, temperature=params.teacher_temperature,
                                top_p=params.teacher_top_p, seed=params.seed,
                                system_prompt=params.teacher_system_prompt or None)
    teacher = sample_completions(lambda: make_backend(params.teacher, params.backend, device=params.device,
                                                      batch_size=params.batch_size, **params.endpoint_settings()), candidates,
                           JsonlStore(params.store_dir / "teacher_completions.jsonl", key=completion_key), teacher_sampling,
                           params.teacher_samples, params.teacher, desc=f"{params.stage_name}: teacher") if candidates else []
    # Never chosen: empty completions, and with drop_truncated those cut off by the token budget; counted.
    dropped_teacher = {"empty": sum(is_empty(t) for t in teacher),
                       "truncated": sum(is_truncated(t) and not is_empty(t) for t in teacher) if params.drop_truncated else 0}
    teacher = [t for t in teacher if usable(t, params.drop_truncated)]
    teacher = _judge(teacher, params)  # only compliant completions can be chosen: only they meet the safety judge
    teacher = [t for t in teacher if t["refusal"] != "full_compliance"] + _judge_safety(
        [t for t in teacher if t["refusal"] == "full_compliance"], params)
    references = [{**r, "response": r["reference_response"], "origin": "reference", "sample_index": -1}
                  for r in toxic if r.get("reference_response")]
    others = anchor_model_samples(params, toxic, sampling) if toxic and params.anchor_rejected_from else []
    anchors = _judge_safety(_judge([s for s in samples if s["kind"] == "safety_anchor"] + references + others, params),
                            params)
    min_p_safe = params.min_p_safe if params.safety_judge else None
    pairs, counts = build_pairs(benign, teacher, params.containment_threshold, min_p_safe, params.partial_is_refusal,
                                params.seed, anchors, params.safety_anchor_ratio,
                                STUDENT_FIRST if params.anchor_chosen == "student" else ("reference",),
                                ("student", OTHER_MODEL))
    pairs = [{**p, "student": student, "refusal_judge": params.refusal_judge, "safety_judge": params.safety_judge or None}
             for p in pairs]
    pairs = add_ches(params, pairs, student) if pairs and params.ches else pairs
    kept = filter_by_ches(pairs, params.ches_quantile, params.ches_score) if params.ches else pairs
    counts["pairs before the CHES filter"], counts["pairs"] = counts["pairs"], sum(p["kind"] == "over_refusal" for p in kept)
    counts["safety anchor pairs"] = sum(p["kind"] == "safety_anchor" for p in kept)
    counts["teacher completions dropped: empty"] = dropped_teacher["empty"]
    counts["teacher completions dropped: truncated"] = dropped_teacher["truncated"]
    prompts = [{**{k: r[k] for k in ("source", "id", "category", "prompt")}, **shares.get((r["source"], r["id"]), {}),
                "candidate": (r["source"], r["id"]) in candidate_keys} for r in rows]
    summary = {"funnel": {step: counts[step] for step in FUNNEL}, "counts": counts, "student": student,
               "teacher": params.teacher, "containment_threshold": params.containment_threshold, "k": params.k,
               "dropped_as_eval_prompts": len(dropped) + len(dropped_toxic), "safety_judge": params.safety_judge or None,
               "assumption": None if params.safety_judge else "no safety judge: every teacher compliance to a benign "
               "prompt counts as safe, and every student compliance to a toxic prompt as unsafe",
               "ches_quantile": params.ches_quantile, "pairs": len(kept), "drop_truncated": params.drop_truncated,
               "teacher_completions_dropped": dropped_teacher}
    write_jsonl(out / "pairs.jsonl", kept)
    write_jsonl(out / "scored_pairs.jsonl", pairs)  # before the CHES filter, for its histogram
    write_jsonl(out / "prompts.jsonl", prompts)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    if not counts["pairs"]:
        raise ValueError(empty_message(counts, params, shares, len(dropped)))
    return kept, prompts, summary
