"""Rehearse a run file end to end on this CPU before GPU hours are spent on it (``python -m porover rehearse``).

The file is validated as written, then copied with stand-ins only where this machine cannot follow, each one
listed as (file, key, original -> stand-in) by `substitute`; everything else (stage types, wiring, judges,
selection, thresholds, data splits, LoRA or full training, the accelerate configuration family) is kept.

* Each model id -> a tiny random-initialised model of the same architecture family with the family's real
  tokenizer and chat template (`porover.standins`).
* Endpoints (GPT-4o as teacher, judge, mutator) -> one real OpenAI-compatible HTTP server on loopback, shared by
  every stage, whose replies a small deterministic program writes in the format each request asks for
  (`porover.generation.standin_endpoint`); the model names stay as written, no key is sent. Their token budgets
  stay as written (the stand-in's replies are short).
* vLLM backends -> the transformers backend (no vLLM on a CPU).
* Hub datasets -> a local file of a few prompts in the same columns (nothing is downloaded).
* Prompt counts, sample counts, iterations and local token budgets -> a few (`Size`); ``min_pairs`` -> 1 (a few
  prompts cannot give the paper's pair counts); ``num_processes`` > 2 -> 2; ``device`` -> cpu.
* FSDP configs -> ``ddp`` (accelerate runs FSDP on accelerator ranks only); DeepSpeed configs as written where
  deepspeed is installed (else ``ddp``), their mixed precision listed as fp32 on the CPU.

The rehearsal then runs through the ordinary runner (papermill notebooks, ``accelerate launch`` for the
training stages) into ``<outputs>/<run_name>-rehearsal/`` and prints what each stage would cost at full scale
(`porover.costs`).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from porover.config import looks_like_path, referenced_stage

# Mappings of prompt set -> count whose counts are cut (not exclude / eval_sets: what they remove stays whole);
# a stage type's declared training and validation sets (`porover.splits.ROLE_ATTRIBUTES`) count too (`_prompt_sets`).
PROMPT_SETS = ("general_prompts", "toxic_prompts", "benchmarks", "seeds", "prompts", "safety_anchor_sets",
               "extra_prompts", "benign", "pseudo_malicious", "malicious")
TOKEN_BUDGETS = ("max_new_tokens", "teacher_max_new_tokens", "target_max_new_tokens", "mutator_max_new_tokens",
                 "eval_max_new_tokens")
# Fields naming a model (a hub id here gets a stand-in); nested settings name theirs under "model".
MODEL_FIELDS = ("model", "teacher", "toxic_teacher", "student", "target", "mutator", "reward_model",
                "anchor_rejected_from", "chat_template")
# backend field -> the field naming the model it serves
BACKEND_FIELDS = {"backend": "teacher", "mutator_backend": "mutator", "student_backend": "student"}
# Model field -> its token budget (the first of these fields the stage has: preference_data's teacher has its own,
# overgenerate's does not). When the endpoint serves that model the budget stays as written: the stand-in answers
# in a few tokens at no cost, and a cut budget would cut its replies short of their format.
ENDPOINT_BUDGETS = {"teacher": ("teacher_max_new_tokens", "max_new_tokens"), "mutator": ("mutator_max_new_tokens",)}
ENDPOINT_WHY = "the stand-in endpoint on loopback (porover.generation.standin_endpoint) instead of the API"


@dataclass(frozen=True)
class Size:
    """How far a rehearsal cuts what scales with the data (the smallest size runs in CI)."""

    prompts: int = 2  # per prompt set
    samples: int = 2  # samples per prompt (overgeneration, student, teacher, fitness)
    tokens: int = 8  # generation budgets
    length: int = 96  # training and representation sequence length (the Llama 3.1 template alone is ~30)
    steps: int = 2  # max_steps where the file gives a step count
    processes: int = 2


@dataclass(frozen=True)
class Substitution:
    """One setting the rehearsal changed: ``file: key: original -> stand-in`` and why."""

    file: str
    key: str
    original: object
    standin: object
    why: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.original!r} -> {self.standin!r}  ({self.why})"


def _is_hub_id(value: object) -> bool:
    return (isinstance(value, str) and "/" in value and not looks_like_path(value) and referenced_stage(value) is None
            and not value.startswith(("http://", "https://")))


def _cpu_engine(name: str) -> tuple[str, str]:
    """(config, why) for an accelerate config on this CPU: FSDP -> ``ddp`` (accelerate runs FSDP on accelerator
    ranks only), DeepSpeed as written where the package is installed (else ``ddp``), anything else as written."""
    import importlib.util

    from porover.stages.launch import config_engine
    from porover.stages.training import accelerate_config_path

    engine = config_engine(accelerate_config_path(name))
    if engine == "FSDP":
        return "ddp", ("accelerate 1.16 turns FSDP on for accelerator ranks only (AcceleratorState: distributed_type "
                       "in MULTI_GPU...MULTI_NEURON); CPU ranks are MULTI_CPU: DDP over gloo here")
    if engine == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        return "ddp", "deepspeed is not installed here (pip install deepspeed runs it on the CPU): DDP over gloo"
    return name, ""


def preflight(run) -> list[str]:
    """What would fail once a training stage starts, checked now: accelerate's own reading of each launch config
    and the trainer's FSDP rule (`porover.stages.launch.accelerate_config_problems`)."""
    from porover.stages.launch import accelerate_config_problems

    return [problem for name, stage in run.stages.items() if "accelerate_config" in stage.params
            for problem in accelerate_config_problems(stage.type.params(**stage.params), f"{run.path}: stages.{name}")]


