"""What the training stages share: their parameters, TRL configuration, resume, saving and launch.

The SFT (`porover.stages.sft`) and preference-optimization (`porover.stages.preference_optimization`)
stages write the same layout under ``run_dir/stage_name``: ``model/`` (a full model with its tokenizer, or
for LoRA the adapter, the tokenizer and the base model's name, merged on first use by
`porover.models.resolve_model`), ``checkpoints/`` (the resume points,
removed once the stage finished unless ``keep_checkpoints``) and ``training_log.json`` (parameters, the
trainer's log history, where it resumed from), written last, so its presence means the stage finished.
With ``num_processes > 1`` the same parameters run under ``accelerate launch`` (`launch_command`): DDP over
gloo on the CPU, the configured strategy on GPUs; ``per_device_train_batch_size`` is per process, so the
global batch is ``num_processes × per_device_train_batch_size × gradient_accumulation_steps``; the training
log records both.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
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
GPU_ONLY_CONFIGS = ("fsdp", "deepspeed_zero2", "deepspeed_zero3")
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
        if not accelerate_config_path(self.accelerate_config).is_file():
            shipped = sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml"))
            errors.append(f"{where}.accelerate_config: no config {self.accelerate_config!r}; give one of "
                          f"{', '.join(shipped)} or a YAML file")
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
    """The last checkpoint, if it was written under compatible settings; stale checkpoints are removed."""
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
    state.wait_for_everyone()
    return get_last_checkpoint(str(folder)) if compatible else None


def lora_config(params):
    """The PEFT LoRA config of the stage, or None for full fine-tuning."""
    if not params.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
                      target_modules=params.lora_target_modules, task_type="CAUSAL_LM")


def trainer_config(params, config_cls, **extra):
    """A TRL config from the stage parameters, precision chosen per device (TRL defaults to bf16 and
    gradient checkpointing; bf16 on a CPU without bf16 units is ~10x slower than fp32)."""
    from transformers import set_seed

    # Before the trainer builds the model: the training seed draws the LoRA initialisation too, not only the data
    # order and dropout, so repeats over seeds (a sweep's `seeds`) differ in everything a seed decides.
    set_seed(params.seed)
    settings = device_settings(params.device)
    # transformers 5 renamed gradient_checkpointing; TRL's default (on) must be overridden under either name.
    names = {f.name for f in dataclasses.fields(config_cls)}
    extra["activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"] = \
        params.gradient_checkpointing
    return config_cls(
        output_dir=str(params.stage_dir / "checkpoints"), seed=params.seed, learning_rate=params.learning_rate,
        num_train_epochs=params.num_train_epochs, max_steps=params.max_steps,
        per_device_train_batch_size=params.per_device_train_batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps, lr_scheduler_type=params.lr_scheduler_type,
        warmup_steps=params.warmup_steps, weight_decay=params.weight_decay, max_length=params.max_length,
        bf16=settings.bf16,
        fp16=settings.device == "cuda" and not settings.bf16, use_cpu=settings.device == "cpu",
        model_init_kwargs={"dtype": "bfloat16" if settings.bf16 else "float32"},
        logging_steps=params.logging_steps, save_strategy="steps", save_steps=params.save_steps,
        save_total_limit=params.save_total_limit, report_to="none", **extra)


def _train_and_save(trainer, params, tokenizer) -> dict:
    """Train (from the last checkpoint when there is one), save ``model/`` and the log.

    A LoRA stage's ``model/`` holds only the adapter, the tokenizer and the base model's name (a few MB instead
    of a full copy); `porover.models.resolve_model` merges it on first use, cached by content.
    """
    out = params.stage_dir
    resumed_from = _resume_point(params)
    result = trainer.train(resume_from_checkpoint=resumed_from)
    trainer.save_model(str(out / "model"))  # gathers FSDP/ZeRO-3 shards
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(out / "model")
        if params.lora:
            mark_adapter_folder(out / "model", params.model)
        processes = trainer.accelerator.num_processes
        batch = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps * processes
        log = {"stage": params.stage_name, "fingerprint": _fingerprint(params, _BOOKKEEPING),
               "global_step": trainer.state.global_step, "resumed_from": resumed_from, "num_processes": processes,
               "train_batch_size": batch,
               "train_runtime": result.metrics.get("train_runtime"), "log_history": trainer.state.log_history,
               "model_dir": str(out / "model"), "lora": params.lora}
        (out / "training_log.json").write_text(json.dumps(log, indent=1))
        if not params.keep_checkpoints:  # optimizer state is 2x the model: gone once the model is saved
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        if processes > 1:
            print(f"rank {trainer.accelerator.process_index} of {processes} saved {out / 'model'}", flush=True)
    trainer.accelerator.wait_for_everyone()
    return json.loads((out / "training_log.json").read_text())


def launch_device(params) -> str:
    """Where the launched processes train: ``params.device``, with "auto" resolved as `device_settings` does."""
    if params.device != "auto":
        return params.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def launch_config(params) -> Path:
    """The accelerate config of the launch: ``accelerate_config``, with ``ddp`` on CPU meaning ``ddp_cpu``.

    Raises:
        ValueError: A sharded config (fsdp, deepspeed_*) on the CPU, which they do not run on.
    """
    name = params.accelerate_config
    if launch_device(params) == "cpu" and name in GPU_ONLY_CONFIGS:
        raise ValueError(f"accelerate_config {name!r} shards the model over GPUs; on the CPU give 'ddp' "
                         f"(DDP over gloo, configs/accelerate/ddp_cpu.yaml) or a config file of your own")
    if launch_device(params) == "cpu" and name == "ddp":
        name = "ddp_cpu"
    return accelerate_config_path(name)


def launch_command(params, params_file: str | Path | None = None) -> list[str]:
    """The ``accelerate launch`` command that runs this stage on ``num_processes`` processes.

    The stage parameters are written to ``params_file`` (default ``<stage>/launch_params.yaml``), which
    ``python -m porover.train_cli`` reads back, so the launched run trains exactly what the notebook asked for.
    """
    kind = params.kind
    config = launch_config(params)
    params_file = Path(params_file or params.stage_dir / "launch_params.yaml")
    params_file.parent.mkdir(parents=True, exist_ok=True)
    params_file.write_text(yaml.safe_dump(dataclasses.asdict(params), sort_keys=False))
    accelerate = Path(sys.executable).with_name("accelerate")
    return [str(accelerate) if accelerate.is_file() else "accelerate", "launch", "--config_file", str(config),
            "--num_processes", str(params.num_processes), "-m", "porover.train_cli", kind, str(params_file)]


def launch_env(params) -> dict[str, str]:
    """The environment of the launched processes: this process's (a notebook kernel's included), with this
    ``porover`` first on ``PYTHONPATH`` and unbuffered output; on CPU, accelerate sets ``OMP_NUM_THREADS``
    to physical cores / processes unless it is set here."""
    package_root = str(Path(__file__).resolve().parent.parent.parent)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])])
    if launch_device(params) == "cpu":
        env["ACCELERATE_USE_CPU"] = "true"
    return env


def _failure_summary(output: str, lines: int = 25) -> str:
    """The first Python traceback in a failed launch's output (the rank that failed first) and its last lines."""
    text = [re.sub(r"^\[rank\d+\]: ?", "", line) for line in output.replace("\r", "\n").splitlines() if line.strip()]
    starts = [i for i, line in enumerate(text) if line.startswith("Traceback (most recent call last)")]
    traceback = []
    if starts:
        end = next((i for i in range(starts[0] + 1, len(text)) if not text[i].startswith((" ", "\t"))), len(text) - 1)
        while end + 1 < len(text) and text[end + 1].startswith((" ", "\t")):  # a message of several lines
            end += 1
        traceback = text[starts[0]:end + 1]
    # Ranks write to one stream, so their tracebacks can interleave: also show the first exception line whole,
    # with the indented lines of its message, wherever it landed.
    errors = [i for i, line in enumerate(text) if re.match(r"^[\w.]*(Error|Exception): ", line)]
    error = []
    if errors and text[errors[0]] not in traceback:
        end = errors[0]
        while end + 1 < len(text) and text[end + 1].startswith((" ", "\t")):
            end += 1
        error = text[errors[0]:end + 1]
    tail = text[-lines:]
    return "\n".join(traceback + error + (["..."] if traceback and tail else []) + tail)


