"""The refusal-token stage (Jain et al., arXiv 2412.06748): one SFT run, a refusal knob turned at inference.

1. Training data (`build_training_data`): the overgeneration stage's selected rows (and optionally more
   prompt sets answered by a teacher, e.g. benign look-alikes: the paper's "contrast" data), each response
   labelled by a refusal judge and prefixed with ``[refuse]`` or ``[respond]``, or with a category token
   (``categories``: a prompt set or category -> its token). Written to ``train_data.jsonl``.
2. Training (`train_refusal_tokens`): the tokens are added to the tokenizer and the (tied) embedding matrix,
   then TRL's SFTTrainer as in the SFT stage (`porover.stages.training`), full or LoRA; with LoRA the new
   token rows are trainable (PEFT ``trainable_token_indices``). The loss falls on the token and the response
   (``loss_on: completion``) or on the token only (``loss_on: token``); the prompt is always masked.
3. Sweep (`run_sweep`): one forward pass per evaluation prompt gives P(refusal token); the token-level
   refusal rates on safe and unsafe prompts as the threshold sweeps (0, 1) (``sweep.csv``).
4. Thresholds (`evaluate_thresholds`): at a few ``t``, generate with the first token forced, judge with the
   usual judges, score with intervals, and measure how often the text agrees with the forced token.

Outputs under ``run_dir/stage_name``: ``model/`` (with ``refusal_tokens.json``; with LoRA the adapter with the
trained new-token rows, merged on first use), ``train_data.jsonl``, ``probabilities.jsonl``, ``sweep.csv``,
``thresholds.csv`` (+ ``thresholds/<t>/`` evaluation folders), ``training_log.json``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from porover.config import SpendingParams, is_stage_ref, param
from porover.data import prompt_set_errors
from porover.judges import DEFAULT_JUDGE, judge_errors
from porover.methods.refusal_tokens.inference import RefusalTokenModel
from porover.methods.refusal_tokens.tokens import (REFUSE, RESPOND, SWEEP_FILE, TokenSpec, read_spec, sweep, token_ids,
                                                   token_probabilities, write_spec)
from porover.model_folders import mark_model_folder
from porover.spending import metered
from porover.stages.training import (TrainingParams, _train_and_save, finished_log, lora_config, seed_initialisation,
                                     trainer_config, use_chat_template)
from porover.store import read_jsonl, write_jsonl

NOTEBOOK = "07_refusal_tokens.ipynb"
OUTPUTS = ("model", "train_data.jsonl", "probabilities.jsonl", "sweep.csv", "thresholds.csv")
MODEL_HANDLE = RefusalTokenModel  # how the stage's model/ is opened (evaluation forces its first token)
LOSS_ON = ("completion", "token")


@dataclass
class RefusalTokenParams(TrainingParams, SpendingParams):
    """Parameters of ``notebooks/07_refusal_tokens.ipynb``: refusal-token SFT, the threshold sweep and a few
    steered evaluations. Training settings are the SFT stage's (`TrainingParams`)."""

    kind: ClassVar[str] = "refusal_tokens"

    data: str = param("outputs/scratch/overgenerate/sft.jsonl", "JSONL of chat rows to label and prefix "
                      "(stage:overgenerate in a run)", input=True)
    max_rows: int | None = param(None, "use the first this many rows of data (null = all)", ge=1)
    extra_prompts: dict[str, int | None] = param({}, "more prompt sets answered by teacher and labelled the same "
                                                 "way, e.g. benign look-alikes (contrast data) -> prompts (null = all)",
                                                 input=True)
    teacher: str = param("smollm2-135m-instruct", "model answering extra_prompts: embedded name, folder, hub id or "
                         "recorded:<dataset>", input=True)
    teacher_max_new_tokens: int = param(64, "generation budget of the teacher's answers", ge=1)
    label_judge: str = param(DEFAULT_JUDGE, "refusal judge labelling each training response [refuse] or [respond]")
    label_judge_settings: dict = param({}, "settings of label_judge")
    partial_is_refusal: bool = param(True, "partial refusals count as refusals (labelling, sweep labels and scoring)")
    respond_token: str = param(RESPOND, "token before every response that is no refusal")
    refuse_token: str = param(REFUSE, "token before refusals (and refusals no category maps)")
    categories: dict[str, str] = param({}, "category tokens: prompt set (source) or category -> its token "
                                       "({} = one refusal token)")
    loss_on: str = param("completion", "loss on the token and the response (completion) or the token only (token); "
                         "the prompt is always masked", choices=LOSS_ON)
    benchmarks: dict[str, int | None] = param({"xstest": 20}, "evaluation prompts of the sweep and the thresholds: "
                                              "benchmark name[:split] or file -> prompts (null = all)", input=True)
    softmax_temperature: float = param(1.0, "T in P = softmax(logits / T) at the first response position", gt=0)
    controlled: list[str] = param([], "category mode: the refusal tokens the threshold controls ([] = all)")
    sweep_points: int = param(99, "uniform thresholds on (0, 1) in the sweep (every observed P is added)", ge=1)
    thresholds: list[float | None] = param([], "thresholds at which to generate, judge and score (null = the "
                                           "likelier of refusal token and [respond])")
    judges: list[str] = param([DEFAULT_JUDGE], "refusal judges of the threshold evaluations; the first gives the "
                              "headline numbers")
    judge_settings: dict[str, dict] = param({}, "per-judge settings, keyed by judge name")
    max_new_tokens: int = param(64, "generation budget per response at each threshold", ge=1)
    system_prompt: str = param("", "system message before every prompt ('' = none, as in training)")
    batch_size: int = param(32, "prompts per forward pass / generate call", ge=1)
    bootstrap_samples: int = param(1000, "resamples for the 95% bootstrap intervals", ge=0)
    lora: bool = param(True, "train a LoRA adapter (with the new token rows trainable) instead of every weight")
    learning_rate: float = param(2e-4, "peak AdamW learning rate", gt=0)
    token_learning_rate: float | None = param(1e-2, "LoRA: peak learning rate of the new token rows, which start far "
                                              "from any context (null = learning_rate)", gt=0)
    stage_name: str = param("refusal_tokens", "name of this stage in the run")

    def data_file(self) -> str:
        return str(self.stage_dir / "train_data.jsonl")

    def train(self, callbacks: list | None = None) -> dict:
        return train_refusal_tokens(self, callbacks)

    def spec(self, used_refuse: bool = True) -> TokenSpec:
        """The token scheme: ``[refuse]`` alone, or the category tokens (with ``[refuse]`` for the rest)."""
        categories = list(dict.fromkeys(self.categories.values()))
        refusals = [*categories, self.refuse_token] if used_refuse or not categories else categories
        return TokenSpec(self.respond_token, tuple(dict.fromkeys(refusals)))

    def problems(self, where: str) -> list[str]:
        errors = super().problems(where)
        if not is_stage_ref(self.data) and not Path(self.data).is_file():
            errors.append(f"{where}.data: no such file: {self.data}")
        errors += prompt_set_errors(self.extra_prompts, f"{where}.extra_prompts")
        errors += prompt_set_errors(self.benchmarks, f"{where}.benchmarks")
        errors += judge_errors(self.label_judge, self.label_judge_settings, f"{where}.label_judge_settings"
                               if self.label_judge_settings else f"{where}.label_judge")
        for name in self.judges:
            errors += judge_errors(name, self.judge_settings.get(name, {}), f"{where}.judge_settings.{name}"
                                   if name in self.judge_settings else f"{where}.judges")
        if not self.judges:
            errors.append(f"{where}.judges: give at least one judge")
        tokens = [self.respond_token, self.refuse_token, *self.categories.values()]
        for token in tokens:
            if not token.strip() or token != token.strip():
                errors.append(f"{where}: refusal-token {token!r}: give a non-empty token without outer spaces")
        if self.respond_token in [self.refuse_token, *self.categories.values()]:
            errors.append(f"{where}.respond_token: {self.respond_token!r} is also a refusal token")
        refusals = self.spec().refusals
        errors += [f"{where}.controlled: {token!r} is none of the refusal tokens {list(refusals)}"
                   for token in self.controlled if token not in refusals]
        errors += [f"{where}.thresholds: {t} is outside [0, 1]" for t in self.thresholds if t is not None and not 0 <= t <= 1]
        return errors