def _budget_of(model_field: str, params: dict) -> str | None:
    """The token-budget field of the model in ``model_field`` (`ENDPOINT_BUDGETS`), None if it has none."""
    return next((budget for budget in ENDPOINT_BUDGETS.get(model_field, ()) if budget in params), None)


def _prompt_sets(type_name: str | None) -> tuple[str, ...]:
    """The fields of a stage type that map prompt sets to counts: the shared names and the type's declared roles."""
    from porover.run_file import STAGE_TYPES, stage_type

    if type_name not in STAGE_TYPES:
        return PROMPT_SETS
    roles = stage_type(type_name).prompt_roles
    declared = [field for role in ("train", "validation") for field in (
        (roles.get(role),) if isinstance(roles.get(role), str) else roles.get(role, ()))]
    return tuple(dict.fromkeys((*PROMPT_SETS, *declared)))


def _cut(count: int | None, limit: int) -> int:
    return limit if count is None else min(count, limit)


class _Substituter:
    """Applies the rules to one run file; collects `Substitution`s and the files and models it needs."""

    def __init__(self, path: str, size: Size, models: dict[str, str], base_url: str, hub_files: dict[str, str]) -> None:
        self.path, self.size, self.models, self.base_url = path, size, models, base_url
        self.hub_files = hub_files
        self.done: list[Substitution] = []
        self.missing: list[str] = []

    def change(self, key: str, old, new, why: str):
        if old != new:
            self.done.append(Substitution(self.path, key, old, new, why))
        return new

    def model(self, key: str, value: object):
        if isinstance(value, str) and value in self.models:
            return self.change(key, value, self.models[value], "tiny random-initialised model of the same family "
                                                                "with its real tokenizer and chat template")
        if _is_hub_id(value):
            self.missing.append(f"{self.path}: {key}: no stand-in is known for {value!r} "
                                f"(known: {', '.join(self.models)})")
        return value

    def endpoint(self, key: str, settings: dict) -> dict:
        """An OpenAI-endpoint settings mapping pointed at the stand-in endpoint (the model name stays as written)."""
        out = dict(settings)
        out["base_url"] = self.change(f"{key}.base_url", settings.get("base_url"), self.base_url, ENDPOINT_WHY)
        out["api_key_env"] = self.change(f"{key}.api_key_env", settings.get("api_key_env"), "",
                                         "the stand-in endpoint needs no key (none is sent anywhere)")
        return out

    def precision(self, key: str, config_name: str) -> None:
        """List the launch's fp32 on the CPU (`porover.stages.launch.launch_command`) for a sharded config whose
        file asks for mixed precision (the setting lives in that file, which the rehearsal does not rewrite)."""
        from porover.stages.launch import config_engine
        from porover.stages.training import accelerate_config_path

        path = accelerate_config_path(config_name)
        precision = (yaml.safe_load(path.read_text()) or {}).get("mixed_precision", "no")
        if config_engine(path) and precision != "no":
            self.done.append(Substitution(str(path), "mixed_precision", precision, "no", f"{key}'s launch on the CPU "
                                          "(fp32: transformers refuses bf16 without a bf16 GPU unless use_cpu, and "
                                          "use_cpu turns DeepSpeed off)"))

    def settings(self, key: str, value: dict) -> dict:
        """Judge / reward settings: one backend's settings, or a mapping of judge name -> settings."""
        if value and all(isinstance(v, dict) for v in value.values()):
            return {name: self.settings(f"{key}.{name}", v) for name, v in value.items()}
        out = dict(value)
        if out.get("backend") == "vllm":
            out["backend"] = self.change(f"{key}.backend", "vllm", "transformers", "no vLLM on a CPU")
        if out.get("backend") == "openai":
            return self.endpoint(key, out)
        if "model" in out:
            out["model"] = self.model(f"{key}.model", out["model"])
        return out

    def prompt_sets(self, key: str, sets: dict) -> dict:
        out = {}
        for name, count in sets.items():
            new_name = name
            if _is_hub_id(name):
                new_name = self.hub_files[name]
                self.done.append(Substitution(self.path, f"{key}.{name}", name, new_name,
                                              "hub dataset -> a local file of a few prompts in its columns"))
            out[new_name] = self.change(f"{key}.{name}", count, _cut(count, self.size.prompts), "prompt count")
        return out

    def stage(self, name: str, params: dict, body: dict) -> dict:
        """The stage body with every rule applied (``params``: its validated values, defaults included)."""
        size, key = self.size, f"stages.{name}"
        body = {k: v for k, v in body.items()}
        set_ = lambda field, new, why: body.__setitem__(field, self.change(f"{key}.{field}", params[field], new, why))  # noqa: E731
        for field in BACKEND_FIELDS:
            if params.get(field) == "vllm":
                set_(field, "transformers", "no vLLM on a CPU")
        served = {model_field for field, model_field in BACKEND_FIELDS.items() if params.get(field) == "openai"}
        if "teacher" in served and "toxic_teacher" in params:
            served.add("toxic_teacher")
        if served:  # the stage's endpoint settings serve them all (EndpointParams)
            set_("base_url", self.base_url, ENDPOINT_WHY)
            set_("api_key_env", "", "the stand-in endpoint needs no key (none is sent anywhere)")
        for field in MODEL_FIELDS:
            if field in params and field not in served:  # an endpoint's model name stays as written
                new = self.model(f"{key}.{field}", params[field])
                if new != params[field]:
                    body[field] = new
        endpoint_budgets = {_budget_of(model_field, params) for model_field in served} - {None}
        prompt_sets = _prompt_sets(params.get("type") or body.get("type"))
        for field, value in params.items():
            if field.endswith("_settings") and isinstance(value, dict) and value:
                body[field] = self.settings(f"{key}.{field}", value)
            elif field in prompt_sets and isinstance(value, dict):
                body[field] = self.prompt_sets(f"{key}.{field}", value)
            elif field in TOKEN_BUDGETS and isinstance(value, int) and field not in endpoint_budgets:
                set_(field, min(value, size.tokens), "token budget")
        rules = {
            "max_length": (lambda v: min(v, size.length), "sequence length"),
            "n_samples": (lambda v: min(v, size.samples), "samples per prompt"),
            "k": (lambda v: min(v, size.samples), "samples per prompt"),
            "teacher_samples": (lambda v: min(v, size.samples), "samples per prompt"),
            "fitness_samples": (lambda v: min(v, size.samples), "samples per prompt"),
            "keep_longest": (lambda v: None if v is None else min(v, size.samples - 1), "samples kept per prompt"),
            "iterations": (lambda v: min(v, 1), "search iterations"),
            "n_mutants": (lambda v: min(v, 2), "mutants per iteration (recombination needs two)"),
            "n_recombinations": (lambda v: min(v, 1), "recombinations per iteration"),
            "n_pairs": (lambda v: _cut(v, size.prompts), "prompt pairs"),
            "n_splits": (lambda v: min(v, size.prompts), "cross-validation folds (as many as the pairs allow)"),
            "num_epochs": (lambda v: min(v, size.steps), "soft-prompt epochs"),
            "max_steps": (lambda v: v if v < 0 else min(v, size.steps), "optimizer steps"),
            "min_pairs": (lambda v: min(v, 1), "a few prompts cannot give the paper's pair count"),
            "num_processes": (lambda v: min(v, size.processes), "processes on this CPU"),
        }
        # A random-initialised stand-in refuses nothing and its refusal scores mean nothing: the direction stages'
        # filters (keep what the model refuses, drop candidates by KL or induced refusal) would leave no prompt.
        unrefusing = "a random-initialised stand-in refuses nothing: a filter on its refusals would keep no prompt"
        for field in ("filter_train", "filter_val", "filter_pseudo_harmful"):
            rules[field] = (lambda v: False, unrefusing)
        for field in ("kl_threshold", "induce_threshold"):
            rules[field] = (lambda v: None, "a random-initialised stand-in's scores mean nothing: no candidate filter")
        for field, (rule, why) in rules.items():
            if field in params and (params[field] is not None or field == "n_pairs"):
                new = rule(params[field])
                if new != params[field]:
                    set_(field, new, why)
        if "accelerate_config" in params:
            config, why = _cpu_engine(params["accelerate_config"])
            if config != params["accelerate_config"]:
                set_("accelerate_config", config, why)
            elif params.get("num_processes", 1) > 1:
                self.precision(key, config)
        if params.get("device") not in (None, "cpu", "auto") and "device" in body:
            set_("device", "cpu", "this machine has no GPU")
        return body


