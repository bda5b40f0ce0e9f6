"""The overgeneration stage: recorded teacher, validation, reward selection, resume after a kill.

Its notebook runs by papermill in the loop of tests/test_runner.py.
"""

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from porover.generation import RecordedBackend
from porover.data import load_prompts
from porover.generation import TransformersBackend
from porover.run_file import load_run_params
from porover.stages.overgenerate import OvergenerateParams
from porover.store import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
og = importlib.import_module("porover.stages.overgenerate")  # the package re-exports a function of the same name


def test_recorded_teacher_serves_the_dataset_completions():
    rows = load_prompts("saferpaca_safety", n=3, seed=0)
    backend = RecordedBackend("saferpaca_safety")
    served = sorted(backend.generate(list(rows["prompt"])))
    assert [text for _, text, _, _ in served] == [r.strip() for r in rows["reference_response"]]
    with pytest.raises(KeyError, match="no recorded completion in 'saferpaca_safety'"):
        list(backend.generate(["Write a haiku about tea."]))
    with pytest.raises(ValueError, match="datasets with recorded completions: saferpaca_safety"):
        RecordedBackend("alpaca")


def test_recorded_teacher_stage_writes_chat_sft_rows_with_provenance(tmp_path):
    params = OvergenerateParams(teacher="recorded:saferpaca_safety", general_prompts={},
                                toxic_prompts={"saferpaca_safety": 3}, n_samples=4, run_dir=str(tmp_path))
    candidates, sft, summary = og.run_overgeneration(params)
    expected = {r["id"]: r["reference_response"].strip() for r in load_prompts("saferpaca_safety", n=3, seed=0)}
    assert len(candidates) == 3 and summary["completions_per_prompt"] == {"min": 1, "max": 1, "mean": 1.0}
    assert read_jsonl(tmp_path / "overgenerate" / "sft.jsonl") == sft
    for row in sft:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert row["messages"][1]["content"] == expected[row["id"]]
        assert (row["teacher"], row["backend"], row["sample_index"], row["n_candidates"], row["criterion"]) == (
            "recorded:saferpaca_safety", "recorded", 0, 1, "random")
        assert row["kind"] == "toxic" and row["scores"]["refusal"] in ("full_compliance", "full_refusal", "partial_refusal")
    assert json.loads((tmp_path / "overgenerate" / "summary.json").read_text())["prompts"] == {"toxic": 3}


@pytest.mark.parametrize("values, message", [
    ({"selection": "best"}, r"notebook parameters\.selection: expected one of random, reward, safety, refusal_aware, got 'best'"),
    ({"teacher": "recorded:saferpaca_safety"},
     r"notebook parameters\.teacher: recorded:saferpaca_safety has no completions for the prompts of 'alpaca'"),
    ({"toxic_teacher": "recorded:alpaca"}, r"notebook parameters\.toxic_teacher: no recorded completions in 'alpaca'"),
    ({"selection": "reward"}, r"notebook parameters\.reward_model: selection by reward .* needs a reward model"),
    ({"min_p_safe": 0.5}, r"notebook parameters\.safety_judge: selection by safety \(or min_p_safe\) needs"),
    ({"api_key_env": "sk-abc123"}, r"notebook parameters\.api_key_env: give the NAME of the environment variable"),
    ({"temperature": 0.0}, r"notebook parameters\.temperature: greedy decoding makes all 2 samples the same"),
    ({"backend": "recorded"}, r"notebook parameters\.teacher: the recorded backend needs a teacher 'recorded:<dataset>'"),
    ({"general_prompts": {"alpaca": 0}, "toxic_prompts": {}}, r"give general_prompts or toxic_prompts"),
])
def test_bad_parameters_name_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        OvergenerateParams.from_namespace(values)


