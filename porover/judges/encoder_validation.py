"""``act_encoder`` under leave-one-source-out and on the external checks, from cached token states.

The frozen encoder's token states of every labelled row (`porover.judges.sources.SOURCES` and `EXTERNAL`) are
computed once and cached on disk by content (``$POROVER_CACHE/act_encoder/``, as
``benchmarks/train_act_encoder.py`` caches them), so validation re-encodes nothing; each fold's held-out
predictions are cached too, keyed by the head's settings and the fold's rows and labels.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache

import numpy as np
import pandas as pd

from porover.judges.sources import EXTERNAL, labelled_responses, source_weights
from porover.vocabulary import REFUSAL_CLASSES, Verdict


def _cache_dir():
    from porover.models import cache_dir

    return cache_dir() / "act_encoder"


@lru_cache(maxsize=1)
def _all_token_states() -> tuple[dict, np.ndarray, np.ndarray]:
    """Token states of every row of `SOURCES` then `EXTERNAL` (in that order), with a (source, id) -> row index."""
    from porover.judges import act_encoder

    both = pd.concat([labelled_responses(), labelled_responses(EXTERNAL)], ignore_index=True)
    states, mask = act_encoder.cached_token_states(both["prompt"].tolist(), both["response"].tolist(), _cache_dir())
    return {key: i for i, key in enumerate(zip(both["source"], both["id"]))}, states, mask


def encoder_states_of(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Token states of labelled rows (any of `SOURCES` and `EXTERNAL`), from the cache of every row."""
    index, states, mask = _all_token_states()
    where = [index[key] for key in zip(rows["source"], rows["id"])]
    return states[where], mask[where]


def _extra(rows: pd.DataFrame) -> np.ndarray:
    from porover.judges import act_encoder

    return act_encoder.phrase_features(rows["prompt"].tolist(), rows["response"].tolist())[0]


def refitted_encoder_labels(fit_rows: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
    """``act_encoder`` re-fitted on ``fit_rows`` with the shipped head's settings, then applied to ``rows``.

    Cached on disk by the settings, the fitting rows' (source, id, label) and the scored rows' (source, id).
    """
    from porover.judges import act_encoder

    settings = act_encoder.load_weights()["settings"]
    key = hashlib.sha256(json.dumps([settings, act_encoder.PROMPT_TOKENS, act_encoder.RESPONSE_TOKENS,
                                     list(zip(fit_rows["source"], fit_rows["id"], fit_rows["label"])),
                                     list(zip(rows["source"], rows["id"]))]).encode()).hexdigest()[:20]
    path = _cache_dir() / f"fold_{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    weights = act_encoder.fit_head(*encoder_states_of(fit_rows), fit_rows["label"].tolist(), settings,
                                   extra=_extra(fit_rows),
                                   row_weight=source_weights(fit_rows["source"], settings["weighting"]))
    probs = act_encoder.predict_states(*encoder_states_of(rows), weights, _extra(rows))
    labels = [REFUSAL_CLASSES[i] for i in probs.argmax(1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(labels))
    return labels


def shipped_encoder_verdicts(rows: pd.DataFrame) -> list[Verdict]:
    """The shipped ``act_encoder``'s verdicts on labelled rows, read from the cached token states (the same
    numbers as `porover.judges.judge_refusals`, without encoding the rows again)."""
    from porover.judges import act_encoder
    from porover.judges.phrase_lr import probability_verdicts

    weights = act_encoder.load_weights()
    states, mask = encoder_states_of(rows)
    where = [i for i, response in enumerate(rows["response"]) if response.strip()]  # as probability_verdicts

    def predict(prompts, responses):
        return act_encoder.predict_states(states[where], mask[where], weights, _extra(rows.iloc[where]))

    return probability_verdicts(rows["prompt"].tolist(), rows["response"].tolist(), predict, "act_encoder")
