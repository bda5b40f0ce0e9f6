"""The refusal-direction stage (Arditi et al. 2024): read the direction, choose it, ablate it, trace a curve.

1. Mean residual streams of harmful and harmless *training* prompts at the post-instruction positions of every
   layer; their differences are the candidates (after the authors' refusal-score filter, ``filter_train``).
2. Each candidate is scored on held-out prompts (ablation: refusal left on harmful prompts and KL on harmless ones;
   addition: refusal induced on harmless ones) and the authors' criteria choose one (`selection`).
3. The ablation is baked into the weights (``model/ablated``, an ordinary model folder) and activation addition
   is traced over ``coefficients`` on the *validation* prompts: one safety/usefulness point per coefficient
   (``sweep.csv``), the best validation F1 chosen. ``model/`` opens as either (`steering.RefusalDirectionModel`).

Every step resumes: means are cached by content, candidate scores and curve responses are append-only stores.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from porover.config import SpendingParams, StageParams, param
from porover.data import prompt_set_errors
from porover.digests import digest_of
from porover.generation import Sampling
from porover.judges import DEFAULT_JUDGE, judge_errors
from porover.methods.refusal_direction.curve import best_point, curve_point, point_row, write_curve
from porover.methods.refusal_direction.directions import candidate_directions, instruction_tail, refusal_token_ids
from porover.methods.refusal_direction.selection import Criteria, choose, score_candidates, scored_layers
from porover.methods.refusal_direction.steering import (DTYPES, DirectionSpec, RefusalDirectionModel,
                                                        save_direction_folder)
from porover.methods.refusal_direction.workflow import LazyModel, array_digest, cached_means, prepared_sets
from porover.models import model_errors
from porover.spending import metered
from porover.store import JsonlStore, write_jsonl

NOTEBOOK = "12_refusal_direction.ipynb"
OUTPUTS = ("model", "direction.json", "scores.jsonl", "sweep.csv")  # the first is what ``stage:NAME`` stands for
MODEL_HANDLE = RefusalDirectionModel  # model/ opens as the ablated weights or as activation addition
TRAINING_SETS = ("harmful", "harmless")  # prompts the direction is read from (`porover.splits`)
VALIDATION_SETS = ("harmful_val", "harmless_val", "validation")  # prompts it is chosen and its coefficient traced on
HELD_OUT_SETS = "exclude"  # prompts that enter none of the sets above


@dataclass
class RefusalDirectionParams(StageParams, SpendingParams):
    """Parameters of ``notebooks/12_refusal_direction.ipynb``: the refusal direction (Arditi et al. 2024)."""

    model: str = param("smollm2-135m-instruct", "model whose refusal direction is read: embedded name, hub id or "
                       "folder", input=True)
    harmful: dict[str, int | None] = param({"advbench": 32}, "harmful training prompts (name[:split] -> n; the "
                                           "authors: 128)", input=True)
    harmless: dict[str, int | None] = param({"alpaca": 32}, "harmless training prompts (the authors: 128)", input=True)
    harmful_val: dict[str, int | None] = param({"harmbench:val": 16}, "held-out harmful prompts the direction is "
                                               "chosen on (the authors: 32)", input=True)
    harmless_val: dict[str, int | None] = param({"alpaca": 16}, "held-out harmless prompts (KL, induced refusal), "
                                                "drawn from what the training sets leave", input=True)
    filter_train: bool = param(True, "keep the harmful training prompts the model refuses (refusal score > 0) and "
                               "the harmless ones it answers (< 0), as the authors")
    filter_val: bool = param(True, "the same filter on the held-out sets (the authors: true)")
    refusal_tokens: list[str] = param(["I", "As"], "first response tokens whose probability is the refusal score (the "
                                      "authors, per model: 'I', 'As' for Qwen)")
    positions: int | None = param(None, "candidates from the last this-many post-instruction positions (null = all "
                                  "of them: the authors)", ge=1)
    layers: list[int] | None = param(None, "layers whose candidates are scored (null = every layer the pruning "
                                     "keeps: the authors)")
    kl_threshold: float | None = param(0.1, "drop candidates whose ablation moves harmless next-token distributions "
                                       "by more KL than this (null = no filter)", ge=0)
    induce_threshold: float | None = param(0.0, "drop candidates whose addition leaves harmless prompts' refusal "
                                           "score below this (null = no filter)")
    prune_layer_percentage: float | None = param(0.2, "drop candidates from the last this share of the layers",
                                                 ge=0, lt=1)
    exclude: dict[str, int | None] = param({}, "prompt sets held out: their prompts (normalised text) enter none "
                                           "of this stage's sets (e.g. the test benchmarks, when a set is a superset "
                                           "of them)", input=True)
    validation: dict[str, int | None] = param({"or_bench_hard:val": 20, "harmbench:val": 20}, "validation prompts of "
                                              "the coefficient curve: safe ones give usefulness, unsafe ones safety",
                                              input=True)
    coefficients: list[float] = param([-1.0, -0.5, 0.0, 0.5], "activation-addition coefficients traced on "
                                      "validation (multiples of the difference-in-means vector; 0 = the model as is); "
                                      "the best F1 is chosen (ties: the one nearest 0)")
    judge: str = param(DEFAULT_JUDGE, "refusal judge of the validation curve")
    judge_settings: dict = param({}, "settings of that judge")
    max_new_tokens: int = param(48, "generation budget per validation response", ge=1)
    keep_unembedding: bool = param(True, "a model with tied input and output embeddings keeps its output embedding "
                                   "as it was (saved beside the ablated input embedding), so the weights compute what "
                                   "the ablation hooks compute; false: orthogonalize the shared matrix (the authors' "
                                   "code for Gemma)")
    save_dtype: str = param("float16", "dtype of the saved ablated weights (float16: half the disk of float32)",
                            choices=DTYPES)
    system_prompt: str = param("", "system message ('' = the template's own, as evaluation renders prompts)")
    batch_size: int = param(16, "prompts per forward or generate call", ge=1)
    stage_name: str = param("refusal_direction", "name of this stage in the run")

    def problems(self, where: str) -> list[str]:
        errors = model_errors(self.model, f"{where}.model")
        for key in (*TRAINING_SETS, *VALIDATION_SETS, HELD_OUT_SETS):
            errors += prompt_set_errors(getattr(self, key), f"{where}.{key}")
        errors += judge_errors(self.judge, self.judge_settings, f"{where}.judge")
        if not self.coefficients:
            errors.append(f"{where}.coefficients: give at least one coefficient (0 = the model as is)")
        if not self.refusal_tokens:
            errors.append(f"{where}.refusal_tokens: give at least one token a refusal starts with")
        errors += [f"{where}.layers: {layer} is negative" for layer in self.layers or [] if layer < 0]
        return errors

    def criteria(self) -> Criteria:
        return Criteria(self.kl_threshold, self.induce_threshold, self.prune_layer_percentage)


@metered  # the curve's judge may be a priced endpoint (porover.spending)
def run_refusal_direction(params: RefusalDirectionParams, on_candidate=None) -> dict:
    """Read, choose and ablate the direction, trace the addition curve; write every output, return the summary.

    Args:
        params: The stage's parameters.
        on_candidate: Called with each newly scored candidate (progress; tests interrupt here).
    """
    import torch

    from porover.methods.refusal_direction.interventions import addition_hooks, hooks, orthogonalized

    out, lazy, timings = params.stage_dir, LazyModel(params.model, params.device), {}
    clock = time.perf_counter()
    keep = {"harmful": "refused", "harmless": "answered", "harmful_val": "refused", "harmless_val": "answered"}
    filtered = ({"harmful", "harmless"} if params.filter_train else set()) | (
        {"harmful_val", "harmless_val"} if params.filter_val else set())
    texts, baselines, validation = prepared_sets(params, lazy, {k: getattr(params, k) for k in TRAINING_SETS},
                                     {k: getattr(params, k) for k in ("harmful_val", "harmless_val")}, keep, filtered)
    tail = instruction_tail(lazy.tokenizer(), params.system_prompt or None)
    positions = min(params.positions or len(tail), len(tail))
    means = {key: cached_means(out / "means", lazy, texts[key], positions, params.batch_size) for key in TRAINING_SETS}
    candidates = candidate_directions(means["harmful"], means["harmless"])
    timings["means_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    n_layers, ids = candidates.shape[1], refusal_token_ids(lazy.tokenizer(), params.refusal_tokens)
    layers = [layer for layer in scored_layers(n_layers, params.layers, params.prune_layer_percentage)
              if layer < n_layers]
    key = digest_of([lazy.digest, array_digest(candidates), texts["harmful_val"], texts["harmless_val"], ids])
    store = JsonlStore(out / "scores.jsonl", key=lambda row: (row["key"], row["position"], row["layer"]))
    rows = score_candidates(lambda: lazy.get()[0], lazy.tokenizer(), candidates, texts["harmful_val"],
                            texts["harmless_val"], ids, layers, store, key, induce=True, batch_size=params.batch_size,
                            on_candidate=on_candidate)
    chosen = choose(rows, params.criteria(), n_layers)
    timings["selection_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    vector = torch.from_numpy(candidates[chosen["position"] + positions, chosen["layer"]]).float()
    sampling = Sampling(max_new_tokens=params.max_new_tokens, system_prompt=params.system_prompt or None)
    base = {"model": lazy.digest, "vector": array_digest(vector.numpy()), "layer": chosen["layer"]}
    points, judged = [], {}
    for coefficient in params.coefficients:
        description = {**base, "kind": "addition", "coefficient": coefficient}
        judged[coefficient], overall = curve_point(
            lazy.get, validation,
            lambda model, c=coefficient: hooks(*addition_hooks(model, vector, chosen["layer"], c)), description,
            out / "curve", sampling, params.judge, params.judge_settings, params.batch_size,
            desc=f"{params.stage_name}: addition {coefficient:g}")
        points.append(point_row(coefficient, overall, "addition"))
    best = best_point(points)
    ablation_rows, ablation = curve_point(
        lazy.get, validation, lambda model: orthogonalized(model, vector, keep_unembedding=params.keep_unembedding),
        {**base, "kind": "ablation", "keep_unembedding": params.keep_unembedding}, out / "curve",
        sampling, params.judge, params.judge_settings, params.batch_size, desc=f"{params.stage_name}: ablation")
    write_curve(out, points)
    timings["curve_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    spec = DirectionSpec(str(params.model), lazy.digest, chosen["layer"], chosen["position"], best["threshold"])
    summary = {
        "model": params.model, "chosen": chosen, "vector_norm": float(vector.norm()), "layers_scored": layers,
        "post_instruction_tokens": [lazy.tokenizer().decode([t]) for t in tail[-positions:]],
        "baselines": {"bypass": baselines["harmful_val"], "induce": baselines["harmless_val"]},
        "mean_refusal_scores": baselines, "prompts": {k: len(v) for k, v in texts.items()},
        "n_validation": len(validation), "judge": params.judge, "coefficients": points,
        "chosen_coefficient": best["threshold"], "ablation": point_row(1.0, ablation, "ablation"), "spec": asdict(spec),
        "candidates": rows, "folder_key": digest_of([asdict(spec), base, params.save_dtype, params.keep_unembedding]),
    }
    summary_path = out / "direction.json"
    previous = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if previous.get("folder_key") != summary["folder_key"] or not (out / "model" / "ablated" / "config.json").is_file():
        model, tokenizer = lazy.get()
        with orthogonalized(model, vector, keep_unembedding=params.keep_unembedding):
            save_direction_folder(out / "model", vector, spec, model, tokenizer, params.save_dtype)
    write_jsonl(out / "validation.jsonl", [{**row, "coefficient": c} for c, part in judged.items() for row in part]
                + [{**row, "coefficient": "ablation"} for row in ablation_rows])
    timings["save_s"] = time.perf_counter() - clock
    summary["timings_s"] = {name: round(value, 1) for name, value in timings.items()}
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary
