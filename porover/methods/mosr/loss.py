"""MOSR-like training, a RECONSTRUCTION (MOSR, Zhang et al., arXiv 2511.19009, publishes no code or loss formula).

What is published: over-refused prompts sit between benign and malicious ones in representation space; LoRA on
mid-to-late layers; an erasure-style representation loss whose pressure on each malicious sample is lowered the
more it resembles pseudo-malicious prompts ("overlap-aware loss weighting"); and refusal targets that follow a
harmful prefix ("context-aware augmentation"). What is reconstructed here (every choice a stage parameter):
the base objective is RepBend's (Yousefpour et al. 2025, as its code computes it), the similarity is the cosine
of centred last-prompt-token states, the weight is a clipped min-max map decreasing in it, and the harmful
prefixes are AdvBench's "Sure, here is ..." targets followed by a refusal.

    L = α·L_keep − β·Σ_i w_i·L_erase,i / Σ_i w_i + γ·L_cos + ε·L_KL + λ·L_refusal
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

KINDS = ("retain", "erase", "refusal")  # retain: benign and pseudo-malicious prompts; erase: malicious ones


def overlap_weights(malicious: np.ndarray, pseudo: np.ndarray, k: int = 1, formula: str = "minmax",
                    min_weight: float = 0.1, center: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per malicious sample, its similarity to the pseudo-malicious prompts and its erasure weight.

    Args:
        malicious: ``(m, d)`` states of malicious prompts.
        pseudo: ``(p, d)`` states of pseudo-malicious prompts.
        k: Similarity = mean cosine to the ``k`` most similar pseudo-malicious states (1 = the maximum).
        formula: ``minmax``: ``w = (s_max − s) / (s_max − s_min)``; ``linear``: ``w = 1 − s``; both clipped to
            ``[min_weight, 1]``, so the weight never increases with similarity.
        min_weight: The floor: the most overlapping malicious sample still gets this much pressure.
        center: Subtracted from every state first (the states share a large common component that makes raw
            cosines all near 1); None = no centring.

    Returns:
        ``(similarity (m,), weight (m,))``.
    """
    if formula not in ("minmax", "linear"):
        raise ValueError(f"formula: expected minmax or linear, got {formula!r}")
    if center is not None:
        malicious, pseudo = malicious - center, pseudo - center
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
    cosine = unit(malicious) @ unit(pseudo).T
    k = max(1, min(k, cosine.shape[1]))
    similarity = np.sort(cosine, axis=1)[:, -k:].mean(axis=1)
    if formula == "linear":
        weight = 1 - similarity
    else:
        spread = similarity.max() - similarity.min()
        weight = (similarity.max() - similarity) / spread if spread > 1e-12 else np.ones_like(similarity)
    return similarity, np.clip(weight, min_weight, 1.0)


@lru_cache(maxsize=1)
def advbench_targets() -> dict[str, str]:
    """AdvBench goal -> its target ("Sure, here is a script that can exploit ..."): the harmful prefixes."""
    from porover.data import DATA_DIR

    with open(DATA_DIR / "advbench" / "harmful_behaviors.csv", newline="") as file:
        return {row["goal"].strip(): row["target"].strip() for row in csv.DictReader(file)}


def harmful_prefix(prompt: str, fallback: str = "Sure, here is", words: int | None = None) -> str:
    """The start of a harmful answer to ``prompt``: AdvBench's target for an AdvBench goal, else ``fallback``;
    cut to its first ``words`` words (None = whole)."""
    prefix = advbench_targets().get(prompt.strip(), fallback)
    return " ".join(prefix.split()[:words]) if words else prefix


