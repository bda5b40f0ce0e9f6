"""Sweeps in a run file: expansion into variant-named stages, sharing of unchanged upstream stages through the
runner's content-based staleness, up-front validation of every variant, and resume of an interrupted sweep."""

import json
from pathlib import Path

import pytest
import yaml

from porover.run_file import load_run_params
from porover.runner import (NOTEBOOK_DIR, input_digests, notebook_digest, output_digest, params_digest, run_pipeline,
                            stage_status)
from porover.digests import digest_of
from porover.judges import WEIGHT_FILES
from porover.sweeps import expand, variant_specs

STAGES = {
    "overgenerate": {"type": "overgenerate", "general_prompts": {"alpaca": 2}, "toxic_prompts": {"saferpaca_safety": 2},
                     "toxic_teacher": "recorded:saferpaca_safety"},
    "sft": {"type": "sft", "data": "stage:overgenerate", "learning_rate": 1.0e-4},
    "preference_data": {"type": "preference_data", "student": "stage:sft", "prompts": {"or_bench_hard:train": 4},
                        "eval_sets": {"xstest": 4}},
    "dpo": {"type": "preference_optimization", "model": "stage:sft", "pairs": "stage:preference_data", "beta": 0.1},
    "evaluate_dpo": {"type": "evaluate", "model": "stage:dpo", "benchmarks": {"xstest": 4}, "judges": ["phrase_lr"]},
    "analysis": {"type": "analysis"},
}


def write_run(path: Path, sweep: dict | None = None, stages: dict = STAGES, name: str = "sw") -> Path:
    body = {"run_name": name, "device": "cpu", "seed": 0, "stages": stages, **({"sweep": sweep} if sweep else {})}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_a_grid_expands_into_variant_named_stages_that_share_what_no_variant_reaches(tmp_path):
    run = load_run_params(write_run(tmp_path / "grid.yaml", {"grid": {"dpo.beta": [0.05, 0.5],
                                                                     "preference_data.containment_threshold": [0.25, 0.5]}}))
    names = list(run.stages)
    assert names[:2] == ["overgenerate", "sft"]  # shared: no variant reaches them
    # variant by variant, so a sweep stopped half way has whole variants; each copy after what it reads
    assert names[2:5] == ["preference_data[containment_threshold=0.25]", "dpo[beta=0.05,containment_threshold=0.25]",
                          "evaluate_dpo[beta=0.05,containment_threshold=0.25]"]
    assert names[5] == "preference_data[containment_threshold=0.5]" and names[8] == "dpo[beta=0.5,containment_threshold=0.25]"
    assert len([n for n in names if n.startswith("dpo[")]) == 4 and len(names) == 2 + 2 + 4 + 4 + 1
    assert names[-1] == "analysis"
    dpo = run.stages["dpo[beta=0.5,containment_threshold=0.25]"]
    assert dpo.params["beta"] == 0.5 and dpo.params["stage_name"] == "dpo[beta=0.5,containment_threshold=0.25]"
    assert dpo.inputs == {"model": "stage:sft", "pairs": "stage:preference_data[containment_threshold=0.25]"}
    assert run.stages["preference_data[containment_threshold=0.5]"].params["containment_threshold"] == 0.5
    assert run.stages["evaluate_dpo[beta=0.05,containment_threshold=0.5]"].inputs == {
        "model": "stage:dpo[beta=0.05,containment_threshold=0.5]"}
    # the analysis reads every variant's evaluation, and each variant knows which stage plays which
    assert len(run.stages["analysis"].params["stages"]) == 4
    assert [v.label for v in run.variants] == ["beta=0.05,containment_threshold=0.25", "beta=0.05,containment_threshold=0.5",
                                               "beta=0.5,containment_threshold=0.25", "beta=0.5,containment_threshold=0.5"]
    assert run.variants[1].stages["preference_data"] == "preference_data[containment_threshold=0.5]"
    assert run.variants[1].stages["sft"] == "sft"


