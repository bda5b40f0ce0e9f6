"""The DRO stage: estimate DRO's boundaries on the model's states, train a soft safety prompt, save it.

``model/`` (what ``stage:NAME`` stands for) holds the soft prompt; an evaluation stage with ``model: stage:dro``
generates with the base model and that prompt as its system turn (`porover.methods.dro.soft_prompt`). Every expensive step
resumes: sampled responses are append-only stores, states are cached by content, training checkpoints per epoch.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import numpy as np

from porover.config import SpendingParams, StageParams, param
from porover.data import load_rows, prompt_set_errors
from porover.digests import digest_of, path_digest
from porover.generation import Sampling, TransformersBackend, completion_key, sample_completions
from porover.judges import DEFAULT_JUDGE, judge_errors, judge_refusals
from porover.methods.dro.estimation import SYSTEM_PROMPTS, Estimation, fit_logistic_cv, pca_basis, train_soft_prompt
from porover.methods.dro.soft_prompt import SoftPromptModel
from porover.models import model_digest, model_errors
from porover.spending import metered
from porover.store import JsonlStore, write_jsonl
from porover.vocabulary import is_refusal

NOTEBOOK = "11_dro.ipynb"
OUTPUTS = ("model", "dro.json", "points.jsonl")  # the first is what ``stage:NAME`` stands for
SOFT = "dro"  # condition name of the learned soft prompt
MODEL_HANDLE = SoftPromptModel  # how the stage's model/ is opened (the soft prompt as the system turn)


@dataclass
class DROParams(StageParams, SpendingParams):
    """Parameters of ``notebooks/11_dro.ipynb``: DRO's estimation and soft safety prompt (Zheng et al. 2024)."""

    model: str = param("smollm2-135m-instruct", "model to safeguard (frozen): embedded name, hub id or folder",
                       input=True)
    harmful: str = param("dro_harmful", "harmful training queries (dataset or file); line i pairs with harmless i")
    harmless: str = param("dro_harmless", "harmless training queries (dataset or file)")
    n_pairs: int | None = param(10, "first this many queries of each set (null = all; the authors: 100)", ge=2)
    conditions: list[str] = param(list(SYSTEM_PROMPTS), "human prompt conditions the estimation pools: none, "
                                  "default, short, guardrail")
    init_prompt: str = param("short", "human safety prompt the soft prompt starts from (the authors: default)",
                             choices=[name for name in SYSTEM_PROMPTS if name != "none"])
    n_samples: int = param(2, "sampled responses per query and condition for compliance scores (the authors: 25)",
                           ge=1)
    keep_longest: int | None = param(None, "score only the this-many longest samples by words (null = all; "
                                     "the authors: 20 of 25)", ge=1)
    max_new_tokens: int = param(48, "generation budget per sample (the authors: 300 harmful, 200 harmless)", ge=1)
    temperature: float = param(1.0, "sampling temperature of the compliance samples", gt=0)
    top_p: float = param(0.9, "nucleus mass of the compliance samples", gt=0, le=1)
    judges: list[str] = param([DEFAULT_JUDGE], "refusal judges; the first gives the compliance scores")
    judge_settings: dict[str, dict] = param({}, "per-judge settings, keyed by judge name")
    pca_dim: int = param(4, "PCA dimensions the logistic models read", ge=2)
    n_splits: int = param(10, "folds of the logistic models, whose weights are averaged", ge=1)
    logistic_lr: float = param(1e-4, "full-batch AdamW rate of the logistic models", gt=0)
    logistic_max_epochs: int = param(10000, "epoch limit of the logistic models", ge=1)
    refusal_loss_weight: float = param(1.0, "weight of the compliance (refusal) term", ge=0)
    harmfulness_loss_weight: float = param(0.01, "weight of the harmfulness term", ge=0)
    norm_loss_weight: float = param(0.001, "weight of the term that keeps the non-PCA coordinates still", ge=0)
    learning_rate: float = param(1e-3, "AdamW rate of the soft prompt", gt=0)
    train_batch_size: int = param(50, "queries per soft-prompt step", ge=1)
    num_epochs: int = param(40, "epochs of soft-prompt training", ge=1)
    max_grad_norm: float = param(1.0, "gradient-norm clip on the soft prompt", gt=0)
    method_seed: int = param(42, "the authors' seed: PCA completion, folds, shuffling")
    batch_size: int = param(32, "prompts per generate or forward call", ge=1)
    stage_name: str = param("dro", "name of this stage in the run")

    def problems(self, where: str) -> list[str]:
        errors = model_errors(self.model, f"{where}.model")
        errors += prompt_set_errors({self.harmful: None}, f"{where}.harmful")
        errors += prompt_set_errors({self.harmless: None}, f"{where}.harmless")
        errors += [f"{where}.conditions: unknown condition {name!r}; known: {', '.join(SYSTEM_PROMPTS)}"
                   for name in self.conditions if name not in SYSTEM_PROMPTS]
        if len(set(self.conditions)) < 2:
            errors.append(f"{where}.conditions: give at least two distinct prompt conditions, e.g. [none, default]")
        if not self.judges:
            errors.append(f"{where}.judges: give at least one judge")
        errors += [error for name in self.judges for error in judge_errors(
            name, self.judge_settings.get(name, {}), f"{where}.judge_settings.{name}" if name in self.judge_settings
            else f"{where}.judges")]
        errors += [f"{where}.judge_settings.{name}: not one of this stage's judges {self.judges}"
                   for name in self.judge_settings if name not in self.judges]
        if self.keep_longest is not None and self.keep_longest > self.n_samples:
            errors.append(f"{where}.keep_longest: {self.keep_longest} is more than n_samples ({self.n_samples})")
        return errors