# ------------------------------------------------------------------------------------------ training data

def token_for(row: dict, refused: bool, params: RefusalTokenParams) -> str:
    """The first token of a training response: ``[respond]``, or the refusal token of its category / prompt
    set (``categories``), else ``[refuse]``."""
    if not refused:
        return params.respond_token
    return params.categories.get(row.get("category") or "", params.categories.get(row.get("source") or "",
                                                                                   params.refuse_token))


def _teacher_rows(params: RefusalTokenParams) -> list[dict]:
    """The extra prompt sets, answered by the teacher (resumable store under ``teacher/``)."""
    from porover.data import load_rows
    from porover.generation import Sampling, generate_responses, make_backend, response_key, settings_digest
    from porover.store import JsonlStore

    prompts = [row for name, n in params.extra_prompts.items() for row in load_rows(name, n=n, seed=params.seed)]
    if not prompts:
        return []
    sampling = Sampling(max_new_tokens=params.teacher_max_new_tokens, seed=params.seed)
    store = JsonlStore(params.stage_dir / "teacher" / f"{settings_digest(params.teacher, sampling)}.jsonl",
                       key=response_key)
    backend = None
    if any(response_key(row) not in store for row in prompts):
        backend = make_backend(params.teacher, device=params.device, batch_size=params.batch_size)
    answered = generate_responses(backend, prompts, store, sampling, desc=f"{params.stage_name}: teacher")
    return [{"messages": [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}],
             **{k: row.get(k) for k in ("source", "id", "label", "category")}, "kind": "extra",
             "teacher": params.teacher} for row in answered]


