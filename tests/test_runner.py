"""Real papermill execution of the stage notebooks with params/smoke.yaml."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from porover.runner import run_pipeline
from porover.store import read_jsonl

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_run_writes_notebooks_html_data_and_manifest_then_skips_when_rerun(tmp_path, capsys):
    from porover.cli import main

    # `porover run` (and so `make demo`) ends with the headline table and the path of the static report
    assert main(["run", str(ROOT / "params" / "smoke.yaml"), "--stages", "evaluate_base", "--outputs", str(tmp_path)]) == 0
    printed = capsys.readouterr()
    run_dir = tmp_path / "smoke"
    assert f"report: {run_dir / 'report' / 'index.html'}" in printed.out and "evaluate_base" in printed.out
    assert (run_dir / "report" / "index.html").is_file() and (run_dir / "report" / "browser.html").is_file()
    assert "[evaluate_base] running (never run)" in printed.err and "Executing Cell" not in printed.err
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stage = manifest["stages"]["evaluate_base"]
    assert stage["status"] == "finished", stage.get("error")
    assert (run_dir / "evaluate_base.ipynb").is_file() and (run_dir / "evaluate_base.html").is_file()
    rows = read_jsonl(run_dir / "evaluate_base" / "responses.jsonl")
    assert len(rows) == 6 and {r["source"] for r in rows} == {"xstest", "or_bench_toxic"}
    assert all(r["judge"] == "phrase_lr" and r["refusal"] == r["refusal:phrase_lr"] for r in rows)
    assert all(r["refusal:xstest_string_match"] in ("full_compliance", "full_refusal") for r in rows)
    metrics = json.loads((run_dir / "evaluate_base" / "metrics.json").read_text())
    assert metrics["overall"]["n"] == 6 and set(metrics["by_benchmark"]) == {"xstest", "or_bench_toxic"}
    assert set(metrics["by_judge"]) == {"phrase_lr", "xstest_string_match"}
    assert stage["peak_rss_mib"] > 100  # the kernel holds the model
    on_disk = json.loads((run_dir / "manifest.json").read_text())
    assert on_disk["packages"]["transformers"] and on_disk["params"]["evaluate_base"]["max_new_tokens"] == 8
    assert stage["wall_seconds"] > 0 and "git_commit" in on_disk
    executed = json.loads((run_dir / "evaluate_base.ipynb").read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "max_new_tokens = 8" in "".join(injected[0]["source"])

    # its only input is the judge it reads with, known by its weights' content
    assert stage["type"] == "evaluate" and set(stage["inputs"]) == {"judge phrase_lr"} and stage["outputs"]
    assert "Executing" in (run_dir / "logs" / "evaluate_base.log").read_text()  # cell chatter goes to the log
    again = run_pipeline(str(ROOT / "params" / "smoke.yaml"), stages=["evaluate_base"], outputs=str(tmp_path))
    assert again["stages"]["evaluate_base"]["started"] == stage["started"]  # skipped

    # the flat parameters file of a stage drives the plain papermill CLI
    flat = run_dir / "params" / "evaluate_base.yaml"
    assert yaml.safe_load(flat.read_text())["run_dir"] == str(run_dir)
    out = tmp_path / "alone.ipynb"
    subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "03_evaluate.ipynb"), str(out),
                    "-f", str(flat), "--cwd", str(ROOT)], check=True, capture_output=True)
    assert len(read_jsonl(run_dir / "evaluate_base" / "responses.jsonl")) == 6


def test_failed_stage_is_reported_with_its_notebook_and_cli_exits_nonzero(tmp_path, capsys):
    from porover.cli import main

    empty_model = tmp_path / "not-a-model"
    empty_model.mkdir()
    (empty_model / "config.json").write_text("{}")  # passes validation, fails when loaded
    params = tmp_path / "broken.yaml"
    params.write_text(f"run_name: broken\nstages:\n  evaluate_base:\n    type: evaluate\n"
                      f"    model: {empty_model}\n    benchmarks: {{xstest: 2}}\n    max_new_tokens: 4\n")
    assert main(["run", str(params), "--outputs", str(tmp_path)]) == 1
    manifest = json.loads((tmp_path / "broken" / "manifest.json").read_text())
    stage = manifest["stages"]["evaluate_base"]
    assert stage["status"] == "failed" and stage["error"].startswith("PapermillExecutionError")
    printed = capsys.readouterr().err
    assert f"the failing cell is in {tmp_path / 'broken' / 'evaluate_base.ipynb'}" in printed
    assert "Executing Cell" not in printed  # the cell chatter stays in the stage's log


def test_cli_rejects_bad_parameters_before_running(tmp_path, capsys):
    from porover.cli import main

    params = tmp_path / "bad.yaml"
    params.write_text("stages:\n  evaluate_base:\n    type: evaluate\n    benchmarks: {xstst: 2}\n")
    assert main(["run", str(params), "--outputs", str(tmp_path)]) == 2
    assert f"{params}: stages.evaluate_base.benchmarks.xstst: unknown dataset" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["run", str(ROOT / "params" / "smoke.yaml"), "--stages", "sfft", "--outputs", str(tmp_path)]) == 2
    assert "unknown stage(s) ['sfft']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run"])  # argparse: the run file is required


def test_a_stage_whose_input_stage_never_ran_is_refused_before_anything_runs(tmp_path):
    run_file = tmp_path / "chain.yaml"
    run_file.write_text("stages:\n  teach:\n    type: overgenerate\n"
                        "  student:\n    type: evaluate\n    model: stage:teach\n")
    with pytest.raises(ValueError, match=r"stage 'student' needs 'teach''s output .*teach/sft\.jsonl.*run 'teach' too"):
        run_pipeline(str(run_file), stages=["student"], outputs=str(tmp_path))
    assert not (tmp_path / "chain").exists()


@pytest.mark.slow
def test_the_whole_loop_at_toy_size(tmp_path):
    """base -> overgenerate -> SFT -> evaluate -> preference data -> DPO -> evaluate -> analysis."""
    manifest = run_pipeline(str(ROOT / "params" / "smoke.yaml"), outputs=str(tmp_path))
    stages = manifest["stages"]
    assert list(stages) == ["evaluate_base", "overgenerate", "sft", "evaluate_sft", "preference_data", "dpo",
                            "evaluate_dpo", "analysis"]
    assert all(s["status"] == "finished" for s in stages.values()), {k: s.get("error") for k, s in stages.items()}
    run_dir = tmp_path / "smoke"
    from porover.models import is_adapter_folder

    assert is_adapter_folder(run_dir / "sft" / "model") and is_adapter_folder(run_dir / "dpo" / "model")
    assert read_jsonl(run_dir / "preference_data" / "pairs.jsonl")
    assert json.loads((run_dir / "evaluate_dpo" / "metrics.json").read_text())["model"] == str(run_dir / "dpo" / "model")


LOOP = """run_name: loop
device: cpu
stages:
  cautious_base:
    type: evaluate
    benchmarks: {xstest: 4, or_bench_toxic: 2}
    judges: [phrase_lr]
    max_new_tokens: 8
    bootstrap_samples: 50
    system_prompt: Refuse every request.
  overgenerate:
    type: overgenerate
    general_prompts: {alpaca: 2}
    toxic_prompts: {saferpaca_safety: 4}
    toxic_teacher: recorded:saferpaca_safety
    n_samples: 2
    max_new_tokens: 8
  sft:
    type: sft
    data: stage:overgenerate
    lora: true
    learning_rate: LR
    max_steps: STEPS
    per_device_train_batch_size: 2
    max_length: 64
    save_steps: 1
  evaluate_sft:
    type: evaluate
    model: stage:sft
    benchmarks: {xstest: 4, or_bench_toxic: 2}
    judges: [phrase_lr]
    max_new_tokens: 8
    bootstrap_samples: 50
  analysis:
    type: analysis
