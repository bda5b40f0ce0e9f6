"""MOSR-like training (a reconstruction): overlap weights, data, loss terms, a real tiny training run and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from porover.methods.mosr import loss as mosr


def test_overlap_weights_fall_as_similarity_rises():
    rng = np.random.default_rng(0)
    pseudo = rng.normal(size=(20, 16))
    # malicious states from "on top of a pseudo-malicious prompt" to "far away"
    malicious = np.stack([pseudo[0] * (1 - a) + a * rng.normal(size=16) for a in np.linspace(0, 1, 12)])
    for formula in ("minmax", "linear"):
        for k in (1, 3):
            similarity, weight = mosr.overlap_weights(malicious, pseudo, k=k, formula=formula, min_weight=0.1,
                                                      center=np.zeros(16))
            order = np.argsort(similarity)
            assert np.all(np.diff(weight[order]) <= 1e-12)  # monotone: more similar, less erasure pressure
            assert weight.min() >= 0.1 and weight.max() <= 1.0
    similarity, weight = mosr.overlap_weights(malicious, pseudo)
    assert similarity[0] == pytest.approx(1.0) and weight[0] == pytest.approx(0.1)
    assert weight[np.argmin(similarity)] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="formula"):
        mosr.overlap_weights(malicious, pseudo, formula="softmax")


def test_rows_carry_prefixes_weights_and_trained_tokens(tiny_model):
    _, tokenizer = tiny_model
    goal = next(iter(mosr.advbench_targets()))
    malicious = [{"source": "advbench", "id": "0", "prompt": goal}, {"source": "x", "id": "1", "prompt": "Hurt him"}]
    rows = mosr.training_rows([{"source": "alpaca", "id": "a", "prompt": "Name a fruit"}], [], malicious,
                              np.array([0.2, 1.0]), np.array([0.9, 0.1]), ["No."], augmentation_share=1.0)
    assert [r["kind"] for r in rows] == ["retain", "erase", "refusal", "refusal", "erase", "refusal", "refusal"]
    assert rows[1]["context"].startswith("Sure, here is") and rows[1]["weight"] == 0.2
    assert rows[3]["context"].startswith(rows[1]["context"]) and rows[3]["target"] == "No."
    assert rows[4]["context"] == "Sure, here is"  # no AdvBench goal: the fallback prefix
    from porover.generation.sampling import render_prompts

    text, = render_prompts(tokenizer, [goal])
    encoded = mosr.tokenize_row(tokenizer, text, rows[3], max_length=128, retain_positions=4)
    trained = [i for i, label in zip(encoded["input_ids"], encoded["labels"]) if label != -100]
    assert tokenizer.decode(trained) == "No." + tokenizer.eos_token  # only the refusal is trained on
    assert sum(encoded["reads"]) == 0 and encoded["kind"] == 2
    erase = mosr.tokenize_row(tokenizer, text, rows[1], max_length=128, retain_positions=4)
    prefix_tokens = len(tokenizer(rows[1]["context"], add_special_tokens=False)["input_ids"])
    assert sum(erase["reads"]) == 4 + prefix_tokens and set(erase["labels"]) == {-100}
    assert erase["last_prompt"] == len(erase["input_ids"]) - prefix_tokens - 1


def test_representation_terms_on_hand_made_states():
    reference = tuple(torch.zeros(3, 2, 2) for _ in range(3))
    states = tuple(torch.tensor([[[3.0, 4.0], [0, 0]], [[1.0, 0], [0, 1]], [[0, 2.0], [0, 0]]]) for _ in range(3))
    reads = torch.tensor([[1.0, 0], [1, 1], [1, 0]])
    kind = torch.tensor([0, 1, 1])  # a retain row, two erase rows
    terms = mosr.representation_losses(states, reference, reads, kind, torch.tensor([1.0, 1.0, 3.0]),
                                       torch.tensor([0, 1, 0]), keep_layers=[1, 2], target_layers=[2])
    assert float(terms["keep"]) == pytest.approx(5.0)            # |(3, 4)|
    assert float(terms["erase"]) == pytest.approx((1 * 1 + 3 * 2) / 4)  # rows' means 1 and 2, weights 1 and 3
    assert float(terms["cos"]) == pytest.approx(1 - 1.0)         # (0, 1) and (0, 2) point the same way


def test_a_real_tiny_mosr_run_trains_saves_and_resumes(tmp_path):
    from transformers import TrainerCallback

    from porover.methods.mosr.stage import MOSRParams, run_mosr, weights_table
    from porover.models import is_adapter_folder

    values = {"benign": {"alpaca": 4}, "pseudo_malicious": {"oktest:train": 4}, "malicious": {"advbench": 4},
              "target_layers": [26, 27], "max_steps": 3, "save_steps": 1, "per_device_train_batch_size": 4,
              "max_length": 64, "lora_r": 4, "run_dir": str(tmp_path), "device": "cpu", "learning_rate": 1e-3}
    params, errors = MOSRParams.validate(values, "test")
    assert errors == []

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise KeyboardInterrupt  # killed mid-training, after the step-2 checkpoint

    with pytest.raises(KeyboardInterrupt):
        run_mosr(params, callbacks=[Stop()])
    assert (params.stage_dir / "checkpoints").is_dir() and not (params.stage_dir / "training_log.json").exists()
    log = run_mosr(params)
    assert log["global_step"] == 3 and log["resumed_from"].endswith("checkpoint-1")
    assert all(np.isfinite(h["loss"]) for h in log["log_history"] if "loss" in h)
    assert is_adapter_folder(params.stage_dir / "model")
    config = json.loads((params.stage_dir / "model" / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [26, 27]
    steps = [h for h in log["log_history"] if "loss" in h]
    assert steps and all(np.isfinite(h["mosr_erase"]) and h["mosr_erase"] >= 0 for h in steps)
    assert steps[-1]["mosr_erase"] > 0  # the adapter moved the malicious states
    table = weights_table(params)
    assert len(table) == 4 and table["weight"].between(0.1, 1).all()
    assert run_mosr(params)["global_step"] == 3  # finished: the log comes back, nothing retrains
    bad, errors = MOSRParams.validate({**values, "lora": False, "num_processes": 2, "benign": {}}, "test")
    assert any("lora: expected true" in e for e in errors) and any("num_processes" in e for e in errors)
    assert any("benign: give at least one" in e for e in errors)


def test_excluded_prompts_never_enter_training(tmp_path):
    from porover.methods.mosr.stage import MOSRParams, build_data

    params, errors = MOSRParams.validate({"malicious": {"advbench": 4}, "exclude": {"advbench": None},
                                          "run_dir": str(tmp_path)}, "test")
    assert errors == []
    with pytest.raises(ValueError, match=r"no prompts left in \['malicious'\]"):
        build_data(params)
