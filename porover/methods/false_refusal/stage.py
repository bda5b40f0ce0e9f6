"""The false-refusal stage (Wang et al., ICLR 2025): surgical ablation of the false-refusal vector, in the weights.

1. Mean residual streams of pseudo-harmful, harmful and harmless *training* prompts at the post-instruction
   positions of every layer; per (position, layer) the false-refusal vector (pseudo-harmful − harmless) is
   partially orthogonalized against the true refusal vector (harmful − harmless) with the coefficient λ
   (`vectors.partially_orthogonalized`).
2. The authors' ``ablation`` selection on held-out prompts: with the candidate ablated at every layer, the
   refusal score left on pseudo-harmful prompts (lowest wins) and the KL divergence on harmless ones (at most
   ``kl_threshold``), the last ``prune_layer_percentage`` of the layers excluded.
3. The curve over λ on the *validation* prompts (``sweep.csv``), the chosen direction ablated from the weights;
   the best validation F1 is saved as ``model/``, an ordinary model folder.

Every step resumes: means are cached by content, candidate scores and curve responses are append-only stores.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from porover.config import SpendingParams, StageParams, param
from porover.data import prompt_set_errors
from porover.digests import digest_of
from porover.generation import Sampling
from porover.judges import DEFAULT_JUDGE, judge_errors
from porover.methods.false_refusal.vectors import cosine, partially_orthogonalized
from porover.methods.refusal_direction.curve import best_point, curve_point, point_row, write_curve
from porover.methods.refusal_direction.directions import candidate_directions, instruction_tail, refusal_token_ids
from porover.methods.refusal_direction.selection import Criteria, choose, score_candidates, scored_layers
from porover.methods.refusal_direction.steering import DTYPES, save_model
from porover.methods.refusal_direction.workflow import LazyModel, array_digest, cached_means, prepared_sets
from porover.models import model_errors
from porover.spending import metered
from porover.store import JsonlStore, write_jsonl

NOTEBOOK = "13_false_refusal.ipynb"
OUTPUTS = ("model", "vectors.json", "scores.jsonl", "sweep.csv")  # the first is what ``stage:NAME`` stands for
TRAINING_SETS = ("pseudo_harmful", "harmful", "harmless")  # prompts the vectors are read from (`porover.splits`)
VALIDATION_SETS = ("pseudo_harmful_val", "harmless_val", "validation")  # prompts they are chosen and traced on
HELD_OUT_SETS = "exclude"  # prompts that enter none of the sets above


@dataclass
class FalseRefusalParams(StageParams, SpendingParams):
    """Parameters of ``notebooks/13_false_refusal.ipynb``: surgical false-refusal ablation (Wang et al. 2025)."""

    model: str = param("smollm2-135m-instruct", "model to edit: embedded name, hub id or folder", input=True)
    pseudo_harmful: dict[str, int | None] = param({"or_bench_hard:train": 32}, "pseudo-harmful training prompts the "
                                                  "model over-refuses (the authors: OR-Bench-Hard train, 128)",
                                                  input=True)
    harmful: dict[str, int | None] = param({"advbench": 32}, "harmful training prompts: the true refusal vector",
                                           input=True)
    harmless: dict[str, int | None] = param({"alpaca": 32}, "harmless training prompts", input=True)
    pseudo_harmful_val: dict[str, int | None] = param({"or_bench_hard:val": 16}, "held-out pseudo-harmful prompts the "
                                                      "direction is chosen on (the authors: 32)", input=True)
    harmless_val: dict[str, int | None] = param({"alpaca": 16}, "held-out harmless prompts (KL), drawn from what the "
                                                "training sets leave", input=True)
    filter_train: bool = param(True, "keep the harmful training prompts the model refuses and the harmless ones it "
                               "answers (the authors: true)")
    filter_pseudo_harmful: bool = param(True, "keep the pseudo-harmful training prompts the model refuses (the "
                                        "authors' filter_or: true)")
    filter_val: bool = param(False, "filter the held-out sets the same way (the authors: false)")
    refusal_tokens: list[str] = param(["I", "As"], "first response tokens whose probability is the refusal score")
    positions: int | None = param(None, "candidates from the last this-many post-instruction positions (null = all)",
                                  ge=1)
    layers: list[int] | None = param(None, "layers whose candidates are scored (null = every layer the pruning keeps)")
    kl_threshold: float | None = param(0.2, "drop candidates whose ablation moves harmless next-token distributions "
                                       "by more KL than this (the authors' ablate_kl_threshold)", ge=0)
    prune_layer_percentage: float | None = param(0.2, "drop candidates from the last this share of the layers",
                                                 ge=0, lt=1)
    selection_coefficient: float = param(1.0, "λ of the candidates the direction is chosen among (the authors' "
                                         "ortho_lambda: 1.0)")
    coefficients: list[float] = param([0.6, 0.8, 1.0], "partial-orthogonalization coefficients λ traced on "
                                      "validation (1 = orthogonal to the refusal vector); the best F1 is saved (ties: "
                                      "the λ nearest selection_coefficient)")
    reselect: bool = param(False, "choose the direction again at every λ, as the authors' demo notebook does (one "
                           "selection per λ), instead of keeping the position and layer chosen at "
                           "selection_coefficient")
    exclude: dict[str, int | None] = param({}, "prompt sets held out: their prompts (normalised text) enter none "
                                           "of this stage's sets (e.g. the test benchmarks, when a set is a superset "
                                           "of them)", input=True)
    validation: dict[str, int | None] = param({"or_bench_hard:val": 20, "harmbench:val": 20}, "validation prompts of "
                                              "the λ curve: safe ones give usefulness, unsafe ones safety", input=True)
    judge: str = param(DEFAULT_JUDGE, "refusal judge of the validation curve")
    judge_settings: dict = param({}, "settings of that judge")
    max_new_tokens: int = param(48, "generation budget per validation response", ge=1)
    keep_unembedding: bool = param(True, "a model with tied input and output embeddings keeps its output embedding "
                                   "as it was (saved beside the ablated input embedding), so the weights compute what "
                                   "the ablation hooks compute; false: orthogonalize the shared matrix (the authors' "
                                   "code for Gemma)")
    save_dtype: str = param("float16", "dtype of the saved weights (float16: half the disk of float32)", choices=DTYPES)
    system_prompt: str = param("", "system message ('' = the template's own, as evaluation renders prompts)")
    batch_size: int = param(16, "prompts per forward or generate call", ge=1)
    stage_name: str = param("false_refusal", "name of this stage in the run")

    def problems(self, where: str) -> list[str]:
        errors = model_errors(self.model, f"{where}.model")
        for key in (*TRAINING_SETS, *VALIDATION_SETS, HELD_OUT_SETS):
            errors += prompt_set_errors(getattr(self, key), f"{where}.{key}")
        errors += judge_errors(self.judge, self.judge_settings, f"{where}.judge")
        if not self.coefficients:
            errors.append(f"{where}.coefficients: give at least one λ (1 = orthogonal to the refusal vector)")
        if not self.refusal_tokens:
            errors.append(f"{where}.refusal_tokens: give at least one token a refusal starts with")
        errors += [f"{where}.layers: {layer} is negative" for layer in self.layers or [] if layer < 0]
        return errors


@metered  # the curve's judge may be a priced endpoint (porover.spending)
def run_false_refusal(params: FalseRefusalParams, on_candidate=None) -> dict:
    """Read the vectors, choose the direction, trace λ, save the ablated model; return the summary.

    Args:
        params: The stage's parameters.
        on_candidate: Called with each newly scored candidate (progress; tests interrupt here).
    """
    import torch

    from porover.methods.refusal_direction.interventions import orthogonalized

    out, lazy, timings = params.stage_dir, LazyModel(params.model, params.device), {}
    clock = time.perf_counter()
    keep = {"pseudo_harmful": "refused", "harmful": "refused", "harmless": "answered",
            "pseudo_harmful_val": "refused", "harmless_val": "answered"}
    filtered = ({"harmful", "harmless"} if params.filter_train else set()) | (
        {"pseudo_harmful"} if params.filter_pseudo_harmful else set()) | (
        {"pseudo_harmful_val", "harmless_val"} if params.filter_val else set())
    texts, baselines, validation = prepared_sets(params, lazy, {k: getattr(params, k) for k in TRAINING_SETS},
                                     {k: getattr(params, k) for k in ("pseudo_harmful_val", "harmless_val")}, keep,
                                     filtered)
    tail = instruction_tail(lazy.tokenizer(), params.system_prompt or None)
    positions = min(params.positions or len(tail), len(tail))
    means = {key: cached_means(out / "means", lazy, texts[key], positions, params.batch_size) for key in TRAINING_SETS}
    false_refusal = candidate_directions(means["pseudo_harmful"], means["harmless"])
    refusal = candidate_directions(means["harmful"], means["harmless"])
    timings["means_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    n_layers, ids = refusal.shape[1], refusal_token_ids(lazy.tokenizer(), params.refusal_tokens)
    layers = [layer for layer in scored_layers(n_layers, params.layers, params.prune_layer_percentage)
              if layer < n_layers]
    criteria = Criteria(params.kl_threshold, None, params.prune_layer_percentage)
    store = JsonlStore(out / "scores.jsonl", key=lambda row: (row["key"], row["position"], row["layer"]))

    def select(coefficient: float) -> tuple[list[dict], dict]:
        candidates = partially_orthogonalized(false_refusal, refusal, coefficient)
        key = digest_of([lazy.digest, array_digest(candidates), texts["pseudo_harmful_val"], texts["harmless_val"],
                         ids])
        rows = score_candidates(lambda: lazy.get()[0], lazy.tokenizer(), candidates, texts["pseudo_harmful_val"],
                                texts["harmless_val"], ids, layers, store, key, induce=False,
                                batch_size=params.batch_size, on_candidate=on_candidate)
        return rows, choose(rows, criteria, n_layers)

    rows, chosen = select(params.selection_coefficient)
    timings["selection_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    sampling = Sampling(max_new_tokens=params.max_new_tokens, system_prompt=params.system_prompt or None)
    points, directions, judged = [], {}, {}
    for coefficient in params.coefficients:
        at = select(coefficient)[1] if params.reselect else chosen
        index = (at["position"] + positions, at["layer"])
        direction = torch.from_numpy(
            partially_orthogonalized(false_refusal[index], refusal[index], coefficient)).float()
        directions[coefficient] = (at, direction)
        description = {"model": lazy.digest, "kind": "ablation", "direction": array_digest(direction.numpy()),
                       "keep_unembedding": params.keep_unembedding}
        judged[coefficient], overall = curve_point(
            lazy.get, validation,
            lambda model, d=direction: orthogonalized(model, d, keep_unembedding=params.keep_unembedding),
            description, out / "curve",
            sampling, params.judge, params.judge_settings, params.batch_size,
            desc=f"{params.stage_name}: λ {coefficient:g}")
        points.append({**point_row(coefficient, overall, "partial_orthogonalization"), "layer": at["layer"],
                       "position": at["position"]})
    best = best_point(points, prefer=params.selection_coefficient)
    write_curve(out, points)
    timings["curve_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    at, direction = directions[best["threshold"]]
    index = (at["position"] + positions, at["layer"])
    summary = {
        "model": params.model, "chosen": chosen, "chosen_coefficient": best["threshold"], "saved_direction_at": at,
        "cosine_false_refusal_refusal": float(cosine(false_refusal[index], refusal[index])),
        "cosine_saved_direction_refusal": float(cosine(direction.numpy().astype(float), refusal[index])),
        "cosine_by_layer": cosine(false_refusal, refusal).round(4).tolist(), "layers_scored": layers,
        "post_instruction_tokens": [lazy.tokenizer().decode([t]) for t in tail[-positions:]],
        "baselines": {"bypass": baselines["pseudo_harmful_val"]}, "mean_refusal_scores": baselines,
        "prompts": {k: len(v) for k, v in texts.items()}, "n_validation": len(validation), "judge": params.judge,
        "coefficients": points, "candidates": rows,
        "folder_key": digest_of([array_digest(direction.numpy()), lazy.digest, params.save_dtype,
                                 params.keep_unembedding]),
    }
    summary_path = out / "vectors.json"
    previous = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if previous.get("folder_key") != summary["folder_key"] or not (out / "model" / "config.json").is_file():
        model, tokenizer = lazy.get()
        with orthogonalized(model, direction, keep_unembedding=params.keep_unembedding):
            save_model(model, tokenizer, out / "model", params.save_dtype)
    write_jsonl(out / "validation.jsonl", [{**row, "coefficient": c} for c, part in judged.items() for row in part])
    timings["save_s"] = time.perf_counter() - clock
    summary["timings_s"] = {name: round(value, 1) for name, value in timings.items()}
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary
