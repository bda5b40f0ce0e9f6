import dataclasses
import json
from pathlib import Path

import pytest

from porover.config import parameters_cell
from porover.run_file import STAGE_TYPES, load_run_params, stage_type
from porover.stages.evaluate import EvaluateParams

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["demo", "demo_more", "smoke", "paper", "demo_sweep", "paper_tables"])
def test_shipped_parameter_files_validate(name):
    run = load_run_params(ROOT / "params" / f"{name}.yaml", environment=False)
    assert run.stages and all(stage.type.name in STAGE_TYPES for stage in run.stages.values())


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


BASE = "stages:\n  eval:\n    type: evaluate\n"


@pytest.mark.parametrize("body, message", [
    ("    modle: x\n", r"stages\.eval\.modle: unknown key; expected one of: model, benchmarks"),
    ("    max_new_tokens: many\n", r"stages\.eval\.max_new_tokens: expected int, got 'many'"),
    ("    partial_is_refusal: 1\n", r"stages\.eval\.partial_is_refusal: expected bool"),
    ("    benchmarks: {xstst: 5}\n", r"stages\.eval\.benchmarks\.xstst: unknown dataset; known: .*xstest"),
    ("    benchmarks: {./missing.csv: 5}\n", r"stages\.eval\.benchmarks\.\./missing\.csv: no such data file"),
    ("    benchmarks: {xstest: 0}\n", r"expected a positive number of prompts"),
    ("    judges: [gpt5_vibes]\n", r"stages\.eval\.judges: unknown judge 'gpt5_vibes'; known: .*xstest_string_match"),
    ("    judges: [orbench_keyword]\n    judge_settings: {orbench_keyword: {family: gpt9}}\n",
     r"judge_settings\.orbench_keyword\.family: unknown OR-Bench keyword family 'gpt9'"),
    ("    judges: [xstest_llm]\n    judge_settings: {xstest_llm: {batch_size: eight}}\n",
     r"judge_settings\.xstest_llm\.batch_size: expected int, got 'eight'"),
    ("    system_prompt: sk-proj-abcdefghijklmnopqrstuvwx\n", r"stages\.eval\.system_prompt: this looks like an API key.*api_key_env"),
    ("    benchmarks: {./no_prompt_column.csv: 2}\n", r"no_prompt_column\.csv: .*has no prompt column"),
    ("    model: ./no/such/folder\n", r"stages\.eval\.model: no model folder \(with a config.json\) at \./no/such/folder"),
    ("    device: tpu\n", r"stages\.eval\.device: expected one of auto, cpu, cuda, mps, got 'tpu'"),
    ("    batch_size: 0\n", r"stages\.eval\.batch_size: expected a value >= 1, got 0"),
    ("    judges: [xstest_string_match]\n    judge_settings: {other: {}}\n", r"judge_settings\.other: not one of"),
    ("    judges: [xstest_llm]\n    judge_settings: {xstest_llm: {modle: x}}\n",
     r"judge_settings\.xstest_llm\.modle: unknown setting; xstest_llm takes: .*model"),
])
def test_each_problem_names_the_file_and_the_key(tmp_path, body, message, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths in the bodies are relative to here
    (tmp_path / "no_prompt_column.csv").write_text("question_text,label\nhow?,safe\n")
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
    with pytest.raises(ValueError, match=r"stages\.eval\.type: expected one of overgenerate, sft, evaluate"):
        load_run_params(write(tmp_path, "stages:\n  eval:\n    type: evalute\n"))
    with pytest.raises(ValueError, match=r"stages\.eval\.notebook: the key is now `type`"):
        load_run_params(write(tmp_path, "stages:\n  eval:\n    notebook: evaluate\n"))


def test_run_keys_reach_stages_and_stage_values_win(tmp_path):
    run = load_run_params(write(tmp_path, "seed: 7\ndevice: cpu\n" + BASE + "    seed: 9\n"))
    params = run.stages["eval"].params
    assert run.stages["eval"].type.name == "evaluate" and params["seed"] == 9 and params["device"] == "cpu"
    assert params["stage_name"] == "eval" and "run_dir" not in params
    assert run.run_name == "run"


@pytest.mark.parametrize("name", list(STAGE_TYPES))
def test_notebook_parameters_cell_is_its_dataclass_with_help(name):
    kind = stage_type(name)
    cells = json.loads((ROOT / "notebooks" / kind.notebook).read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    assert "".join(cell["source"]) == parameters_cell(kind.params)
    namespace = {}
    exec("".join(cell["source"]), namespace)  # literal-only by design
    assert {k: v for k, v in namespace.items() if not k.startswith("__")} == dataclasses.asdict(kind.params())


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
    later = BASE + "    model: stage:train\n  train:\n    type: overgenerate\n"
    with pytest.raises(ValueError, match=r"stages\.eval\.model: 'stage:train' names no earlier stage"):
        load_run_params(write(tmp_path, later))
    no_output = BASE + "  report:\n    type: analysis\n  again:\n    type: evaluate\n    model: stage:report\n"
    with pytest.raises(ValueError, match=r"stages\.again\.model: stage 'report' \(analysis\) has no output"):
        load_run_params(write(tmp_path, no_output))


def test_stage_references_resolve_to_the_earlier_stage_output(tmp_path):
    text = ("stages:\n  teach:\n    type: overgenerate\n  eval:\n    type: evaluate\n    model: stage:teach\n"
            "    benchmarks: {stage:teach: 3, xstest: 2}\n")
    run = load_run_params(write(tmp_path, text))
    resolved = run.resolve("eval", tmp_path / "run")
    assert resolved["model"] == str(tmp_path / "run" / "teach" / "sft.jsonl")
    assert resolved["benchmarks"] == {str(tmp_path / "run" / "teach" / "sft.jsonl"): 3, "xstest": 2}
    assert run.stages["eval"].inputs == {"model": "stage:teach", "benchmarks.stage:teach": "stage:teach"}
    assert run.stages["eval"].upstream() == ["teach"]


def test_an_api_key_in_the_environment_variable_field_or_an_unset_key_variable_is_refused(tmp_path, monkeypatch):
    body = "stages:\n  teach:\n    type: overgenerate\n    backend: openai\n    teacher: gpt-4o\n"
    with pytest.raises(ValueError, match=r"teach\.api_key_env: give the NAME of the environment variable"):
        load_run_params(write(tmp_path, body + "    api_key_env: sk-abcdefghijklmnopqrstuvwxyz\n"))
    monkeypatch.delenv("PORO_TEST_KEY", raising=False)
    unset = body + "    base_url: http://127.0.0.1:9/v1\n    api_key_env: PORO_TEST_KEY\n"
    with pytest.raises(ValueError, match=r"teach\.api_key_env: http://127\.0\.0\.1:9/v1 is called with the key in "
                                         r"the environment variable PORO_TEST_KEY, which is not set"):
        load_run_params(write(tmp_path, unset))
    assert load_run_params(write(tmp_path, unset), environment=False).stages["teach"]  # the file itself is right
    monkeypatch.setenv("PORO_TEST_KEY", "anything")
    assert load_run_params(write(tmp_path, unset)).stages["teach"]
    assert load_run_params(write(tmp_path, body + "    base_url: http://127.0.0.1:9/v1\n    api_key_env: ''\n"))


def test_validate_answers_without_importing_torch():
    import subprocess
    import sys

    code = ("import sys; from porover.cli import main; code = main(['validate', 'params/paper.yaml']); "
            "print(code, 'torch' in sys.modules, 'datasets' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "0 False False", result.stdout + result.stderr


def test_a_notebook_run_from_anywhere_inside_the_project_writes_to_its_outputs(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT / "notebooks")  # where JupyterLab starts a notebook's kernel
    assert EvaluateParams(run_dir="outputs/mine").stage_dir == ROOT / "outputs" / "mine" / "evaluate"
    assert EvaluateParams(run_dir=str(tmp_path)).stage_dir == tmp_path / "evaluate"