class SystemTurnBackend(TransformersBackend):
    """Renders the system turn even when it is empty: "none" must not become SmolLM2's default system prompt."""

    def render(self, prompt: str, sampling: Sampling) -> str:
        from porover.methods.dro.soft_prompt import render_with_system_turn

        return render_with_system_turn(self.tokenizer, [prompt], sampling.system_prompt or "")[0]


def query_rows(params: DROParams) -> list[dict]:
    """The training queries: the first ``n_pairs`` of each set, harmful first, with ``harmless`` 0/1."""
    harmful = load_rows(params.harmful)[:params.n_pairs]
    harmless = load_rows(params.harmless)[:params.n_pairs]
    return [{**row, "harmless": 0} for row in harmful] + [{**row, "harmless": 1} for row in harmless]


class _Model:
    """The frozen model, loaded on first use only (a finished stage re-executed loads nothing)."""

    def __init__(self, params: DROParams) -> None:
        self.params, self.pair = params, None

    def get(self):
        if self.pair is None:
            from porover.models import load_model

            model, tokenizer = load_model(self.params.model, device=self.params.device)
            for weight in model.parameters():
                weight.requires_grad_(False)
            self.pair = model, tokenizer
        return self.pair


def human_states(params: DROParams, lazy: _Model, rows: list[dict], condition: str) -> np.ndarray:
    """Last-token final-layer states under a human condition (the prompt as text), cached by content."""
    from porover.hidden_states import last_token_states
    from porover.methods.dro.soft_prompt import render_with_system_turn

    key = digest_of([model_digest(params.model), SYSTEM_PROMPTS[condition], [row["prompt"] for row in rows]])
    path = params.stage_dir / "states" / f"{condition}-{key}.npy"
    if not path.is_file():
        model, tokenizer = lazy.get()
        texts = render_with_system_turn(tokenizer, [row["prompt"] for row in rows], SYSTEM_PROMPTS[condition])
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, last_token_states(model, tokenizer, texts, [-1], params.batch_size)[-1])
    return np.load(path)


