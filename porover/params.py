"""Parameters: one dataclass per stage notebook, and the run file that lists the stages.

A run file is YAML with a few run-wide keys and a ``stages`` mapping; each stage names its
``notebook`` and gives that notebook's parameters. Everything is validated before any model loads,
and every problem is reported at once with the file and the key.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# Run-wide keys, passed to every stage notebook that has a parameter of that name.
RUN_KEYS = {"run_name": str, "device": str, "seed": int}


@dataclass
class EvaluateParams:
    """Parameters of ``notebooks/03_evaluate.ipynb``: generate on benchmarks, judge, score.

    Attributes:
        model: Embedded name, Hugging Face id or local folder of the model to evaluate.
        benchmarks: Dataset name (or local CSV/JSONL path) -> number of prompts (None = all).
        judges: Refusal judges; the first one gives the headline metrics.
        judge_settings: Per-judge settings (e.g. an LLM judge's model or endpoint), keyed by judge.
        partial_is_refusal: Count partial refusals as refusals (the paper's reading).
        max_new_tokens: Generation budget per response.
        temperature: 0 for greedy decoding.
        top_p: Nucleus sampling mass when sampling.
        system_prompt: System message before every prompt ("" for none).
        batch_size: Prompts per generate call.
        bootstrap_samples: Resamples for the 95% confidence intervals.
        seed: Seed for subsampling, sampling and the bootstrap.
        device: "auto", "cpu", "cuda" or "mps".
        run_dir: Run folder; this stage writes under ``run_dir/stage_name``.
        stage_name: Name of this stage in the run.
    """

    model: str = "smollm2-135m-instruct"
    benchmarks: dict[str, int | None] = field(default_factory=lambda: {"xstest": 20})
    judges: list[str] = field(default_factory=lambda: ["xstest_string_match"])
    judge_settings: dict[str, dict] = field(default_factory=dict)
    partial_is_refusal: bool = True
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    system_prompt: str = ""
    batch_size: int = 32
    bootstrap_samples: int = 1000
    seed: int = 0
    device: str = "auto"
    run_dir: str = "outputs/scratch"
    stage_name: str = "evaluate"

    @classmethod
    def from_namespace(cls, namespace: dict, source: str = "notebook parameters"):
        """Build and validate from a notebook's globals (the variables of its ``parameters`` cell)."""
        values = {f.name: namespace[f.name] for f in dataclasses.fields(cls) if f.name in namespace}
        return build_stage_params(cls, values, source)


# notebook name -> (file under notebooks/, parameters class)
STAGE_NOTEBOOKS = {
    "evaluate": ("03_evaluate.ipynb", EvaluateParams),
}


@dataclass
class RunParams:
    """A validated run file.

    Attributes:
        path: The file it came from.
        run_name: Default folder name under ``outputs/``.
        stages: Stage name -> (notebook name, flat parameters for that notebook), in run order.
    """

    path: str
    run_name: str
    stages: dict[str, tuple[str, dict]]


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _type_errors(value, hint, where: str) -> list[str]:
    """Check ``value`` against a type hint built from str/int/float/bool/None/list/dict/unions."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if any(not _type_errors(value, arg, where) for arg in args):
            return []
        return [f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}"]
    if hint is type(None):
        return [] if value is None else [f"{where}: expected null, got {value!r}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {value!r}"]
        return [e for i, item in enumerate(value) for e in _type_errors(item, args[0], f"{where}[{i}]")]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping, got {value!r}"]
        if not args:
            return []
        return [e for k, v in value.items()
                for e in _type_errors(k, args[0], f"{where} key") + _type_errors(v, args[1], f"{where}.{k}")]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return []
    if hint is int and isinstance(value, bool):
        return [f"{where}: expected int, got {value!r}"]
    if not isinstance(value, hint):
        return [f"{where}: expected {_type_name(hint)}, got {value!r}"]
    return []


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.endswith((".csv", ".jsonl", ".json"))


def _semantic_errors(params, where: str) -> list[str]:
    from porover.data import known_datasets
    from porover.judges import JUDGES

    errors = []
    if isinstance(params, EvaluateParams):
        known = set(known_datasets())
        for name, n in params.benchmarks.items():
            if _looks_like_path(name):
                if not Path(name).expanduser().is_file():
                    errors.append(f"{where}.benchmarks.{name}: file not found")
            elif name not in known and "/" not in name:
                errors.append(f"{where}.benchmarks.{name}: unknown dataset; known: {', '.join(sorted(known))}")
            if n is not None and n < 1:
                errors.append(f"{where}.benchmarks.{name}: expected a positive number of prompts or null, got {n}")
        if not params.judges:
            errors.append(f"{where}.judges: give at least one judge")
        for name in params.judges:
            if name not in JUDGES:
                errors.append(f"{where}.judges: unknown judge {name!r}; known: {', '.join(sorted(JUDGES))}")
        for name in params.judge_settings:
            if name not in params.judges:
                errors.append(f"{where}.judge_settings.{name}: not one of this stage's judges {params.judges}")
        if params.max_new_tokens < 1 or params.batch_size < 1:
            errors.append(f"{where}: max_new_tokens and batch_size must be positive")
        if not 0 < params.top_p <= 1 or params.temperature < 0:
            errors.append(f"{where}: expected temperature >= 0 and 0 < top_p <= 1")
    if getattr(params, "device", "auto") not in ("auto", "cpu", "cuda", "mps"):
        errors.append(f"{where}.device: expected auto, cpu, cuda or mps, got {params.device!r}")
    model = getattr(params, "model", "")
    if _looks_like_path(model) and not (Path(model).expanduser() / "config.json").is_file():
        errors.append(f"{where}.model: no model folder (with a config.json) at {model}")
    return errors


def _stage_errors(cls, values: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    errors = [f"{where}.{key}: unknown key; expected one of: {', '.join(names)}"
              for key in values if key not in hints]
    for key, value in values.items():
        if key in hints:
            errors += _type_errors(value, hints[key], f"{where}.{key}")
    if errors:
        return None, errors
    params = cls(**values)
    return params, _semantic_errors(params, where)


def build_stage_params(cls, values: dict, source: str):
    """Validate one stage's parameters and build its dataclass.

    Raises:
        ValueError: Listing every problem, each with ``source`` and the key.
    """
    params, errors = _stage_errors(cls, values, source)
    if errors:
        raise ValueError("invalid parameters:\n  " + "\n  ".join(errors))
    return params


def load_run_params(path: str | Path) -> RunParams:
    """Read and validate a run file (no model is loaded).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Anything wrong inside it, all problems in one message naming file and key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parameters file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), dict) or not raw["stages"]:
        raise ValueError(f"{path}: expected a mapping with a non-empty 'stages' mapping of stage name -> parameters")
    errors = []
    for key, value in raw.items():
        if key == "stages":
            continue
        if key not in RUN_KEYS:
            errors.append(f"{path}: {key}: unknown key; expected {', '.join([*RUN_KEYS, 'stages'])}")
        elif not isinstance(value, RUN_KEYS[key]) or isinstance(value, bool):
            errors.append(f"{path}: {key}: expected {RUN_KEYS[key].__name__}, got {value!r}")
    shared = {k: v for k, v in raw.items() if k in RUN_KEYS and k != "run_name"}
    stages = {}
    for stage, body in raw["stages"].items():
        where = f"{path}: stages.{stage}"
        if not isinstance(body, dict) or body.get("notebook") not in STAGE_NOTEBOOKS:
            errors.append(f"{where}.notebook: expected one of {', '.join(STAGE_NOTEBOOKS)}")
            continue
        notebook = body["notebook"]
        cls = STAGE_NOTEBOOKS[notebook][1]
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in shared.items() if k in names}
        values.update({k: v for k, v in body.items() if k != "notebook"})
        values["stage_name"] = stage
        params, stage_errors = _stage_errors(cls, values, where)
        errors += stage_errors
        if params is not None:
            stages[stage] = (notebook, {k: v for k, v in dataclasses.asdict(params).items() if k != "run_dir"})
    if errors:
        raise ValueError("invalid parameters:\n  " + "\n  ".join(errors))
    return RunParams(str(path), raw.get("run_name", path.stem), stages)
