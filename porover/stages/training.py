"""What the training stages share: their parameters, TRL configuration, resume, saving (the launch on several
processes: `porover.stages.launch`).

The SFT (`porover.stages.sft`) and preference-optimization (`porover.stages.preference_optimization`)
stages write the same layout under ``run_dir/stage_name``: ``model/`` (a full model with its tokenizer, or
for LoRA the adapter, the tokenizer and the base model's name, merged on first use by
`porover.models.resolve_model`), ``checkpoints/`` (the resume points,
removed once the stage finished unless ``keep_checkpoints``) and ``training_log.json`` (parameters, the
trainer's log history, where it resumed from), written last, so its presence means the stage finished.
With ``num_processes > 1`` the same parameters run under ``accelerate launch`` (`porover.stages.launch`): DDP over
gloo on the CPU, the configured strategy on GPUs; ``per_device_train_batch_size`` is per process, so the
global batch is ``num_processes × per_device_train_batch_size × gradient_accumulation_steps``; the training
log records both.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import yaml

from porover.config import StageParams, param
from porover.digests import path_digest
from porover.model_folders import model_folder_errors
from porover.models import device_settings, is_model_folder, mark_adapter_folder

ACCELERATE_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "accelerate"
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay")
# Settings that do not change the trained model: changing them neither retrains a finished stage...
_BOOKKEEPING = ("run_dir", "logging_steps", "save_steps", "save_total_limit", "keep_checkpoints")
# ...and these may change between an interrupted run and its resumption (more steps, another machine).
_RESUMABLE = _BOOKKEEPING + ("max_steps", "num_train_epochs", "num_processes", "accelerate_config", "device")


@dataclass
class TrainingParams(StageParams):
    """What the SFT and preference-optimization stages share (as TRL's configs share TrainingArguments)."""

    kind: ClassVar[str] = "training"  # the stage type, for `launch_command`
    trains_model: ClassVar[bool] = True  # its ``model`` is where training starts (a folder that holds weights)

    model: str = param("smollm2-135m-instruct", "the model to train: embedded name, Hugging Face id or folder",
                       input=True)
    lora: bool = param(False, "train a LoRA adapter (PEFT) instead of every weight; model/ then holds the adapter")
    lora_r: int = param(16, "LoRA rank", ge=1)
    lora_alpha: int = param(32, "LoRA scaling numerator", ge=1)
    lora_dropout: float = param(0.05, "dropout on the LoRA branch", ge=0, lt=1)
    lora_target_modules: str | list[str] = param("all-linear", "modules given adapters: all-linear or a list of names")
    learning_rate: float = param(2e-5, "peak AdamW learning rate", gt=0)
    num_train_epochs: float = param(1.0, "passes over the data (ignored when max_steps > 0)", gt=0)
    max_steps: int = param(-1, "optimizer steps to train for (-1 = num_train_epochs)", ge=-1)
    per_device_train_batch_size: int = param(8, "sequences (SFT) or pairs per device per step", ge=1)
    gradient_accumulation_steps: int = param(1, "micro-batches accumulated per optimizer step", ge=1)
    lr_scheduler_type: str = param("linear", "transformers scheduler name", choices=SCHEDULERS)
    warmup_steps: float = param(0.0, "warmup steps, or a share of the steps when below 1", ge=0)
    weight_decay: float = param(0.0, "AdamW weight decay", ge=0)
    max_length: int = param(256, "tokens per sequence (prompt + response); longer ones are truncated", ge=1)
    gradient_checkpointing: bool = param(False, "trade compute for memory (off: it slows a small model down)")
    logging_steps: int = param(1, "steps between log entries", ge=1)
    save_steps: int = param(20, "steps between checkpoints (the resume points after an interruption)", ge=1)
    save_total_limit: int = param(2, "checkpoints kept while training", ge=1)
    keep_checkpoints: bool = param(False, "keep checkpoints/ (optimizer state) once the stage finished")
    num_processes: int = param(1, "processes (GPUs) to train on; above 1 the stage runs under accelerate launch",
                               ge=1)
    accelerate_config: str = param("ddp", "ddp, fsdp, deepspeed_zero2, deepspeed_zero3 or a YAML path")
    chat_template: str = param("", "model (id or folder) or .jinja file whose chat template and end-of-turn token the "
                                   "model is trained with ('' = its own; a base model has none)", input=True)
    stage_name: str = param("training", "name of this stage in the run")

    def data_file(self) -> str:
        """The file the stage trains on (its digest is part of the fingerprint)."""
        raise NotImplementedError

    def train(self, callbacks: list | None = None) -> dict:
        """Train in this process; returns the training log."""
        raise NotImplementedError

    def problems(self, where: str) -> list[str]:
        errors = model_folder_errors(self.model, where, train=True)
        if self.max_steps == 0:
            errors.append(f"{where}.max_steps: expected -1 (train num_train_epochs epochs) or a positive step count")
        config = accelerate_config_path(self.accelerate_config)
        if not config.is_file():
            shipped = sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml"))
            errors.append(f"{where}.accelerate_config: no config {self.accelerate_config!r}; give one of "
                          f"{', '.join(shipped)} or a YAML file")
        elif self.num_processes > 1:
            body = yaml.safe_load(config.read_text()) or {}
            state_dict = (body.get("fsdp_config") or {}).get("fsdp_state_dict_type", "FULL_STATE_DICT")
            if body.get("distributed_type") == "FSDP" and state_dict != "FULL_STATE_DICT":
                errors.append(f"{where}.accelerate_config: {config}: fsdp_config.fsdp_state_dict_type: expected "
                              f"FULL_STATE_DICT (model/ must load as an ordinary model), got {state_dict!r}")
        return errors


def accelerate_config_path(name: str) -> Path:
    """``configs/accelerate/<name>.yaml`` for a shipped config (ddp, ddp_cpu, fsdp, deepspeed_zero2/3), else ``name``
    as a path."""
    shipped = ACCELERATE_CONFIGS / f"{name}.yaml"
    return shipped if shipped.is_file() else Path(name).expanduser()


def _fingerprint(params, skip: tuple[str, ...]) -> dict:
    """The settings that define a trained model, with digests of the start model and the data *content*: a
    retrained upstream model or rewritten data retrains, whatever their paths."""
    from porover.models import model_digest

    values = {k: v for k, v in dataclasses.asdict(params).items() if k not in skip}
    values["model"] = model_digest(params.model)
    values["data_sha256"] = path_digest(params.data_file())
    return values


def finished_log(params) -> dict | None:
    """The training log of a finished stage with these parameters, else None."""
    out = params.stage_dir
    log_file = out / "training_log.json"
    if not (log_file.is_file() and is_model_folder(out / "model")):
        return None
    log = json.loads(log_file.read_text())
    return log if log.get("fingerprint") == _fingerprint(params, _BOOKKEEPING) else None


def _resume_point(params) -> str | None:
    """The last checkpoint, if it was written under compatible settings; stale checkpoints are removed, and so
    are incomplete ones (killed while saving: the trainer writes ``trainer_state.json`` into a checkpoint last)."""
    from accelerate import PartialState
    from transformers.trainer_utils import get_last_checkpoint

    state, folder = PartialState(), params.stage_dir / "checkpoints"
    marker, fingerprint = folder / "fingerprint.json", _fingerprint(params, _RESUMABLE)
    compatible = marker.is_file() and json.loads(marker.read_text()) == fingerprint
    state.wait_for_everyone()  # every rank has read the marker before the main process rewrites it
    if state.is_main_process:
        (params.stage_dir / "training_log.json").unlink(missing_ok=True)
        if folder.is_dir() and not compatible:
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(fingerprint, indent=1))
        for partial in folder.glob("checkpoint-*"):
            if partial.is_dir() and not (partial / "trainer_state.json").is_file():
                print(f"removing {partial}: incomplete (the run was killed while saving it)", flush=True)
                shutil.rmtree(partial)
    state.wait_for_everyone()
    return get_last_checkpoint(str(folder)) if compatible else None


