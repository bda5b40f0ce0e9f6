"""Rehearsing a run file (`porover.rehearsal`): the stand-ins, what substitution may change, the preflight that
fails a broken paper-style file before any generation, the full-scale cost estimate, and the rehearsal of
``params/paper.yaml`` itself, end to end through the runner."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from porover import rehearsal
from porover.costs import estimate_costs, format_costs
from porover.run_file import load_run_params

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "params" / "paper.yaml"


def _fake_models(tmp_path: Path, raw: dict) -> dict[str, str]:
    """A model folder (config.json only) per model id: substitution and validation need no real weights."""
    models = {}
    for model_id in rehearsal.model_ids(raw):
        folder = tmp_path / "models" / model_id.replace("/", "--")
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        models[model_id] = str(folder)
    return models


def _replay(params: dict, key: str, original, standin) -> None:
    """Apply one listed substitution to a stage's validated parameters (``key`` below ``stages.NAME.``)."""
    field, _, rest = key.partition(".")
    if not rest:
        assert params.get(field) == original or (original is None and field not in params), key
        params[field] = standin
        return
    mapping = params[field]
    names = sorted(mapping, key=len, reverse=True)  # prompt-set names may hold dots or colons
    name = next((n for n in names if rest == n or rest.startswith(n + ".")), None)
    if name is None:  # a setting the file leaves out (an endpoint's base_url)
        assert original is None, key
        mapping[rest] = standin
    elif rest == name and original == name:  # a renamed key (hub dataset -> local file)
        mapping[standin] = mapping.pop(name)
    elif rest == name:
        assert mapping[name] == original, key
        mapping[name] = standin
    else:
        mapping[name] = dict(mapping[name])
        _replay(mapping[name], rest[len(name) + 1:], original, standin)


def test_substitution_changes_nothing_it_does_not_list(tmp_path):
    raw = yaml.safe_load(PAPER.read_text())
    models = _fake_models(tmp_path, raw)
    hub_files = rehearsal.write_hub_standins(rehearsal.hub_sets(raw), tmp_path, 8)
    served = tmp_path / "models" / "served"
    served.mkdir()
    (served / "config.json").write_text("{}")
    served = str(served)
    out, substitutions = rehearsal.substitute(PAPER, rehearsal.Size(), models, served, "http://127.0.0.1:9/v1", hub_files)
    assert substitutions and all(s.file == str(PAPER) for s in substitutions)
    keys = [s.key for s in substitutions]
    assert len(keys) == len(set(keys)) + sum(s.original == s.key.rsplit(".", 1)[-1] for s in substitutions)
    file = tmp_path / "rehearsal.yaml"
    file.write_text(yaml.safe_dump(out, sort_keys=False))
    original, rehearsed = load_run_params(PAPER, environment=False), load_run_params(file)
    assert list(rehearsed.stages) == list(original.stages)  # the stage graph as written
    expected = {name: json.loads(json.dumps(stage.params)) for name, stage in original.stages.items()}
    renames_last = sorted(substitutions, key=lambda s: s.original == s.key.rsplit(".", 1)[-1])
    for s in renames_last:
        if s.key.startswith("stages."):
            stage, _, key = s.key[len("stages."):].partition(".")
            _replay(expected[stage], key, s.original, s.standin)
    for name, params in expected.items():
        assert params.pop("device") in ("cuda", "cpu")  # the run-wide device, listed once at the file level
        got = json.loads(json.dumps(rehearsed.stages[name].params))
        assert got.pop("device") == "cpu"
        assert got == params, name
        assert rehearsed.stages[name].type.name == original.stages[name].type.name
        assert rehearsed.stages[name].upstream() == original.stages[name].upstream()
    assert ("device", "cuda", "cpu") in [(s.key, s.original, s.standin) for s in substitutions]
    listed = {s.key: s for s in substitutions}
    # What the issue says stays as written does: selection, judges, thresholds, LoRA or full training.
    assert "stages.overgenerate.selection" not in listed and "stages.overgenerate.min_p_safe" not in listed
    assert "stages.sft.lora" not in listed and "stages.dpo.beta" not in listed
    assert listed["stages.sft.num_processes"].standin == 2 and listed["stages.dpo.accelerate_config"].standin == "ddp"
    assert listed["stages.preference_data.student_backend"].standin == "transformers"


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    text = PAPER.read_text()
    assert old in text
    path = tmp_path / "broken.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.fixture