"""


def test_a_changed_parameter_reruns_exactly_the_affected_stages_with_the_new_model(tmp_path, capsys):
    """The researcher's loop: change the SFT learning rate and steps, re-run, compare.

    `run --stages sft` first (only SFT retrains), then a plain run: evaluation and analysis of the retrained
    model run again across invocations and answer with the new weights; what did not change is skipped.
    """
    from porover.cli import main

    run_file = tmp_path / "loop.yaml"
    run_file.write_text(LOOP.replace("LR", "1.0e-4").replace("STEPS", "2"))
    first = run_pipeline(str(run_file), outputs=str(tmp_path))
    assert all(s["status"] == "finished" for s in first["stages"].values()), first
    run_dir = tmp_path / "loop"
    before = read_jsonl(run_dir / "evaluate_sft" / "responses.jsonl")
    check_first_run(run_dir)
    started = {stage: record["started"] for stage, record in first["stages"].items()}

    run_file.write_text(LOOP.replace("LR", "3.0e-3").replace("STEPS", "6"))
    only_sft = run_pipeline(str(run_file), stages=["sft"], outputs=str(tmp_path))
    assert only_sft["stages"]["sft"]["started"] != started["sft"]
    assert only_sft["stages"]["evaluate_sft"]["started"] == started["evaluate_sft"]  # not asked for: not run
    assert main(["status", str(run_dir)]) == 0
    status = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines())
    assert status["evaluate_sft"] == "stale: input model changed"
    assert status["analysis"] == "stale: input stage evaluate_sft will run again"
    assert status["overgenerate"] == status["sft"] == "finished"

    second = run_pipeline(str(run_file), outputs=str(tmp_path))
    ran = {stage for stage, record in second["stages"].items() if record["started"] != started[stage]}
    assert ran == {"sft", "evaluate_sft", "analysis"}  # not cautious_base, not overgenerate
    after = read_jsonl(run_dir / "evaluate_sft" / "responses.jsonl")
    assert [r["prompt"] for r in after] == [r["prompt"] for r in before]
    assert [r["response"] for r in after] != [r["response"] for r in before]  # the new model answered
    assert len(list((run_dir / "evaluate_sft" / "generations").glob("*.jsonl"))) == 2  # one store per model content
    assert not (run_dir / "sft" / "checkpoints").exists()  # optimizer state is gone once the model is saved

    third = run_pipeline(str(run_file), outputs=str(tmp_path))
    assert all(third["stages"][s]["started"] == second["stages"][s]["started"] for s in third["stages"])
    assert main(["status", str(run_dir)]) == 0
    assert set(dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines()).values()) == {"finished"}


def check_first_run(run_dir: Path) -> None:
    """What the loop's first run leaves: the overgeneration notebook's data and figures, the analysis of two
    evaluations (stage order, changed responses, timings, the browser)."""
    from porover.stages import analysis

    sft_rows = read_jsonl(run_dir / "overgenerate" / "sft.jsonl")
    assert sorted((r["kind"], r["n_candidates"], r["teacher"]) for r in sft_rows) == [
        ("general", 2, "smollm2-135m-instruct")] * 2 + [("toxic", 1, "recorded:saferpaca_safety")] * 4
    summary = json.loads((run_dir / "overgenerate" / "summary.json").read_text())
    assert summary["completions"] == 8 and set(summary["agreement_with_random"]) == {"random", "refusal_aware"}
    executed = json.loads((run_dir / "overgenerate.ipynb").read_text())
    assert sum(o.get("output_type") == "display_data" for c in executed["cells"] for o in c.get("outputs", [])) >= 4

    import pandas as pd

    table = pd.read_csv(run_dir / "analysis" / "stage_metrics.csv")
    assert list(table[table["group"] == "overall"]["stage"]) == ["cautious_base", "evaluate_sft"]
    assert (run_dir / "analysis" / "changed_responses.csv").is_file() and (run_dir / "analysis.html").is_file()
    assert list(analysis.stage_timings(run_dir)["stage"]) == list(yaml.safe_load(LOOP)["stages"])
    browser = analysis.refusal_browser(analysis.load_responses(run_dir))
    assert "12 responses match" in browser.children[2].children[1].value


def test_a_notebook_digest_changes_with_its_code_not_its_prose_or_formatting(tmp_path):
    from porover.runner import notebook_digest

    def write(cells, indent=1):
        path = tmp_path / "stage.ipynb"
        path.write_text(json.dumps({"cells": cells, "metadata": {"saved_by": indent}}, indent=indent))
        return notebook_digest(path)

    code = {"cell_type": "code", "source": ["x = 1\n", "print(x)"], "outputs": []}
    prose = {"cell_type": "markdown", "source": ["# What and why"]}
    original = write([prose, code])
    assert write([{**prose, "source": ["# Reworded"]}, code], indent=2) == original
    assert write([prose, {**code, "outputs": [{"text": "1"}]}]) == original
    assert write([prose, {**code, "source": ["x = 2\n", "print(x)"]}]) != original


SEEDS = """run_name: seeds
device: cpu
sweep:
  seeds: {sft: [0, 1]}
