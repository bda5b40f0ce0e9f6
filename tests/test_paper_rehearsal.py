"""The rehearsal of ``params/paper.yaml`` itself, end to end through the runner, at its smallest size
(`porover.rehearsal`; the fast checks of substitution, preflight and stand-ins are in test_rehearsal.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from porover import rehearsal

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "params" / "paper.yaml"


@pytest.mark.slow  # ~10-15 min on the shared 2 cores (17 papermill stages, 3 two-process launches); see the report
def test_rehearsal_of_the_paper_file(tmp_path, capsys):
    """``params/paper.yaml`` end to end: every stage, FSDP/ZeRO-3 stages as DDP on 2 CPU processes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = rehearsal.rehearse(PAPER, outputs=str(tmp_path))
    failed = {s: r.get("error", "")[-2000:] for s, r in manifest["stages"].items() if r["status"] != "finished"}
    assert not failed, failed
    assert list(manifest["stages"]) == list(yaml.safe_load(PAPER.read_text())["stages"])
    out = capsys.readouterr().out
    assert "substituted (" in out and "at full scale (" in out and "total" in out
    run_dir = Path(manifest["run_dir"])
    for stage in ("sft", "dpo", "refusal_tokens"):
        log = json.loads((run_dir / stage / "training_log.json").read_text())
        assert log["num_processes"] == 2 and log["distributed_type"] == "MULTI_CPU", stage
    sft = run_dir / "sft" / "model"
    tokenizer, model = AutoTokenizer.from_pretrained(sft), AutoModelForCausalLM.from_pretrained(sft)
    assert "Cutting Knowledge Date" in tokenizer.chat_template  # the instruct template, given to the base model
    assert tokenizer.convert_tokens_to_ids("<|eot_id|>") in model.generation_config.eos_token_id
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] > ids["input_ids"].shape[1]
