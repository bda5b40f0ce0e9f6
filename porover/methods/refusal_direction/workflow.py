"""What the refusal-direction and false-refusal stages share around the method: the model loaded on first use,
training and held-out prompt sets that never meet, rendered and filtered by the authors' refusal-score filter,
and mean states cached by content.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np

from porover.data import load_rows, split_name
from porover.generation.sampling import render_prompts
from porover.methods.refusal_direction.directions import mean_states, refusal_token_ids
from porover.methods.refusal_direction.selection import baseline_scores
from porover.digests import digest_of
from porover.splits import load_sets, normalise
from porover.store import JsonlStore


class LazyModel:
    """The model (and its tokenizer), loaded on first use: a finished stage run again loads no weights."""

    def __init__(self, name: str, device: str = "auto") -> None:
        self.name, self.device = name, device
        self._pair = self._tokenizer = None

    @property
    def digest(self) -> str:
        from porover.models import model_digest

        return model_digest(self.name)

    def tokenizer(self):
        if self._pair is not None:
            return self._pair[1]
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from porover.models import resolve_model

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.name))
        return self._tokenizer

    def get(self):
        """``(model, tokenizer)`` in eval mode, frozen."""
        if self._pair is None:
            from porover.models import load_model

            model, tokenizer = load_model(self.name, device=self.device)
            model.requires_grad_(False)
            self._pair = model, tokenizer
        return self._pair


def held_out_rows(sets: dict[str, int | None], exclude: list[dict], seed: int) -> list[dict]:
    """Rows of ``name[:split] -> n`` sets drawn from the prompts *not* in ``exclude`` (normalised text), so a
    held-out set taken from the same dataset as a training set (Alpaca for both) never repeats one of its
    prompts; each draw is deterministic in ``seed``."""
    taken = {normalise(row["prompt"]) for row in exclude}
    rows = []
    for spec, n in sets.items():
        name, split = split_name(spec)
        pool = [row for row in load_rows(name, split=split) if normalise(row["prompt"]) not in taken]
        if n is not None and n < len(pool):
            pool = [pool[i] for i in sorted(random.Random(seed).sample(range(len(pool)), n))]
        rows += pool
        taken |= {normalise(row["prompt"]) for row in pool}
    return rows


def training_rows(sets: dict[str, int | None], exclude: list[dict], seed: int) -> list[dict]:
    """Rows of training sets as the run-file check draws them (`porover.splits.load_sets`: subsampled by ``seed``,
    no duplicates), less the prompts of ``exclude`` (normalised text)."""
    taken = {normalise(row["prompt"]) for row in exclude}
    return [row for row in load_sets(sets, seed) if normalise(row["prompt"]) not in taken]


def refusal_filter(rows: list[dict], scores: list[float], keep: str, where: str, minimum: int = 2) -> list[dict]:
    """The authors' filter: rows the model refuses (``keep="refused"``: refusal score > 0) or answers
    (``keep="answered"``: < 0).

    Raises:
        ValueError: Fewer than ``minimum`` rows are left (the message names the parameter to change).
    """
    kept = [row for row, score in zip(rows, scores) if (score > 0 if keep == "refused" else score < 0)]
    if len(kept) < minimum:
        raise ValueError(f"{where}: the refusal-score filter keeps {len(kept)} of {len(rows)} prompts (those the "
                         f"model {keep}); give more prompts, other refusal_tokens, or turn the filter off")
    return kept


def stored_scores(path: Path, model_digest: str, texts: list[str], compute) -> list[float]:
    """Refusal scores of rendered prompts, computed once per (model, text) and kept in a store."""
    store = JsonlStore(path, key=lambda row: (row["model"], row["text"]))
    todo = [text for text in dict.fromkeys(texts) if (model_digest, text) not in store]
    if todo:
        store.append({"model": model_digest, "text": text, "score": score} for text, score in zip(todo, compute(todo)))
    found = {row["text"]: row["score"] for row in store.rows if row["model"] == model_digest}
    return [found[text] for text in texts]


def cached_means(folder: Path, lazy: LazyModel, texts: list[str], positions: int, batch_size: int) -> np.ndarray:
    """`porover.methods.refusal_direction.directions.mean_states` of rendered prompts, cached by content."""
    path = folder / f"means-{digest_of([lazy.digest, texts, positions])}.npy"
    if not path.is_file():
        model, tokenizer = lazy.get()
        means = mean_states(model, tokenizer, texts, positions, batch_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial.npy")
        np.save(partial, means)
        partial.replace(path)
    return np.load(path)


def prepared_sets(params, lazy: LazyModel, training: dict[str, dict], held_out: dict[str, dict],
                  keep: dict[str, str], filtered: set[str]
                  ) -> tuple[dict[str, list[str]], dict[str, float], list[dict]]:
    """The prompts of a direction stage: training sets drawn first (less ``params.exclude``), held-out sets and the
    validation rows (``params.validation``) from what they leave.

    Returns:
        ``(rendered prompts per set, mean refusal score per held-out or filtered set, validation rows)``: the sets
        in ``filtered`` keep only the prompts the model refuses or answers (``keep``), scored before any
        intervention; their means are the baselines of the score figure.
    """
    system = params.system_prompt or None
    excluded = load_sets(params.exclude, params.seed)
    rows = {key: training_rows(sets, excluded, params.seed) for key, sets in training.items()}
    seen = excluded + [row for part in rows.values() for row in part]
    rows.update({key: held_out_rows(sets, seen, params.seed) for key, sets in held_out.items()})
    validation = held_out_rows(params.validation, seen, params.seed)
    texts = {key: render_prompts(lazy.tokenizer(), [r["prompt"] for r in part], system) for key, part in rows.items()}
    ids = refusal_token_ids(lazy.tokenizer(), params.refusal_tokens)
    score = lambda todo: baseline_scores(lazy.get()[0], lazy.tokenizer(), todo, ids, params.batch_size)  # noqa: E731
    means = {}
    for key in [key for key in texts if key in filtered or key in held_out]:  # a training set unfiltered: no scores
        scores = stored_scores(params.stage_dir / "refusal_scores.jsonl", f"{lazy.digest}|{ids}", texts[key], score)
        if key in filtered:
            kept = refusal_filter([{"text": t, "score": v} for t, v in zip(texts[key], scores)], scores, keep[key],
                                  f"{params.stage_name}.{key}")
            texts[key], scores = [row["text"] for row in kept], [row["score"] for row in kept]
        means[key] = float(np.mean(scores)) if scores else float("nan")
    return texts, means, validation


def array_digest(array: np.ndarray) -> str:
    """The digest of an array's exact contents."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]