@metered  # under the stage's cost cap (porover.spending)
def build_training_data(params: RefusalTokenParams) -> list[dict]:
    """Label every response with the refusal judge and prefix its token; write ``train_data.jsonl``.

    Each row keeps its provenance and gains ``judged`` (the judge's class), ``refusal_token`` and
    ``response`` (unprefixed); ``messages`` end with the prefixed assistant turn. Unparseable verdicts are
    left out.

    Raises:
        FileNotFoundError, ValueError: No data, no rows, or a row that is no chat ending with the assistant.
    """
    from porover.judges import judge_refusals
    from porover.vocabulary import is_refusal

    path = Path(params.data)
    if not path.is_file():
        raise FileNotFoundError(f"refusal-token data not found: {path}")
    rows = read_jsonl(path)[:params.max_rows]
    for number, row in enumerate(rows, 1):
        if not row.get("messages") or row["messages"][-1].get("role") != "assistant":
            raise ValueError(f"{path}: row {number}: expected {{'messages': [..., {{'role': 'assistant', ...}}]}}")
    rows = rows + _teacher_rows(params)
    if not rows:
        raise ValueError(f"{path}: no rows to train on; run the overgeneration stage or give extra_prompts")
    prompts = [next((m["content"] for m in reversed(row["messages"][:-1]) if m["role"] == "user"), "") for row in rows]
    verdicts = judge_refusals(prompts, [row["messages"][-1]["content"] for row in rows], judge=params.label_judge,
                              **params.label_judge_settings)
    out = []
    for row, verdict in zip(rows, verdicts):
        refused = is_refusal(verdict.label, params.partial_is_refusal)
        if refused is None:
            continue
        token = token_for(row, refused, params)
        response = row["messages"][-1]["content"]
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"][:-1]]
        out.append({**{k: v for k, v in row.items() if k != "messages"},
                    "messages": messages + [{"role": "assistant", "content": token + response}],
                    "response": response, "judged": verdict.label, "refusal_token": token})
    write_jsonl(params.stage_dir / "train_data.jsonl", out)
    return out


