"""Refusal tokens: the threshold rule, the sweep, the labelled training rows, real TRL steps (LoRA and full),
resume, steered evaluation, and the stage notebook through the runner."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from porover.methods.refusal_tokens.stage import (RefusalTokenParams, build_training_data, evaluate_thresholds,
                                                  run_sweep, train_refusal_tokens)
from porover.methods.refusal_tokens.tokens import (REFUSE, RESPOND, TokenSpec, add_refusal_tokens, choose_token,
                                                   first_token_probabilities, read_spec, refused_at, sweep)
from porover.methods.refusal_tokens.training import tokenized_rows
from porover.runs import tradeoff_curves

ROOT = Path(__file__).resolve().parents[3]
SINGLE = TokenSpec()
IDS = {REFUSE: 4, RESPOND: 5}
REFUSAL = "I'm sorry, but I cannot help with that request."
ANSWER = "Mix flour, water, salt and yeast, let it rise, then bake it at 220 degrees."


def probs_of(logits, ids=IDS, temperature=1.0):
    return first_token_probabilities(torch.tensor([logits], dtype=torch.float32), ids, temperature)[0]


def test_threshold_rule_on_hand_made_logits():
    record = probs_of([0.0, 1.0, 0.5, -1.0, 2.0, 1.5])
    expected = torch.softmax(torch.tensor([0.0, 1.0, 0.5, -1.0, 2.0, 1.5]), -1)
    p = record["p"][REFUSE]
    assert math.isclose(p, expected[4].item(), rel_tol=1e-6) and record["argmax"] == 4
    assert choose_token(record, SINGLE, threshold=p) == REFUSE  # t = p: refused (p >= t)
    assert choose_token(record, SINGLE, threshold=float(np.nextafter(p, 1))) == RESPOND
    assert choose_token(record, SINGLE, threshold=0.0) == REFUSE and choose_token(record, SINGLE, threshold=1.0) == RESPOND
    assert choose_token(record, SINGLE) == REFUSE  # unset: the likelier of the two (logit 2.0 > 1.5)
    assert choose_token(probs_of([0.0, 1.0, 0.5, -1.0, 1.5, 2.0]), SINGLE) == RESPOND
    tie = probs_of([0.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    assert choose_token(tie, SINGLE) == REFUSE  # the authors' >=: a tie refuses

    # The temperature flattens the distribution: P(refuse) at T = 2 is softmax(logits / 2).
    hot = probs_of([0.0, 1.0, 0.5, -1.0, 2.0, 1.5], temperature=2.0)
    assert math.isclose(hot["p"][REFUSE], torch.softmax(torch.tensor([0.0, 0.5, 0.25, -0.5, 1.0, 0.75]), -1)[4].item(),
                        rel_tol=1e-6)
    assert hot["p"][REFUSE] < p
    t = (hot["p"][REFUSE] + p) / 2
    assert choose_token(record, SINGLE, threshold=t) == REFUSE and choose_token(hot, SINGLE, threshold=t) == RESPOND

    # Category mode: the likeliest category token c*; thresholded iff controlled, else the model's own argmax.
    spec = TokenSpec(RESPOND, ("[A]", "[B]", REFUSE))
    ids = {"[A]": 3, "[B]": 4, REFUSE: 5, RESPOND: 6}
    a_best = probs_of([3.0, 0.0, 0.0, 2.0, 1.0, -1.0, 0.5], ids)  # argmax: token 0 (an ordinary token)
    q = a_best["p"]["[A]"]
    assert choose_token(a_best, spec, ids, threshold=q, controlled=["[A]"]) == "[A]"
    assert choose_token(a_best, spec, ids, threshold=float(np.nextafter(q, 1)), controlled=["[A]"]) == RESPOND
    assert choose_token(a_best, spec, ids, threshold=0.0, controlled=["[B]"]) == 0  # uncontrolled: model's argmax id
    b_top = probs_of([0.0, 0.0, 0.0, 1.0, 3.0, -1.0, 0.5], ids)  # [B] is also the model's argmax
    assert choose_token(b_top, spec, ids, threshold=0.99, controlled=["[A]"]) == "[B]"
    assert choose_token(b_top, spec, ids, threshold=0.99) == RESPOND  # [] controls every category
    assert choose_token(b_top, spec, ids) == "[B]"  # unset: q* vs P([respond])


def test_sweep_is_monotone_and_matches_a_direct_count():
    rng = np.random.default_rng(0)
    rows, records = [], []
    for i in range(60):
        label = "unsafe" if i % 3 == 0 else "safe"
        p_refuse = float(rng.beta(5, 2) if label == "unsafe" else rng.beta(2, 5))
        rows.append({"label": label, "source": "a" if i < 30 else "b"})
        records.append({"p": {REFUSE: p_refuse, RESPOND: (1 - p_refuse) * 0.9}, "argmax": 5})
    table = sweep(rows, records, SINGLE, ids=IDS, points=19)
    overall = table[table["group"] == "overall"].reset_index(drop=True)
    assert set(table["group"]) == {"overall", "source:a", "source:b"}
    for column in ("refusal_rate_safe", "refusal_rate_unsafe", "safety"):
        assert (np.diff(overall[column]) <= 0).all(), column  # a higher bar refuses fewer prompts
    assert (np.diff(overall["usefulness"]) >= 0).all()
    every_p = {r["p"][REFUSE] for r in records}
    assert every_p <= set(overall["threshold"]) and len(overall) == len(every_p | {(i + 1) / 20 for i in range(19)} | {1.0})
    for _, line in overall.iterrows():
        t = line["threshold"]
        unsafe = [r["p"][REFUSE] >= t for row, r in zip(rows, records) if row["label"] == "unsafe"]
        safe = [r["p"][REFUSE] >= t for row, r in zip(rows, records) if row["label"] == "safe"]
        assert line["safety"] == pytest.approx(sum(unsafe) / len(unsafe))
        assert line["usefulness"] == pytest.approx(1 - sum(safe) / len(safe))
        assert line["n_unsafe"] == len(unsafe) == 20 and line["n_safe"] == 40
        assert line["f1"] == pytest.approx(0 if line["safety"] + line["usefulness"] == 0 else
                                           2 * line["safety"] * line["usefulness"] / (line["safety"] + line["usefulness"]))

    # Category mode: the sweep's refused matrix is exactly the rule applied prompt by prompt.
    spec = TokenSpec(RESPOND, ("[A]", "[B]", REFUSE))
    ids = {"[A]": 3, "[B]": 4, REFUSE: 5, RESPOND: 6}
    cat_records = [probs_of(list(rng.normal(size=7) * 2), ids) for _ in range(40)]
    thresholds = [0.0, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0]
    matrix = refused_at(cat_records, spec, thresholds, ids, controlled=["[A]", REFUSE])
    for i, t in enumerate(thresholds):
        direct = [choose_token(r, spec, ids, t, ["[A]", REFUSE]) in spec.refusals for r in cat_records]
        assert matrix[i].tolist() == direct
    cat_rows = [{"label": "unsafe" if i % 2 else "safe", "source": "a"} for i in range(40)]
    groups = set(sweep(cat_rows, cat_records, spec, ids=ids)["group"])
    assert {"token:[A]", "token:[B]", f"token:{REFUSE}"} <= groups


def write_chat_rows(path: Path) -> Path:
    rows = []
    for i in range(3):
        rows.append({"messages": [{"role": "user", "content": f"How do I bake loaf number {i}?"},
                                  {"role": "assistant", "content": ANSWER}],
                     "source": "alpaca", "id": f"g{i}", "label": None, "category": None, "kind": "general"})
        rows.append({"messages": [{"role": "user", "content": f"Write a phishing email, version {i}."},
                                  {"role": "assistant", "content": REFUSAL}],
                     "source": "saferpaca_safety", "id": f"t{i}", "label": "unsafe", "category": None, "kind": "toxic"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


TINY = dict(per_device_train_batch_size=3, max_length=96, save_steps=1, device="cpu", logging_steps=1)


def test_training_rows_carry_the_token_of_their_judged_response(tmp_path, tiny_model):
    _, tokenizer = tiny_model
    data = write_chat_rows(tmp_path / "sft.jsonl")
    # a rule judge, so the test reads the plumbing, not a fitted judge's verdict on a one-line answer
    params = RefusalTokenParams(data=str(data), run_dir=str(tmp_path), label_judge="xstest_string_match")
    rows = build_training_data(params)
    assert [(r["id"], r["judged"], r["refusal_token"]) for r in rows] == [
        ("g0", "full_compliance", RESPOND), ("t0", "full_refusal", REFUSE), ("g1", "full_compliance", RESPOND),
        ("t1", "full_refusal", REFUSE), ("g2", "full_compliance", RESPOND), ("t2", "full_refusal", REFUSE)]
    assert rows[1]["messages"][-1]["content"] == REFUSE + REFUSAL and rows[1]["response"] == REFUSAL
    assert rows[1]["kind"] == "toxic" and rows[1]["source"] == "saferpaca_safety"  # provenance kept

    # Category tokens: a refusal takes its prompt set's token; [respond] rows are untouched.
    categories = RefusalTokenParams(data=str(data), run_dir=str(tmp_path / "c"), label_judge="xstest_string_match",
                                    categories={"saferpaca_safety": "[Requests with safety concerns]"})
    tokens = [r["refusal_token"] for r in build_training_data(categories)]
    assert tokens == [RESPOND, "[Requests with safety concerns]"] * 3
    assert categories.spec(used_refuse=False).refusals == ("[Requests with safety concerns]",)

    # Tokenized for TRL: the token is the first completion token; the prompt is masked; loss_on decides the rest.
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    ids = add_refusal_tokens(None, tok, SINGLE.tokens)
    examples, dropped = tokenized_rows(rows, tok, SINGLE, "completion")
    assert dropped == 0
    for row, example in zip(rows, examples):
        start = example["completion_mask"].index(1)
        assert example["input_ids"][start] == ids[SINGLE.tokens.index(row["refusal_token"])]
        assert tok.decode(example["input_ids"][:start]).endswith("<|im_start|>assistant\n")
        trained = tok.decode([i for i, m in zip(example["input_ids"], example["completion_mask"]) if m])
        assert trained.startswith(row["refusal_token"] + row["response"][:10]) and "<|im_end|>" in trained
    token_only, _ = tokenized_rows(rows, tok, SINGLE, "token")
    assert all(sum(e["completion_mask"]) == 1 for e in token_only)
    assert tokenized_rows(rows, tok, SINGLE, "completion", max_length=10) == ([], 6)  # no room for the token


class Killed(Exception):
    pass


class Recorder(TrainerCallback):
    """Keeps the first batch and the new token rows at the start; optionally dies after a checkpoint."""

    def __init__(self, stop_at=None, ids=(49152, 49153)):
        self.stop_at, self.ids, self.batch, self.rows, self.steps = stop_at, list(ids), None, None, 0

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, optimizer=None, **kwargs):
        self.batch = next(iter(train_dataloader))
        self.groups = [(group["lr"], sum(p.numel() for p in group["params"])) for group in optimizer.param_groups]
        self.rows = model.get_input_embeddings()(torch.tensor(self.ids)).detach().clone()
        self.trainable = [name for name, p in model.named_parameters() if p.requires_grad]

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.stop_at:
            raise Killed


@pytest.fixture(scope="module")
def lora_stage(tmp_path_factory):
    """A LoRA refusal-token stage trained 3 steps (killed after step 2 and resumed); shared by the tests below."""
    tmp = tmp_path_factory.mktemp("rtok")
    params = RefusalTokenParams(data=str(write_chat_rows(tmp / "sft.jsonl")), run_dir=str(tmp / "run"), max_steps=3,
                                learning_rate=5e-3, token_learning_rate=2e-2, benchmarks={"xstest": 4}, max_new_tokens=6, batch_size=4,
                                bootstrap_samples=20, **TINY)
    build_training_data(params)
    killed = Recorder(stop_at=2)
    with pytest.raises(Killed):
        train_refusal_tokens(params, callbacks=[killed])
    resumed = Recorder()
    log = train_refusal_tokens(params, callbacks=[resumed])
    return params, killed, resumed, log


def test_lora_adds_the_tokens_once_trains_their_rows_and_resumes(lora_stage):
    from safetensors.torch import load_file

    from porover.models import load_model

    params, killed, resumed, log = lora_stage
    assert killed.steps == 2 and resumed.steps == 1 and log["global_step"] == 3
    assert log["resumed_from"].endswith("checkpoint-2")
    # The first trained label of every sequence is its refusal token, right after the generation prompt.
    for labels in killed.batch["labels"]:
        assert labels[labels != -100][0].item() in (49152, 49153)
    assert any("trainable_tokens" in name for name in killed.trainable)  # the new rows train beside LoRA
    assert (2e-2, 2 * 576) in killed.groups  # ...at a learning rate of their own
    assert {lr for lr, _ in killed.groups} == {5e-3, 2e-2}
    assert not any(name.endswith("weight") and "embed_tokens" in name for name in killed.trainable)

    out = params.stage_dir
    assert read_spec(out / "model") == TokenSpec(RESPOND, (REFUSE,))
    model, tokenizer = load_model(str(out / "model"), device="cpu")
    assert len(tokenizer) == 49154 and tokenizer.convert_tokens_to_ids([REFUSE, RESPOND]) == [49152, 49153]
    assert add_refusal_tokens(model, tokenizer, [REFUSE, RESPOND]) == [49152, 49153] and len(tokenizer) == 49154
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert embedding.shape[0] == 49154 and embedding.data_ptr() == head.data_ptr()  # still tied, grown once
    # The merged rows are the trained ones (not the random rows the base was grown with) and moved in training.
    adapter = load_file(str(out / "model" / "adapter_model.safetensors"))  # model/ is the adapter folder
    trained = next(v for k, v in adapter.items() if "trainable_tokens_delta" in k)
    assert torch.allclose(embedding[[49152, 49153]], trained.to(embedding.dtype))
    assert not torch.allclose(killed.rows, trained.to(killed.rows.dtype), atol=1e-4)
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert train_refusal_tokens(params)["global_step"] == 3  # finished: returns its log


def test_full_fine_tuning_trains_the_new_rows(tmp_path):
    from porover.models import load_model

    params = RefusalTokenParams(data=str(write_chat_rows(tmp_path / "sft.jsonl")), run_dir=str(tmp_path / "run"),
                                lora=False, max_steps=1, learning_rate=1e-3, **TINY)
    build_training_data(params)
    seen = Recorder()
    log = train_refusal_tokens(params, callbacks=[seen])
    assert log["global_step"] == 1 and log["lora"] is False
    model, tokenizer = load_model(log["model_dir"], device="cpu")
    rows = model.get_input_embeddings().weight[[49152, 49153]].detach()
    assert len(tokenizer) == 49154 and not torch.allclose(rows, seen.rows, atol=1e-5)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_sweep_and_steered_evaluation_force_the_token_and_strip_it(lora_stage):
    from porover.store import read_jsonl

    params, *_ = lora_stage
    table = run_sweep(params)
    probabilities = read_jsonl(params.stage_dir / "probabilities.jsonl")
    assert len(probabilities) == 4 and all(0 < r["p_refusal"] < 1 for r in probabilities)
    overall = table[table["group"] == "overall"]
    assert overall["threshold"].is_monotonic_increasing and (np.diff(overall["refusal_rate_safe"]) <= 0).all()
    curves = tradeoff_curves(params.run_dir)
    assert set(curves["stage"]) == {"refusal_tokens"} and len(curves) == len(overall)

    params.thresholds = [0.0, 1.0]  # every prompt forced to [refuse], then every prompt to [respond]
    points = evaluate_thresholds(params).set_index("tag")
    assert points.loc["t0", "forced_refusal_rate"] == 1.0 and points.loc["t1", "forced_refusal_rate"] == 0.0
    for tag, token, count in (("t0", REFUSE, "n_refuse"), ("t1", RESPOND, "n_respond")):
        rows = read_jsonl(params.stage_dir / "thresholds" / tag / "responses.jsonl")
        assert len(rows) == 4 and {row["refusal_token"]["forced"] for row in rows} == {token}
        judged = [row for row in rows if row["refusal"] is not None]  # agreement leaves unparseable verdicts out
        assert points.loc[tag, count] == len(judged) and points.loc[tag, "n_refuse"] + points.loc[tag, "n_respond"] == len(judged)
        assert all("[refuse]" not in row["response"] and "[respond]" not in row["response"] for row in rows)
        metrics = json.loads((params.stage_dir / "thresholds" / tag / "metrics.json").read_text())
        assert metrics["refusal_tokens"]["threshold"] == float(tag[1:])
    generations = list((params.stage_dir / "thresholds").glob("*/generations/*.jsonl"))
    assert len({path.name for path in generations}) == 2  # another threshold is another store


@pytest.mark.slow
def test_the_refusal_token_notebook_runs_through_the_runner(tmp_path):
    from porover.runner import run_pipeline

    run = tmp_path / "run.yaml"
    run.write_text("""run_name: rtok
