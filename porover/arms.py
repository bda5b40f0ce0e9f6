"""The arms of a run: which evaluations are seed repeats of one another, and which arm each was trained from.

Derived from the stage wiring the manifest records (each stage's type and parameters, ``stage:NAME`` unresolved),
never from stage names or file order:

- **Replicates.** Two evaluations are repeats of one arm when they are the same all the way up their inputs except
  for the ``seed`` of some upstream stage that is not an evaluation (a training seed): ``evaluate_dpo`` and
  ``evaluate_dpo[seed=1]`` are one arm trained with seeds 0 and 1. An evaluation's own seed draws its prompts, so
  evaluations with other seeds are other arms.
- **Parents.** An evaluation of a model trained from ``X`` has as parent the evaluation of ``X`` on the same split
  (``evaluate_dpo.model = stage:dpo``, ``dpo.model = stage:sft`` and ``evaluate_sft.model = stage:sft``: the parent
  of ``evaluate_dpo`` is ``evaluate_sft``; ``dro.model = smollm2-135m-instruct = evaluate_base.model``: the parent
  of ``evaluate_dro`` is ``evaluate_base``). A start model nobody evaluated is passed through to its own start.
  The **base** of an arm is the root of its parents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from porover.config import STAGE_REF, file_stage, referenced_stage
from porover.runs import read_manifest, stage_types

IGNORED = ("stage_name", "run_dir")  # parameters that name a stage, not what it does


@dataclass
class Arm:
    """One arm of a run: an evaluation and its repeats over training seeds.

    Attributes:
        name: The arm's first evaluation stage in run order (the run file's own stage where it has one).
        stages: Its evaluation stages, one per replicate, in run order.
        seeds: Per replicate, the training seeds that tell the replicates apart (``{"dpo": 1}``; empty for one).
        parents: Per replicate, the evaluation stage of the model it was trained from (None for a base model).
        split: ``test`` or ``validation``.
    """

    name: str
    stages: list[str]
    seeds: list[dict] = field(default_factory=list)
    parents: list[str | None] = field(default_factory=list)
    split: str = "test"


def run_stages(run_dir: str | Path) -> tuple[dict[str, dict], dict[str, str]]:
    """Every stage's parameters and type the run folder records (``params`` of the manifest; for stages run by an
    older runner without them, the parameter files the runner writes under ``params/``)."""
    import yaml

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    params, types = dict(manifest.get("params") or {}), {**stage_types(run_dir), **(manifest.get("types") or {})}
    for stage in types:
        path = run_dir / "params" / f"{stage}.yaml"
        if stage not in params and path.exists():
            params[stage] = _unresolved(yaml.safe_load(path.read_text()) or {})
    return params, types


def _unresolved(body: dict) -> dict:
    """A parameter file's body with each path into the run folder (``<run_dir>/sft/model``) as ``stage:sft``."""
    root = str(body.get("run_dir", "")).rstrip("/") + "/"

    def one(value: object) -> object:
        if isinstance(value, str) and root != "/" and value.startswith(root):
            return f"{STAGE_REF}{value[len(root):].split('/')[0]}"
        return value

    return {key: {one(k): v for k, v in value.items()} if isinstance(value, dict) else one(value)
            for key, value in body.items()}


def _signature(stage: str, params: dict, types: dict, seeds: dict, memo: dict) -> str:
    """What ``stage`` computes, up its inputs, with the seeds of training stages left out (collected in ``seeds``)."""
    if stage in memo:
        seeds.update(memo[stage][1])
        return memo[stage][0]
    body, mine = params.get(stage, {}), {}

    def one(value: object) -> object:
        target = referenced_stage(value)
        return ["stage", _signature(target, params, types, mine, memo)] if target in params else value

    described = {}
    for key, value in sorted(body.items()):
        if key in IGNORED:
            continue
        if key == "seed" and types.get(stage) != "evaluate":
            mine[file_stage(stage)] = value
            continue
        if isinstance(value, dict):
            value = sorted([json.dumps(one(k), sort_keys=True), v] for k, v in value.items())
        described[key] = one(value)
    text = json.dumps([types.get(stage), described], sort_keys=True, default=str)
    memo[stage] = (text, dict(mine))
    seeds.update(mine)
    return text


def _start(stage: str, params: dict) -> str | None:
    """The model a stage's model was trained or built from (its ``model`` parameter), if it has one."""
    value = params.get(stage, {}).get("model")
    return value if isinstance(value, str) else None


def parent_evaluation(evaluation: str, params: dict, types: dict) -> str | None:
    """The evaluation of the model ``evaluation``'s model was trained from, on the same split (None: none)."""
    evaluations = [s for s, t in types.items() if t == "evaluate" and s in params]
    split = params[evaluation].get("split", "test")
    model = params[evaluation].get("model")
    seen = set()
    while (target := referenced_stage(model)) is not None and target not in seen:
        seen.add(target)
        model = _start(target, params)
        if model is None:
            return None
        same = [e for e in evaluations if e != evaluation and params[e].get("model") == model
                and params[e].get("split", "test") == split]
        if same:  # the one with the same prompts, else the first in run order
            alike = [e for e in same if params[e].get("benchmarks") == params[evaluation].get("benchmarks")]
            return (alike or same)[0]
    return None


def run_arms(run_dir: str | Path, stages: list[str] | None = None) -> list[Arm]:
    """The run's arms in run order: evaluations grouped into seed replicates, each with its parents.

    Args:
        run_dir: The run folder.
        stages: Only these evaluation stages (default: every evaluation with results).
    """
    run_dir = Path(run_dir)
    params, types = run_stages(run_dir)
    found = {path.parent.name for path in run_dir.glob("*/metrics.json")}
    wanted = [s for s in params if types.get(s) == "evaluate" and s in found and (stages is None or s in stages)]
    memo: dict = {}
    groups: dict[str, Arm] = {}
    for stage in wanted:
        seeds: dict = {}
        key = _signature(stage, params, types, seeds, memo)
        arm = groups.setdefault(key, Arm(stage, [], split=params[stage].get("split", "test")))
        arm.stages.append(stage)
        arm.seeds.append(seeds)
        arm.parents.append(parent_evaluation(stage, params, types))
    for arm in groups.values():  # keep only the seeds that differ between replicates
        varying = {k for k in set().union(*arm.seeds) if len({json.dumps(s.get(k)) for s in arm.seeds}) > 1}
        arm.seeds = [{k: v for k, v in s.items() if k in varying} for s in arm.seeds]
    return list(groups.values())


def arm_of(arms: list[Arm], stage: str | None) -> Arm | None:
    """The arm an evaluation stage belongs to."""
    return next((arm for arm in arms if stage in arm.stages), None)


def base_of(arms: list[Arm], arm: Arm) -> Arm | None:
    """The root of an arm's parents (None for an arm without a parent)."""
    seen, current = {arm.name}, arm
    while (parent := arm_of(arms, current.parents[0])) is not None and parent.name not in seen:
        seen.add(parent.name)
        current = parent
    return None if current is arm else current


def parent_map(run_dir: str | Path) -> dict[str, str | None]:
    """``{evaluation stage: the evaluation of the model it was trained from}`` for every evaluation of the run."""
    params, types = run_stages(run_dir)
    return {stage: parent_evaluation(stage, params, types) for stage in params if types.get(stage) == "evaluate"}
