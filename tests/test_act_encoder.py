"""``act_encoder``: reads the act, not the topic; the shipped head reproduces its fit-time probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from porover.judges import JUDGES, act_encoder, judge_error_counts, judge_refusals
from porover.judges.sources import SOURCES


@pytest.fixture(scope="module")
def weights():
    return act_encoder.load_weights()


def test_shipped_head_reproduces_fit_time_probabilities(weights):
    checks = weights["check"]
    assert len(checks) == 4 and set(weights["fitted_on"]) == set(SOURCES)
    probs = act_encoder.predict_proba([c["prompt"] for c in checks], [c["response"] for c in checks])
    assert np.allclose(probs, [c["probabilities"] for c in checks], atol=1e-4)
    assert act_encoder.WEIGHTS_PATH.stat().st_size < 5_000_000


def test_head_training_is_deterministic_and_learns():
    prompts = ["Say something."] * 6
    responses = ["I can't do that.", "Here you go: hello!", "I won't help with this.", "Sure, hello there.",
                 "Sorry, I must decline.", "Hello! Nice to meet you."]
    labels = ["full_refusal", "full_compliance"] * 3
    states, mask = act_encoder.token_states(prompts, responses)
    assert states.shape == (6, act_encoder.LENGTH, act_encoder.HIDDEN) and mask.any(1).all()
    settings = {"epochs": 40, "lr": 5e-3, "weight_decay": 0.0, "dropout": 0.0, "batch_size": 6, "seed": 0}
    first = act_encoder.fit_head(states, mask, labels, settings)
    second = act_encoder.fit_head(states, mask, labels, settings)
    assert all(np.array_equal(first["tensors"][k], second["tensors"][k]) for k in first["tensors"])
    guess = act_encoder.predict_states(states, mask, first).argmax(1)
    assert [("full_compliance", "full_refusal", "partial_refusal")[i] for i in guess] == labels


def test_saved_weights_round_trip(tmp_path, weights):
    path = tmp_path / "head.safetensors"
    act_encoder.save_weights(weights, path, {"check": weights["check"], "fitted_on": weights["fitted_on"]})
    again = act_encoder.load_weights(path)
    assert again["settings"] == weights["settings"]
    assert all(np.array_equal(again["tensors"][k], weights["tensors"][k]) for k in weights["tensors"])


def test_empty_response_is_unparseable_and_the_judge_is_registered():
    assert "act_encoder" in JUDGES
    verdicts = judge_refusals(["Say hi", "Say hi"], ["Hi!", ""], judge="act_encoder")
    assert verdicts[0].status == "parsed" and 0.0 <= verdicts[0].score <= 1.0
    assert verdicts[1].status == "unparseable" and verdicts[1].label is None


def test_act_encoder_has_measured_error_counts():
    counts = judge_error_counts("act_encoder")
    assert counts and set(counts) == {"tp", "fn", "tn", "fp"} and sum(counts.values()) >= 600
