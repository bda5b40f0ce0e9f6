"""The MOSR-like stage: LoRA on mid-to-late layers with a RepBend-style representation loss, overlap-aware
weights and context-aware refusal augmentation — a RECONSTRUCTION of MOSR (see `porover.methods.mosr.loss`).

Writes what the other training stages write (`porover.stages.training`): ``model/`` (the adapter, evaluable as
``stage:NAME``), ``training_log.json`` and, while training, ``checkpoints/``; plus ``mosr_data.jsonl``, the
training rows with each malicious prompt's similarity and erasure weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from porover.config import param
from porover.data import load_rows, prompt_set_errors
from porover.splits import normalise
from porover.stages.training import (TrainingParams, _train_and_save, finished_log, lora_config, seed_initialisation,
                                     trainer_config)
from porover.store import read_jsonl, write_jsonl

NOTEBOOK = "10_mosr.ipynb"
OUTPUTS = ("model", "training_log.json", "mosr_data.jsonl")
TRAINING_SETS = ("benign", "pseudo_malicious", "malicious")  # prompt sets it trains on (`porover.splits`)
HELD_OUT_SETS = "exclude"  # ...less the prompts of these
REFUSALS = ["I'm sorry, but I can't help with that.",
            "I can't assist with that request, because it could cause real harm.",
            "I won't help with this. If you have a different question, I'm happy to help."]


@dataclass
class MOSRParams(TrainingParams):
    """Parameters of ``notebooks/10_mosr.ipynb``: MOSR-like training (a reconstruction; defaults: RepBend's code
    where it has one, else this workbench's stated choice)."""

    kind: ClassVar[str] = "mosr"

    benign: dict[str, int | None] = param({"alpaca": 64}, "benign prompt sets -> prompts (retain rows)", input=True)
    pseudo_malicious: dict[str, int | None] = param({"or_bench_hard:train": 32, "oktest:train": 16},
                                                    "pseudo-malicious sets -> prompts (retain rows; the overlap "
                                                    "weights compare malicious prompts with these)", input=True)
    malicious: dict[str, int | None] = param({"advbench": 32}, "malicious sets -> prompts (erase and refusal rows)",
                                             input=True)
    exclude: dict[str, int | None] = param({}, "prompt sets held out: their prompts (normalised text) never enter "
                                           "training (give the evaluation sets when a training set may hold them)",
                                           input=True)
    target_layers: list[int] = param(list(range(20, 30)), "blocks (0-based) given LoRA adapters and erased on: "
                                     "mid-to-late, as RepBend's 20-30 of 32")
    keep_all_layers: bool = param(True, "keep term over every layer (RepBend's alpha_mode=all); false: target only")
    alpha: float = param(0.5, "weight of the keep term (benign and pseudo-malicious states stay)", ge=0)
    beta: float = param(0.5, "weight of the erasure term (malicious states move away; subtracted)", ge=0)
    gamma: float = param(0.1, "weight of the cosine term (malicious last-prompt states made alike)", ge=0)
    epsilon: float = param(0.3, "weight of the KL term to the frozen model on retain rows", ge=0)
    kl_temperature: float = param(2.0, "temperature T of the KL term (scaled by T²)", gt=0)
    refusal_weight: float = param(1.0, "weight of the cross-entropy on refusal targets (plain and after a prefix)",
                                  ge=0)
    retain_positions: int = param(8, "prompt positions the representation terms read, counted back from the last",
                                  ge=1)
    overlap_layer: int = param(20, "hidden_states index whose last-prompt states give the overlap similarity")
    overlap_k: int = param(1, "similarity = mean cosine to this many nearest pseudo-malicious prompts", ge=1)
    overlap_formula: str = param("minmax", "weight from similarity: minmax (s_max−s)/(s_max−s_min) or linear 1−s",
                                 choices=("minmax", "linear"))
    overlap_min_weight: float = param(0.1, "floor of the erasure weight", ge=0, le=1)
    overlap_weighting: bool = param(True, "false: every malicious row weighs 1 (the ablation)")
    augmentation_share: float = param(0.5, "share of malicious prompts that also get a refusal after a harmful "
                                           "prefix (context-aware augmentation; 0 = ablation)", ge=0, le=1)
    prefix_words: int | None = param(None, "words of the harmful prefix kept (null = AdvBench's whole target)", ge=1)
    prefix_fallback: str = param("Sure, here is", "harmful prefix for prompts that are no AdvBench goal")
    refusals: list[str] = param(REFUSALS, "refusal targets, one drawn per row")
    system_prompt: str = param("", "system message ('' = the template's default, as the evaluate stage renders)")
    lora: bool = param(True, "MOSR trains LoRA adapters (must be true)")
    lora_target_modules: str | list[str] = param(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "module names given adapters (a list: PEFT restricts layers only for named modules)")
    lora_alpha: int = param(16, "LoRA scaling numerator (RepBend: 16)", ge=1)
    learning_rate: float = param(1e-4, "AdamW learning rate (RepBend: 1e-5 at 8B over 450 steps)", gt=0)
    lr_scheduler_type: str = param("constant", "transformers scheduler name (RepBend: constant)")
    per_device_train_batch_size: int = param(8, "rows per step (mixed kinds)", ge=2)
    max_length: int = param(128, "tokens per row (the prompt is cut from the left)", ge=16)
    stage_name: str = param("mosr", "name of this stage in the run")

    def data_file(self) -> str:
        return str(self.stage_dir / "mosr_data.jsonl")

    def train(self, callbacks: list | None = None) -> dict:
        return run_mosr(self, callbacks)

    def problems(self, where: str) -> list[str]:
        errors = super().problems(where)
        errors += prompt_set_errors(self.exclude, f"{where}.exclude")
        for key in ("benign", "pseudo_malicious", "malicious"):
            errors += prompt_set_errors(getattr(self, key), f"{where}.{key}") if getattr(self, key) else \
                [f"{where}.{key}: give at least one prompt set"]
        errors += [f"{where}.{key}: expected true" for key in ("lora",) if not getattr(self, key)]
        if self.num_processes != 1:
            errors.append(f"{where}.num_processes: MOSR-like training runs in one process; give 1")
        if isinstance(self.lora_target_modules, str):
            errors.append(f"{where}.lora_target_modules: expected a list of module names (e.g. [q_proj, v_proj]); "
                          "PEFT cannot restrict a pattern or all-linear to target_layers")
        if not self.refusals:
            errors.append(f"{where}.refusals: give at least one refusal text")
        bad = [layer for layer in self.target_layers if layer < 0]
        if bad or not self.target_layers:
            errors.append(f"{where}.target_layers: expected 0-based block indices, got {self.target_layers}")
        return errors


def build_data(params: MOSRParams) -> list[dict]:
    """Load the prompt sets, weigh each malicious prompt by its overlap with the pseudo-malicious ones (frozen
    model's states) and write ``mosr_data.jsonl``."""
    from porover.generation.sampling import render_prompts
    from porover.hidden_states import last_token_states
    from porover.methods.mosr.loss import overlap_weights, training_rows
    from porover.model_folders import open_model

    held_out = {normalise(r["prompt"]) for name, n in params.exclude.items() for r in load_rows(name, n=n, seed=params.seed)}
    sets = {key: [r for name, n in getattr(params, key).items() for r in load_rows(name, n=n, seed=params.seed)
                  if normalise(r["prompt"]) not in held_out]
            for key in ("benign", "pseudo_malicious", "malicious")}
    if not all(sets.values()):
        raise ValueError(f"{params.stage_name}: no prompts left in {[k for k, v in sets.items() if not v]} after "
                         "removing the `exclude` sets' prompts")
    model, tokenizer = open_model(params.model, device=params.device).load()
    texts = {key: render_prompts(tokenizer, [r["prompt"] for r in rows], params.system_prompt or None)
             for key, rows in sets.items()}
    layer = params.overlap_layer
    states = {key: last_token_states(model, tokenizer, value, [layer], 16, params.max_length)[layer]
              for key, value in texts.items()}
    center = np.concatenate(list(states.values())).mean(axis=0)
    similarity, weights = overlap_weights(states["malicious"], states["pseudo_malicious"], params.overlap_k,
                                          params.overlap_formula, params.overlap_min_weight, center)
    if not params.overlap_weighting:
        weights = np.ones_like(weights)
    rows = training_rows(sets["benign"], sets["pseudo_malicious"], sets["malicious"], weights, similarity,
                         params.refusals, params.augmentation_share, params.prefix_fallback, params.prefix_words,
                         params.seed)
    params.stage_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(params.data_file(), rows)
    return rows


def _trainer_class():
    """A transformers Trainer whose loss is the MOSR-like objective (`porover.methods.mosr.loss`)."""
    import torch
    from transformers import Trainer

    from porover.methods.mosr.loss import representation_losses

    class MOSRTrainer(Trainer):
        def __init__(self, *args, mosr: MOSRParams, **kwargs):
            super().__init__(*args, **kwargs)
            self.mosr, self.terms = mosr, {}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            p = self.mosr
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            with torch.no_grad(), model.disable_adapter():
                ref = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            blocks = [layer + 1 for layer in p.target_layers]  # hidden_states[0] are the embeddings
            keep = range(1, len(out.hidden_states)) if p.keep_all_layers else blocks
            terms = representation_losses(out.hidden_states, ref.hidden_states, inputs["reads"], inputs["kind"],
                                          inputs["weight"], inputs["last_prompt"], keep, blocks)
            reads = (inputs["reads"] * (inputs["kind"] == 0)[:, None]).bool()
            kl = out.logits.new_zeros(())
            if reads.any():
                t = p.kl_temperature
                kl = t * t * torch.nn.functional.kl_div(torch.log_softmax(out.logits[reads] / t, -1),
                                                        torch.log_softmax(ref.logits[reads] / t, -1),
                                                        log_target=True, reduction="batchmean")
            labels = inputs["labels"]
            refusal = out.logits.new_zeros(())
            if (labels[:, 1:] != -100).any():
                refusal = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                                            ignore_index=-100)
            loss = (p.alpha * terms["keep"] - p.beta * terms["erase"] + p.gamma * terms["cos"] + p.epsilon * kl
                    + p.refusal_weight * refusal)
            self.terms = {k: float(v.detach()) for k, v in {**terms, "kl": kl, "refusal": refusal}.items()}
            return (loss, out) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            if "loss" in logs:
                logs = {**logs, **{f"mosr_{k}": round(v, 5) for k, v in self.terms.items()}}
            super().log(logs, *args, **kwargs)

    return MOSRTrainer


