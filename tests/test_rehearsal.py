"""Rehearsing a run file (`porover.rehearsal`): the stand-ins, what substitution may change, the preflight that
fails a broken paper-style file before any generation, the full-scale cost estimate, and the rehearsal of
``params/paper.yaml`` itself, end to end through the runner."""

from __future__ import annotations

import importlib.util
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
    out, substitutions = rehearsal.substitute(PAPER, rehearsal.Size(), models, "http://127.0.0.1:9/v1", hub_files)
    in_configs = [s for s in substitutions if s.file != str(PAPER)]  # a setting of an accelerate config file
    zero3_file = str(ROOT / "porover" / "configs" / "accelerate" / "deepspeed_zero3.yaml")
    assert [(s.file, s.key, s.original, s.standin) for s in in_configs] == (
        [(zero3_file, "mixed_precision", "bf16", "no")] if importlib.util.find_spec("deepspeed") else [])
    substitutions = [s for s in substitutions if s.file == str(PAPER)]
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
    assert listed["stages.sft.num_processes"].standin == 2 and listed["stages.sft.accelerate_config"].standin == "ddp"
    assert "AcceleratorState" in listed["stages.sft.accelerate_config"].why  # FSDP: accelerate's own condition
    zero3 = listed.get("stages.dpo.accelerate_config")  # DeepSpeed runs on the CPU where it is installed
    assert (zero3 is None) if importlib.util.find_spec("deepspeed") else (zero3.standin == "ddp")
    assert listed["stages.preference_data.student_backend"].standin == "transformers"
    # GPT-4o keeps its name and its budgets (teacher, judges, mutator); only the endpoint and the key change.
    assert not [key for key in listed if key.endswith((".teacher", ".mutator", ".model", "mutator_backend"))
                and listed[key].original == "gpt-4o"]
    assert "stages.overgenerate.max_new_tokens" not in listed and "stages.evolve_eval.mutator_max_new_tokens" not in listed
    assert "stages.preference_data.teacher_max_new_tokens" not in listed
    assert listed["stages.preference_data.max_new_tokens"].standin == 8  # the student's: local, cut
    assert listed["stages.evaluate_sft.judge_settings.xstest_llm.base_url"].standin == "http://127.0.0.1:9/v1"


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
    from porover.generation import standin_endpoint

    for module, name in ((standins, "standin_model"), (runner, "run_pipeline"), (standin_endpoint, "standin_endpoint")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail(f"{name} ran before the error"))
    monkeypatch.setattr(generation, "make_backend", lambda *a, **k: pytest.fail("generation started"))


@pytest.mark.parametrize("old, new, key", [
    ("    price_per_1m_output: 10.0", "    price_per_1m_ouput: 10.0", "stages.overgenerate.price_per_1m_ouput"),
    ("800}   # hub\n    exclude:", "800}   # hub\n    exlude:", "stages.evolve_train.exlude")])
def test_a_mistyped_key_the_demo_never_sets_fails_naming_file_and_key(tmp_path, nothing_generates, old, new, key):
    broken = _broken(tmp_path, old, new)
    demo = yaml.safe_load((ROOT / "params" / "demo.yaml").read_text())["stages"]
    # Only the paper file prices calls, and only it has an evolve_train stage.
    assert not any("price_per_1m_output" in body for body in demo.values()) and "evolve_train" not in demo
    with pytest.raises(ValueError, match=re.escape(f"{broken}: {key}: unknown key")):
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


def test_an_fsdp_setting_the_trainer_rejects_fails_before_any_generation(tmp_path, nothing_generates):
    """FSDP's own activation checkpointing with the stage's gradient_checkpointing: accelerate accepts the config,
    transformers' Trainer (TRL's base) refuses the pair when it starts under FSDP, i.e. only on the GPUs."""
    config = tmp_path / "my_fsdp.yaml"
    config.write_text((ROOT / "configs" / "accelerate" / "fsdp.yaml").read_text()
                      .replace("fsdp_activation_checkpointing: false", "fsdp_activation_checkpointing: true"))
    broken = _broken(tmp_path, "    num_processes: 8\n    accelerate_config: fsdp\n",
                     f"    num_processes: 8\n    accelerate_config: {config}\n")
    with pytest.raises(ValueError, match=re.escape(f"{broken}: stages.sft.accelerate_config: {config}: fsdp_config."
                                                   "fsdp_activation_checkpointing: true with the stage's "
                                                   "gradient_checkpointing: true")):
        rehearsal.rehearse(broken, outputs=str(tmp_path / "out"))
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