device: cpu
stages:
  overgenerate:
    type: overgenerate
    general_prompts: {}
    toxic_prompts: {saferpaca_safety: 4}
    toxic_teacher: recorded:saferpaca_safety
  refusal_tokens:
    type: refusal_tokens
    data: stage:overgenerate
    extra_prompts: {"or_bench_hard:train": 2}
    teacher_max_new_tokens: 8
    max_steps: 2
    per_device_train_batch_size: 2
    max_length: 96
    benchmarks: {xstest: 4, or_bench_toxic: 2}
    thresholds: [0.5]
    max_new_tokens: 6
    bootstrap_samples: 20
  evaluate_rtok:
    type: evaluate
    model: stage:refusal_tokens
    benchmarks: {xstest: 4}
    model_settings: {threshold: 0.0}
    max_new_tokens: 6
    bootstrap_samples: 20
""")
    manifest = run_pipeline(str(run), outputs=str(tmp_path / "out"))
    stages = manifest["stages"]
    assert all(s["status"] == "finished" for s in stages.values()), {k: s.get("error") for k, s in stages.items()}
    out = tmp_path / "out" / "rtok"
    assert (out / "refusal_tokens" / "model" / "refusal_tokens.json").is_file()
    assert (out / "refusal_tokens" / "thresholds.csv").read_text().count("\n") == 2
    metrics = json.loads((out / "evaluate_rtok" / "metrics.json").read_text())
    assert metrics["refusal_tokens"]["agreement"]["forced_refusal_rate"] == 1.0
    assert len(tradeoff_curves(out)) > 0
