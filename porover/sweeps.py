"""Sweeps in a run file: a grid or a list of variants over stage parameters, expanded into one run.

A run file may hold a ``sweep`` mapping beside ``stages``::

    sweep:
      grid:                                   # every combination
        dpo.beta: [0.05, 0.5]
        preference_data.containment_threshold: [0.25, 0.5]
      variants:                               # and/or these, one by one ({} = the file as written)
        - {dpo.beta: 0.1, dpo.loss_type: ipo}
        - {overgenerate.n_samples: 1, only: [overgenerate, sft, evaluate_sft]}   # stop after these
      seeds: {dpo: [0, 1, 2], only: [dpo, evaluate_dpo]}   # every variant again per training seed of dpo

Each variant becomes stage copies named after what they depend on: a stage whose own parameters or whose
upstream stages (through ``stage:NAME``) a variant changes is copied as ``NAME[key=value,...]``, listing
only the keys that reach it, and its ``stage:`` references are rewired to the copies of its upstream
stages. A stage no variant reaches keeps its name and is shared by every variant, and so are copies two
variants agree on (both ``dpo.beta`` variants read one ``preference_data[containment_threshold=0.25]``).
The runner's content-based staleness then runs each distinct stage once, and the usual resume applies.
A listed variant's ``only`` names the stages it reaches that it needs; it gets no copy of the others (the
paper's SFT-only comparisons need no preference optimization per variant).

``seeds`` repeats training stages over their ``seed`` (a grid when it names several stages), every variant once
per seed. The seed the file already gives a stage (its own ``seed``, else the run's) keeps the stage's name, so the
repeat of the file as written *is* the file's stage; other seeds make copies (``dpo[seed=1]``) like any swept value,
and so do the stages that read them (``evaluate_dpo[seed=1]``). An evaluation's seed draws its prompts, so an
evaluation is never repeated over seeds: its copies keep the run's seed and answer the same prompts, and every
replicate is compared prompt by prompt (`porover.arms`, `porover.comparisons`). ``seeds.only`` names the stages a
seed copy is made of (without it, every stage downstream of a repeated one is copied).

This module only rewrites the raw run file; `porover.run_file` validates every resulting stage, so every
variant is checked before anything runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from porover.config import STAGE_REF, referenced_stage

SWEEP_KEYS = ("grid", "variants", "seeds")
SEEDED = "seeded"  # a variant's internal record of its seed keys and of `seeds.only`
NO_SEED_TYPES = ("evaluate", "analysis")  # their seed draws prompts: never repeated over seeds
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
        seeds: Stage name -> the training seed this variant gives it, for the stages ``seeds`` repeats (the file's
            own seed included, which ``values`` leaves out).
    """

    label: str
    values: dict
    stages: dict[str, str | None] = field(default_factory=dict)
    reached: dict[str, list[str]] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=dict)