def training_summary(rows: list[dict]):
    """Rows per (kind, source, token): the data mix the model is trained on."""
    import pandas as pd

    counts = Counter((row.get("kind"), row.get("source"), row["refusal_token"]) for row in rows)
    table = pd.DataFrame([{"kind": k, "source": s, "token": t, "rows": n} for (k, s, t), n in counts.items()])
    return table.sort_values(["kind", "source", "token"], ignore_index=True) if len(table) else table


def train_refusal_tokens(params: RefusalTokenParams, callbacks: list | None = None) -> dict:
    """Add the tokens and fine-tune on ``train_data.jsonl`` (TRL SFTTrainer); returns the training log.

    A finished stage with the same parameters and data returns its log at once; an interrupted one resumes
    from its last checkpoint (`porover.stages.training`).
    """
    rows = read_jsonl(params.data_file())
    if not rows:
        raise ValueError(f"{params.data_file()}: no training rows; run build_training_data first")
    spec = params.spec(used_refuse=any(row["refusal_token"] == params.refuse_token for row in rows))
    if (log := finished_log(params)) is None:
        log = _train(params, rows, spec, callbacks)
    write_spec(Path(log["model_dir"]), spec)
    mark_model_folder(log["model_dir"], RefusalTokenModel)  # evaluation forces its first token
    return log