def test_a_list_of_variants_keeps_the_file_as_written_for_an_empty_variant_and_shares_equal_copies():
    stages, variants = expand(STAGES, [{}, {"dpo.beta": 0.5}, {"dpo.beta": 0.5, "evaluate_dpo.max_new_tokens": 8},
                                       {"sft.learning_rate": 1e-5}])
    assert variants[0].stages == {name: name for name in STAGES} and stages["dpo"]["beta"] == 0.1
    # the second and third variants train one and the same dpo[beta=0.5]
    assert variants[1].stages["dpo"] == variants[2].stages["dpo"] == "dpo[beta=0.5]"
    assert variants[2].stages["evaluate_dpo"] == "evaluate_dpo[beta=0.5,max_new_tokens=8]"
    assert stages["evaluate_dpo[beta=0.5,max_new_tokens=8]"]["max_new_tokens"] == 8
    # a changed SFT reaches everything downstream, each copy rewired to the new upstream copy
    lr = variants[3].stages
    assert lr["overgenerate"] == "overgenerate" and lr["sft"] == "sft[learning_rate=1e-05]"
    assert stages[lr["dpo"]] == {**STAGES["dpo"], "model": "stage:sft[learning_rate=1e-05]",
                                 "pairs": "stage:preference_data[learning_rate=1e-05]"}
    assert list(stages).index(lr["sft"]) < list(stages).index(lr["preference_data"]) < list(stages).index(lr["dpo"])
    # keys of the same name in two stages are spelled out in full
    _, both = expand(STAGES, [{"sft.learning_rate": 1e-5, "dpo.learning_rate": 1e-6}])
    assert both[0].stages["dpo"] == "dpo[sft.learning_rate=1e-05,dpo.learning_rate=1e-06]"


def test_every_variant_is_validated_before_anything_runs(tmp_path):
    bad = write_run(tmp_path / "bad.yaml", {"grid": {"dpo.beta": [0.1, -1.0], "evaluate_dpo.max_new_tokens": [8, 0]}})
    with pytest.raises(ValueError) as error:
        load_run_params(bad)
    message = str(error.value)
    # every variant, all problems at once, each naming the file and the variant's stage and key
    assert f"{bad}: stages.dpo[beta=-1.0].beta" in message
    assert "stages.evaluate_dpo[beta=0.1,max_new_tokens=0].max_new_tokens" in message
    assert "stages.evaluate_dpo[beta=-1.0,max_new_tokens=0].max_new_tokens" in message
    assert "max_new_tokens=8].max_new_tokens" not in message
    with pytest.raises(ValueError, match=r"stages.dpo\[betta=1\].betta: unknown key"):
        load_run_params(write_run(tmp_path / "key.yaml", {"grid": {"dpo.betta": [1]}}))
    with pytest.raises(ValueError, match=r"sweep.grid.dpx.beta: no stage 'dpx'"):
        load_run_params(write_run(tmp_path / "typo.yaml", {"grid": {"dpx.beta": [0.1]}}))
    with pytest.raises(ValueError, match=r"sweep.grid: expected stage.param -> a non-empty list"):
        load_run_params(write_run(tmp_path / "scalar.yaml", {"grid": {"dpo.beta": 0.1}}))
    _, errors = variant_specs({"variants": [{"sft": 1}]}, STAGES, "f.yaml: sweep")
    assert errors == ["f.yaml: sweep.variants[0].sft: expected stage.param (e.g. dpo.beta)"]
    with pytest.raises(ValueError, match="invalid parameters"):  # nothing ran: no run folder
        run_pipeline(str(bad), outputs=str(tmp_path / "outputs"))
    assert not (tmp_path / "outputs" / "sw").exists()


def finish(run_file: Path, outputs: Path, stages: list[str] | None = None, interrupted: str | None = None) -> None:
    """Record stages as the runner does when they finish (outputs on disk, digests of what they consumed),
    without executing their notebooks: the staleness decision is what is under test."""
    run = load_run_params(run_file)
    run_dir = outputs / run.run_name
    path = run_dir / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {"stages": {}}
    for stage in stages or run.stages:
        spec = run.stages[stage]
        for name in spec.type.outputs:  # content that depends on what the stage was asked to do
            target = run_dir / stage / name
            if "." in name:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps([stage.split("[")[0], spec.params, input_digests(run, stage, run_dir)],
                                             default=str))
            else:
                target.mkdir(parents=True, exist_ok=True)
                (target / "model.safetensors").write_text(json.dumps([spec.params, input_digests(run, stage, run_dir)]))
        manifest["stages"][stage] = {"status": "running" if stage == interrupted else "finished",
                                     "params_digest": params_digest(spec.params),
                                     "notebook_digest": notebook_digest(NOTEBOOK_DIR / spec.type.notebook),
                                     "inputs": input_digests(run, stage, run_dir),
                                     "outputs": output_digest(run, stage, run_dir)}
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))