def hub_sets(raw: dict) -> list[str]:
    """The hub datasets a run file reads (prompt-set keys of the form ``owner/name[:config]``)."""
    found = []
    for body in raw.get("stages", {}).values():
        for field in _prompt_sets(body.get("type")):
            found += [name for name in (body.get(field) or {}) if _is_hub_id(name)]
    return list(dict.fromkeys(found))


def write_hub_standins(names: list[str], folder: Path, count: int, seed: int = 0) -> dict[str, str]:
    """A local JSONL of ``count`` prompts (from the vendored Alpaca) per hub dataset name, labelled as the loader
    labels that dataset's rows (`porover.data.HUB_LABELS`; none otherwise); name -> path."""
    from porover.data import HUB_LABELS, load_rows
    from porover.store import write_jsonl

    rows = load_rows("alpaca", n=count * max(len(names), 1), seed=seed)
    files = {}
    for i, name in enumerate(names):
        path = folder / f"hub-{name.replace('/', '--').replace(':', '--')}.jsonl"
        write_jsonl(path, [{"prompt": r["prompt"], "category": "rehearsal stand-in", "label": HUB_LABELS.get(name)}
                           for r in rows[i * count:(i + 1) * count]])
        files[name] = str(path.resolve())
    return files


def substitute(path: str | Path, size: Size, models: dict[str, str], base_url: str,
               hub_files: dict[str, str]) -> tuple[dict, list[Substitution]]:
    """The rehearsal's run file (as a mapping) and every setting it changed.

    Args:
        path: The run file, valid as written (`porover.run_file.load_run_params` has passed).
        size: How far counts and budgets are cut.
        models: Model id -> stand-in folder.
        base_url: The stand-in endpoint's URL.
        hub_files: Hub dataset name -> local stand-in file.

    Raises:
        ValueError: A model id without a known stand-in.
    """
    from porover.run_file import load_run_params

    path = str(path)
    raw = yaml.safe_load(Path(path).read_text())
    run = load_run_params(path, environment=False)
    out = copy.deepcopy(raw)
    rules = _Substituter(path, size, models, base_url, hub_files)
    if raw.get("device") not in (None, "cpu", "auto"):
        out["device"] = rules.change("device", raw["device"], "cpu", "this machine has no GPU")
    out["run_name"] = rules.change("run_name", run.run_name, f"{run.run_name}-rehearsal",
                                   "its own run folder, never mixed with real runs")
    for name, body in raw["stages"].items():
        params = dict(run.stages[name].params)
        if "device" in params and "device" not in body and out.get("device") == "cpu":
            params["device"] = "cpu"  # the run-wide key, already listed
        out["stages"][name] = rules.stage(name, params, body)
    if rules.missing:
        raise ValueError("no stand-in for some models:\n  " + "\n  ".join(rules.missing))
    return out, rules.done


