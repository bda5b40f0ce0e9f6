"""The preference-optimization stage: DPO, IPO, TRL's other pairwise losses or KTO on the POROver pairs."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import yaml

from porover.config import is_stage_ref, param
from porover.model_folders import open_model
from porover.stages.training import (TrainingParams, _train_and_save, accelerate_config_path, finished_log, lora_config,
                                     trainer_config)
from porover.store import read_jsonl

NOTEBOOK = "05_preference_optimization.ipynb"
OUTPUTS = ("model",)  # what ``stage:NAME`` stands for
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
PAIR_KINDS = ("over_refusal", "safety_anchor")


@dataclass
class PreferenceOptimizationParams(TrainingParams):
    """Parameters of ``notebooks/05_preference_optimization.ipynb``: DPO and TRL's other preference losses.

    LoRA on and learning rate 5e-5 by default (the reference is then the same model with the adapter
    disabled); full fine-tuning wants ~5e-7.
    """

    kind: ClassVar[str] = "preference_optimization"

    pairs: str = param("outputs/scratch/preference_data/pairs.jsonl",
                       "JSONL of pairs {prompt, chosen, rejected, kind} (stage:preference_data in a run)", input=True)
    kinds: list[str] = param(["over_refusal", "safety_anchor"], "kinds of pairs to train on")
    max_pairs: int | None = param(None, "train on the first this many pairs (null = all)", ge=1)
    min_pairs: int = param(2, "fewer pairs than this stops the stage before any model loads", ge=1)
    loss_type: str = param("sigmoid", "TRL DPO loss (sigmoid = DPO, ipo, hinge, robust, apo_zero, ...) or kto",
                           choices=(*DPO_LOSSES, "kto"))
    beta: float = param(0.1, "strength of the pull towards the reference model (IPO: its τ)", gt=0)
    label_smoothing: float = param(0.0, "assumed share of flipped labels (robust DPO), ε of EXO", ge=0, lt=0.5)
    precompute_ref_log_probs: bool = param(True, "full fine-tuning: reference log-probabilities computed once first")
    lora: bool = param(True, "train a LoRA adapter (the reference is the adapter-disabled policy)")
    learning_rate: float = param(5e-5, "peak AdamW learning rate", gt=0)
    stage_name: str = param("preference_optimization", "name of this stage in the run")

    def data_file(self) -> str:
        return self.pairs

    def train(self, callbacks: list | None = None) -> dict:
        return run_preference_optimization(self, callbacks)

    def problems(self, where: str) -> list[str]:
        errors = super().problems(where)
        if not is_stage_ref(self.pairs):
            try:
                load_pairs(self.pairs, self.kinds, self.max_pairs, self.min_pairs)
            except (FileNotFoundError, ValueError) as error:
                errors.append(f"{where}.pairs: {error}")
        if self.loss_type == "kto" and self.per_device_train_batch_size < 2:
            errors.append(f"{where}.per_device_train_batch_size: KTO estimates its KL term within a batch; give >= 2")
        if self.num_processes > 1 and not self.lora and self.precompute_ref_log_probs and _zero_stage(self) == 3:
            errors.append(f"{where}.precompute_ref_log_probs: true with a DeepSpeed ZeRO-3 config "
                          f"({self.accelerate_config}): TRL 1.16 precomputes in a second ZeRO-3 engine around the "
                          "policy, and the first training step then fails in DeepSpeed's parameter coordinator "
                          "(IndexError: pop from an empty deque); give precompute_ref_log_probs: false (the "
                          "reference model is then kept, sharded like the policy) or a ZeRO-2 config")
        if not self.kinds or set(self.kinds) - set(PAIR_KINDS):
            errors.append(f"{where}.kinds: expected a non-empty list of {', '.join(PAIR_KINDS)}, got {self.kinds}")
        return errors


def _zero_stage(params) -> int | None:
    """The DeepSpeed ZeRO stage of the stage's accelerate config (None: not DeepSpeed, or no such file)."""
    config = accelerate_config_path(params.accelerate_config)
    body = (yaml.safe_load(config.read_text()) or {}) if config.is_file() else {}
    return (body.get("deepspeed_config") or {}).get("zero_stage") if body.get("distributed_type") == "DEEPSPEED" else None


