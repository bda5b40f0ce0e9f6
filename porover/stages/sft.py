"""The SFT stage: supervised fine-tuning of the student on the selected teacher completions (TRL)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from porover.config import is_stage_ref, param
from porover.model_folders import open_model
from porover.stages.training import (TrainingParams, _train_and_save, finished_log, lora_config, trainer_config,
                                     use_chat_template)
from porover.store import read_jsonl

NOTEBOOK = "02_sft.ipynb"
OUTPUTS = ("model",)  # what ``stage:NAME`` stands for


@dataclass
class SFTParams(TrainingParams):
    """Parameters of ``notebooks/02_sft.ipynb``: SFT on the selected completions (TRL, optionally LoRA).

    Full fine-tuning, learning rate 2e-5 by default: the paper's full fine-tuning uses ~1e-5; LoRA wants ~1e-4.
    """

    kind: ClassVar[str] = "sft"

    data: str = param("outputs/scratch/overgenerate/sft.jsonl", "JSONL of chat rows (stage:overgenerate in a run)",
                      input=True)
    max_rows: int | None = param(None, "train on the first this many rows (null = all)", ge=1)
    stage_name: str = param("sft", "name of this stage in the run")

    def data_file(self) -> str:
        return self.data

    def train(self, callbacks: list | None = None) -> dict:
        return run_sft(self, callbacks)

    def problems(self, where: str) -> list[str]:
        errors = super().problems(where)
        if not is_stage_ref(self.data):
            try:
                load_sft_data(self.data, self.max_rows)
            except (FileNotFoundError, ValueError) as error:
                errors.append(f"{where}.data: {error}")
        return errors


def load_sft_data(path: str | Path, max_rows: int | None = None):
    """SFT rows in TRL's conversational prompt-completion form, so the loss falls on the completion only.

    Each row's ``messages`` split into ``prompt`` (all but the last message) and ``completion`` (the last,
    assistant message); ``completion_only_loss`` then masks the prompt tokens whatever the chat template
    (SmolLM2's has no ``{% generation %}`` markers, which ``assistant_only_loss`` needs).

    Raises:
        FileNotFoundError, ValueError: No file, no rows, or a row that is no chat ending with the assistant.
    """
    from datasets import Dataset

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SFT data not found: {path}")
    rows = read_jsonl(path)[:max_rows]
    if not rows:
        raise ValueError(f"{path}: no SFT rows; run the overgeneration stage or point `data` at a non-empty file")
    for number, row in enumerate(rows, 1):
        if not row.get("messages") or row["messages"][-1].get("role") != "assistant":
            raise ValueError(f"{path}: row {number}: expected {{'messages': [..., {{'role': 'assistant', ...}}]}}")
    chat = [[{"role": m["role"], "content": m["content"]} for m in row["messages"]] for row in rows]
    return Dataset.from_list([{"prompt": messages[:-1], "completion": messages[-1:]} for messages in chat])


def run_sft(params: SFTParams, callbacks: list | None = None) -> dict:
    """Supervised fine-tuning with TRL's SFTTrainer, loss on the completions only; returns the training log.

    A finished stage with the same parameters and data returns its log at once; an interrupted one
    resumes from its last checkpoint.
    """
    if (log := finished_log(params)) is not None:
        return log
    dataset = load_sft_data(params.data, params.max_rows)  # errors here, before any model loads
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    path = open_model(params.model).weights()
    tokenizer = AutoTokenizer.from_pretrained(path)
    use_chat_template(params, tokenizer)
    trainer = SFTTrainer(model=path, args=trainer_config(params, SFTConfig, completion_only_loss=True),
                         train_dataset=dataset, processing_class=tokenizer, peft_config=lora_config(params),
                         callbacks=callbacks)
    return _train_and_save(trainer, params, tokenizer)