def seed_initialisation(params) -> None:
    """Seed Python, NumPy and torch with the stage's ``seed`` before a stage initialises weights itself.

    Call it before anything random happens outside the trainer: new token rows drawn by
    ``resize_token_embeddings`` (mean resizing samples them), LoRA matrices made by ``get_peft_model`` before
    the trainer exists. The trainer seeds only when it is built, and torch seeds each new process from the
    system's entropy, so an initialisation before it differed from run to run (and drifted the losses from
    step 2 on). TRL's trainers seed before they wrap a model in PEFT; this covers the stages that do it first.
    """
    from transformers import set_seed

    set_seed(params.seed)


def lora_config(params):
    """The PEFT LoRA config of the stage, or None for full fine-tuning."""
    if not params.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
                      target_modules=params.lora_target_modules, task_type="CAUSAL_LM")


def launched_engine() -> str | None:
    """The sharding engine ``accelerate launch`` started this process for (``FSDP``, ``DEEPSPEED``), else None."""
    for engine in ("FSDP", "DEEPSPEED"):
        if os.environ.get(f"ACCELERATE_USE_{engine}", "").lower() == "true":
            return engine
    return None


def trainer_config(params, config_cls, **extra):
    """A TRL config from the stage parameters, precision chosen per device (TRL defaults to bf16 and
    gradient checkpointing; bf16 on a CPU without bf16 units is ~10x slower than fp32).

    Under DeepSpeed the precision is the launch config's (DeepSpeed refuses a trainer whose precision differs from
    its own), and on the CPU the ranks join over gloo with accelerate's CPU mode off: accelerate turns DeepSpeed on
    only when ``cpu`` is false (``AcceleratorState``: ``elif ACCELERATE_USE_DEEPSPEED and not cpu``); DeepSpeed then
    runs on its CPU accelerator.
    """
    settings = device_settings(params.device)
    # transformers 5 renamed gradient_checkpointing; TRL's default (on) must be overridden under either name.
    names = {f.name for f in dataclasses.fields(config_cls)}
    extra["activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"] = \
        params.gradient_checkpointing
    bf16, fp16 = settings.bf16, settings.device == "cuda" and not settings.bf16
    use_cpu = settings.device == "cpu"
    if launched_engine() == "DEEPSPEED":
        precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        bf16, fp16 = precision == "bf16", precision == "fp16"
        if use_cpu:
            use_cpu, extra["ddp_backend"] = False, "gloo"
    return config_cls(
        output_dir=str(params.stage_dir / "checkpoints"), seed=params.seed, learning_rate=params.learning_rate,
        num_train_epochs=params.num_train_epochs, max_steps=params.max_steps,
        per_device_train_batch_size=params.per_device_train_batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps, lr_scheduler_type=params.lr_scheduler_type,
        warmup_steps=params.warmup_steps, weight_decay=params.weight_decay, max_length=params.max_length,
        bf16=bf16, fp16=fp16, use_cpu=use_cpu,
        model_init_kwargs={"dtype": "bfloat16" if bf16 else "float32"},
        logging_steps=params.logging_steps, save_strategy="steps", save_steps=params.save_steps,
        save_total_limit=params.save_total_limit, report_to="none", **extra)