def test_a_variant_that_changes_only_dpo_beta_does_not_rerun_sft_or_the_preference_data(tmp_path):
    outputs = tmp_path / "outputs"
    plain = write_run(tmp_path / "plain.yaml")
    finish(plain, outputs)
    assert set(stage_status(str(plain), outputs=str(outputs)).values()) == {"finished"}
    swept = write_run(tmp_path / "swept.yaml", {"grid": {"dpo.beta": [0.05, 0.5]}})
    status = stage_status(str(swept), outputs=str(outputs))
    assert status["overgenerate"] == status["sft"] == status["preference_data"] == "finished"
    assert status["dpo[beta=0.05]"] == status["evaluate_dpo[beta=0.5]"] == "never run"
    # a sweep over the SFT learning rate retrains SFT, and everything downstream of it runs for that variant
    lr = write_run(tmp_path / "lr.yaml", {"variants": [{}, {"sft.learning_rate": 1e-5}]})
    status = stage_status(str(lr), outputs=str(outputs))
    assert status["sft"] == status["dpo"] == "finished" and status["overgenerate"] == "finished"
    assert status["sft[learning_rate=1e-05]"] == status["preference_data[learning_rate=1e-05]"] == "never run"
    # changing the shared SFT's content makes every variant's downstream stages stale
    (outputs / "sw" / "sft" / "model" / "model.safetensors").write_text("retrained")
    status = stage_status(str(swept), outputs=str(outputs))
    assert status["sft"].startswith("stale") and status["preference_data"].startswith("stale")


def test_a_new_fit_of_a_judge_makes_exactly_the_stages_judging_with_it_stale(tmp_path, monkeypatch):
    # A judge is known by its weights' content, not its name: a re-fitted phrase_lr (same name) must not leave the
    # evaluation that judged with it "finished" with the old judge's numbers.
    for judge in ("act_lr", "phrase_lr"):
        copy = tmp_path / WEIGHT_FILES[judge].name
        copy.write_bytes(WEIGHT_FILES[judge].read_bytes())
        monkeypatch.setitem(WEIGHT_FILES, judge, copy)
    outputs, plain = tmp_path / "outputs", write_run(tmp_path / "plain.yaml")
    finish(plain, outputs)
    assert set(stage_status(str(plain), outputs=str(outputs)).values()) == {"finished"}
    refit = json.loads(WEIGHT_FILES["phrase_lr"].read_text())
    refit["weights"][0][0] += 0.5
    WEIGHT_FILES["phrase_lr"].write_text(json.dumps(refit))
    status = stage_status(str(plain), outputs=str(outputs))
    assert status["evaluate_dpo"] == "stale: input judge phrase_lr changed"
    assert status["analysis"].startswith("stale") and "evaluate_dpo will run again" in status["analysis"]
    assert {status[s] for s in ("overgenerate", "sft", "preference_data", "dpo")} == {"finished"}
    finish(plain, outputs, ["evaluate_dpo", "analysis"])
    # the default judge labels the overgenerated candidates and the student's refusals: both stages, and what
    # they feed, run again; the evaluation that judges with phrase_lr only runs again because its model will
    WEIGHT_FILES["act_lr"].write_text(WEIGHT_FILES["act_lr"].read_text().replace('"l2"', '"l2" ', 1))
    status = stage_status(str(plain), outputs=str(outputs))
    assert status["overgenerate"] == "stale: input judge act_lr changed"
    assert status["preference_data"].startswith("stale: input judge act_lr changed")
    assert "judge" not in status["evaluate_dpo"] and status["evaluate_dpo"].startswith("stale")


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path):
    outputs = tmp_path / "outputs"
    swept = write_run(tmp_path / "swept.yaml", {"grid": {"dpo.beta": [0.05, 0.5]}})
    run = load_run_params(swept)
    done = ["overgenerate", "sft", "preference_data", "dpo[beta=0.05]", "evaluate_dpo[beta=0.05]"]
    finish(swept, outputs, done + ["dpo[beta=0.5]"], interrupted="dpo[beta=0.5]")
    status = stage_status(str(swept), outputs=str(outputs))
    assert [s for s in run.stages if status[s] == "finished"] == done
    assert status["dpo[beta=0.5]"] == "stale: last run running" and status["evaluate_dpo[beta=0.5]"] == "never run"


