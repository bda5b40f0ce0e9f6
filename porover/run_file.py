"""Run files: run-wide keys and the stages of a run, each naming its type and giving its parameters.

A run file is YAML with ``run_name``, ``device``, ``seed`` and a ``stages`` mapping; each stage gives its
``type`` (which notebook runs it, e.g. ``evaluate``) and that notebook's parameters. ``stage:NAME``, as a
value or as a key of a prompt-set mapping, stands for the main output of the earlier stage NAME, so a file
wires its stages together without spelling out run folders. Everything is validated before any model
loads, and every problem is reported at once with the file and the key.

This module knows every stage type; nothing below it imports it.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from porover.config import STAGE_REF, looks_like_path, referenced_stage, secret_errors
from porover.splits import ROLE_ATTRIBUTES, split_errors
from porover.sweeps import Variant, expand_run_file

# stage type -> module that owns its parameters (`<Name>Params`), NOTEBOOK and OUTPUTS
STAGE_TYPES = {
    "overgenerate": "porover.stages.overgenerate",
    "sft": "porover.stages.sft",
    "evaluate": "porover.stages.evaluate",
    "preference_data": "porover.methods.porover.stage",
    "preference_optimization": "porover.stages.preference_optimization",
    "analysis": "porover.stages.analysis",
    "evolve": "porover.methods.evorefuse.stage",
    "refusal_tokens": "porover.methods.refusal_tokens.stage",
    "represent": "porover.methods.representations.stage",
    "mosr": "porover.methods.mosr.stage",
    "dro": "porover.methods.dro.stage",
    "refusal_direction": "porover.methods.refusal_direction.stage",
    "false_refusal": "porover.methods.false_refusal.stage",
}
RUN_KEYS = {"run_name": str, "device": str, "seed": int}  # passed to every stage that has the parameter
# model -> [USD per 1M input tokens, per 1M output tokens], merged into every stage's own `prices` (`_share_prices`)
PRICES_KEY = "prices"


@dataclass(frozen=True)
class StageType:
    """What the runner needs to know of a stage type.

    Attributes:
        name: The type, as run files write it (``evaluate``).
        params: Its parameters dataclass.
        notebook: Its notebook's file name under ``porover/notebooks``.
        outputs: Files or folders it writes under its stage folder; the first is what ``stage:NAME`` stands for.
        prompt_roles: Which parameters name prompts it trains on, chooses on or holds out
            (`porover.splits.ROLE_ATTRIBUTES`).
    """

    name: str
    params: type
    notebook: str
    outputs: tuple[str, ...]
    prompt_roles: dict = field(default_factory=dict)


def stage_type(name: str) -> StageType:
    """The `StageType` of a type name from `STAGE_TYPES`."""
    module = importlib.import_module(STAGE_TYPES[name])
    params = next(value for key, value in vars(module).items()
                  if key.endswith("Params") and isinstance(value, type) and value.__module__ == module.__name__
                  and dataclasses.is_dataclass(value) and key not in ("StageParams", "TrainingParams"))
    roles = {role: getattr(module, attribute) for role, attribute in ROLE_ATTRIBUTES.items() if hasattr(module, attribute)}
    return StageType(name, params, module.NOTEBOOK, tuple(module.OUTPUTS), roles)


@dataclass
class Stage:
    """One stage of a validated run file.

    Attributes:
        name: Its name in the run.
        type: Its `StageType`.
        params: Its flat parameters, as the notebook takes them (``stage:`` references unresolved, no run_dir).
        inputs: What it reads: a label (``model``, ``benchmarks.stage:evolve``...) -> a ``stage:NAME`` reference
            or a local path whose content the runner digests.
    """

    name: str
    type: StageType
    params: dict
    inputs: dict[str, str]

    def upstream(self) -> list[str]:
        """The stages whose outputs this one reads."""
        return list(dict.fromkeys(target for value in self.inputs.values() if (target := referenced_stage(value))))


@dataclass
class RunParams:
    """A validated run file.

    Attributes:
        path: The file it came from.
        run_name: Default folder name under ``outputs/``.
        stages: Stage name -> `Stage`, in run order (a sweep's stage copies included).
        variants: The sweep's variants (`porover.sweeps`), empty without a ``sweep``.
    """

    path: str
    run_name: str
    stages: dict[str, Stage]
    variants: list[Variant] = field(default_factory=list)

    def output(self, run_dir: str | Path, stage: str) -> Path:
        """Where ``stage`` writes its main output (what ``stage:<stage>`` stands for)."""
        outputs = self.stages[stage].type.outputs
        return Path(run_dir) / stage / outputs[0] if outputs else Path(run_dir) / stage

    def resolve(self, stage: str, run_dir: str | Path) -> dict:
        """The stage's parameters with every ``stage:NAME`` (value or mapping key) replaced by NAME's output path."""
        def one(value):
            target = referenced_stage(value)
            return str(self.output(run_dir, target)) if target else value

        return {key: {one(k): v for k, v in value.items()} if isinstance(value, dict) else one(value)
                for key, value in self.stages[stage].params.items()}


def _inputs(params, body: dict) -> dict[str, str]:
    """The inputs of a stage: stage references and local paths among its fields marked ``input``."""
    found = {}
    for spec in dataclasses.fields(params):
        value = getattr(params, spec.name)
        if not spec.metadata.get("input"):
            continue
        for item in (value if isinstance(value, dict) else [value]):
            if isinstance(item, str) and (item.startswith(STAGE_REF) or looks_like_path(item)):
                found[spec.name if not isinstance(value, dict) else f"{spec.name}.{item}"] = item
    return found


def load_run_params(path: str | Path, environment: bool = True) -> RunParams:
    """Read and validate a run file (no model is loaded, torch is not imported).

    Args:
        path: The run file.
        environment: Also check what this machine must provide to run it (API key variables...).

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
    raw, variants, errors = expand_run_file(raw, str(path))  # every variant is validated below like any stage
    errors += secret_errors({k: v for k, v in raw.items() if k != "stages"}, str(path))
    for key, value in raw.items():
        if key == "stages":
            continue
        if key == PRICES_KEY:
            errors += _price_errors(value, f"{path}: {key}")
        elif key not in RUN_KEYS:
            errors.append(f"{path}: {key}: unknown key; expected {', '.join([*RUN_KEYS, PRICES_KEY, 'stages', 'sweep'])}")
        elif not isinstance(value, RUN_KEYS[key]) or isinstance(value, bool):
            errors.append(f"{path}: {key}: expected {RUN_KEYS[key].__name__}, got {value!r}")
    shared = {k: v for k, v in raw.items() if k in RUN_KEYS and k != "run_name"}
    stages: dict[str, Stage] = {}
    types: dict[str, str] = {}
    for name, body in raw["stages"].items():
        where = f"{path}: stages.{name}"
        if isinstance(body, dict) and "notebook" in body and "type" not in body:
            errors.append(f"{where}.notebook: the key is now `type` (the stage type, e.g. type: {body['notebook']})")
            continue
        if not isinstance(body, dict) or body.get("type") not in STAGE_TYPES:
            errors.append(f"{where}.type: expected one of {', '.join(STAGE_TYPES)}")
            continue
        kind = stage_type(body["type"])
        errors += _reference_errors(body, types, where)
        if kind.name == "analysis":
            evaluations = [stage for stage, t in types.items() if t == "evaluate"]
            errors += [f"{where}.{key}: {stage!r} is no earlier evaluate stage; earlier ones: {', '.join(evaluations) or 'none'}"
                       for key in ("stages", "compare") if isinstance(body.get(key), list)
                       for stage in body[key] if stage not in evaluations]
            body = {**body, "stages": body.get("stages") or evaluations}  # it reads every evaluation it shows
        types[name] = kind.name
        names = {f.name for f in dataclasses.fields(kind.params)}
        values = {k: v for k, v in shared.items() if k in names}
        values.update({k: v for k, v in body.items() if k != "type"})
        values["stage_name"] = name
        params, stage_errors = kind.params.validate(values, where, environment)
        errors += stage_errors
        if params is not None:
            errors += _model_reference_errors(params, types, where)
            flat = {k: v for k, v in dataclasses.asdict(params).items() if k != "run_dir"}
            inputs = _inputs(params, body)
            if kind.name == "analysis":
                inputs.update({f"stages.{stage}": f"{STAGE_REF}{stage}" for stage in params.stages})
            stages[name] = Stage(name, kind, flat, inputs)
    if not errors:  # training, validation and test prompts never meet
        errors = split_errors({name: (stage.type.name, stage.params) for name, stage in stages.items()}, str(path),
                              {stage.type.name: stage.type.prompt_roles for stage in stages.values()})
    if not errors:
        _share_prices(stages, raw.get(PRICES_KEY) or {})
        run = RunParams(str(path), raw.get("run_name", path.stem), stages, variants)
        from porover.spending import cap_errors

        errors = cap_errors(run)  # a cost cap below the stage's worst case fails here, before anything runs
    if errors:
        raise ValueError("invalid parameters:\n  " + "\n  ".join(errors))
    return run


def _price_errors(prices: object, where: str) -> list[str]:
    """The top-level ``prices``: a mapping of model -> two non-negative numbers."""
    if not isinstance(prices, dict):
        return [f"{where}: expected a mapping of model -> [USD per 1M input tokens, USD per 1M output tokens]"]
    return [f"{where}.{model}: expected [USD per 1M input tokens, USD per 1M output tokens], got {pair!r}"
            for model, pair in prices.items() if not (isinstance(pair, list) and len(pair) == 2 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in pair))]