def _format(value: object) -> str:
    if isinstance(value, dict):  # prompt sets: name:n;name:n (folder-name friendly), none for {}
        return ";".join(f"{k}:{_format(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return "+".join(_format(v) for v in value) or "none"
    return str(value)


def variant_specs(sweep: object, stages: dict, where: str, run_seed: int = 0) -> tuple[list[dict], list[str]]:
    """The variants a ``sweep`` mapping describes, as ``"stage.param" -> value`` dicts, and its problems.

    Args:
        sweep: The raw ``sweep`` value of a run file.
        stages: The raw ``stages`` mapping (to check that each key names a stage).
        where: ``<file>: sweep``, prefixed to every problem.
        run_seed: The run file's ``seed`` (a stage's seed unless it gives its own).
    """
    if not isinstance(sweep, dict) or not sweep or set(sweep) - set(SWEEP_KEYS):
        return [], [f"{where}: expected a mapping with `grid` (stage.param -> list of values), `variants` "
                    "(a list of stage.param -> value mappings) and/or `seeds` (stage -> list of training seeds)"]
    specs, errors = _listed_specs(sweep, stages, where)
    if "seeds" in sweep and not errors:
        return _seeded_specs(specs or [{}], sweep["seeds"], stages, f"{where}.seeds", run_seed)
    if not specs and not errors:
        errors.append(f"{where}: no variants")
    return specs, errors


def _listed_specs(sweep: dict, stages: dict, where: str) -> tuple[list[dict], list[str]]:
    """The variants of ``grid`` and ``variants``, and their problems."""
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
    return specs, errors


def _seeded_specs(specs: list[dict], seeds: object, stages: dict, where: str, run_seed: int) -> tuple[list[dict], list[str]]:
    """Every variant once per combination of the training seeds ``seeds`` gives (``{stage: [seed, ...], only: [...]}``)."""
    if not isinstance(seeds, dict) or not set(seeds) - {"only"}:
        return [], [f"{where}: expected a mapping of training stage -> list of seeds (and optionally only: [stages]), "
                     f"got {seeds!r}"]
    errors, only = [], seeds.get("only")
    if only is not None and (not isinstance(only, list) or any(name not in stages for name in only)):
        errors.append(f"{where}.only: expected a list of stage names of this file, got {only!r}")
    repeated = {name: values for name, values in seeds.items() if name != "only"}
    for name, values in repeated.items():
        kind = stages.get(name, {}).get("type") if isinstance(stages.get(name), dict) else None
        if name not in stages:
            errors.append(f"{where}.{name}: no stage {name!r}; stages: {', '.join(stages)}")
        elif kind in NO_SEED_TYPES:
            errors.append(f"{where}.{name}: an {kind} stage's seed draws its prompts, so its repeats would answer other "
                          "prompts; repeat the training stage it reads instead (its evaluation is copied with the run's "
                          "seed and the same prompts)")
        if not isinstance(values, list) or not values or len(set(map(str, values))) != len(values) or any(
                not isinstance(v, int) or isinstance(v, bool) for v in values):
            errors.append(f"{where}.{name}: expected a non-empty list of distinct integer seeds, got {values!r}")
    clash = [f"{where}.{name}: a variant also sets {name}.seed" for name in repeated
             if any(f"{name}.seed" in spec for spec in specs)]
    if errors or clash:
        return [], errors + clash
    written = {name: stages[name].get("seed", run_seed) for name in repeated}
    expanded = []
    for spec in specs:
        for combo in itertools.product(*repeated.values()):
            given = dict(zip(repeated, combo))
            keys = {f"{name}.seed": seed for name, seed in given.items() if seed != written[name]}
            expanded.append({**spec, **keys, SEEDED: {"keys": list(keys), "only": only, "seeds": given}})
    return expanded, []


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
    short = _short_keys(list(dict.fromkeys(key for spec in specs for key in spec if key not in ("only", SEEDED))))
    expanded: dict[str, dict] = {}
    variants = []
    for spec in specs:
        only, seeded = spec.get("only"), spec.get(SEEDED) or {"keys": [], "only": None, "seeds": {}}
        spec = {k: v for k, v in spec.items() if k not in ("only", SEEDED)}
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
            seed_copy = seeded["only"] is not None and name not in seeded["only"] and set(reach[name]) & set(seeded["keys"])
            if label and only is not None and name not in only or left_out and name not in (only or []) or seed_copy:
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
                                {name: list(keys) for name, keys in reach.items()}, dict(seeded["seeds"])))
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
    run_seed = raw.get("seed", 0) if isinstance(raw.get("seed", 0), int) else 0
    specs, errors = variant_specs(raw["sweep"], raw.get("stages") or {}, f"{path}: sweep", run_seed)
    if errors:
        return rest, [], errors
    try:
        stages, variants = expand(raw["stages"], specs)
    except ValueError as error:
        return rest, [], [f"{path}: sweep: {error}"]
    return {**rest, "stages": stages}, variants, []