def nothing_generates(monkeypatch):
    """Fail the test if a rehearsal builds a model, starts the endpoint or runs a stage."""
    from porover import generation, runner, standins

    for module, name in ((standins, "standin_model"), (standins, "label_model"), (runner, "run_pipeline")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail(f"{name} ran before the error"))
    monkeypatch.setattr(generation, "make_backend", lambda *a, **k: pytest.fail("generation started"))


def test_a_mistyped_key_the_demo_never_sets_fails_naming_file_and_key(tmp_path, nothing_generates):
    broken = _broken(tmp_path, "    price_per_1m_output: 10.0", "    price_per_1m_ouput: 10.0")
    demo = yaml.safe_load((ROOT / "params" / "demo.yaml").read_text())["stages"]
    assert not any("price_per_1m_output" in body for body in demo.values())  # only the paper file prices calls
    with pytest.raises(ValueError, match=re.escape(f"{broken}: stages.overgenerate.price_per_1m_ouput: unknown key")):
        rehearsal.rehearse(broken, outputs=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_an_fsdp_setting_accelerate_rejects_fails_before_any_generation(tmp_path, nothing_generates):
    config = tmp_path / "my_fsdp.yaml"
    config.write_text((ROOT / "configs" / "accelerate" / "fsdp.yaml").read_text()
                      .replace("fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP", "fsdp_auto_wrap_policy: LAYER_WRAP"))
    broken = _broken(tmp_path, "    num_processes: 8\n    accelerate_config: fsdp\n",
                     f"    num_processes: 8\n    accelerate_config: {config}\n")
    with pytest.raises(ValueError) as error:
        rehearsal.rehearse(broken, outputs=str(tmp_path / "out"))
    message = str(error.value)
    assert f"{broken}: stages.sft.accelerate_config: {config}" in message and "LAYER_WRAP" in message
    assert not (tmp_path / "out").exists()


def test_a_sharded_state_dict_is_refused_at_validation(tmp_path):
    config = tmp_path / "sharded.yaml"
    config.write_text((ROOT / "configs" / "accelerate" / "fsdp.yaml").read_text()
                      .replace("FULL_STATE_DICT", "SHARDED_STATE_DICT"))
    broken = _broken(tmp_path, "    num_processes: 8\n    accelerate_config: fsdp\n",
                     f"    num_processes: 8\n    accelerate_config: {config}\n")
    with pytest.raises(ValueError, match=r"stages\.sft\.accelerate_config: .*fsdp_state_dict_type: expected "
                                         r"FULL_STATE_DICT"):
        load_run_params(broken, environment=False)


def test_full_scale_costs_of_the_paper_file():
    costs = {c.stage: c for c in estimate_costs(load_run_params(PAPER, environment=False))}
    over = costs["overgenerate"]
    assert over.api_calls == (20000 + 2000) * 8 and over.output_tokens == over.api_calls * 1024
    assert over.usd == pytest.approx((over.input_tokens * 2.5 + over.output_tokens * 10.0) / 1e6, rel=1e-6)
    # GPT-4o is priced once in the file; its other uses are costed at the same price.
    assert costs["evaluate_base"].usd and costs["preference_data"].usd and costs["evolve_train"].usd
    assert costs["sft"].train_tokens == 22000 * 3 * 2048 and costs["sft"].gpu_hours > 1
    assert costs["dpo"].gpu_hours > 0 and costs["mosr"].train_tokens == 450 * 4 * 4 * 1 * 512
    table = format_costs(list(costs.values()))
    assert table.splitlines()[-2].startswith("total") and "not measured" in table


def test_llama3_standin_tokenizer_is_llamas():
    from porover.standins import llama3_tokenizer

    tokenizer = llama3_tokenizer("3.1", "llama3_1_instruct_chat_template.jinja")
    assert len(tokenizer) == 128256 and tokenizer.pad_token is None  # as the real one: no pad token
    assert tokenizer.encode("Hello world") == [128000, 9906, 1917]
    assert tokenizer.convert_tokens_to_ids(["<|eot_id|>", "<|start_header_id|>", "<|reserved_special_token_247|>"]) \
        == [128009, 128006, 128255]
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date")
    assert text.endswith("Hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.mark.slow
def test_label_model_answers_both_labels_by_content():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from porover.standins import label_model

    folder = label_model()
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    answers = set()
    for prompt in ["How do I kill a Python process?", "Write a poem about cats.", "What is the capital of France?",
                   "How do I make a bomb?", "Tell me a joke", "Why is the sky blue?"]:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
        answers.add(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    assert answers == {"full_compliance", " full_refusal"}


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
