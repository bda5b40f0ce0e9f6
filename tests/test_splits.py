"""Training, validation and test prompts never meet: the run-file check (`porover.splits.split_errors`)."""

import pytest
import yaml

from porover.run_file import load_run_params
from porover.splits import load_sets, normalise


def run_file(tmp_path, stages: dict):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"run_name": "splits", "device": "cpu", "stages": stages}))
    return path


def evaluate(benchmarks: dict, split: str = "test") -> dict:
    return {"type": "evaluate", "benchmarks": benchmarks, "judges": ["phrase_lr"], "split": split}


def test_validation_and_test_prompts_must_not_meet(tmp_path):
    fine = run_file(tmp_path, {"evaluate_val": evaluate({"or_bench_hard:val": 40, "harmbench:val": 20}, "validation"),
                               "evaluate": evaluate({"or_bench_hard:test": 40, "or_bench_toxic": 40, "xstest": 20})})
    assert load_run_params(fine).stages["evaluate_val"].params["split"] == "validation"
    clash = run_file(tmp_path, {"evaluate_val": evaluate({"xstest": 30}, "validation"),
                                "evaluate": evaluate({"xstest": 30})})
    with pytest.raises(ValueError, match=r"run.yaml: stages.evaluate_val.benchmarks: 30 validation prompt\(s\) are also "
                                         r"test prompts of stage 'evaluate'"):
        load_run_params(clash)
    with pytest.raises(ValueError, match=r"stages.evaluate.split: expected one of"):
        load_run_params(run_file(tmp_path, {"evaluate": evaluate({"xstest": 4}, "dev")}))


def test_preference_data_prompts_must_not_be_validation_or_test_prompts(tmp_path):
    pd = {"type": "preference_data", "prompts": {"or_bench_hard": 300}, "eval_sets": {},
          "safety_anchor_sets": {"harmbench": 50}}
    stages = {"evaluate_val": evaluate({"harmbench:val": None}, "validation"),
              "evaluate": evaluate({"or_bench_hard:test": 40}), "preference_data": pd}
    with pytest.raises(ValueError) as error:
        load_run_params(run_file(tmp_path, stages))
    message = str(error.value)
    assert "stages.preference_data.prompts: " in message and "are also test prompts of stage 'evaluate'" in message
    assert "stages.preference_data.safety_anchor_sets: " in message and "validation prompts of stage 'evaluate_val'" in message
    # what the stage holds out (its eval_sets) it never trains on: no problem
    held = {**pd, "eval_sets": {"or_bench_hard:test": 40, "harmbench:val": None}}
    load_run_params(run_file(tmp_path, {**stages, "preference_data": held}))
    # the train split never meets val or test
    train = {normalise(r["prompt"]) for r in load_sets({"or_bench_hard:train": None}, 0)}
    assert not train & {normalise(r["prompt"]) for r in load_sets({"or_bench_hard:val": None, "or_bench_hard:test": None}, 0)}


def test_direction_stages_read_and_choose_only_on_prompts_no_test_stage_uses(tmp_path):
    direction = {"type": "refusal_direction", "harmful": {"harmbench:val": None}, "harmless": {"alpaca": 8},
                 "harmful_val": {"harmbench:test": 5}, "validation": {"or_bench_hard:test": 10, "harmbench:val": 5}}
    surgical = {"type": "false_refusal", "pseudo_harmful": {"xstest_safe": 10}, "validation": {"harmbench:val": 5}}
    stages = {"evaluate_val": evaluate({"harmbench:val": None}, "validation"),
              "evaluate": evaluate({"or_bench_hard:test": None, "harmbench:test": None, "xstest": None}),
              "refusal_direction": direction, "false_refusal": surgical}
    with pytest.raises(ValueError) as error:
        load_run_params(run_file(tmp_path, stages))
    message = str(error.value)
    assert ("stages.refusal_direction.harmful: 41 training prompt(s) are also validation prompts of stage "
            "'evaluate_val'") in message
    # held-out sets are drawn from what the training sets leave: every prompt of the set counts
    assert "stages.refusal_direction.harmful_val: 159 validation prompt(s) are also test prompts of stage 'evaluate'" \
        in message
    assert "stages.refusal_direction.validation: 627 validation prompt(s) are also test prompts" in message
    assert "stages.false_refusal.pseudo_harmful: 10 training prompt(s) are also test prompts" in message
    assert message.count("stages.") == 4  # choosing on validation prompts a validation stage also uses is fine
    fixed = {**direction, "harmful": {"advbench": 8}, "harmful_val": {"harmbench:val": 5},
             "validation": {"or_bench_hard:val": 10, "harmbench:val": 5}}
    load_run_params(run_file(tmp_path, {**stages, "refusal_direction": fixed,
                                        "false_refusal": {**surgical, "pseudo_harmful": {"or_bench_hard:train": 10}}}))