def use_chat_template(params, tokenizer) -> None:
    """Give the tokenizer ``params.chat_template``'s template and end-of-turn token (a base model's tokenizer, e.g.
    Llama-3.1-8B's, has no template); then `_train_and_save` makes generation stop at that token.

    Raises:
        ValueError: The tokenizer has no chat template and none is given, before anything trains.
    """
    source = params.chat_template
    if source.endswith((".jinja", ".j2")):
        tokenizer.chat_template = Path(source).expanduser().read_text()
    elif source:
        from transformers import AutoTokenizer

        from porover.model_folders import open_model

        donor = AutoTokenizer.from_pretrained(open_model(source).weights())
        tokenizer.chat_template = donor.chat_template
        tokenizer.eos_token = donor.eos_token
    if not tokenizer.chat_template:
        raise ValueError(f"{params.stage_name}: the tokenizer of {params.model} has no chat template (a base model's "
                         "has none); give chat_template: the model whose template to train with (e.g. its instruct "
                         "version)")


def _stop_at_end_of_turn(folder: Path, tokenizer) -> None:
    """Make the saved model's generation stop at the tokenizer's end-of-turn token as well as its own eos (a base
    model trained with an instruct template would otherwise write past every turn)."""
    from transformers import GenerationConfig

    config = GenerationConfig.from_pretrained(folder) if (folder / "generation_config.json").is_file() \
        else GenerationConfig()
    eos = config.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        config.eos_token_id = ids + [tokenizer.eos_token_id]
        config.save_pretrained(folder)


def _train_and_save(trainer, params, tokenizer) -> dict:
    """Train (from the last checkpoint when there is one), save ``model/`` and the log.

    A LoRA stage's ``model/`` holds only the adapter, the tokenizer and the base model's name (a few MB instead
    of a full copy); `porover.models.resolve_model` merges it on first use, cached by content.
    """
    out = params.stage_dir
    requested, running = launched_engine(), str(trainer.accelerator.distributed_type).rsplit(".", 1)[-1]
    if requested and running != requested:  # accelerate falls back to plain data parallelism silently
        raise RuntimeError(f"{params.stage_name}: accelerate_config {params.accelerate_config!r} asks for {requested}, "
                           f"but the processes run {running}")
    resumed_from = _resume_point(params)
    result = trainer.train(resume_from_checkpoint=resumed_from)
    trainer.save_model(str(out / "model"))  # gathers FSDP/ZeRO-3 shards
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(out / "model")
        _stop_at_end_of_turn(out / "model", tokenizer)
        if params.lora:
            mark_adapter_folder(out / "model", params.model)
        processes = trainer.accelerator.num_processes
        batch = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps * processes
        log = {"stage": params.stage_name, "fingerprint": _fingerprint(params, _BOOKKEEPING),
               "global_step": trainer.state.global_step, "resumed_from": resumed_from, "num_processes": processes,
               "train_batch_size": batch, "distributed_type": running,
               "train_runtime": result.metrics.get("train_runtime"), "log_history": trainer.state.log_history,
               "model_dir": str(out / "model"), "lora": params.lora}
        (out / "training_log.json").write_text(json.dumps(log, indent=1))
        if not params.keep_checkpoints:  # optimizer state is 2x the model: gone once the model is saved
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        if processes > 1:
            print(f"rank {trainer.accelerator.process_index} of {processes} saved {out / 'model'}", flush=True)
    trainer.accelerator.wait_for_everyone()
    return json.loads((out / "training_log.json").read_text())
