"""The refusal-direction stage's model folder and the handle that opens it.

``model/`` holds the chosen direction (``direction.safetensors``: the raw difference-in-means vector, and
``refusal_direction.json``: its layer and position, the base model and its content digest, the coefficient
chosen on validation) and ``ablated/``: the base model with the direction ablated from its weights (weight
orthogonalization), an ordinary model folder that `porover.models.load_model` opens like any other.
`RefusalDirectionModel` opens either intervention for the stages that generate or read states:

- ``intervention: ablation`` (the default): the weights of ``ablated/``; no hook.
- ``intervention: addition``: the base model with ``coefficient × vector`` added to the residual stream
  entering the chosen layer at every position (a forward pre-hook, the only inference-time part).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from porover.config import Settings, param
from porover.model_folders import ModelHandle, mark_model_folder

SPEC_FILE = "refusal_direction.json"
VECTOR_FILE = "direction.safetensors"
ABLATED = "ablated"  # the orthogonalised weights, a plain model folder inside model/
DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class DirectionSpec:
    """What a refusal-direction folder holds besides the vector.

    Attributes:
        base: The model the direction was read from (embedded name, hub id or absolute folder).
        base_digest: Its content digest then (`porover.models.model_digest`).
        layer: The block whose input the vector was read at (and where activation addition adds it).
        position: Its post-instruction position, counted from the end (-1 = the last prompt token).
        coefficient: The activation-addition coefficient chosen on validation prompts.
    """

    base: str
    base_digest: str
    layer: int
    position: int
    coefficient: float


def save_model(model, tokenizer, folder: str | Path, dtype: str = "float16") -> None:
    """Save a model as an ordinary folder (config.json + safetensors + tokenizer) in ``dtype``, atomically."""
    import torch

    folder = Path(folder)
    for stale in folder.parent.glob(f"{folder.name}.partial-*"):  # left by a killed save
        shutil.rmtree(stale, ignore_errors=True)
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    state = {name: tensor.detach().to(getattr(torch, dtype)) for name, tensor in model.state_dict().items()}
    model.save_pretrained(partial, state_dict=state)
    config = json.loads((partial / "config.json").read_text())
    (partial / "config.json").write_text(json.dumps({**config, "dtype": dtype}, indent=2))  # what the file holds
    tokenizer.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def save_direction_folder(folder: str | Path, vector, spec: DirectionSpec, ablated_model, tokenizer,
                          dtype: str = "float16") -> None:
    """Write ``model/``: the vector, its spec, the orthogonalised model in ``ablated/``, the handle mark."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(ablated_model, tokenizer, folder / ABLATED, dtype)
    save_file({"vector": vector.detach().float().cpu().contiguous()}, str(folder / VECTOR_FILE))
    (folder / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=1))
    mark_model_folder(folder, RefusalDirectionModel)


def read_direction(folder: str | Path):
    """``(spec, vector)`` of a refusal-direction folder.

    Raises:
        FileNotFoundError: The folder holds no direction.
    """
    from safetensors.torch import load_file

    folder = Path(str(folder)).expanduser()
    if not (folder / SPEC_FILE).is_file():
        raise FileNotFoundError(f"{folder}: no {SPEC_FILE}: not a refusal-direction folder")
    return DirectionSpec(**json.loads((folder / SPEC_FILE).read_text())), load_file(str(folder / VECTOR_FILE))["vector"]


@dataclass
class DirectionSettings(Settings):
    """How a refusal-direction folder is opened for evaluation (``model_settings``)."""

    intervention: str = param("ablation", "ablation: the weights with the direction orthogonalised out (ablated/, a "
                              "plain model folder); addition: the base model with coefficient × the vector added",
                              choices=("ablation", "addition"))
    coefficient: float | None = param(None, "addition only: multiple of the difference-in-means vector added at the "
                                      "chosen layer (negative lowers refusal; null = the coefficient chosen on "
                                      "validation)")

    def problems(self, where: str) -> list[str]:
        if self.intervention == "ablation" and self.coefficient is not None:
            return [f"{where}.coefficient: only activation addition takes a coefficient; give intervention: addition"]
        return []


class RefusalDirectionModel(ModelHandle):
    """A refusal-direction stage's ``model/``: the ablated weights, or the base model with activation addition."""

    SETTINGS = DirectionSettings
    trainable = False  # train from model/ablated (a plain folder) to fine-tune the ablated model

    def spec(self) -> DirectionSpec:
        return read_direction(self.name)[0]

    def coefficient(self) -> float:
        """The activation-addition coefficient in use (the settings', else the one chosen on validation)."""
        chosen = self.settings.coefficient
        return self.spec().coefficient if chosen is None else chosen

    def digest(self) -> str:
        from porover.digests import digest_of, path_digest
        from porover.models import model_digest

        if self.settings.intervention == "ablation":
            return model_digest(str(Path(self.name) / ABLATED))
        return f"sha256:{digest_of([model_digest(self.spec().base), path_digest(Path(self.name) / VECTOR_FILE)])[:16]}"

    def response_settings(self) -> dict:
        if self.settings.intervention == "ablation":
            return {}
        spec = self.spec()
        return {"settings": {"intervention": "addition", "coefficient": self.coefficient(), "layer": spec.layer}}

    def load(self):
        """``(model, tokenizer)``: the ablated folder, or the base model with the addition hook in place.

        Raises:
            ValueError: Activation addition whose base model's content changed since the direction was read.
        """
        if self._loaded is None:
            from porover.models import load_model, model_digest

            if self.settings.intervention == "ablation":
                self._loaded = load_model(str(Path(self.name) / ABLATED), device=self.device)
                return self._loaded
            spec, vector = read_direction(self.name)
            if model_digest(spec.base) != spec.base_digest:
                raise ValueError(f"{self.name}: its base model {spec.base} changed since the direction was read; "
                                 "re-run the refusal-direction stage")
            model, tokenizer = load_model(spec.base, device=self.device)
            from porover.methods.refusal_direction.interventions import addition_hooks

            (block, hook), = addition_hooks(model, vector, spec.layer, self.coefficient())[0]
            self.hook = block.register_forward_pre_hook(hook, with_kwargs=True)  # lives as long as the model
            self._loaded = model, tokenizer
        return self._loaded

    def summary(self, rows: Sequence[dict], partial_is_refusal: bool = True) -> dict:
        spec = self.spec()
        return {"refusal_direction": {"intervention": self.settings.intervention, "layer": spec.layer,
                                      "position": spec.position, "coefficient": (
                                          self.coefficient() if self.settings.intervention == "addition" else None)}}
