"""Choosing one candidate direction on held-out prompts, by the authors' criteria (andyrdt/refusal_direction,
``select_direction.py``; the surgical paper's ``ablation`` mode, mainlp/False-Refusal-Mitigation).

Every candidate (position, layer) gets, with the direction ablated at every layer by hooks:
``bypass`` = mean refusal score on the first held-out set (harmful prompts; pseudo-harmful ones for the
false-refusal vector) and ``kl`` = mean KL divergence of the next-token distribution on harmless prompts; and
with the raw vector added at its own layer (coefficient 1): ``induce`` = mean refusal score on harmless prompts
(refusal direction only). Candidates from the last ``prune_layer_percentage`` of the layers, with KL above
``kl_threshold`` or (refusal direction) ``induce`` below ``induce_threshold`` are filtered out; the rest are
ranked by ``bypass``, lowest first. Scores are appended to a store as they are computed, so a killed selection
resumes at the next candidate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from porover.methods.refusal_direction.directions import kl_divergence, last_logits, refusal_scores
from porover.methods.refusal_direction.interventions import ablation_hooks, addition_hooks, hooks
from porover.store import JsonlStore


@dataclass(frozen=True)
class Criteria:
    """The filters of the authors' ``filter_fn`` (their defaults)."""

    kl_threshold: float | None = 0.1
    induce_threshold: float | None = 0.0
    prune_layer_percentage: float | None = 0.2

    def kept(self, row: dict, n_layers: int) -> bool:
        """Whether a scored candidate survives the filters."""
        values = [row["bypass"], row["kl"]] + ([row["induce"]] if row.get("induce") is not None else [])
        if any(math.isnan(v) for v in values):
            return False
        cut = None if self.prune_layer_percentage is None else int(n_layers * (1 - self.prune_layer_percentage))
        if cut is not None and row["layer"] >= cut:
            return False
        if self.kl_threshold is not None and row["kl"] > self.kl_threshold:
            return False
        return not (self.induce_threshold is not None and row.get("induce") is not None
                    and row["induce"] < self.induce_threshold)


def scored_layers(n_layers: int, layers: Sequence[int] | None, prune_layer_percentage: float | None) -> list[int]:
    """The layers whose candidates are scored: ``layers`` as given, else every layer the pruning keeps (a pruned
    candidate can never be chosen, so the authors' scores of it only feed their figures)."""
    if layers is not None:
        return sorted(set(layers))
    cut = n_layers if prune_layer_percentage is None else int(n_layers * (1 - prune_layer_percentage))
    return list(range(cut))


def _mean(chunks: list) -> float:
    import torch

    return float(torch.cat(chunks).mean()) if chunks else float("nan")


def score_candidates(model, tokenizer, candidates: np.ndarray, first: Sequence[str], harmless: Sequence[str],
                     refusal_ids: Sequence[int], layers: Sequence[int], store: JsonlStore, key: str,
                     induce: bool = True, batch_size: int = 16, on_candidate: Callable[[dict], None] | None = None
                     ) -> list[dict]:
    """Score every candidate (position, layer in ``layers``), skipping those already in ``store``.

    Args:
        model: The model, or a zero-argument function returning it (called only if a candidate is missing).
        candidates: ``(positions, n_layers, d)`` unnormalised directions.
        first: Rendered held-out prompts whose refusal ablation should remove (harmful or pseudo-harmful).
        harmless: Rendered held-out harmless prompts (KL; induced refusal).
        store: Keyed by ``(key, position, layer)``; ``key`` names what the scores depend on.
        induce: Also score refusal induced on ``harmless`` by adding the vector (the refusal direction).
        on_candidate: Called with each newly scored row (progress; tests interrupt here).

    Returns:
        One row per candidate: ``position`` (negative, from the end), ``layer``, ``bypass``, ``kl``, ``induce``.
    """
    import torch

    n_positions = candidates.shape[0]
    base: list | None = None
    for offset in range(n_positions):
        for layer in layers:
            position = offset - n_positions
            if (key, position, layer) in store:
                continue
            if base is None:  # the unablated harmless logits, once
                model = model() if callable(model) else model
                base = list(last_logits(model, tokenizer, harmless, batch_size))
            vector = torch.from_numpy(candidates[offset, layer]).float()
            with hooks(*ablation_hooks(model, vector)):
                bypass = [refusal_scores(logits, refusal_ids)
                          for logits in last_logits(model, tokenizer, first, batch_size)]
                kl = [kl_divergence(b, logits)
                      for b, logits in zip(base, last_logits(model, tokenizer, harmless, batch_size))]
            induced = None
            if induce:
                with hooks(*addition_hooks(model, vector, layer, 1.0)):
                    induced = _mean([refusal_scores(logits, refusal_ids)
                                     for logits in last_logits(model, tokenizer, harmless, batch_size)])
            row = {"key": key, "position": position, "layer": layer, "bypass": _mean(bypass), "kl": _mean(kl),
                   "induce": induced}
            store.append([row])
            if on_candidate:
                on_candidate(row)
    rows = {(r["position"], r["layer"]): r for r in store.rows if r["key"] == key}
    return [rows[(offset - n_positions, layer)] for offset in range(n_positions) for layer in layers]


def choose(rows: list[dict], criteria: Criteria, n_layers: int) -> dict:
    """The kept candidate with the lowest ``bypass`` score.

    Raises:
        ValueError: Every candidate was filtered out.
    """
    kept = [row for row in rows if criteria.kept(row, n_layers)]
    if not kept:
        raise ValueError(f"all {len(rows)} candidate directions were filtered out (kl_threshold "
                         f"{criteria.kl_threshold}, induce_threshold {criteria.induce_threshold}, "
                         f"prune_layer_percentage {criteria.prune_layer_percentage}); loosen a filter or score more "
                         "layers")
    return min(kept, key=lambda row: row["bypass"])


def baseline_scores(model, tokenizer, texts: Sequence[str], refusal_ids: Sequence[int], batch_size: int = 16
                    ) -> list[float]:
    """Each rendered prompt's refusal score without intervention (the authors' filter and baselines)."""
    return [float(v) for logits in last_logits(model, tokenizer, texts, batch_size)
            for v in refusal_scores(logits, refusal_ids)]
