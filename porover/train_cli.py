"""Entry point of a training stage under ``accelerate launch``, one process per GPU (or per CPU share).

``accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 8 -m porover.train_cli sft
outputs/run/sft/launch_params.yaml``; `porover.stages.launch.launch_command` forms it from the stage parameters.
"""

from __future__ import annotations

import argparse

import yaml


def main(argv: list[str] | None = None) -> None:
    """Validate the parameters file and train the stage in this process (one rank of the launch)."""
    from porover.run_file import STAGE_TYPES, stage_type
    from porover.stages.launch import launch_device
    from porover.stages.training import launched_engine

    # Every stage type that trains (its parameters extend `porover.stages.training.TrainingParams`).
    kinds = {name: kind.params for name in STAGE_TYPES
             if getattr((kind := stage_type(name)).params, "trains_model", False)}
    parser = argparse.ArgumentParser(prog="python -m porover.train_cli", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(kinds))
    parser.add_argument("params_file", help="flat YAML of the stage parameters")
    args = parser.parse_args(argv)
    with open(args.params_file) as file:
        params = kinds[args.kind].from_namespace(yaml.safe_load(file), args.params_file)
    if launch_device(params) == "cpu" and launched_engine() != "DEEPSPEED":
        # Join the launch's process group over gloo before anything asks accelerate for its state: a
        # PartialState made without cpu=True on a machine without GPUs would train each rank alone.
        # (DeepSpeed on the CPU joins over gloo through the trainer's ddp_backend: see trainer_config.)
        from accelerate import PartialState

        PartialState(cpu=True)
    params.train()


if __name__ == "__main__":
    main()