@pytest.mark.slow
def test_an_interrupted_sweep_of_real_evaluations_resumes_with_papermill(tmp_path):
    stages = {"evaluate_base": {"type": "evaluate", "benchmarks": {"xstest": 2}, "judges": ["phrase_lr"],
                                "max_new_tokens": 4, "bootstrap_samples": 0}}
    swept = write_run(tmp_path / "swept.yaml", {"grid": {"evaluate_base.max_new_tokens": [3, 5]}}, stages)
    outputs = str(tmp_path / "outputs")
    first = run_pipeline(str(swept), stages=["evaluate_base[max_new_tokens=3]"], outputs=outputs)  # stopped after one
    started = first["stages"]["evaluate_base[max_new_tokens=3]"]["started"]
    again = run_pipeline(str(swept), outputs=outputs)
    assert again["stages"]["evaluate_base[max_new_tokens=3]"]["started"] == started  # not re-run
    assert again["stages"]["evaluate_base[max_new_tokens=5]"]["status"] == "finished"
    assert [v["label"] for v in again["sweep"]] == ["max_new_tokens=3", "max_new_tokens=5"]


def test_the_demo_sweep_shares_the_demos_stages_by_content_and_chooses_on_validation():
    root = Path(__file__).resolve().parent.parent
    demo, sweep = load_run_params(root / "params" / "demo.yaml"), load_run_params(root / "params" / "demo_sweep.yaml")
    assert sweep.run_name == demo.run_name  # one run folder: what `make demo` ran is what the sweep reads
    shared = [name for name in sweep.stages if name in demo.stages]
    assert shared == ["overgenerate", "sft", "evolve", "preference_data", "dpo"]
    for name in shared:  # equal parameters: the runner skips them when the demo ran them
        assert digest_of(sweep.stages[name].params) == digest_of(demo.stages[name].params), name
    assert sweep.variants[0].label == "" and sweep.variants[0].stages["dpo"] == "dpo"
    evaluations = [s for s in sweep.stages.values() if s.type.name == "evaluate"]
    assert evaluations and all(s.params["split"] == "validation" for s in evaluations)


def test_the_demo_repeats_porover_over_two_seeds_and_its_other_arms_share_its_stages():
    root = Path(__file__).resolve().parent.parent
    demo, more = load_run_params(root / "params" / "demo.yaml"), load_run_params(root / "params" / "demo_more.yaml")
    assert more.run_name == demo.run_name
    for name, stage in demo.stages.items():  # every stage of the demo, equal: `make demo` ran what demo_more needs
        if name != "analysis":  # demo_more's analysis reads its arms too
            assert name in more.stages and digest_of(more.stages[name].params) == digest_of(stage.params), name
    extra = [name for name in more.stages if name not in demo.stages]
    assert extra == ["refusal_direction", "evaluate_refusal_direction", "false_refusal", "evaluate_false_refusal",
                     "refusal_tokens", "evaluate_refusal_tokens", "mosr", "evaluate_mosr", "dro", "evaluate_dro",
                     "represent"]
    # the main comparison: SFT and both POROver seeds on the same prompts, the seed copy trained with seed 1
    main = ["evaluate_sft", "evaluate_dpo", "evaluate_dpo[seed=1]"]
    assert len({digest_of(demo.stages[s].params["benchmarks"]) for s in main}) == 1
    assert {demo.stages[s].params["seed"] for s in main} == {0} and demo.stages["dpo[seed=1]"].params["seed"] == 1
    assert demo.stages["dpo[seed=1]"].inputs == demo.stages["dpo"].inputs  # one preference data for both seeds
    assert demo.stages["evaluate_sft"].params["benchmarks"]["xstest"] is None  # XSTest whole


