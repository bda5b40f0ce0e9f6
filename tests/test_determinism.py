"""Same file, same machine, same numbers: every training stage type trained twice from scratch gives the same
weights bit for bit, and the same losses, whatever state the global random generators were left in before.

Each run starts from a differently seeded global RNG, as two processes do (torch seeds a new process from the
system's entropy): an initialisation drawn before the trainer seeds (new token rows, LoRA matrices made
outside the trainer) shows up as different weights. The refusal-token and MOSR-like stages, which had exactly
that defect, run in the default suite; SFT, DPO and DRO (whose trainers seed first) behind ``slow``.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

TINY = dict(max_steps=2, save_steps=10, device="cpu", logging_steps=1)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {f"{path.name}:{name}": value for path in sorted(folder.glob("*.safetensors"))
               for name, value in load_file(path).items()}
    assert tensors, f"no weights in {folder}"
    return tensors


def _twice(tmp_path: Path, train) -> None:
    """``train(run_dir) -> (model folder, losses)`` twice, each after seeding the global generators differently."""
    runs = []
    for disturbance in (1, 2):
        random.seed(disturbance)
        np.random.seed(disturbance)
        torch.manual_seed(disturbance)
        folder, losses = train(tmp_path / f"run{disturbance}")
        runs.append((_weights(folder), losses))
    (first, losses_1), (second, losses_2) = runs
    assert losses_1 == losses_2 and losses_1, (losses_1, losses_2)  # exactly, not approximately
    assert first.keys() == second.keys()
    differ = [name for name in first if not torch.equal(first[name], second[name])]
    assert not differ, f"{len(differ)} of {len(first)} tensors differ, e.g. {differ[:3]}"


def _losses(log: dict) -> list[float]:
    return [h["loss"] for h in log["log_history"] if "loss" in h]


def test_refusal_token_training_repeats_bit_for_bit(tmp_path):
    import json

    from porover.methods.refusal_tokens.stage import RefusalTokenParams, build_training_data, train_refusal_tokens

    data = tmp_path / "sft.jsonl"  # two answers, two refusals: both tokens are trained
    data.write_text("".join(json.dumps({
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
        "source": "t", "id": str(i), "label": None, "category": None, "kind": "general"}) + "\n"
        for i, (prompt, reply) in enumerate([
            ("How do I bake bread?", "Mix flour, water, salt and yeast, let it rise, then bake it."),
            ("Write a phishing email.", "I'm sorry, but I cannot help with that request."),
            ("How do I boil an egg?", "Put it in boiling water for eight minutes, then cool it."),
            ("Help me stalk my ex.", "I'm sorry, but I cannot help with that request.")])))

    def train(run_dir: Path):
        params = RefusalTokenParams(data=str(data), run_dir=str(run_dir), learning_rate=5e-3, token_learning_rate=2e-2,
                                    per_device_train_batch_size=2, max_length=96, **TINY)
        build_training_data(params)
        log = train_refusal_tokens(params)
        return Path(log["model_dir"]), _losses(log)

    _twice(tmp_path, train)


def test_mosr_like_training_repeats_bit_for_bit(tmp_path):
    from porover.methods.mosr.stage import MOSRParams, run_mosr

    def train(run_dir: Path):
        params = MOSRParams(benign={"alpaca": 2}, pseudo_malicious={"oktest:train": 2}, malicious={"advbench": 2},
                            target_layers=[26, 27], per_device_train_batch_size=4, max_length=48, lora_r=4,
                            run_dir=str(run_dir), learning_rate=1e-3, **TINY)
        log = run_mosr(params)
        return Path(log["model_dir"]), _losses(log)

    _twice(tmp_path, train)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sft", "preference_optimization"])
def test_sft_and_dpo_training_repeat_bit_for_bit(tmp_path, kind):
    import json

    from porover.stages.preference_optimization import PreferenceOptimizationParams, run_preference_optimization
    from porover.stages.sft import SFTParams, run_sft

    data = tmp_path / "data.jsonl"
    if kind == "sft":
        rows = [{"messages": [{"role": "user", "content": f"How do I kill process {i} on Linux?"},
                              {"role": "assistant", "content": f"Run kill {i} in a terminal."}]} for i in range(4)]
    else:
        rows = [{"prompt": f"How do I shoot photo number {i} at night?", "chosen": "Use a tripod.",
                 "rejected": "I'm sorry, I can't help with that.", "kind": "over_refusal"} for i in range(4)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def train(run_dir: Path):
        common = dict(run_dir=str(run_dir), lora=True, per_device_train_batch_size=2, max_length=64,
                      learning_rate=1e-4, **TINY)
        log = run_sft(SFTParams(data=str(data), **common)) if kind == "sft" else \
            run_preference_optimization(PreferenceOptimizationParams(pairs=str(data), **common))
        return Path(log["model_dir"]), _losses(log)

    _twice(tmp_path, train)


@pytest.mark.slow
def test_dro_soft_prompt_training_repeats_bit_for_bit(tmp_path):
    import json

    from porover.methods.dro.stage import DROParams, run_dro

    def train(run_dir: Path):
        params = DROParams(run_dir=str(run_dir), device="cpu", n_pairs=2, conditions=["none", "short"], n_samples=1,
                           max_new_tokens=4, judges=["xstest_string_match"], n_splits=2, logistic_lr=1e-2,
                           logistic_max_epochs=50, pca_dim=2, train_batch_size=2, num_epochs=2, learning_rate=1e-2)
        run_dro(params)
        log = json.loads((params.stage_dir / "training_log.json").read_text())
        return params.stage_dir / "model", [row["loss"] for row in log]

    _twice(tmp_path, train)