def _collate(pad_id: int):
    import torch

    def collate(rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        pad = lambda key, value: torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows])  # noqa: E731
        return {"input_ids": pad("input_ids", pad_id), "labels": pad("labels", -100), "reads": pad("reads", 0).float(),
                "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"]))
                                                for r in rows]),
                "kind": torch.tensor([r["kind"] for r in rows]), "weight": torch.tensor([r["weight"] for r in rows]),
                "last_prompt": torch.tensor([r["last_prompt"] for r in rows])}

    return collate


def run_mosr(params: MOSRParams, callbacks: list | None = None) -> dict:
    """Build the weighted data, then train LoRA adapters on ``target_layers`` with the MOSR-like loss.

    The data is rebuilt first (one forward pass per prompt: its content is part of the fingerprint); a finished
    stage then returns its log, an interrupted one resumes from its last checkpoint.
    """
    rows = build_data(params)
    if (log := finished_log(params)) is not None:
        return log
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from porover.generation.sampling import render_prompts
    from porover.model_folders import open_model
    from porover.models import device_settings

    path = open_model(params.model).weights()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    from porover.methods.mosr.loss import tokenize_row

    rendered = render_prompts(tokenizer, [r["prompt"] for r in rows], params.system_prompt or None)
    dataset = Dataset.from_list([tokenize_row(tokenizer, text, row, params.max_length, params.retain_positions)
                                 for text, row in zip(rendered, rows)])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=device_settings(params.device).dtype)
    config = lora_config(params)  # MOSR's adapters sit on its target layers only
    config.layers_to_transform = params.target_layers
    seed_initialisation(params)  # the adapter's initial weights are drawn here, before the trainer seeds
    model = get_peft_model(model, config)
    args = trainer_config(params, SFTConfig, remove_unused_columns=False)
    trainer = _trainer_class()(model=model, args=args, train_dataset=dataset, data_collator=_collate(tokenizer.pad_token_id),
                               callbacks=callbacks, mosr=params)
    return _train_and_save(trainer, params, tokenizer)


def weights_table(params: MOSRParams) -> "pd.DataFrame":  # noqa: F821
    """The malicious prompts with their similarity to the pseudo-malicious ones and their erasure weight."""
    import pandas as pd

    rows = [r for r in read_jsonl(params.data_file()) if r["kind"] == "erase"]
    return pd.DataFrame(rows)[["source", "id", "similarity", "weight", "prompt", "context"]] \
        .sort_values("similarity", ascending=False)
