"""Training stages on several processes: ``accelerate launch`` of `porover.train_cli` with the stage's accelerate
config, what accelerate and the trainer would reject in that config (checked before anything trains), and the
launch's output shown as it comes.

With ``num_processes > 1`` a training stage runs under ``accelerate launch`` (`launch_command`): DDP over gloo on
the CPU, the configured strategy on GPUs; DeepSpeed configs run on the CPU too (DeepSpeed's CPU accelerator), FSDP
ones do not (see `launch_config`).
"""

from __future__ import annotations

import codecs
import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from porover.stages.training import accelerate_config_path, finished_log


def accelerate_config_problems(params, where: str) -> list[str]:
    """What accelerate or the trainer rejects in the stage's launch config, found before anything trains: the
    config file is read and turned into the launched processes' environment exactly as ``accelerate launch`` does,
    and the engine's plugin is built from it (accelerate validates every FSDP and DeepSpeed setting there). Also
    the one FSDP rule transformers' Trainer (which TRL's trainers extend) applies when it starts: FSDP's own
    activation checkpointing and the stage's ``gradient_checkpointing`` never both. Imports torch, so validation
    (`problems`) leaves it to rehearsals and to the stage itself.
    """
    import contextlib
    from unittest import mock

    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    if params.num_processes <= 1:
        return []
    config = accelerate_config_path(params.accelerate_config)
    try:
        with contextlib.redirect_stdout(None), contextlib.redirect_stderr(None):
            args = launch_command_parser().parse_args(["--config_file", str(config), "--num_processes",
                                                       str(params.num_processes), "train.py"])
            args, defaults, precision_from_config = _validate_launch_command(args)
        if args.use_fsdp:
            from accelerate.utils import FullyShardedDataParallelPlugin

            with mock.patch.dict(os.environ, prepare_multi_gpu_env(args)):
                plugin = FullyShardedDataParallelPlugin()
            if plugin.activation_checkpointing and params.gradient_checkpointing:
                return [f"{where}.accelerate_config: {config}: fsdp_config.fsdp_activation_checkpointing: true "
                        f"with the stage's gradient_checkpointing: true; the trainer refuses both (transformers' "
                        "Trainer: use FSDP's activation checkpointing under FSDP): set gradient_checkpointing: false"]
        if args.use_deepspeed and importlib.util.find_spec("deepspeed") is not None:
            from accelerate.utils import DeepSpeedPlugin

            fields = list(defaults.deepspeed_config) + (["mixed_precision"] if precision_from_config else [])
            args.deepspeed_fields_from_accelerate_config = ",".join(fields)  # as accelerate's launch_command does
            with mock.patch.dict(os.environ, prepare_deepspeed_cmd_env(args)[1]):
                DeepSpeedPlugin()
    except (ValueError, TypeError, KeyError) as error:
        return [f"{where}.accelerate_config: {config}: accelerate rejects it: {error}"]
    return []


def launch_device(params) -> str:
    """Where the launched processes train: ``params.device``, with "auto" resolved as `device_settings` does."""
    if params.device != "auto":
        return params.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def config_engine(config: Path) -> str | None:
    """The sharding engine an accelerate config file asks for: ``FSDP``, ``DEEPSPEED`` or None (data parallel)."""
    kind = (yaml.safe_load(config.read_text()) or {}).get("distributed_type")
    return kind if kind in ("FSDP", "DEEPSPEED") else None


def launch_config(params) -> Path:
    """The accelerate config of the launch: ``accelerate_config``, with ``ddp`` on CPU meaning ``ddp_cpu``.

    DeepSpeed configs run on the CPU too (DeepSpeed's CPU accelerator, gloo; see `trainer_config`); FSDP ones
    do not: accelerate sets ``DistributedType.FSDP`` only for accelerator ranks (``AcceleratorState``: ``elif
    self.distributed_type in [MULTI_GPU, MULTI_MLU, ..., MULTI_NEURON]``), and CPU ranks are ``MULTI_CPU``.

    Raises:
        ValueError: An FSDP config on the CPU, or a DeepSpeed config without the deepspeed package.
    """
    name = params.accelerate_config
    config = accelerate_config_path("ddp_cpu" if launch_device(params) == "cpu" and name == "ddp" else name)
    engine = config_engine(config) if config.is_file() else None
    if launch_device(params) == "cpu" and engine == "FSDP":
        raise ValueError(f"accelerate_config {name!r} asks for FSDP, which accelerate runs on GPUs (or other "
                         "accelerators) only, never on CPU ranks; on the CPU give 'ddp' (DDP over gloo, "
                         "configs/accelerate/ddp_cpu.yaml) or a DeepSpeed config")
    if engine == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise ValueError(f"accelerate_config {name!r} asks for DeepSpeed, which is not installed here: "
                         "pip install deepspeed (DS_BUILD_OPS=0 on a CPU)")
    return config


def launch_command(params, params_file: str | Path | None = None) -> list[str]:
    """The ``accelerate launch`` command that runs this stage on ``num_processes`` processes.

    The stage parameters are written to ``params_file`` (default ``<stage>/launch_params.yaml``), which
    ``python -m porover.train_cli`` reads back, so the launched run trains exactly what the notebook asked for.
    DeepSpeed on the CPU trains in fp32 (``--mixed_precision no``), as every stage does there: transformers
    refuses bf16 without a bf16 GPU unless ``use_cpu``, and ``use_cpu`` turns DeepSpeed off (`trainer_config`).
    """
    kind = params.kind
    config = launch_config(params)
    params_file = Path(params_file or params.stage_dir / "launch_params.yaml")
    params_file.parent.mkdir(parents=True, exist_ok=True)
    params_file.write_text(yaml.safe_dump(dataclasses.asdict(params), sort_keys=False))
    accelerate = Path(sys.executable).with_name("accelerate")
    precision = ["--mixed_precision", "no"] if launch_device(params) == "cpu" and config_engine(config) else []
    return [str(accelerate) if accelerate.is_file() else "accelerate", "launch", "--config_file", str(config),
            *precision, "--num_processes", str(params.num_processes), "-m", "porover.train_cli", kind,
            str(params_file)]


def launch_env(params) -> dict[str, str]:
    """The environment of the launched processes: this process's (a notebook kernel's included), with this
    ``porover`` first on ``PYTHONPATH`` and unbuffered output; on CPU, accelerate sets ``OMP_NUM_THREADS``
    to physical cores / processes unless it is set here."""
    package_root = str(Path(__file__).resolve().parent.parent.parent)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])])
    if launch_device(params) == "cpu" and config_engine(launch_config(params)) != "DEEPSPEED":
        env["ACCELERATE_USE_CPU"] = "true"  # DeepSpeed runs only with accelerate's CPU mode off (trainer_config)
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
    problems = accelerate_config_problems(params, params.stage_name)
    if problems:
        raise ValueError("; ".join(problems))
    command = launch_command(params)
    _launch(command, launch_env(params), params.stage_dir / "launch.log")
    return json.loads((params.stage_dir / "training_log.json").read_text())


