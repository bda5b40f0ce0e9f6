import dataclasses
import json
from pathlib import Path

import pytest

from porover.params import STAGE_NOTEBOOKS, EvaluateParams, load_run_params

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["demo", "smoke", "paper"])
def test_shipped_parameter_files_validate(name):
    run = load_run_params(ROOT / "params" / f"{name}.yaml")
    assert run.stages and all(notebook in STAGE_NOTEBOOKS for notebook, _ in run.stages.values())


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


BASE = "stages:\n  eval:\n    notebook: evaluate\n"


@pytest.mark.parametrize("body, message", [
    ("    modle: x\n", r"stages\.eval\.modle: unknown key; expected one of: model, benchmarks"),
    ("    max_new_tokens: many\n", r"stages\.eval\.max_new_tokens: expected int, got 'many'"),
    ("    partial_is_refusal: 1\n", r"stages\.eval\.partial_is_refusal: expected bool"),
    ("    benchmarks: {xstst: 5}\n", r"stages\.eval\.benchmarks\.xstst: unknown dataset; known: .*xstest"),
    ("    benchmarks: {./missing.csv: 5}\n", r"stages\.eval\.benchmarks\.\./missing\.csv: file not found"),
    ("    benchmarks: {xstest: 0}\n", r"expected a positive number of prompts"),
    ("    judges: [gpt5_vibes]\n", r"stages\.eval\.judges: unknown judge 'gpt5_vibes'; known: .*xstest_string_match"),
    ("    model: ./no/such/folder\n", r"stages\.eval\.model: no model folder \(with a config.json\) at \./no/such/folder"),
    ("    device: tpu\n", r"stages\.eval\.device: expected auto, cpu, cuda or mps"),
    ("    judges: [xstest_string_match]\n    judge_settings: {other: {}}\n", r"judge_settings\.other: not one of"),
    ("    judges: [xstest_llm]\n    judge_settings: {xstest_llm: {modle: x}}\n",
     r"judge_settings\.xstest_llm\.modle: unknown setting; xstest_llm takes: .*model"),
])
def test_each_problem_names_the_file_and_the_key(tmp_path, body, message):
    path = write(tmp_path, BASE + body)
    with pytest.raises(ValueError, match=message) as error:
        load_run_params(path)
    assert str(path) in str(error.value)


def test_all_problems_are_reported_at_once(tmp_path):
    path = write(tmp_path, "colour: blue\n" + BASE + "    modle: x\n    batch_size: -1\n")
    with pytest.raises(ValueError) as error:
        load_run_params(path)
    text = str(error.value)
    assert "colour: unknown key" in text and "modle: unknown key" in text


def test_file_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_run_params(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_run_params(write(tmp_path, "stages: [unclosed\n"))
    with pytest.raises(ValueError, match="non-empty 'stages' mapping"):
        load_run_params(write(tmp_path, "run_name: x\n"))
    with pytest.raises(ValueError, match=r"stages\.eval\.notebook: expected one of evaluate"):
        load_run_params(write(tmp_path, "stages:\n  eval:\n    notebook: evalute\n"))


def test_run_keys_reach_stages_and_stage_values_win(tmp_path):
    run = load_run_params(write(tmp_path, "seed: 7\ndevice: cpu\n" + BASE + "    seed: 9\n"))
    notebook, params = run.stages["eval"]
    assert notebook == "evaluate" and params["seed"] == 9 and params["device"] == "cpu"
    assert params["stage_name"] == "eval" and "run_dir" not in params
    assert run.run_name == "run"


def parameters_cell(notebook_file):
    cells = json.loads((ROOT / "notebooks" / notebook_file).read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    namespace = {}
    exec("".join(cell["source"]), namespace)  # literal-only by design
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


@pytest.mark.parametrize("notebook_name", list(STAGE_NOTEBOOKS))
def test_notebook_parameters_cell_matches_its_dataclass(notebook_name):
    notebook_file, cls = STAGE_NOTEBOOKS[notebook_name]
    defaults = dataclasses.asdict(cls())
    assert parameters_cell(notebook_file) == defaults


def test_notebooks_are_committed_without_outputs():
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(notebook.read_text())["cells"]
        assert not any(c.get("outputs") for c in cells), notebook


def test_from_namespace_validates_like_a_run_file():
    with pytest.raises(ValueError, match="notebook parameters.max_new_tokens: expected int"):
        EvaluateParams.from_namespace({"max_new_tokens": "64", "unrelated": 1})
    params = EvaluateParams.from_namespace({"benchmarks": {"oktest": 3}, "print": print})
    assert params.benchmarks == {"oktest": 3}


def test_stage_references_must_name_an_earlier_stage_with_an_output(tmp_path):
    later = BASE + "    model: stage:train\n  train:\n    notebook: overgenerate\n"
    with pytest.raises(ValueError, match=r"stages\.eval\.model: 'stage:train' names no earlier stage"):
        load_run_params(write(tmp_path, later))
    no_output = BASE + "  again:\n    notebook: evaluate\n    model: stage:eval\n"
    with pytest.raises(ValueError, match=r"stages\.again\.model: stage 'eval' \(evaluate\) has no output"):
        load_run_params(write(tmp_path, no_output))


def test_stage_references_resolve_to_the_earlier_stage_output(tmp_path):
    from porover.params import resolve_stage_refs

    text = "stages:\n  teach:\n    notebook: overgenerate\n  eval:\n    notebook: evaluate\n    model: stage:teach\n"
    run = load_run_params(write(tmp_path, text))
    resolved = resolve_stage_refs(run.stages["eval"][1], run, tmp_path / "run")
    assert resolved["model"] == str(tmp_path / "run" / "teach" / "sft.jsonl")
    assert resolved["benchmarks"] == run.stages["eval"][1]["benchmarks"]
