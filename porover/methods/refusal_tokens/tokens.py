"""Refusal tokens (Jain et al., arXiv 2412.06748): the tokens, the threshold rule and the sweep.

A refusal-token model starts every response with a special token: ``[refuse]`` before refusals and
``[respond]`` before everything else, or one token per refusal category. At inference one forward pass
over the chat-templated prompt gives ``p = softmax(logits / T)[refuse]`` at the first response position,
and the first token is *forced* by a threshold ``t`` (the authors' ``generate_for_eval_threshold.py``):

- single token: ``[refuse]`` iff ``p >= t``, else ``[respond]``; with ``t`` unset, the likelier of the two;
- category tokens (``generate_for_eval_threshold_cat_tokens.py``): ``c*`` = the likeliest refusal token,
  ``q*`` its probability; if ``c*`` is among the controlled tokens, ``c*`` iff ``q* >= t``, else
  ``[respond]``; otherwise the model's own argmax over the whole vocabulary is kept. With ``t`` unset
  (the authors' script needs one): ``c*`` iff ``q* >= P([respond])``, this workbench's extension.

Generation then continues after the forced token; the tokens are special, so decoding with
``skip_special_tokens`` strips them from what the judges read. Refusal rates as ``t`` sweeps need no
generation: a prompt is refused at ``t`` iff its forced token is a refusal token (`sweep`).

A model folder trained by the refusal-token stage holds ``refusal_tokens.json`` (`TokenSpec`) and is opened
by `porover.methods.refusal_tokens.inference.RefusalTokenModel`, which forces the first token when it generates.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from porover.generation.sampling import render_prompts
from porover.vocabulary import CURVE_FILE as SWEEP_FILE  # the stage's sweep, drawn beside the judged points

REFUSE, RESPOND = "[refuse]", "[respond]"
SPEC_FILE = "refusal_tokens.json"
# The authors' CoCoNot category tokens, by CoCoNot category (coconot_eval/generate_for_eval_threshold_cat_tokens.py).
COCONOT_CATEGORY_TOKENS = {
    "Humanizing requests": "[Humanizing requests]",
    "Incomplete requests": "[Incomplete requests]",
    "Indeterminate requests": "[Indeterminate requests]",
    "Requests with safety concerns": "[Requests with safety concerns]",
    "Unsupported requests": "[Unsupported requests]",
}


@dataclass(frozen=True)
class TokenSpec:
    """The refusal tokens of a model.

    Attributes:
        respond: The token before every response that is no refusal.
        refusals: The refusal tokens: ``("[refuse]",)``, or one per category (category mode).
    """

    respond: str = RESPOND
    refusals: tuple[str, ...] = (REFUSE,)

    @property
    def tokens(self) -> list[str]:
        """Every token of the scheme, refusal tokens first."""
        return [*self.refusals, self.respond]

    @property
    def category_mode(self) -> bool:
        return len(self.refusals) > 1


def write_spec(folder: str | Path, spec: TokenSpec) -> None:
    """Record the scheme next to a saved model (``refusal_tokens.json``)."""
    Path(folder, SPEC_FILE).write_text(json.dumps({"respond": spec.respond, "refusals": list(spec.refusals)}, indent=1))


def read_spec(model: str | Path) -> TokenSpec | None:
    """The scheme of a model folder trained with refusal tokens, else None (embedded names, hub ids...)."""
    path = Path(str(model)).expanduser() / SPEC_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return TokenSpec(raw["respond"], tuple(raw["refusals"]))


def add_refusal_tokens(model, tokenizer, tokens: Sequence[str]) -> list[int]:
    """Add ``tokens`` as special tokens (once) and grow the embedding matrix to match; return their ids.

    New rows are initialised at the old embeddings' mean and covariance (transformers' ``mean_resizing``);
    a model with tied input and output embeddings (SmolLM2) keeps them tied, so each token has one row.
    """
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    if model is not None and model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError(f"refusal tokens {list(tokens)} did not all get ids: {ids}")
    return ids


def token_ids(tokenizer, spec: TokenSpec) -> dict[str, int]:
    """Token -> id; each must be one token of the tokenizer (one added by `add_refusal_tokens`)."""
    ids = {}
    for token in spec.tokens:
        encoded = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise ValueError(f"{token!r} is not a single token of this tokenizer ({encoded}); is this a "
                             "refusal-token model?")
        ids[token] = encoded[0]
    return ids


def first_token_probabilities(logits, ids: dict[str, int], temperature: float = 1.0) -> list[dict]:
    """Per row of ``logits`` (batch x vocabulary, at the first response position): each scheme token's
    probability under ``softmax(logits / temperature)`` and the model's own argmax id."""
    import torch

    probs = torch.softmax(logits.float() / temperature, dim=-1)
    names, index = list(ids), torch.tensor(list(ids.values()), device=probs.device)
    picked, argmax = probs[:, index].tolist(), probs.argmax(dim=-1).tolist()
    return [{"p": dict(zip(names, row)), "argmax": top} for row, top in zip(picked, argmax)]


def choose_token(record: dict, spec: TokenSpec, ids: dict[str, int] | None = None, threshold: float | None = None,
                 controlled: Sequence[str] = ()) -> str | int:
    """The forced first token of one prompt (see the module docstring).

    Args:
        record: ``{"p": {token: probability}, "argmax": id}`` from `first_token_probabilities`.
        spec: The token scheme.
        ids: Token -> id, to name the model's argmax when it is a scheme token (category mode).
        threshold: ``t``; None: the likelier of the refusal token and ``[respond]``.
        controlled: Category mode: the refusal tokens the threshold controls (empty: all).

    Returns:
        A scheme token, or (category mode, uncontrolled category) the model's argmax: its token name when
        it is a scheme token, else its id.
    """
    p = record["p"]
    best = max(spec.refusals, key=lambda token: p[token])  # the single token, or the likeliest category
    bar = p[spec.respond] if threshold is None else threshold
    if spec.category_mode and controlled and best not in controlled:
        by_id = {v: k for k, v in (ids or {}).items()}
        return by_id.get(record["argmax"], record["argmax"])
    return best if p[best] >= bar else spec.respond


