"""The representation stage: where over-refused prompts sit between benign and malicious ones (MOSR's analysis).

For the model of each evaluation it is given, the stage reads last-prompt-token hidden states of benign,
pseudo-malicious (the evaluation's safe prompts) and malicious (its unsafe prompts) prompts, fits a
harmfulness probe (benign vs malicious) and a refusal probe (refused vs answered, from the evaluation's
verdicts) with held-out (cross-fitted) logits, and compares the over-refused pseudo-malicious prompts with the
answered ones on both boundaries: the number that tests MOSR's finding on our models.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from porover.config import StageParams, is_stage_ref, param
from porover.data import load_rows, prompt_set_errors
from porover.digests import digest_of
from porover.methods.representations.probes import (boundary_position, compare_groups, cross_fitted_logits,
                                                    mean_difference, pca)
from porover.store import read_jsonl, write_jsonl
from porover.vocabulary import is_refusal

NOTEBOOK = "09_represent.ipynb"
OUTPUTS = ("summary.json", "points.jsonl")
CLASSES = ("benign", "pseudo_malicious", "malicious")


@dataclass
class RepresentParams(StageParams):
    """Parameters of ``notebooks/09_represent.ipynb``: hidden-state boundaries of each evaluated model."""

    evaluations: dict[str, str | None] = param(
        {}, "evaluate stages (stage:NAME, or a responses.jsonl beside its metrics.json) -> label (null = the stage "
        "folder's name); each one's model is read, its safe prompts are pseudo-malicious, its unsafe ones malicious, "
        "its verdicts are joined", input=True)
    benign: dict[str, int | None] = param({"alpaca": 60}, "benign prompt sets -> prompts (null = all)", input=True)
    pseudo_malicious: dict[str, int | None] = param({}, "extra safe-but-harmful-looking sets (no verdicts)", input=True)
    malicious: dict[str, int | None] = param({}, "extra harmful sets (no verdicts)", input=True)
    layers: list[int] = param([20, 30], "hidden_states indices read (0 = embeddings, 30 = SmolLM2-135M's last "
                                        "block after the final norm); MOSR reads mid-to-late layers")
    system_prompt: str = param("", "system message before every prompt ('' = none: the template's default, as the "
                                   "evaluate stage renders it)")
    partial_is_refusal: bool = param(True, "count partial refusals as refusals")
    folds: int = param(5, "cross-fitting folds: each prompt's probe logit comes from a probe not fitted on it", ge=2)
    l2: float = param(1.0, "L2 penalty of the logistic probes (standardised states)", ge=0)
    bootstrap_samples: int = param(1000, "resamples for the 95% intervals of the group differences", ge=0)
    batch_size: int = param(16, "prompts per forward pass", ge=1)
    max_length: int = param(256, "prompt tokens kept (cut from the left)", ge=8)
    stage_name: str = param("represent", "name of this stage in the run")

    def problems(self, where: str) -> list[str]:
        errors = [f"{where}.evaluations: give at least one evaluate stage (stage:NAME)"] if not self.evaluations else []
        for source in self.evaluations:
            if not is_stage_ref(source) and not (Path(source).is_file() and Path(source).with_name("metrics.json").is_file()):
                errors.append(f"{where}.evaluations.{source}: expected stage:NAME of an evaluate stage or a "
                              "responses.jsonl with its metrics.json beside it")
        if not self.benign:
            errors.append(f"{where}.benign: give at least one benign prompt set (e.g. alpaca: 60)")
        for key in ("benign", "pseudo_malicious", "malicious"):
            errors += prompt_set_errors(getattr(self, key), f"{where}.{key}")
        return errors


def prompt_table(params: RepresentParams, responses: str | Path) -> list[dict]:
    """The prompts of one model: its evaluation's rows (with ``refused``) and the extra sets (``refused`` None)."""
    rows = []
    for row in read_jsonl(responses):
        if row.get("label") in ("safe", "unsafe"):
            rows.append({"source": row["source"], "id": str(row["id"]), "prompt": row["prompt"],
                         "class": "pseudo_malicious" if row["label"] == "safe" else "malicious",
                         "refused": is_refusal(row.get("refusal"), params.partial_is_refusal)})
    for key in CLASSES:
        for name, n in getattr(params, key, {}).items():
            rows += [{"source": r["source"], "id": str(r["id"]), "prompt": r["prompt"], "class": key, "refused": None}
                     for r in load_rows(name, n=n, seed=params.seed)]
    return rows


