"""The rehearsal of ``params/paper.yaml`` itself, end to end through the runner, at its smallest size
(`porover.rehearsal`; the fast checks of substitution, preflight and stand-ins are in test_rehearsal.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml

from porover import rehearsal

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "params" / "paper.yaml"


# Several minutes (17 papermill stages, three 2-process launches): see docs/scale-out.md for the measured times.
def test_rehearsal_of_the_paper_file(tmp_path, capsys):
    """``params/paper.yaml`` end to end at its smallest size: every stage finishes, GPT-4o's four parts answered
    through the real client, FSDP stages as DDP and the ZeRO-3 DPO as written where deepspeed is installed, each
    trained model loading as an ordinary model and generating."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = rehearsal.rehearse(PAPER, outputs=str(tmp_path))
    failed = {s: r.get("error", "")[-2000:] for s, r in manifest["stages"].items() if r["status"] != "finished"}
    assert not failed, failed
    assert list(manifest["stages"]) == list(yaml.safe_load(PAPER.read_text())["stages"])
    out = capsys.readouterr().out
    assert "substituted (" in out and "at full scale (" in out and "total" in out
    run_dir = Path(manifest["run_dir"])
    requests = [json.loads(line) for line in (run_dir / "endpoint_requests.jsonl").read_text().splitlines()]
    assert {r["rule"] for r in requests} == {"teacher", "xstest_judge", "mutation", "recombination", "safety_judge"}
    assert {r["model"] for r in requests} == {"gpt-4o"}
    for stage in ("evolve_eval", "evolve_train"):  # prompts evolved by the GPT-4o mutator, judged safe by it
        evolved = [json.loads(line) for line in (run_dir / stage / "evolved.jsonl").read_text().splitlines()]
        assert evolved and {row["mutator"] for row in evolved} == {"openai:gpt-4o"}, stage
    pairs = [json.loads(line) for line in (run_dir / "preference_data" / "pairs.jsonl").read_text().splitlines()]
    assert any(p["kind"] == "over_refusal" for p in pairs)
    zero3 = "DEEPSPEED" if importlib.util.find_spec("deepspeed") else "MULTI_CPU"
    for stage, engine in (("sft", "MULTI_CPU"), ("dpo", zero3), ("refusal_tokens", "MULTI_CPU")):
        log = json.loads((run_dir / stage / "training_log.json").read_text())
        assert log["num_processes"] == 2 and log["distributed_type"] == engine, stage
        folder = run_dir / stage / "model"
        tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
        assert "Cutting Knowledge Date" in tokenizer.chat_template  # the instruct template, given to the base model
        assert tokenizer.convert_tokens_to_ids("<|eot_id|>") in model.generation_config.eos_token_id
        ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] > ids["input_ids"].shape[1], stage
    assert not (run_dir / "dpo" / "dataset").exists()  # the shared training dataset is gone once DPO finished
