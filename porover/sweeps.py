"""Sweeps in a run file: a grid or a list of variants over stage parameters, expanded into one run.

A run file may hold a ``sweep`` mapping beside ``stages``::

    sweep:
      grid:                                   # every combination
        dpo.beta: [0.05, 0.5]
        preference_data.containment_threshold: [0.25, 0.5]
      variants:                               # and/or these, one by one ({} = the file as written)
        - {dpo.beta: 0.1, dpo.loss_type: ipo}
        - {overgenerate.n_samples: 1, only: [overgenerate, sft, evaluate_sft]}   # stop after these

Each variant becomes stage copies named after what they depend on: a stage whose own parameters or whose
upstream stages (through ``stage:NAME``) a variant changes is copied as ``NAME[key=value,...]``, listing
only the keys that reach it, and its ``stage:`` references are rewired to the copies of its upstream
stages. A stage no variant reaches keeps its name and is shared by every variant, and so are copies two
variants agree on (both ``dpo.beta`` variants read one ``preference_data[containment_threshold=0.25]``).
The runner's content-based staleness then runs each distinct stage once, and the usual resume applies.
A listed variant's ``only`` names the stages it reaches that it needs; it gets no copy of the others (the
paper's SFT-only comparisons need no preference optimization per variant).

This module only rewrites the raw run file; `porover.run_file` validates every resulting stage, so every
variant is checked before anything runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from porover.config import STAGE_REF, referenced_stage

SWEEP_KEYS = ("grid", "variants")
# analysis stages name evaluation stages in plain lists (no ``stage:``): a swept name stands for its copies
NAME_LISTS = {"analysis": ("stages", "compare")}


@dataclass
class Variant:
    """One variant of a sweep.

    Attributes:
        label: ``key=value,...`` of what it sets (``""``: the file as written).
        values: ``"stage.param" -> value`` it sets.
        stages: Stage name in the file -> the stage that plays it in this variant (itself when shared, None
            when the variant's ``only`` leaves it out).
        reached: Stage name in the file -> the keys of ``values`` that reach it (its own or upstream).
    """

    label: str
    values: dict
    stages: dict[str, str | None] = field(default_factory=dict)
    reached: dict[str, list[str]] = field(default_factory=dict)


def _format(value: object) -> str:
    if isinstance(value, dict):  # prompt sets: name:n;name:n (folder-name friendly), none for {}
        return ";".join(f"{k}:{_format(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return "+".join(_format(v) for v in value) or "none"
    return str(value)


def variant_specs(sweep: object, stages: dict, where: str) -> tuple[list[dict], list[str]]:
    """The variants a ``sweep`` mapping describes, as ``"stage.param" -> value`` dicts, and its problems.

    Args:
        sweep: The raw ``sweep`` value of a run file.
        stages: The raw ``stages`` mapping (to check that each key names a stage).
        where: ``<file>: sweep``, prefixed to every problem.
    """
    if not isinstance(sweep, dict) or not sweep or set(sweep) - set(SWEEP_KEYS):
        return [], [f"{where}: expected a mapping with `grid` (stage.param -> list of values) and/or `variants` "
                    "(a list of stage.param -> value mappings)"]
    errors, specs = [], []
    grid = sweep.get("grid", {})
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        errors.append(f"{where}.grid: expected stage.param -> a non-empty list of values, got {grid!r}")
        grid = {}
    listed = sweep.get("variants", [])
    if not isinstance(listed, list) or not all(isinstance(v, dict) for v in listed):
        errors.append(f"{where}.variants: expected a list of stage.param -> value mappings, got {listed!r}")
        listed = []
    if grid:
        specs += [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    specs += listed
    keyed = [(f"{where}.grid.{key}", key) for key in grid]
    keyed += [(f"{where}.variants[{i}].{key}", key) for i, spec in enumerate(listed) for key in spec if key != "only"]
    for i, spec in enumerate(listed):
        only = spec.get("only", [])
        if not isinstance(only, list) or any(name not in stages for name in only):
            errors.append(f"{where}.variants[{i}].only: expected a list of stage names of this file, got {only!r}")
    for label, key in keyed:
        stage, dot, name = str(key).partition(".")
        if not dot or not name:
            errors.append(f"{label}: expected stage.param (e.g. dpo.beta)")
        elif stage not in stages:
            errors.append(f"{label}: no stage {stage!r}; stages: {', '.join(stages)}")
        elif name in ("type", "stage_name", "run_dir"):
            errors.append(f"{label}: {name!r} cannot be swept")
    if not specs and not errors:
        errors.append(f"{where}: no variants")
    return specs, errors


def _refs(body: dict) -> list[str]:
    """The stages a raw stage body refers to with ``stage:NAME`` (as a value or a mapping key)."""
    found = []
    for value in body.values():
        for item in ([*value] if isinstance(value, dict) else [value]):
            if (target := referenced_stage(item)) is not None:
                found.append(target)
    return found


def _rewire(body: dict, names: dict[str, str]) -> dict:
    """``body`` with every ``stage:OLD`` value or key replaced by ``stage:NEW`` per ``names``."""
    def one(item):
        target = referenced_stage(item)
        return f"{STAGE_REF}{names.get(target, target)}" if target is not None else item

    return {key: {one(k): v for k, v in value.items()} if isinstance(value, dict) else one(value)
            for key, value in body.items()}


def _short_keys(keys: list[str]) -> dict[str, str]:
    """``stage.param`` -> ``param`` where that name is unambiguous among the swept keys, else the full key."""
    names = [key.partition(".")[2] for key in keys]
    return {key: name if names.count(name) == 1 else key for key, name in zip(keys, names)}


def expand(stages: dict, specs: list[dict]) -> tuple[dict, list[Variant]]:
    """Expand raw stages into one mapping holding every variant's stage copies, in run order.

    Args:
        stages: The raw ``stages`` mapping (name -> body with ``type``).
        specs: Variants as from `variant_specs`.

    Returns:
        ``(stages, variants)``: the expanded raw stages (shared stages keep their names) and one `Variant`
        per spec, each saying which stage plays which file stage.
    """
    order = list(stages)
    short = _short_keys(list(dict.fromkeys(key for spec in specs for key in spec if key != "only")))
    expanded: dict[str, dict] = {}
    variants = []
    for spec in specs:
        only, spec = spec.get("only"), {k: v for k, v in spec.items() if k != "only"}
        reach: dict[str, dict] = {}  # stage -> the keys of this variant that reach it, in key order
        names: dict[str, str | None] = {}  # None: a stage this variant reaches but leaves out (``only``)
        for name in order:
            body = stages[name] if isinstance(stages[name], dict) else {}
            own = {key: value for key, value in spec.items() if key.partition(".")[0] == name}
            keys = {k: v for target in _refs(body) for k, v in reach.get(target, {}).items()}
            reach[name] = {k: v for k, v in spec.items() if k in {**keys, **own}}  # spec's order
            label = ",".join(f"{short[k]}={_format(v)}" for k, v in reach[name].items())
            names[name] = f"{name}[{label}]" if label else name
            left_out = [target for target in _refs(body) if names.get(target, target) is None]
            if label and only is not None and name not in only or left_out and name not in (only or []):
                names[name] = None
                continue
            if left_out:
                raise ValueError(f"variant {spec}: stage {name!r} reads {left_out[0]!r}, which its `only` leaves out")
            copy = _rewire(body, names) if isinstance(stages[name], dict) else stages[name]
            if isinstance(copy, dict):
                copy = {**copy, **{key.partition(".")[2]: value for key, value in own.items()}}
            previous = expanded.get(names[name])
            if previous is not None and previous != copy:
                raise ValueError(f"stage {names[name]!r} would mean two different stages; name the variants apart")
            expanded[names[name]] = copy
        variants.append(Variant(",".join(f"{short[k]}={_format(v)}" for k, v in spec.items()), dict(spec), names,
                                {name: list(keys) for name, keys in reach.items()}))
    # analysis-like stages list evaluation stages by plain name: a swept name stands for all its copies
    for name, body in expanded.items():
        for key in NAME_LISTS.get(body.get("type") if isinstance(body, dict) else None, ()):
            if isinstance(body.get(key), list):
                copies = lambda s: [c for c in dict.fromkeys(v.stages.get(s, s) for v in variants) if c]  # noqa: E731
                listed = [c for s in body[key] for c in copies(s)]
                body[key] = listed if key != "compare" else [copies(s)[0] for s in body[key]]
    return _in_run_order(expanded, order, variants), variants


def _in_run_order(expanded: dict, order: list[str], variants: list[Variant]) -> dict:
    """Stages in run order: a stage no variant reaches where the file has it; a stretch of stages variants
    reach, variant by variant, so a sweep stopped half way has whole variants finished (each stage still
    comes after everything it reads: its upstream copies come earlier in the same variant, or earlier)."""
    ordered: dict[str, dict] = {}
    reached = lambda stage: any(v.stages[stage] != stage for v in variants)  # noqa: E731 (None: left out)
    i = 0
    while i < len(order):
        j = i + 1
        if reached(order[i]):
            while j < len(order) and reached(order[j]):
                j += 1
        for variant in variants:
            for stage in order[i:j]:
                if variant.stages[stage] is not None:
                    ordered.setdefault(variant.stages[stage], expanded[variant.stages[stage]])
        i = j
    return ordered


def expand_run_file(raw: dict, path: str) -> tuple[dict, list[Variant], list[str]]:
    """A raw run file with its ``sweep`` expanded into stage copies (unchanged without one).

    Returns:
        ``(raw, variants, problems)``: the raw mapping without ``sweep`` and with the expanded stages, the
        variants (empty without a sweep), and problems with the sweep itself, each naming file and key.
    """
    if "sweep" not in raw:
        return raw, [], []
    rest = {k: v for k, v in raw.items() if k != "sweep"}
    specs, errors = variant_specs(raw["sweep"], raw.get("stages") or {}, f"{path}: sweep")
    if errors:
        return rest, [], errors
    try:
        stages, variants = expand(raw["stages"], specs)
    except ValueError as error:
        return rest, [], [f"{path}: sweep: {error}"]
    return {**rest, "stages": stages}, variants, []