def _share_prices(stages: dict[str, Stage], prices: dict) -> None:
    """Give every stage that can be capped the file's whole price table: the top-level ``prices``, each stage's
    own, and an overgeneration stage's ``price_per_1m_*`` as its teacher's; a stage's own entries win."""
    table = {model: list(pair) for model, pair in prices.items()}
    for stage in stages.values():
        p = stage.params
        if p.get("price_per_1m_input") is not None or p.get("price_per_1m_output") is not None:
            table.setdefault(p["teacher"], [p.get("price_per_1m_input") or 0.0, p.get("price_per_1m_output") or 0.0])
        table.update(p.get("prices") or {})
    for stage in stages.values():
        if "prices" in stage.params:
            stage.params["prices"] = {**table, **stage.params["prices"]}


def _model_reference_errors(params, types: dict[str, str], where: str) -> list[str]:
    """A ``model: stage:NAME`` checked against the kind of folder NAME's type writes (its module's ``MODEL_HANDLE``):
    inference settings it takes, a system prompt it cannot take, whether it can be trained from."""
    from porover.model_folders import ModelHandle, model_folder_errors

    target = referenced_stage(getattr(params, "model", None))
    if target not in types:
        return []
    handle = getattr(importlib.import_module(STAGE_TYPES[types[target]]), "MODEL_HANDLE", ModelHandle)
    return model_folder_errors(params.model, where, getattr(params, "model_settings", {}),
                               getattr(params, "system_prompt", ""), train=getattr(params, "trains_model", False),
                               handle=handle)


def _reference_errors(body: dict, types: dict[str, str], where: str) -> list[str]:
    """``stage:NAME`` values and keys that name no earlier stage with an output."""
    errors = []
    for key, value in body.items():
        for item in ([*value] if isinstance(value, dict) else [value]):
            target = referenced_stage(item)
            if target is None:
                continue
            if target not in types:
                errors.append(f"{where}.{key}: {item!r} names no earlier stage; earlier stages: {', '.join(types) or 'none'}")
            elif not stage_type(types[target]).outputs:
                errors.append(f"{where}.{key}: stage {target!r} ({types[target]}) has no output to refer to")
    return errors