def compliance(params: DROParams, backend, teacher: str, rows: list[dict], system: str | None) -> list[dict]:
    """Per query: the share of its (longest) samples the first judge reads as compliance, and each judge's share.

    An unparseable verdict (an empty response) counts as no compliance.
    """
    sampling = Sampling(max_new_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                        seed=params.seed, system_prompt=system)
    store = JsonlStore(params.stage_dir / "samples.jsonl", key=completion_key)
    samples = sample_completions(backend, rows, store, sampling, params.n_samples, teacher,
                                 desc=f"{params.stage_name}: sample")
    by_query: dict[tuple, list[dict]] = {}
    for sample in samples:
        by_query.setdefault((sample["source"], sample["id"]), []).append(sample)
    kept = [sorted(by_query[(r["source"], r["id"])], key=lambda s: -len(s["response"].split()))[:params.keep_longest]
            for r in rows]
    flat = [s for group in kept for s in group]
    verdicts = {name: judge_refusals([s["prompt"] for s in flat], [s["response"] for s in flat], judge=name,
                                     **params.judge_settings.get(name, {})) for name in params.judges}
    out, at = [], 0
    for row, group in zip(rows, kept):
        rates = {name: float(np.mean([is_refusal(v.label) is False for v in verdicts[name][at:at + len(group)]]))
                 for name in params.judges}
        out.append({"score": rates[params.judges[0]], "by_judge": rates,
                    "responses": [s["response"] for s in group]})
        at += len(group)
    return out


def _point_rows(rows: list[dict], condition: str, z: np.ndarray, scores: list[dict], k: int) -> list[dict]:
    return [{"condition": condition, "source": row["source"], "id": row["id"], "prompt": row["prompt"],
             "harmless": row["harmless"], "z": [round(float(v), 5) for v in coords[:k]], "compliance": s["score"],
             "compliance_by_judge": s["by_judge"], "example_response": s["responses"][0] if s["responses"] else ""}
            for row, coords, s in zip(rows, z, scores)]


def _group_means(points: list[dict]) -> dict:
    """Mean compliance of harmful and harmless queries."""
    pick = lambda harmless: [p["compliance"] for p in points if p["harmless"] == harmless]  # noqa: E731
    return {"harmful_compliance": float(np.mean(pick(0))), "harmless_compliance": float(np.mean(pick(1))),
            "n": len(points)}