def model_states(params: RepresentParams, model: str, prompts: list[str]) -> dict[int, np.ndarray]:
    """States of ``layers`` for ``prompts``, stored per (model content, settings, prompts): an interrupted stage
    never recomputes a model it finished."""
    from porover.model_folders import open_model

    handle = open_model(model, device=params.device)
    key = digest_of([handle.digest(), params.layers, params.system_prompt, params.max_length, prompts])
    path = params.stage_dir / "states" / f"{key}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return {layer: stored[f"layer_{layer}"] for layer in params.layers}
    states = handle.states(prompts, params.layers, params.system_prompt or None, params.batch_size, params.max_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.partial.npz")
    np.savez(partial, **{f"layer_{layer}": value for layer, value in states.items()})
    partial.rename(path)  # atomic: a killed stage leaves no half-written file
    return states


def analyse_layer(x: np.ndarray, rows: list[dict], params: RepresentParams) -> tuple[dict, dict[str, np.ndarray]]:
    """Both boundaries on one layer's states, and MOSR's comparison on them.

    Returns:
        ``(summary, scores)``: probe accuracies, where each group sits, the over-refused vs answered
        comparisons (on held-out scores only: a score fitted on a prompt's own verdict would separate them by
        construction); and per-row ``harm_logit``, ``harm_position``, ``refusal_logit`` (held out),
        ``refusal_projection`` (on the refused−answered direction of all judged prompts: in-sample, descriptive),
        ``pc1``, ``pc2``.
    """
    kind = np.array([row["class"] for row in rows])
    refused = np.array([row["refused"] for row in rows], dtype=object)
    benign, malicious, pseudo = kind == "benign", kind == "malicious", kind == "pseudo_malicious"
    scores = {"harm_logit": np.full(len(rows), np.nan), "refusal_logit": np.full(len(rows), np.nan),
              "refusal_projection": np.full(len(rows), np.nan)}
    summary: dict = {"n": {name: int((kind == name).sum()) for name in CLASSES}}
    coords, _, explained = pca(x, 2)
    scores["pc1"], scores["pc2"] = coords[:, 0], coords[:, 1] if coords.shape[1] > 1 else np.zeros(len(rows))
    summary["pca_explained"] = explained.tolist()
    scores["harm_position"] = boundary_position(x, x[benign], x[malicious])  # 0 benign mean, 1 malicious mean
    labelled = benign | malicious
    held, summary["harm_probe_accuracy"], others = cross_fitted_logits(
        x[labelled], malicious[labelled], params.folds, params.seed, params.l2, extra=x[~labelled])
    scores["harm_logit"][labelled] = held
    if others is not None:
        scores["harm_logit"][~labelled] = others
    judged = np.array([value is not None for value in refused])
    target = np.array([bool(value) for value in refused])
    summary["refusal_probe_accuracy"] = None
    if judged.any() and 2 <= target[judged].sum() <= judged.sum() - 2:
        held, summary["refusal_probe_accuracy"], others = cross_fitted_logits(
            x[judged], target[judged], params.folds, params.seed, params.l2, extra=x[~judged])
        scores["refusal_logit"][judged] = held
        if others is not None:
            scores["refusal_logit"][~judged] = others
        direction = mean_difference(x[judged], target[judged])  # refused minus answered
        middle = (x[judged & target].mean(axis=0) + x[judged & ~target].mean(axis=0)) / 2
        scores["refusal_projection"] = (x - middle) @ direction
        summary["refusal_vs_harm_cosine"] = float(direction @ mean_difference(x[labelled], malicious[labelled]))
    over, answered = pseudo & judged & target, pseudo & judged & ~target
    summary["position_means"] = {name: _mean(scores["harm_position"][mask]) for name, mask in
                                 (("benign", benign), ("answered", answered), ("over_refused", over),
                                  ("malicious", malicious))}
    summary["mosr"] = {score: compare_groups(scores[score][over], scores[score][answered], params.bootstrap_samples,
                                             params.seed)
                       for score in ("harm_position", "harm_logit", "refusal_logit")}
    return summary, scores


def _mean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def run_represent(params: RepresentParams) -> tuple[dict, list[dict]]:
    """Read states, fit both boundaries per model and layer, write ``summary.json`` and ``points.jsonl``.

    Returns:
        ``(summary, points)``: per label, the model and per layer `analyse_layer`'s summary; one point per
        (label, layer, prompt) with its scores, PCA coordinates and verdict.
    """
    summary: dict = {}
    points: list[dict] = []
    for source, label in params.evaluations.items():
        label = label or Path(source).parent.name
        metrics = Path(source).with_name("metrics.json")
        if not (Path(source).is_file() and metrics.is_file()):
            raise FileNotFoundError(f"{params.stage_name}.evaluations.{source}: no evaluation there (responses.jsonl "
                                    "and metrics.json); name an evaluate stage, e.g. stage:evaluate_base")
        model = json.loads(metrics.read_text())["model"]
        rows = prompt_table(params, source)
        states = model_states(params, model, [row["prompt"] for row in rows])
        summary[label] = {"model": model, "evaluation": str(source), "layers": {}}
        for layer in params.layers:
            layer_summary, scores = analyse_layer(states[layer], rows, params)
            summary[label]["layers"][str(layer)] = layer_summary
            for i, row in enumerate(rows):
                verdict = {None: "no verdict", True: "refused", False: "answered"}[row["refused"]]
                points.append({**row, "model": label, "layer": layer, "verdict": verdict,
                               **{name: None if np.isnan(value[i]) else float(value[i]) for name, value in scores.items()}})
    params.stage_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(params.stage_dir / "points.jsonl", points)
    (params.stage_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary, points


def findings_table(summary: dict) -> "pd.DataFrame":  # noqa: F821
    """One row per (model, layer): probe accuracies, mean positions on the benign→malicious axis, and the
    over-refused minus answered difference of that position with its interval, AUC and p-value."""
    import pandas as pd

    records = []
    for label, entry in summary.items():
        for layer, found in entry["layers"].items():
            test = found["mosr"]["harm_position"]
            interval = test["interval"] or [None, None]
            records.append({"model": label, "layer": int(layer), "harm probe acc": found["harm_probe_accuracy"],
                            "refusal probe acc": found["refusal_probe_accuracy"],
                            "cos(refusal, harm)": found.get("refusal_vs_harm_cosine"),
                            **{f"pos {name}": value for name, value in found["position_means"].items()},
                            "n over-refused": test["n_a"], "n answered": test["n_b"],
                            "Δ pos (over-refused − answered)": test["difference"], "95% low": interval[0],
                            "95% high": interval[1], "AUC": test["auc"], "p": test["p_value"]})
    return pd.DataFrame(records).round(3)


def scatter_figure(points: list[dict], layer: int, color: str = "class") -> "go.Figure":  # noqa: F821
    """PCA scatter of every model's prompts at one layer, one panel per model, coloured by ``class`` or
    ``verdict``; hovering shows the (escaped) prompt."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    chosen = [p for p in points if p["layer"] == layer]
    models = list(dict.fromkeys(p["model"] for p in chosen))
    figure = make_subplots(rows=1, cols=max(len(models), 1), subplot_titles=models)
    palette = {"benign": "#2ca02c", "pseudo_malicious": "#ff7f0e", "malicious": "#d62728", "answered": "#1f77b4",
               "refused": "#d62728", "no verdict": "#bbbbbb"}
    for column, model in enumerate(models, 1):
        for value in dict.fromkeys(p[color] for p in chosen):
            group = [p for p in chosen if p["model"] == model and p[color] == value]
            symbol = ["x" if p["class"] == "malicious" else "circle-open" if p["class"] == "benign" else "circle"
                      for p in group]
            figure.add_trace(go.Scatter(
                x=[p["pc1"] for p in group], y=[p["pc2"] for p in group], mode="markers", name=value,
                legendgroup=value, showlegend=column == 1, marker={"color": palette.get(value), "symbol": symbol},
                hovertext=[f"{html.escape(p['class'])} · {html.escape(p['verdict'])} · harm position "
                           f"{p['harm_position']:.2f}<br>{html.escape(p['source'])}: {html.escape(p['prompt'][:200])}"
                           for p in group], hoverinfo="text"), row=1, col=column)
    figure.update_layout(title=f"Last-prompt-token states, layer {layer}, first two principal components "
                               f"(colour: {color}; x malicious, o benign, ● pseudo-malicious)", height=450)
    return figure


def position_figure(points: list[dict], layer: int) -> "go.Figure":  # noqa: F821
    """Each prompt's position on the benign→malicious axis (0 = benign mean, 1 = malicious mean) per model
    and group: MOSR's finding is over-refused prompts sitting further toward the malicious side than answered ones."""
    import plotly.graph_objects as go

    def group(p: dict) -> str:
        if p["class"] == "pseudo_malicious" and p["verdict"] != "no verdict":
            return "over-refused" if p["verdict"] == "refused" else "answered (pseudo-malicious)"
        return p["class"]

    chosen = [p for p in points if p["layer"] == layer]
    figure = go.Figure()
    for name in ("benign", "answered (pseudo-malicious)", "over-refused", "pseudo_malicious", "malicious"):
        subset = [p for p in chosen if group(p) == name]
        if subset:
            figure.add_trace(go.Box(x=[p["model"] for p in subset], y=[p["harm_position"] for p in subset], name=name,
                                    boxpoints="all", jitter=0.4, pointpos=0,
                                    hovertext=[html.escape(p["prompt"][:200]) for p in subset], hoverinfo="y+text"))
    figure.update_layout(boxmode="group", title=f"Position between the benign (0) and malicious (1) means, layer {layer}",
                         yaxis_title="position", height=450)
    return figure
