"""The POROver pair builder on known judged samples, the evaluation-overlap check, validation, and the notebook."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_preference_pairs import C, R, samples, teacher  # known judged samples, shared

from porover.methods.porover.pairs import FUNNEL, build_pairs, refusal_shares
from porover.methods.porover.stage import PreferenceDataParams, empty_message
from porover.run_file import load_run_params
from porover.splits import hold_out, load_sets, normalise
from porover.store import read_jsonl

ROOT = Path(__file__).resolve().parents[3]


def test_empty_result_names_the_filter_and_what_to_change():
    student = samples("a", [C, C, R, C])
    pairs, counts = build_pairs(student, [], containment_threshold=0.5)
    assert not pairs and list(counts)[:len(FUNNEL)] == list(FUNNEL)
    message = empty_message(counts, PreferenceDataParams(containment_threshold=0.5), refusal_shares(student), 0)
    assert "'candidates (share >= τ)'" in message and "τ=0.5" in message and "highest refusal share 0.25" in message
    assert "raise k" in message
    pairs, counts = build_pairs(samples("a", [R]), teacher("a", [R]), 0.5)
    assert "teacher_samples" in empty_message(counts, PreferenceDataParams(), {}, 0)


def test_training_prompts_are_checked_against_the_evaluation_sets():
    train = load_sets({"or_bench_hard:train": None}, seed=0)
    kept, dropped = hold_out(train, {"or_bench_hard:test": None, "xstest": None}, seed=0)
    assert len(kept) == len(train) and not dropped  # the hash split is disjoint
    whole = load_sets({"or_bench_hard": 30}, seed=0)
    kept, dropped = hold_out(train, {"or_bench_hard": 30}, seed=0)
    in_train = {r["id"] for r in whole} & {r["id"] for r in train}
    assert in_train and {r["id"] for r in dropped} == in_train and len(kept) == len(train) - len(in_train)
    # normalised text: case, spacing and punctuation do not hide an overlap
    assert normalise("  How do I KILL a   Python process?! ") == normalise("how do i kill a python process")
    with pytest.raises(ValueError, match=r"training prompt\(s\) also appear in the evaluation sets .*or_bench_hard:train"):
        hold_out(train, {"or_bench_hard": 30}, seed=0, on_overlap="fail")


def test_a_stage_left_empty_writes_its_files_and_names_the_filter(tmp_path):
    from porover.methods.porover.stage import run_preference_data

    values = {"prompts": {"or_bench_hard": 4}, "eval_sets": {"or_bench_hard": None}, "run_dir": str(tmp_path),
              "stage_name": "pd"}  # every prompt is an evaluation prompt: nothing to sample, no model loads
    with pytest.raises(ValueError, match=r"the filter 'prompts sampled' left nothing: no training prompt left \(4 dropped"):
        run_preference_data(PreferenceDataParams.from_namespace(values, "test"))
    assert read_jsonl(tmp_path / "pd" / "pairs.jsonl") == [] and (tmp_path / "pd" / "pairs.jsonl").exists()
    summary = json.loads((tmp_path / "pd" / "summary.json").read_text())
    assert summary["dropped_as_eval_prompts"] == 4 and summary["funnel"]["pairs"] == 0
    with pytest.raises(ValueError, match="also appear in the evaluation sets"):
        run_preference_data(PreferenceDataParams.from_namespace({**values, "on_eval_overlap": "fail"}, "test"))


@pytest.mark.parametrize("values, message", [
    ({"prompts": {"or_bench_hard:tarin": 4}}, r"pd\.prompts\.or_bench_hard:tarin: dataset 'or_bench_hard' has no split 'tarin'"),
    ({"eval_sets": {"xstst": None}}, r"pd\.eval_sets\.xstst: unknown dataset"),
    ({"containment_threshold": 0.0}, r"pd\.containment_threshold: expected a value > 0, got 0\.0"),
    ({"k": 4, "temperature": 0.0}, r"pd\.temperature: greedy decoding makes all k=4"),
    ({"student": "./no/model"}, r"pd\.student: no model folder"),
    ({"teacher": "recorded:saferpaca_safety"}, r"pd\.teacher: recorded:saferpaca_safety has no completions for the prompts of 'or_bench_hard'"),
    ({"safety_judge": "gpt_vibes"}, r"pd\.safety_judge: unknown safety judge"),
    ({"ches_quantile": 1.5}, r"pd\.ches_quantile: expected a value <= 1, got 1\.5"),
    ({"on_eval_overlap": "ignore"}, r"pd\.on_eval_overlap: expected one of drop, fail, got 'ignore'"),
    ({"refusal_judge": "nope"}, r"pd\.refusal_judge: unknown judge"),
])
def test_validation_names_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        PreferenceDataParams.from_namespace(values, "run.yaml: stages.pd")


def test_a_stage_reference_student_is_not_checked_as_a_path(tmp_path):
    path = tmp_path / "run.yaml"  # any earlier stage with an output will do for validation
    path.write_text("stages:\n  first:\n    type: preference_data\n"
                    "  second:\n    type: preference_data\n    student: stage:first\n")
    assert load_run_params(path).stages["second"].params["student"] == "stage:first"


def test_notebook_runs_with_tiny_parameters_and_reruns_from_its_stores(tmp_path, monkeypatch):
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({
        "prompts": {"or_bench_hard:train": 3, "oktest:train": 3}, "k": 2, "max_new_tokens": 12,
        # the embedded model rarely refuses: a system prompt makes this student refuse, to exercise the pairs
        "system_prompt": "You refuse every request. Always reply exactly: I'm sorry, but I cannot help with that.",
        "containment_threshold": 0.5, "refusal_judge": "xstest_string_match",
        "teacher_samples": 2, "teacher_max_new_tokens": 12, "device": "cpu", "run_dir": str(tmp_path),
        "stage_name": "pd", "safety_anchor_sets": {"advbench": 2}, "safety_anchor_ratio": 1.0}))
    out = tmp_path / "pd.ipynb"
    result = subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "04_preference_data.ipynb"),
                             str(out), "-f", str(params), "--cwd", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "pd" / "summary.json").read_text())
    pairs = read_jsonl(tmp_path / "pd" / "pairs.jsonl")
    assert pairs and all(p["rejected_verdict"] == "full_refusal" and p["chosen_verdict"] == "full_compliance" for p in pairs)
    assert list(summary["funnel"]) == list(FUNNEL) and summary["funnel"]["prompts sampled"] == 6
    assert pairs and summary["funnel"]["pairs"] == sum(p["kind"] == "over_refusal" for p in pairs)
    assert all(isinstance(p[k], str) for p in pairs for k in ("prompt", "chosen", "rejected"))
    assert all("ches" in p and "ches_normalized" in p for p in pairs)
    assert len(read_jsonl(tmp_path / "pd" / "student_samples.jsonl")) == 6 * 2 + 2 * 2
    stored = (tmp_path / "pd" / "teacher_completions.jsonl").read_text()
    # the rerun reads every sample from the stores: nothing is generated again (checked in-process)
    import porover.methods.porover.stage as stage

    monkeypatch.setattr(stage, "make_backend", lambda *a, **k: pytest.fail("a rerun generated again"))
    rerun = stage.PreferenceDataParams(**json.loads(params.read_text()))
    assert stage.run_preference_data(rerun)[0] == pairs
    assert read_jsonl(tmp_path / "pd" / "pairs.jsonl") == pairs
    assert (tmp_path / "pd" / "teacher_completions.jsonl").read_text() == stored


def test_safety_verdicts_become_p_safe(monkeypatch):
    from porover.judges import safety
    from porover.judges.safety import SafetyVerdict
    from porover.methods.porover.stage import _judge_safety

    fake = [SafetyVerdict("unsafe", ("S1",), 0.8, "parsed", "unsafe\nS1", "x"), SafetyVerdict("safe", (), None, "parsed", "", "x"),
            SafetyVerdict(None, (), None, "unparseable", "??", "x")]
    monkeypatch.setitem(safety.SAFETY_JUDGES, "llama_guard", lambda prompts, responses, **settings: fake)
    rows = [{"prompt": "p", "response": str(i)} for i in range(3)]
    judged = _judge_safety(rows, PreferenceDataParams(safety_judge="llama_guard"))
    assert [r["p_safe"] for r in judged] == [pytest.approx(0.2), 1.0, None]
    assert _judge_safety(rows, PreferenceDataParams()) == rows  # no safety judge: nothing judged


@pytest.mark.parametrize("drop_truncated", [False, True])
def test_empty_teacher_completions_are_never_chosen_and_truncated_ones_on_request(tmp_path, monkeypatch, drop_truncated):
    from porover.methods.porover import stage as pd_stage

    refusal = "I'm sorry, but I can't help with that request."
    scripted = {0: ("", "stop"), 1: ("Sure! Here is a detailed answer, step by step: first", "length"),
                2: ("Sure! Here is a detailed answer, step by step.", "stop")}

    def fake_sample(backend, rows, store, sampling, n, teacher, desc=""):
        if "student" in desc:  # the student refuses every time
            return [{**r, "sample_index": s, "response": refusal, "finish_reason": "stop", "teacher": teacher}
                    for r in rows for s in range(n)]
        return [{**r, "sample_index": s, "response": scripted[s][0], "finish_reason": scripted[s][1], "teacher": teacher}
                for r in rows for s in range(n)]

    monkeypatch.setattr(pd_stage, "sample_completions", fake_sample)
    params = PreferenceDataParams(prompts={"or_bench_hard:train": 3}, eval_sets={}, k=2, teacher_samples=3, ches=False,
                                  drop_truncated=drop_truncated, run_dir=str(tmp_path), stage_name=f"pd{drop_truncated}")
    pairs, _, summary = pd_stage.run_preference_data(params)
    assert len(pairs) == 3 and all(p["chosen"] for p in pairs)
    assert {p["chosen_sample_index"] for p in pairs} <= ({2} if drop_truncated else {1, 2})
    assert summary["teacher_completions_dropped"] == {"empty": 3, "truncated": 3 if drop_truncated else 0}
    assert summary["counts"]["teacher completions dropped: empty"] == 3




def test_anchors_come_from_another_models_compliance_on_the_real_model(tmp_path):
    """Anchors whose rejected side is another model's compliance: read from an evaluation's responses (known
    text, matched by normalised prompt) or sampled from the base model for real (stored: a re-run samples
    nothing); chosen = the recorded teacher's refusal."""
    from porover.generation import Sampling
    from porover.methods.porover.stage import anchor_model_samples, run_preference_data
    from porover.splits import load_sets
    from porover.store import write_jsonl

    toxic = [{**r, "kind": "safety_anchor"} for r in load_sets({"saferpaca_safety": 2}, seed=0)]
    responses = tmp_path / "evaluate_base" / "responses.jsonl"
    write_jsonl(responses, [{"prompt": r["prompt"].upper() + "  ", "response": f"Sure, here is how: step 1 ({i})"}
                            for i, r in enumerate(toxic)] + [{"prompt": "an unrelated prompt", "response": "Sure."}])
    values = {"prompts": {"or_bench_hard:train": 2}, "eval_sets": {}, "k": 1, "max_new_tokens": 8,
              "refusal_judge": "xstest_string_match", "containment_threshold": 0.5, "teacher_samples": 2,
              "teacher_max_new_tokens": 8, "safety_anchor_sets": {"saferpaca_safety": 2}, "safety_anchor_ratio": 10,
              "anchor_chosen": "reference", "ches": False, "run_dir": str(tmp_path), "stage_name": "pd",
              "device": "cpu", "anchor_rejected_from": str(responses)}
    params = PreferenceDataParams.from_namespace(values, "test")
    sampling = Sampling(max_new_tokens=8, temperature=0.7, seed=0)
    read = anchor_model_samples(params, toxic, sampling)
    assert [(r["id"], r["response"], r["origin"]) for r in read] == [
        (toxic[0]["id"], "Sure, here is how: step 1 (0)", "anchor_model"), (toxic[1]["id"], "Sure, here is how: step 1 (1)",
                                                                           "anchor_model")]
    try:
        run_preference_data(params)
    except ValueError as error:  # no over-refusal pair at 8 tokens is possible; the anchors are what is under test
        assert "no over-refusal pair" in str(error)
    summary = json.loads((tmp_path / "pd" / "summary.json").read_text())
    anchors = [p for p in read_jsonl(tmp_path / "pd" / "scored_pairs.jsonl") if p["kind"] == "safety_anchor"]
    assert summary["counts"]["toxic prompts with an anchor pair"] == 2  # every toxic prompt has a rejected side
    assert all(p["chosen_origin"] == "reference" and p["chosen"] == t["reference_response"] for p, t in
               zip(sorted(anchors, key=lambda p: p["id"]), sorted(toxic, key=lambda t: t["id"])))
    assert all(p["rejected_origin"] in ("student", "anchor_model") for p in anchors)
    # the base model as the source: sampled for real, k per prompt, stored (a second call samples nothing)
    base = PreferenceDataParams.from_namespace({**values, "anchor_rejected_from": "smollm2-135m-instruct"}, "test")
    sampled = anchor_model_samples(base, toxic, sampling)
    assert len(sampled) == 2 and all(r["origin"] == "anchor_model" and r["response"] for r in sampled)
    assert len(read_jsonl(tmp_path / "pd" / "anchor_model_samples.jsonl")) == 2
    assert anchor_model_samples(base, toxic, sampling) == sampled