def load_pairs(path: str | Path, kinds=PAIR_KINDS, max_pairs: int | None = None, min_pairs: int = 1) -> list[dict]:
    """Preference pairs of the kinds asked for; only ``prompt``, ``chosen``, ``rejected`` and ``kind`` are read.

    Raises:
        FileNotFoundError, ValueError: No file, or fewer than ``min_pairs`` pairs (message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preference pairs not found: {path}")
    pairs = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], "kind": r.get("kind", "over_refusal")}
             for r in read_jsonl(path) if r.get("kind", "over_refusal") in kinds][:max_pairs]
    if len(pairs) < min_pairs:
        raise ValueError(f"{path}: {len(pairs)} preference pair(s) of kinds {list(kinds)}, fewer than min_pairs="
                         f"{min_pairs}; the preference-data stage's summary.json names the filter that emptied it")
    return pairs


def preference_dataset(pairs: list[dict], loss_type: str = "sigmoid"):
    """Pairs in TRL's conversational form; for KTO unpaired: each chosen desirable, each rejected undesirable."""
    from datasets import Dataset

    def turn(role: str, text: str) -> list[dict]:
        return [{"role": role, "content": text}]

    if loss_type == "kto":
        return Dataset.from_list([{"prompt": turn("user", p["prompt"]), "completion": turn("assistant", p[side]),
                                   "label": side == "chosen"} for p in pairs for side in ("chosen", "rejected")])
    return Dataset.from_list([{"prompt": turn("user", p["prompt"]), "chosen": turn("assistant", p["chosen"]),
                               "rejected": turn("assistant", p["rejected"])} for p in pairs])


def shared_dataset(dataset, folder: Path, args):
    """``dataset`` saved in ``folder`` by the first rank and read back by every rank, so that its cache files are
    where every rank looks. TRL's precomputed reference log-probabilities are such a cache file, written by rank 0
    and read by all; an in-memory dataset keeps its cache files in a temporary folder of each process, where the
    other ranks never find rank 0's: a FileNotFoundError on every multi-process run with
    ``precompute_ref_log_probs``, as the paper's full-fine-tuning DPO (``args``: the stage's TRL config, whose
    ranks these are)."""
    from datasets import load_from_disk

    with args.main_process_first(local=False, desc="saving the training pairs"):
        if args.process_index == 0:
            shutil.rmtree(folder, ignore_errors=True)
            dataset.save_to_disk(str(folder))
    return load_from_disk(str(folder))


def run_preference_optimization(params: PreferenceOptimizationParams, callbacks: list | None = None) -> dict:
    """DPO (or TRL's other pairwise losses, or KTO) on the POROver pairs; returns the training log.

    With LoRA the reference model is the policy with its adapter disabled (``ref_model=None``); with full
    fine-tuning the reference log-probabilities are computed once before training
    (``precompute_ref_log_probs``), kept in ``dataset/`` beside the checkpoints (`shared_dataset`) until the stage
    finished.
    """
    if (log := finished_log(params)) is not None:
        return log
    pairs = load_pairs(params.pairs, params.kinds, params.max_pairs, params.min_pairs)
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    kto = params.loss_type == "kto"
    extra = {"beta": params.beta, "precompute_ref_log_probs": not params.lora and params.precompute_ref_log_probs}
    if not kto:
        extra.update(loss_type=[params.loss_type], label_smoothing=params.label_smoothing)
    path = open_model(params.model).weights()
    tokenizer = AutoTokenizer.from_pretrained(path)
    args = trainer_config(params, KTOConfig if kto else DPOConfig, **extra)
    dataset = shared_dataset(preference_dataset(pairs, params.loss_type), params.stage_dir / "dataset", args)
    trainer = (KTOTrainer if kto else DPOTrainer)(
        model=path, ref_model=None, args=args, train_dataset=dataset, processing_class=tokenizer,
        peft_config=lora_config(params), callbacks=callbacks)
    log = _train_and_save(trainer, params, tokenizer)
    if trainer.accelerator.is_main_process and not params.keep_checkpoints:
        shutil.rmtree(params.stage_dir / "dataset", ignore_errors=True)
    return log