def refusal_probability(record: dict, spec: TokenSpec) -> float:
    """P of the likeliest refusal token: the value the threshold is compared with."""
    return max(record["p"][token] for token in spec.refusals)


def token_probabilities(model, tokenizer, prompts: Sequence[str], spec: TokenSpec, temperature: float = 1.0,
                        system_prompt: str | None = None, batch_size: int = 32, desc: str = "refusal-token p"):
    """One forward pass per prompt (batched, left-padded): `first_token_probabilities` of each prompt."""
    import torch

    from porover.progress import progress

    ids = token_ids(tokenizer, spec)
    tokenizer.padding_side = "left"
    texts = render_prompts(tokenizer, prompts, system_prompt)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    results: list[dict | None] = [None] * len(texts)
    with progress(total=len(texts), desc=desc, unit="prompt") as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            inputs = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True,
                               add_special_tokens=False).to(model.device)
            with torch.inference_mode():
                logits = model(**inputs, logits_to_keep=1).logits[:, -1, :]
            for i, record in zip(batch, first_token_probabilities(logits, ids, temperature)):
                results[i] = record
            bar.update(len(batch))
    return results


# --------------------------------------------------------------------------------------------- the sweep

def refused_at(records: Sequence[dict], spec: TokenSpec, thresholds: Sequence[float], ids: dict[str, int] | None = None,
               controlled: Sequence[str] = ()):
    """Boolean matrix (thresholds x prompts): whether each prompt's forced token is a refusal token at each t."""
    import numpy as np

    p = np.array([refusal_probability(r, spec) for r in records], dtype=float)
    best = [max(spec.refusals, key=lambda token: r["p"][token]) for r in records]
    by_id = {v: k for k, v in (ids or {}).items()}
    # Category mode, uncontrolled category: the model's own argmax, whatever t.
    free = np.array([bool(spec.category_mode and controlled and b not in controlled) for b in best])
    free_refusal = np.array([by_id.get(r["argmax"]) in spec.refusals for r in records])
    t = np.asarray(thresholds, dtype=float)[:, None]
    return np.where(free[None, :], free_refusal[None, :], p[None, :] >= t)


def sweep_thresholds(records: Sequence[dict], spec: TokenSpec, points: int = 99) -> list[float]:
    """A uniform grid on (0, 1) plus every observed P(refusal token) (each a step of the curve), and 1."""
    grid = {round((i + 1) / (points + 1), 6) for i in range(points)}
    observed = {refusal_probability(r, spec) for r in records}
    return sorted(grid | observed | {1.0})


def sweep(rows: Sequence[dict], records: Sequence[dict], spec: TokenSpec, thresholds: Sequence[float] | None = None,
          ids: dict[str, int] | None = None, controlled: Sequence[str] = (), points: int = 99):
    """Token-level safety and usefulness as the threshold sweeps, with no generation.

    Args:
        rows: Evaluation prompts with ``label`` (safe/unsafe) and ``source``.
        records: Their `first_token_probabilities`.
        thresholds: The t values (default `sweep_thresholds`).

    Returns:
        A DataFrame, one row per (group, t): ``group`` (``overall``, ``source:<benchmark>`` and, in category
        mode, ``token:<refusal token>`` for prompts whose likeliest refusal token it is), ``threshold``,
        ``refusal_rate_safe``, ``refusal_rate_unsafe``, ``safety`` (= unsafe refused), ``usefulness``
        (= safe not refused), ``f1``, ``n_safe``, ``n_unsafe``.
    """
    import numpy as np
    import pandas as pd

    thresholds = list(thresholds) if thresholds is not None else sweep_thresholds(records, spec, points)
    refused = refused_at(records, spec, thresholds, ids, controlled)
    labels = np.array([row.get("label") for row in rows])
    groups = {"overall": np.ones(len(rows), dtype=bool)}
    for source in dict.fromkeys(row["source"] for row in rows):
        groups[f"source:{source}"] = np.array([row["source"] == source for row in rows])
    if spec.category_mode:
        best = np.array([max(spec.refusals, key=lambda token: r["p"][token]) for r in records])
        groups.update({f"token:{token}": best == token for token in spec.refusals})
    frames = []
    for group, members in groups.items():
        safe, unsafe = members & (labels == "safe"), members & (labels == "unsafe")
        rate = lambda mask: refused[:, mask].mean(axis=1) if mask.any() else np.full(len(thresholds), np.nan)  # noqa: E731
        safe_rate, unsafe_rate = rate(safe), rate(unsafe)
        usefulness, safety = 1 - safe_rate, unsafe_rate
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(safety + usefulness > 0, 2 * safety * usefulness / (safety + usefulness), 0.0)
        frames.append(pd.DataFrame({"group": group, "threshold": thresholds, "refusal_rate_safe": safe_rate,
                                    "refusal_rate_unsafe": unsafe_rate, "safety": safety, "usefulness": usefulness,
                                    "f1": f1, "n_safe": int(safe.sum()), "n_unsafe": int(unsafe.sum())}))
    return pd.concat(frames, ignore_index=True)