def _train(params: RefusalTokenParams, rows: list[dict], spec: TokenSpec, callbacks: list | None) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from porover.methods.refusal_tokens.tokens import add_refusal_tokens
    from porover.methods.refusal_tokens.training import lora_token_trainer, tokenized_rows
    from porover.model_folders import open_model
    from porover.models import device_settings

    path = open_model(params.model).weights()
    tokenizer = AutoTokenizer.from_pretrained(path)
    use_chat_template(params, tokenizer)
    settings = device_settings(params.device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype="bfloat16" if settings.bf16 else "float32")
    seed_initialisation(params)  # mean resizing draws the new token rows, before the trainer seeds
    new_ids = add_refusal_tokens(model, tokenizer, spec.tokens)
    examples, dropped = tokenized_rows(rows, tokenizer, spec, params.loss_on, params.max_length)
    if not examples:
        raise ValueError(f"every prompt is longer than max_length={params.max_length}; raise it")
    peft_config = lora_config(params)
    if peft_config is not None:  # the new rows (shared by the tied output layer) train beside the adapters
        peft_config.trainable_token_indices = {"embed_tokens": new_ids}
    config = trainer_config(params, SFTConfig, completion_only_loss=True)
    config.model_init_kwargs = None  # the model is built here (its vocabulary grew)
    trainer_class = SFTTrainer if peft_config is None else lora_token_trainer(SFTTrainer, params.token_learning_rate)
    trainer = trainer_class(model=model, args=config, train_dataset=Dataset.from_list(examples),
                            processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    log = _train_and_save(trainer, params, tokenizer)
    if dropped:
        log["dropped_rows"] = dropped
    return log


# ------------------------------------------------------------------------------------------ sweep and thresholds

def evaluation_rows(params: RefusalTokenParams) -> list[dict]:
    """The evaluation prompts, drawn as the evaluation stage draws them."""
    from porover.stages.evaluate import EvaluateParams, benchmark_rows

    return benchmark_rows(EvaluateParams(benchmarks=params.benchmarks, seed=params.seed))


def model_dir(params: RefusalTokenParams) -> Path:
    return params.stage_dir / "model"


def run_sweep(params: RefusalTokenParams):
    """P(refusal token) of every evaluation prompt (one forward pass each) and the threshold sweep.

    Writes ``probabilities.jsonl`` (each prompt with its probabilities, the model's argmax and the token the
    default rule forces) and ``sweep.csv`` (`porover.methods.refusal_tokens.tokens.sweep`); returns the sweep table.
    """
    from porover.methods.refusal_tokens.tokens import choose_token, refusal_probability
    from porover.model_folders import open_model

    folder = model_dir(params)
    spec = read_spec(folder)
    if spec is None:
        raise FileNotFoundError(f"{folder}: no refusal-token model ({folder / 'refusal_tokens.json'} missing); train first")
    rows = evaluation_rows(params)
    model, tokenizer = open_model(str(folder), device=params.device).load()
    ids = token_ids(tokenizer, spec)
    records = token_probabilities(model, tokenizer, [row["prompt"] for row in rows], spec, params.softmax_temperature,
                                  params.system_prompt or None, params.batch_size, desc=f"{params.stage_name}: sweep")
    by_id = {v: k for k, v in ids.items()}
    write_jsonl(params.stage_dir / "probabilities.jsonl", [
        {**row, "p": record["p"], "p_refusal": refusal_probability(record, spec),
         "argmax": by_id.get(record["argmax"], tokenizer.convert_ids_to_tokens(record["argmax"])),
         "default_token": choose_token(record, spec, ids, None, params.controlled)}
        for row, record in zip(rows, records)])
    table = sweep(rows, records, spec, ids=ids, controlled=params.controlled, points=params.sweep_points)
    table.to_csv(params.stage_dir / SWEEP_FILE, index=False)
    return table


def _tag(threshold: float | None) -> str:
    return "default" if threshold is None else f"t{threshold:g}"


@metered  # under the stage's cost cap (porover.spending)
def evaluate_thresholds(params: RefusalTokenParams):
    """Generate with the first token forced at each of ``params.thresholds``, judge, score.

    Each threshold is an evaluation (`porover.stages.evaluate.run_evaluation`) into ``thresholds/<t>/``;
    ``thresholds.csv`` gathers the headline metrics with their 95% intervals and the agreement of the text
    with the forced token. Returns that table.
    """
    import pandas as pd

    from porover.stages.evaluate import EvaluateParams, run_evaluation

    records = []
    for threshold in params.thresholds:
        evaluation = EvaluateParams(
            model=str(model_dir(params)), benchmarks=params.benchmarks, judges=params.judges,
            judge_settings=params.judge_settings, partial_is_refusal=params.partial_is_refusal,
            max_new_tokens=params.max_new_tokens, system_prompt=params.system_prompt, batch_size=params.batch_size,
            bootstrap_samples=params.bootstrap_samples, seed=params.seed, device=params.device, run_dir=params.run_dir,
            stage_name=f"{params.stage_name}/thresholds/{_tag(threshold)}",
            model_settings={"threshold": threshold, "temperature": params.softmax_temperature,
                            "controlled": list(params.controlled)})
        _, metrics = run_evaluation(evaluation)
        record = {"threshold": threshold, "tag": _tag(threshold)}
        for metric in ("safety", "usefulness", "f1"):
            part = metrics["overall"][metric]
            record.update({metric: part["value"], f"{metric}_low": part["low"], f"{metric}_high": part["high"],
                           f"{metric}_n": part["n"]})
        record.update(metrics["refusal_tokens"]["agreement"])
        records.append(record)
    columns = ["threshold", "tag", "safety", "safety_low", "safety_high", "safety_n", "usefulness", "usefulness_low",
               "usefulness_high", "usefulness_n", "f1", "f1_low", "f1_high", "f1_n", "refusal_after_refuse",
               "compliance_after_respond", "agreement", "forced_refusal_rate", "n_refuse", "n_respond"]
    table = pd.DataFrame(records, columns=columns)
    table.to_csv(params.stage_dir / "thresholds.csv", index=False)
    return table


def run_refusal_tokens(params: RefusalTokenParams) -> dict:
    """The whole stage outside a notebook: data, training, sweep, thresholds. Returns the training log."""
    from porover.stages.launch import run_training

    build_training_data(params)
    log = run_training(params)
    run_sweep(params)
    evaluate_thresholds(params)
    return log


def threshold_metrics(params: RefusalTokenParams) -> dict[str, dict]:
    """The ``metrics.json`` of each threshold evaluation, by its tag."""
    folder = params.stage_dir / "thresholds"
    return {path.parent.name: json.loads(path.read_text()) for path in sorted(folder.glob("*/metrics.json"))}
