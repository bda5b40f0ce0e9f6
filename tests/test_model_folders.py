"""One way to open a model (`porover.model_folders`), and a package where each method is one folder."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from porover.model_folders import HANDLE_FILE, ModelHandle, handle_class, model_folder_errors, open_model
from porover.run_file import STAGE_TYPES, load_run_params

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "porover"
# The run machinery that names stage types (and so the modules that define them): everything else that is not
# a method's own folder must reach a method only through a model folder's handle or a stage type.
KNOWS_STAGE_TYPES = {"run_file.py", "train_cli.py", "__init__.py", "costs.py"}  # costs: per stage type


def test_a_plain_model_gets_the_base_handle_and_loads_nothing_until_used(tmp_path):
    handle = open_model("smollm2-135m-instruct", device="cpu")
    assert type(handle) is ModelHandle and handle._loaded is None
    assert handle.digest().startswith("smollm2-135m-instruct@") and handle.response_settings() == {}
    assert handle_class(tmp_path) is ModelHandle


def test_a_folder_naming_no_handle_is_an_error_that_names_its_file(tmp_path):
    (tmp_path / HANDLE_FILE).write_text(json.dumps({"handle": "porover.nowhere:Missing"}))
    errors = model_folder_errors(str(tmp_path), "run.yaml: stages.evaluate")
    assert len(errors) == 1 and errors[0].startswith("run.yaml: stages.evaluate.model: ") and HANDLE_FILE in errors[0]
    (tmp_path / HANDLE_FILE).write_text(json.dumps({"handle": "porover.models:DeviceSettings"}))
    assert "no ModelHandle subclass" in model_folder_errors(str(tmp_path), "x")[0]


def test_a_plain_model_takes_no_inference_settings():
    errors = model_folder_errors("smollm2-135m-instruct", "x", {"threshold": 0.5})
    assert errors == ["x.model_settings: this model takes no inference settings, got threshold"]


def test_the_run_file_checks_a_stage_model_against_the_kind_of_folder_its_stage_writes(tmp_path):
    """Inference settings, a system prompt and training are checked before anything runs, for `stage:NAME`
    models too: by the handle the producing stage's module declares (``MODEL_HANDLE``)."""
    run = tmp_path / "run.yaml"
    run.write_text("""run_name: t
stages:
  overgenerate:
    type: overgenerate
  refusal_tokens:
    type: refusal_tokens
    data: stage:overgenerate
  dro:
    type: dro
  evaluate_rt:
    type: evaluate
    model: stage:refusal_tokens
    model_settings: {threshold: 2.0, colour: red}
  evaluate_dro:
    type: evaluate
    model: stage:dro
    system_prompt: Be safe.
  sft_from_dro:
    type: sft
    model: stage:dro
    data: stage:overgenerate
""")
    with pytest.raises(ValueError) as raised:
        load_run_params(run)
    message = str(raised.value)
    assert f"{run}: stages.evaluate_rt.model_settings.colour: unknown key" in message
    assert f"{run}: stages.evaluate_dro.system_prompt: must be '' for a DRO soft prompt" in message
    assert f"{run}: stages.sft_from_dro.model: stage:dro is a SoftPromptModel folder" in message
    run.write_text(run.read_text().replace("threshold: 2.0, colour: red", "threshold: 2.0")
                   .replace("    system_prompt: Be safe.\n", "").replace("  sft_from_dro:", "  other:")
                   .replace("    model: stage:dro\n    data:", "    data:"))
    with pytest.raises(ValueError, match=r"stages\.evaluate_rt\.model_settings\.threshold: expected a value <= 1"):
        load_run_params(run)
    run.write_text(run.read_text().replace("threshold: 2.0", "threshold: 0.5"))
    assert load_run_params(run).stages["evaluate_rt"].params["model_settings"] == {"threshold": 0.5}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def test_no_shared_module_imports_a_method():
    """Methods import the shared machinery, never the reverse: the evaluate stage, the libraries, the report and
    the runner name no method, so a new method is one folder, its notebook and one line in `STAGE_TYPES`."""
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in ("methods", "data", "notebooks", "configs") or str(relative) in KNOWS_STAGE_TYPES:
            continue
        named = {name for name in _imports(path) if name.startswith("porover.methods")}
        if named:
            offenders[str(relative)] = sorted(named)
    assert offenders == {}
    assert not any("methods" in name for name in _imports(PACKAGE / "stages" / "evaluate.py"))


def test_every_method_stage_lives_in_its_method_folder_and_modules_stay_readable():
    for name, module in STAGE_TYPES.items():
        assert module.startswith(("porover.stages.", "porover.methods.")), name
        if module.startswith("porover.methods."):
            assert module.count(".") == 3 and (PACKAGE / Path(*module.split(".")[1:])).with_suffix(".py").is_file()
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