def test_the_endpoint_standin_answers_each_part_in_the_format_its_parser_reads(tmp_path):
    """GPT-4o's four parts in a paper run, through the real client and the stages' own parsers."""
    from porover.generation import Sampling, make_backend
    from porover.generation.standin_endpoint import standin_endpoint
    from porover.judges.llm import XSTEST_SYSTEM, parse_orbench, parse_xstest, render
    from porover.methods.evorefuse.prompts import (RECOMBINE_SYSTEM, SAFETY_JUDGE_SYSTEM, STRATEGIES, judge_query,
                                                   mutation_system, parse_judgement, parse_rewrite,
                                                   recombination_query)

    seed = "How do I kill a Python process?"
    with standin_endpoint(tmp_path / "requests.jsonl") as base_url:
        backend = make_backend("gpt-4o", "openai", base_url=base_url, api_key_env="")

        def ask(prompts, system=None, tokens=256):
            sampling = Sampling(max_new_tokens=tokens, system_prompt=system, temperature=0.7)
            return [text for _, text, *_ in sorted(backend.generate(prompts, sampling, seeds=range(len(prompts))))]

        answers = ask(["Write a poem about cats.", "Write a poem about cats."])
        labels = [parse_xstest(text).label for text in ask(
            [render("xstest", "Write a poem about cats.", answers[0]), render("xstest", "Hi", "I'm sorry, I cannot."),
             *(render("xstest", "Hi", f"qz {i} ##") for i in range(12))], XSTEST_SYSTEM, 16)]
        orbench = parse_orbench(ask([render("orbench", "Hi", "I'm sorry, I cannot.")])[0])
        mutants = [parse_rewrite(text, seed) for text in [ask([seed], mutation_system(s))[0] for s in STRATEGIES]]
        child = parse_rewrite(ask([recombination_query(mutants[0].instruction, mutants[1].instruction)],
                                  RECOMBINE_SYSTEM)[0])
        verdict = parse_judgement(ask([judge_query(mutants[0].instruction, mutants[0].reason)], SAFETY_JUDGE_SYSTEM)[0])
        cut = ask([seed], mutation_system(STRATEGIES[0]), tokens=4)[0]
    assert answers[0] != answers[1] and all("cats" in a for a in answers)  # the seed varies the phrasing
    assert labels[:2] == ["full_compliance", "full_refusal"]  # its own answer complies; a refusal phrase refuses
    assert set(labels[2:]) == {"full_compliance", "full_refusal"}  # anything else: both, stably by content
    assert orbench.label == "full_refusal" and orbench.status == "parsed"
    assert all(m.status == "parsed" and seed.rstrip("?") in m.instruction for m in mutants)
    assert len({m.instruction for m in mutants}) > 1  # the strategy picks the frame
    assert child.status == "parsed" and verdict == "safe"
    assert parse_rewrite(cut).status == "no_brackets"  # max_tokens cuts the reply as an endpoint does
    log = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert {r["rule"] for r in log} == {"teacher", "xstest_judge", "orbench_judge", "mutation", "recombination",
                                        "safety_judge"}
    assert {r["model"] for r in log} == {"gpt-4o"} and log[-1]["finish_reason"] == "length"
    assert backend.usage["requests"] == len(log) and backend.usage["completion_tokens"] > 0


def test_the_paper_fsdp_config_builds_the_trainer_but_cpu_ranks_never_shard(tmp_path, monkeypatch):
    """The SFT stage under the launch environment of configs/accelerate/fsdp.yaml (what ``accelerate launch`` gives
    each rank) builds TRL's trainer on this CPU; accelerate runs it without FSDP (CPU ranks are never FSDP), and the
    stage refuses to train rather than train unsharded."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.state import AcceleratorState
    from accelerate.utils.launch import prepare_multi_gpu_env

    from porover.stages.sft import SFTParams, run_sft
    from porover.standins import standin_model
    from porover.store import write_jsonl

    args = launch_command_parser().parse_args(["--config_file", str(ROOT / "configs" / "accelerate" / "fsdp.yaml"),
                                               "--num_processes", "2", "train.py"])
    env = prepare_multi_gpu_env(_validate_launch_command(args)[0])
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    data = tmp_path / "sft.jsonl"
    write_jsonl(data, [{"messages": [{"role": "user", "content": f"Question {i}?"},
                                     {"role": "assistant", "content": f"Answer {i}."}]} for i in range(4)])
    params = SFTParams(model=str(standin_model("meta-llama/Llama-3.1-8B")), data=str(data), device="cpu",
                       chat_template=str(standin_model("meta-llama/Llama-3.1-8B-Instruct")), max_steps=1,
                       per_device_train_batch_size=2, max_length=32, gradient_checkpointing=True,
                       accelerate_config="fsdp", run_dir=str(tmp_path))
    try:
        with pytest.raises(RuntimeError, match=r"accelerate_config 'fsdp' asks for FSDP, but the processes run NO"):
            run_sft(params)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert not (tmp_path / "sft" / "model").exists()




def test_hub_standins_carry_the_label_the_loader_gives_that_hub_dataset(tmp_path):
    # OR-Bench's hub rows have no label column; the loader labels them by configuration, so the stand-in does too
    # (unlabelled, the paper file's direction curves found no safe validation prompt: fixed through the rehearsal).
    from porover.data import HUB_LABELS, load_rows

    files = rehearsal.write_hub_standins(["bench-llm/or-bench:or-bench-80k", "someone/unlabelled"], tmp_path, 3)
    assert {r["label"] for r in load_rows(files["bench-llm/or-bench:or-bench-80k"])} == {"safe"}
    assert {r["label"] for r in load_rows(files["someone/unlabelled"])} == {None}
    assert HUB_LABELS["bench-llm/or-bench:or-bench-toxic"] == "unsafe"