def _launch(command: list[str], env: dict[str, str], log_file: Path) -> None:
    """Run the launch, its output (all ranks, stdout and stderr) shown here as it comes and kept in ``log_file``.

    Raises:
        RuntimeError: The launch failed; the message has the failing rank's traceback and the last lines.
    """
    kept, decoder = "", codecs.getincrementaldecoder("utf-8")(errors="replace")  # a chunk may end mid-character
    with open(log_file, "wb") as log, subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                                       stderr=subprocess.STDOUT) as process:
        try:
            while chunk := process.stdout.read1(65536):
                log.write(chunk)
                log.flush()
                text = decoder.decode(chunk)
                sys.stdout.write(text)
                sys.stdout.flush()
                kept = (kept + text)[-200_000:]
        except BaseException:  # an interrupted notebook cell stops the launch (torchrun stops its ranks)
            process.terminate()
            raise
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}\nexited with status {process.returncode}; the full output is in "
                           f"{log_file}. The failure:\n{_failure_summary(kept)}")


def run_training(params, callbacks: list | None = None) -> dict:
    """Run a training stage in this process, or under ``accelerate launch`` when ``num_processes > 1``.

    A launch shows the output of every rank as it comes and keeps it in ``<stage>/launch.log``; callbacks
    apply to in-process runs only.

    Returns:
        The stage's training log (see the module docstring), read back from disk after a launch.

    Raises:
        RuntimeError: The launch failed (the message shows why).
    """
    if params.num_processes <= 1:
        return params.train(callbacks)
    if (log := finished_log(params)) is not None:
        return log
    command = launch_command(params)
    _launch(command, launch_env(params), params.stage_dir / "launch.log")
    return json.loads((params.stage_dir / "training_log.json").read_text())