def test_a_variant_can_stop_early_with_only_and_prompt_sets_name_their_copies():
    stages = {**STAGES, "evaluate_sft": {"type": "evaluate", "model": "stage:sft", "benchmarks": {"xstest": 4}}}
    order = ["overgenerate", "sft", "evaluate_sft", "preference_data", "dpo", "evaluate_dpo", "analysis"]
    stages = {name: stages[name] for name in order}
    only = ["overgenerate", "sft", "evaluate_sft"]
    expanded, variants = expand(stages, [{"overgenerate.toxic_prompts": {}, "only": only},
                                         {"overgenerate.toxic_prompts": {"saferpaca_safety": 48}, "only": only},
                                         {"dpo.beta": 0.5}])
    none = variants[0].stages
    assert none["sft"] == "sft[toxic_prompts=none]" and none["evaluate_sft"] == "evaluate_sft[toxic_prompts=none]"
    assert none["preference_data"] is None and none["dpo"] is None and none["analysis"] == "analysis"
    assert variants[1].stages["overgenerate"] == "overgenerate[toxic_prompts=saferpaca_safety:48]"
    assert variants[0].label == "toxic_prompts=none" and "only" not in variants[0].values
    assert not [name for name in expanded if name.startswith(("dpo[toxic", "preference_data[toxic"))]
    assert "preference_data" in expanded and "dpo[beta=0.5]" in expanded  # the third variant: the whole loop
    with pytest.raises(ValueError, match="reads 'sft\\[learning_rate=1e-05\\]'|which its `only` leaves out"):
        expand(stages, [{"sft.learning_rate": 1e-5, "only": ["dpo"]}])
    _, errors = variant_specs({"variants": [{"dpo.beta": 1, "only": ["nope"]}]}, stages, "f.yaml: sweep")
    assert errors == ["f.yaml: sweep.variants[0].only: expected a list of stage names of this file, got ['nope']"]


def test_paper_tables_run_the_loop_only_where_a_table_needs_it():
    run = load_run_params(Path(__file__).resolve().parent.parent / "params" / "paper_tables.yaml")
    dpo = [name for name, stage in run.stages.items() if stage.type.name == "preference_optimization"]
    assert len(dpo) == 4 and all("containment_threshold" in name for name in dpo)  # table 3's grid only
    sft = [name for name, stage in run.stages.items() if stage.type.name == "sft"]
    assert sft == ["sft", "sft[selection=random]", "sft[n_samples=1]", "sft[toxic_prompts=none]",
                   "sft[toxic_prompts=saferpaca_safety:48]"]
    assert run.stages["overgenerate[toxic_prompts=none]"].params["toxic_prompts"] == {}
    assert set(run.stages["analysis"].params["tables"]) and len(run.stages["analysis"].params["stages"]) == 10


def test_a_seeds_sweep_repeats_a_training_stage_and_keeps_every_evaluations_prompts(tmp_path):
    stages = {**STAGES, "represent": {"type": "represent", "evaluations": {"stage:evaluate_dpo": "POROver"}}}
    stages = {name: stages[name] for name in [*STAGES, "represent"] if name != "analysis"} | {"analysis": STAGES["analysis"]}
    run = load_run_params(write_run(tmp_path / "seeds.yaml", {"seeds": {"dpo": [0, 1, 2], "only": ["dpo", "evaluate_dpo"]}},
                                    stages))
    names = list(run.stages)
    # the file's own seed (the run's 0) keeps the stage's name; every upstream stage is shared
    assert names == ["overgenerate", "sft", "preference_data", "dpo", "evaluate_dpo", "represent", "dpo[seed=1]",
                     "evaluate_dpo[seed=1]", "dpo[seed=2]", "evaluate_dpo[seed=2]", "analysis"]
    assert [run.stages[n].params["seed"] for n in ("dpo", "dpo[seed=1]", "dpo[seed=2]")] == [0, 1, 2]
    assert run.stages["dpo[seed=2]"].inputs == {"model": "stage:sft", "pairs": "stage:preference_data"}
    evaluations = [run.stages[n] for n in ("evaluate_dpo", "evaluate_dpo[seed=1]", "evaluate_dpo[seed=2]")]
    # an evaluation's seed draws its prompts: every copy keeps the run's seed and its benchmarks
    assert {e.params["seed"] for e in evaluations} == {0}
    assert all(e.params["benchmarks"] == evaluations[0].params["benchmarks"] for e in evaluations)
    assert evaluations[2].inputs == {"model": "stage:dpo[seed=2]"}
    assert [v.label for v in run.variants] == ["", "seed=1", "seed=2"]
    assert [v.seeds for v in run.variants] == [{"dpo": 0}, {"dpo": 1}, {"dpo": 2}]
    assert run.variants[1].stages["represent"] is None  # `only`: no seed copy of the representation analysis
    assert run.stages["analysis"].params["stages"] == ["evaluate_dpo", "evaluate_dpo[seed=1]", "evaluate_dpo[seed=2]"]