def model_ids(raw: object) -> list[str]:
    """Every value in a run file that names a model with a known stand-in."""
    from porover.standins import STANDINS

    if isinstance(raw, dict):
        return list(dict.fromkeys(m for value in raw.values() for m in model_ids(value)))
    if isinstance(raw, list):
        return list(dict.fromkeys(m for value in raw for m in model_ids(value)))
    return [raw] if isinstance(raw, str) and raw in STANDINS else []


def rehearse(path: str | Path, size: Size = Size(), outputs: str = "outputs", echo=print) -> dict:
    """Rehearse a run file: validate it as written, substitute, run every stage here, print the full-scale costs.

    Returns:
        The rehearsal run's manifest, with ``substitutions`` and ``costs`` added.

    Raises:
        FileNotFoundError, ValueError: The file is invalid as written (every problem, naming file and key), or a
            model has no stand-in, before anything is built, served or generated.
    """
    from porover.costs import estimate_costs, format_costs
    from porover.generation.standin_endpoint import standin_endpoint
    from porover.run_file import load_run_params
    from porover.runner import run_pipeline, runs_folder
    from porover.standins import standin_model

    path = str(path)
    original = load_run_params(path, environment=False)  # the file as written: fails here, before any work
    problems = preflight(original)
    if problems:
        raise ValueError("invalid parameters:\n  " + "\n  ".join(problems))
    raw = yaml.safe_load(Path(path).read_text())
    folder = runs_folder(outputs) / f"{original.run_name}-rehearsal"
    folder.mkdir(parents=True, exist_ok=True)
    echo(f"rehearsing {path} in {folder}: building stand-ins")
    models = {model_id: str(standin_model(model_id)) for model_id in model_ids(raw)}
    hub_files = write_hub_standins(hub_sets(raw), folder / "standin_data", size.prompts * 4)
    rehearsal_file = folder / "rehearsal.yaml"
    with standin_endpoint(folder / "endpoint_requests.jsonl") as base_url:
        rehearsal, substitutions = substitute(path, size, models, base_url, hub_files)
        rehearsal_file.write_text(f"# Rehearsal of {path} (porover rehearse); substitutions in substitutions.txt\n"
                                  + yaml.safe_dump(rehearsal, sort_keys=False))
        (folder / "substitutions.txt").write_text("\n".join(map(str, substitutions)) + "\n")
        echo(f"substituted ({len(substitutions)}; everything else as written):")
        for item in substitutions:
            echo(f"  {item}")
        load_run_params(str(rehearsal_file))
        manifest = run_pipeline(str(rehearsal_file), outputs=outputs)
    costs = estimate_costs(original)
    echo("\nat full scale (" + path + "):\n" + format_costs(costs))
    manifest["substitutions"] = [dataclasses.asdict(s) for s in substitutions]
    manifest["costs"] = [dataclasses.asdict(c) for c in costs]
    return manifest