def test_run_file_errors_name_file_and_key_and_toxic_amount_may_be_zero(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("stages:\n  teach:\n    type: overgenerate\n    selection: best\n    toxic_prompts: {saferpaca_safty: 2}\n")
    with pytest.raises(ValueError) as error:
        load_run_params(path)
    assert f"{path}: stages.teach.selection: expected one of random, reward" in str(error.value)
    assert f"{path}: stages.teach.toxic_prompts.saferpaca_safty: unknown dataset" in str(error.value)
    no_safety_data = OvergenerateParams.from_namespace({"toxic_prompts": {"saferpaca_safety": 0}})
    assert {r["kind"] for r in og.prompt_rows(no_safety_data)} == {"general"}


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    """A tiny random sequence-classification reward model with the embedded model's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from porover.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("reward")
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_reward_selection_thresholds_and_a_clear_error_when_nothing_clears(tmp_path, reward_model, monkeypatch):
    base = dict(teacher="recorded:saferpaca_safety", general_prompts={}, toxic_prompts={"saferpaca_safety": 6},
                reward_model=reward_model, selection="reward", device="cpu", run_dir=str(tmp_path))
    candidates, sft, _ = og.run_overgeneration(OvergenerateParams(**base))
    rewards = sorted(c["scores"]["reward"] for c in candidates)
    assert len(rewards) == 6 and all(isinstance(r, float) for r in rewards) and len(sft) == 6
    assert len(read_jsonl(tmp_path / "overgenerate" / "rewards.jsonl")) == 6

    monkeypatch.setattr(og, "reward_scores", lambda *a, **k: pytest.fail("stored rewards were computed again"))
    _, kept, summary = og.run_overgeneration(OvergenerateParams(**base, min_reward=rewards[3]))
    assert len(kept) == 3 and summary["dropped_by_thresholds"] == 3
    assert all(row["scores"]["reward"] >= rewards[3] for row in kept)
    with pytest.raises(ValueError, match=r"no candidate of any of the 6 prompts clears the thresholds min_reward=1000"):
        og.run_overgeneration(OvergenerateParams(**base, min_reward=1000.0))


CHILD = """
import sys
from porover.stages.overgenerate import run_overgeneration
from porover.stages.overgenerate import OvergenerateParams
run_overgeneration(OvergenerateParams(**eval(sys.argv[1])))
"""


def test_killed_run_resumes_without_duplicates_or_losses_and_a_finished_run_generates_nothing(
        tmp_path, tiny_model, monkeypatch):
    settings = dict(general_prompts={"alpaca": 4}, toxic_prompts={}, n_samples=2, max_new_tokens=8, batch_size=2,
                    device="cpu", run_dir=str(tmp_path))
    path = tmp_path / "overgenerate" / "completions.jsonl"
    child = subprocess.Popen([sys.executable, "-c", CHILD, repr(settings)], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and (not path.exists() or path.read_text().count("\n") < 2):
        time.sleep(0.1)
    os.killpg(child.pid, signal.SIGKILL)  # a real kill, mid-generation
    child.wait()
    before = read_jsonl(path)
    assert 2 <= len(before) < 8, "the child should be killed part way"
    with path.open("a") as handle:  # as if the kill had landed mid-write
        handle.write('{"config": "' + before[0]["config"] + '", "source": "alpaca", "id": "trunc')

    asked = []

    class Counting(TransformersBackend):
        def generate(self, prompts, *args, **kwargs):
            asked.extend(prompts)
            return super().generate(prompts, *args, **kwargs)

    monkeypatch.setattr(og, "make_backend", lambda teacher, *a, **k: Counting(*tiny_model, batch_size=2))
    candidates, sft, _ = og.run_overgeneration(OvergenerateParams(**settings))
    stored = read_jsonl(path)
    keys = [og.completion_key(r) for r in stored]
    assert len(keys) == len(set(keys)) == 8 and len(asked) == 8 - len(before)
    assert [r for r in stored[:len(before)]] == before  # nothing stored before the kill was rewritten
    assert len(candidates) == 8 and len(sft) == 4 and all(r["n_candidates"] == 2 for r in sft)
    seeds = {(r["id"], r["sample_index"]): r["sampling"]["seed"] for r in stored}
    assert all(seeds[(i, 0)] != seeds[(i, 1)] for i, _ in seeds)  # each sample has its own recorded seed

    monkeypatch.setattr(og, "make_backend", lambda *a, **k: pytest.fail("a finished run loaded a teacher"))
    again, sft_again, _ = og.run_overgeneration(OvergenerateParams(**settings))
    assert sft_again == sft and len(read_jsonl(path)) == 8


class ScriptedTeacher:
    """A teacher whose sample pass s answers every prompt as scripted: (text, finish_reason) per pass."""

    name = "scripted"
    batch_size = 8

    def __init__(self, passes):
        self.passes, self.calls = passes, 0

    def generate(self, prompts, sampling, desc="", seeds=None):
        text, finish = self.passes[self.calls]
        self.calls += 1
        for i, _ in enumerate(prompts):
            yield i, text, None if not text else 5, finish


@pytest.mark.parametrize("drop_truncated", [False, True])
def test_empty_completions_are_never_selected_and_truncated_ones_on_request(tmp_path, monkeypatch, drop_truncated):
    passes = [("", "stop"), ("Here is a full answer that was cut", "length"), ("Here is a full answer.", "stop")]
    monkeypatch.setattr(og, "make_backend", lambda *a, **k: ScriptedTeacher(passes))
    params = OvergenerateParams(general_prompts={"alpaca": 3}, toxic_prompts={}, n_samples=3,
                                drop_truncated=drop_truncated, run_dir=str(tmp_path), stage_name=f"og{drop_truncated}")
    candidates, sft, summary = og.run_overgeneration(params)
    assert len(candidates) == 9 and len(sft) == 3
    assert [c["finish_reason"] for c in candidates[:3]] == ["stop", "length", "stop"]
    assert all(r["messages"][1]["content"] for r in sft)  # the empty sample 0 is never selected
    assert all(r["finish_reason"] in ("stop", "length") for r in sft)
    if drop_truncated:
        assert {r["sample_index"] for r in sft} == {2}
    assert (summary["empty_completions"], summary["truncated_completions"]) == (3, 3)
    assert summary["dropped_truncated"] == (3 if drop_truncated else 0)