def training_rows(benign: Sequence[dict], pseudo: Sequence[dict], malicious: Sequence[dict], weights: np.ndarray,
                  similarity: np.ndarray, refusals: Sequence[str], augmentation_share: float = 0.5,
                  prefix_fallback: str = "Sure, here is", prefix_words: int | None = None, seed: int = 0) -> list[dict]:
    """The training rows: retain (benign, pseudo-malicious), erase (malicious prompt + harmful prefix, weighted)
    and refusal rows (malicious prompt → refusal; a share of them after a harmful prefix: the augmentation).

    Each row: ``kind``, ``prompt``, ``context`` (response text before the trained part, not trained on),
    ``target`` (trained with the refusal loss), ``weight``, ``similarity``, ``source``, ``id``.
    """
    rng = np.random.default_rng(seed)
    base = lambda r: {"source": r["source"], "id": str(r["id"]), "prompt": r["prompt"]}  # noqa: E731
    rows = [{**base(r), "kind": "retain", "context": "", "target": "", "weight": 1.0, "similarity": None}
            for r in [*benign, *pseudo]]
    augmented = set(rng.permutation(len(malicious))[:round(augmentation_share * len(malicious))].tolist())
    for i, row in enumerate(malicious):
        prefix = harmful_prefix(row["prompt"], prefix_fallback, prefix_words)
        common = {**base(row), "weight": float(weights[i]), "similarity": float(similarity[i])}
        rows.append({**common, "kind": "erase", "context": prefix, "target": ""})
        rows.append({**common, "kind": "refusal", "context": "", "target": refusals[rng.integers(len(refusals))]})
        if i in augmented:  # the context-aware augmentation: a refusal even after a harmful start
            rows.append({**common, "kind": "refusal", "context": prefix + "\n\n",
                         "target": refusals[rng.integers(len(refusals))]})
    return rows


def tokenize_row(tokenizer, rendered_prompt: str, row: dict, max_length: int, retain_positions: int) -> dict:
    """Token ids, labels (-100 except the ``target``), the positions the representation terms read, and the
    index of the last prompt token.

    Retain rows have no response: their terms read the last ``retain_positions`` prompt tokens (the end of the
    user turn and the generation prompt, where the answer is decided); erase rows those and the harmful prefix.
    The prompt is cut from the left when the whole exceeds ``max_length``.
    """
    end = tokenizer.eos_token if tokenizer.eos_token else ""
    prompt = tokenizer(rendered_prompt, add_special_tokens=False)["input_ids"]
    context = tokenizer(row["context"], add_special_tokens=False)["input_ids"] if row["context"] else []
    target = tokenizer(row["target"] + end, add_special_tokens=False)["input_ids"] if row["target"] else []
    room = max(max_length - len(context) - len(target), retain_positions + 1)
    prompt = prompt[-room:]
    ids = prompt + context + target
    labels = [-100] * (len(prompt) + len(context)) + target
    reads = [0] * len(ids)
    if row["kind"] in ("retain", "erase"):
        for position in range(max(0, len(prompt) - retain_positions), len(prompt) + len(context)):
            reads[position] = 1
    return {"input_ids": ids[:max_length], "labels": labels[:max_length], "reads": reads[:max_length],
            "last_prompt": min(len(prompt), max_length) - 1, "kind": KINDS.index(row["kind"]),
            "weight": row["weight"]}


def representation_losses(states, reference, reads, kind, weight, last_prompt, keep_layers: Sequence[int],
                          target_layers: Sequence[int]) -> dict:
    """RepBend's representation terms on one batch (``states``/``reference``: tuples of ``(b, t, d)`` tensors,
    hidden_states of the LoRA model and of the frozen one).

    Returns:
        ``keep`` (mean L2 distance to the frozen states on retain rows over ``keep_layers``), ``erase`` (the
        same on erase rows over ``target_layers``, each row's mean weighted by ``weight``: overlap-aware),
        ``cos`` (mean 1 − cosine between the erase rows' last-prompt states, over ``target_layers``); a term
        without its rows in the batch is 0.
    """
    import torch

    zero = states[0].new_zeros(())

    def distance(layers, rows):
        mask = reads * rows[:, None]
        if mask.sum() == 0:
            return zero.new_zeros(len(rows))
        per = torch.stack([torch.linalg.vector_norm(states[l] - reference[l], dim=-1) for l in layers]).mean(0)
        return (per * mask).sum(1) / mask.sum(1).clamp(min=1)

    retain, erase = (kind == 0).float(), (kind == 1).float()
    keep = distance(keep_layers, retain).sum() / retain.sum() if retain.sum() else zero
    erase_rows = distance(target_layers, erase)
    erased = (erase_rows * weight * erase).sum() / (weight * erase).sum() if erase.sum() else zero
    cos = zero
    picked = torch.nonzero(kind == 1).flatten()
    if len(picked) > 1:
        last = [states[l][picked, last_prompt[picked]] for l in target_layers]
        unit = [torch.nn.functional.normalize(h, dim=-1) for h in last]
        n = len(picked)
        cos = torch.stack([(1 - u @ u.T).sum() / (n * (n - 1)) for u in unit]).mean()
    return {"keep": keep, "erase": erased, "cos": cos}