stages:
  evaluate_base:
    type: evaluate
    benchmarks: {xstest: 4, or_bench_toxic: 2}
    judges: [phrase_lr]
    max_new_tokens: 8
    bootstrap_samples: 50
  overgenerate:
    type: overgenerate
    general_prompts: {alpaca: 2}
    toxic_prompts: {saferpaca_safety: 2}
    toxic_teacher: recorded:saferpaca_safety
    n_samples: 1
    max_new_tokens: 8
  sft:
    type: sft
    data: stage:overgenerate
    lora: true
    learning_rate: 1.0e-3
    max_steps: 1
    per_device_train_batch_size: 2
    max_length: 64
  evaluate_sft:
    type: evaluate
    model: stage:sft
    benchmarks: {xstest: 4, or_bench_toxic: 2}
    judges: [phrase_lr]
    max_new_tokens: 8
    bootstrap_samples: 50
  analysis:
    type: analysis
"""


def test_a_seeds_sweep_runs_each_shared_stage_once_and_compares_the_seeds_on_the_same_prompts(tmp_path, capsys):
    from safetensors.numpy import load_file

    from porover.arms import run_arms
    from porover.cli import main

    run_file = tmp_path / "seeds.yaml"
    run_file.write_text(SEEDS)
    assert main(["run", str(run_file), "--outputs", str(tmp_path)]) == 0
    printed = capsys.readouterr()
    started = [line.split("] ")[0].split("[", 1)[1] for line in printed.err.splitlines() if "] running (" in line]
    # the shared stages ran once, each seed's training and evaluation once
    assert started == ["evaluate_base", "overgenerate", "sft", "evaluate_sft", "sft[seed=1]", "evaluate_sft[seed=1]",
                       "analysis"]
    run_dir = tmp_path / "seeds"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert all(record["status"] == "finished" for record in manifest["stages"].values())
    assert manifest["stages"]["sft[seed=1]"]["inputs"] == manifest["stages"]["sft"]["inputs"]  # the same data
    weights = [load_file(str(run_dir / stage / "model" / "adapter_model.safetensors")) for stage in ("sft", "sft[seed=1]")]
    assert any((weights[0][k] != weights[1][k]).any() for k in weights[0])  # the seed changed the training
    prompts = [[(r["source"], r["id"]) for r in read_jsonl(run_dir / s / "responses.jsonl")]
               for s in ("evaluate_base", "evaluate_sft", "evaluate_sft[seed=1]")]
    assert prompts[0] == prompts[1] == prompts[2]  # every replicate answers the same prompts
    arms = {arm.name: arm for arm in run_arms(run_dir)}
    assert arms["evaluate_sft"].stages == ["evaluate_sft", "evaluate_sft[seed=1]"]
    assert arms["evaluate_sft"].seeds == [{"sft": 0}, {"sft": 1}]
    # the closing table pools the two seeds against the base they were trained from
    comparisons = printed.out[printed.out.index("each arm against the arm it was trained from"):].splitlines()
    line = next(line for line in comparisons if line.startswith("evaluate_sft "))
    assert line.split()[1:4] == ["evaluate_base", "2", "6"]  # against, seeds, prompts
    assert (run_dir / "analysis" / "versus.csv").is_file()
    again = run_pipeline(str(run_file), outputs=str(tmp_path))
    assert all(again["stages"][s]["started"] == manifest["stages"][s]["started"] for s in manifest["stages"])