def test_seeds_combine_with_other_variants_and_a_stage_own_seed_keeps_its_name():
    stages = {**STAGES, "dpo": {**STAGES["dpo"], "seed": 7}}
    specs, errors = variant_specs({"grid": {"dpo.beta": [0.1, 0.5]}, "seeds": {"dpo": [7, 8]}}, stages, "f.yaml: sweep")
    assert not errors
    expanded, variants = expand(stages, specs)
    assert [v.stages["evaluate_dpo"] for v in variants] == [
        "evaluate_dpo[beta=0.1]", "evaluate_dpo[beta=0.1,seed=8]", "evaluate_dpo[beta=0.5]", "evaluate_dpo[beta=0.5,seed=8]"]
    assert expanded["dpo[beta=0.5]"]["seed"] == 7 and expanded["dpo[beta=0.5,seed=8]"]["seed"] == 8
    assert "preference_data" in expanded and not [n for n in expanded if n.startswith("preference_data[")]


@pytest.mark.parametrize("seeds, message", [
    ({"evaluate_dpo": [0, 1]}, "seeds.evaluate_dpo: an evaluate stage's seed draws its prompts"),
    ({"dpx": [0, 1]}, "seeds.dpx: no stage 'dpx'"),
    ({"dpo": [0, 0]}, "seeds.dpo: expected a non-empty list of distinct integer seeds, got \\[0, 0\\]"),
    ({"dpo": 1}, "seeds.dpo: expected a non-empty list of distinct integer seeds, got 1"),
    ({"dpo": [0, 1], "only": ["nope"]}, "seeds.only: expected a list of stage names of this file"),
    ([0, 1], "sweep.seeds: expected a mapping of training stage -> list of seeds"),
])
def test_a_bad_seeds_sweep_names_the_file_and_the_key(tmp_path, seeds, message):
    with pytest.raises(ValueError, match=message) as error:
        load_run_params(write_run(tmp_path / "bad.yaml", {"seeds": seeds}))
    assert str(tmp_path / "bad.yaml") in str(error.value)
    _, clash = variant_specs({"variants": [{"dpo.seed": 3}], "seeds": {"dpo": [0, 1]}}, STAGES, "f: sweep")
    assert clash == ["f: sweep.seeds.dpo: a variant also sets dpo.seed"]


def test_a_seeds_sweep_after_a_plain_run_runs_only_the_new_seeds_copies(tmp_path):
    outputs = tmp_path / "outputs"
    plain = write_run(tmp_path / "plain.yaml")
    finish(plain, outputs)
    seeds = write_run(tmp_path / "seeds.yaml", {"seeds": {"dpo": [0, 1]}})
    status = stage_status(str(seeds), outputs=str(outputs))
    assert {s: status[s] for s in ("overgenerate", "sft", "preference_data", "dpo", "evaluate_dpo")} == dict.fromkeys(
        ("overgenerate", "sft", "preference_data", "dpo", "evaluate_dpo"), "finished")
    assert status["dpo[seed=1]"] == status["evaluate_dpo[seed=1]"] == "never run"


def test_the_weight_files_the_runner_digests_are_the_ones_each_judge_loads():
    from porover.judges import act_encoder, act_lr, minilm_lr, phrase_lr

    assert WEIGHT_FILES == {"phrase_lr": phrase_lr.WEIGHTS_PATH, "minilm_lr": minilm_lr.WEIGHTS_PATH,
                            "act_lr": act_lr.WEIGHTS_PATH, "act_encoder": act_encoder.WEIGHTS_PATH}
    assert all(path.is_file() for path in WEIGHT_FILES.values())