@metered  # under the stage's cost cap (porover.spending)
def run_dro(params: DROParams, on_step=None) -> dict:
    """Estimate, train, save the soft prompt and score it; writes every output and returns ``dro.json``'s content.

    Args:
        params: The stage's parameters.
        on_step: Called with each training step's log row (the notebook's progress line).
    """
    import torch

    from porover.methods.dro.soft_prompt import SoftPromptBackend, SoftPromptSpec, save_soft_prompt, soft_prompt_states

    out, timings, k = params.stage_dir, {}, params.pca_dim
    rows, lazy = query_rows(params), _Model(params)
    conditions = list(dict.fromkeys([*params.conditions, params.init_prompt]))
    clock = time.perf_counter()
    states = {c: human_states(params, lazy, rows, c) for c in conditions}
    timings["states_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    backend = lambda: SystemTurnBackend(*lazy.get(), batch_size=params.batch_size)  # noqa: E731
    scores = {c: compliance(params, backend, params.model, rows, SYSTEM_PROMPTS[c]) for c in params.conditions}
    timings["sample_and_judge_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    pooled = np.concatenate([states[c] for c in params.conditions])
    mean, basis, ratio = pca_basis(pooled, k, params.method_seed)
    z = (pooled - mean) @ basis
    targets = np.array([s["score"] for c in params.conditions for s in scores[c]])
    harmless = np.array([r["harmless"] for _ in params.conditions for r in rows], dtype=float)
    options = {"n_splits": params.n_splits, "lr": params.logistic_lr, "max_epochs": params.logistic_max_epochs,
               "seed": params.method_seed}
    estimation = Estimation(mean, basis, fit_logistic_cv(z[:, :k], targets, **options),
                            fit_logistic_cv(z[:, :k], harmless, **options), k)
    timings["estimation_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    key = digest_of([model_digest(params.model), {n: v for n, v in asdict(params).items()
                                                   if n not in ("run_dir", "device", "stage_name", "batch_size")}])
    checkpoint = out / "checkpoints" / f"{key}.pt"
    if not checkpoint.is_file() or torch.load(checkpoint, weights_only=False)["epoch"] < params.num_epochs:
        model, tokenizer = lazy.get()
        ids = tokenizer(SYSTEM_PROMPTS[params.init_prompt], add_special_tokens=False)["input_ids"]
        init = model.get_input_embeddings().weight.detach()[ids].float().cpu()
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        train_soft_prompt(
            lambda queries, prompt: soft_prompt_states(model, tokenizer, queries, prompt), init,
            [r["prompt"] for r in rows], [r["harmless"] for r in rows], estimation.project(states[params.init_prompt]),
            estimation, checkpoint, epochs=params.num_epochs, batch_size=params.train_batch_size,
            lr=params.learning_rate, max_grad_norm=params.max_grad_norm, seed=params.method_seed,
            loss_weights=(params.refusal_loss_weight, params.harmfulness_loss_weight, params.norm_loss_weight),
            on_step=on_step)
    trained = torch.load(checkpoint, weights_only=False)
    soft, log = trained["prompt"], trained["log"]
    save_soft_prompt(out / "model", soft, SoftPromptSpec(
        str(params.model), model_digest(params.model), params.init_prompt, int(soft.shape[0])))
    (out / "training_log.json").write_text(json.dumps(log))
    timings["training_s"] = time.perf_counter() - clock

    # After: the same queries with the learned prompt, states and compliance.
    clock = time.perf_counter()
    soft_path = out / "states" / f"{digest_of([path_digest(out / 'model'), [r['prompt'] for r in rows]])}.npy"
    if not soft_path.is_file():
        model, tokenizer = lazy.get()
        with torch.no_grad():
            found = [soft_prompt_states(model, tokenizer, [r["prompt"] for r in rows[i:i + params.batch_size]], soft)
                     for i in range(0, len(rows), params.batch_size)]
        soft_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(soft_path, torch.cat(found).float().cpu().numpy())
    states[SOFT] = np.load(soft_path)
    scores[SOFT] = compliance(params, lambda: SoftPromptBackend(*lazy.get(), soft, batch_size=params.batch_size),
                              str((out / "model").resolve()), rows, None)
    timings["after_s"] = time.perf_counter() - clock

    points = [p for c in [*params.conditions, SOFT]
              for p in _point_rows(rows, c, estimation.project(states[c]), scores[c], k)]
    write_jsonl(out / "points.jsonl", points)
    z_all = np.array([p["z"] for p in points if p["condition"] != SOFT])
    summary = {
        "model": params.model, "judges": params.judges, "scoring_judge": params.judges[0],
        "init_prompt": params.init_prompt, "none_rendering": "an explicitly empty system turn",
        "n_queries": len(rows), "n_samples": params.n_samples, "keep_longest": params.keep_longest,
        "conditions": {c: _group_means([p for p in points if p["condition"] == c]) for c in [*params.conditions, SOFT]},
        "pca_explained_variance_ratio": ratio.tolist(),
        "refusal_model": {"weight": estimation.refusal.weight.tolist(), "bias": estimation.refusal.bias,
                          "fold_test_bce": estimation.refusal.test_losses.tolist(),
                          "fold_epochs": estimation.refusal.epochs.tolist()},
        "harmfulness_model": {"weight": estimation.harmfulness.weight.tolist(), "bias": estimation.harmfulness.bias,
                              "fold_test_bce": estimation.harmfulness.test_losses.tolist(),
                              "accuracy": float(np.mean((estimation.harmfulness.logits(z_all) > 0) == (harmless > 0)))},
        "training": {"steps": len(log), "first": log[0] if log else None, "last": log[-1] if log else None},
        "timings_s": {name: round(value, 1) for name, value in timings.items()},
    }
    (out / "dro.json").write_text(json.dumps(summary, indent=2))
    return summary
