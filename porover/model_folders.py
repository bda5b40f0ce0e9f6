"""One way to open any model a stage is given: plain weights, an adapter, or a folder a method produced.

Every stage that generates with a model, reads its hidden states or trains from it calls `open_model` and gets
a `ModelHandle`. A plain model (an embedded name, a Hugging Face id, a saved folder, a LoRA adapter folder) gets
the base class. A method whose model folder is more than weights — a soft prompt that is the system turn, a
first token forced by a threshold, a steering hook — subclasses `ModelHandle` in its own folder under
`porover.methods` and names the subclass in the model folder's `HANDLE_FILE`; stages never name a method.

A handle reads no weights until `ModelHandle.load` is called, so store keys (`ModelHandle.digest`,
`ModelHandle.response_settings`) and validation (`settings_errors`) cost nothing.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from porover.config import Settings
from porover.generation.sampling import render_prompts

# In a method's model folder: {"handle": "package.module:Class"}, the `ModelHandle` subclass that opens it.
HANDLE_FILE = "porover_model.json"


class ModelHandle:
    """A model to generate with, read hidden states from or train from.

    Args:
        name: An embedded name, Hugging Face id or folder (`porover.models.resolve_model`).
        device: See `porover.models.device_settings`.
        settings: Inference settings of the folder's kind (validated by `settings_errors`; {} for plain models).

    Subclasses override what differs for their folders and declare their settings as a `porover.config.Settings`
    dataclass in ``SETTINGS``.
    """

    SETTINGS: ClassVar[type[Settings] | None] = None  # inference settings this kind of folder takes
    trainable: ClassVar[bool] = True  # whether a training stage can start from it

    def __init__(self, name: str, device: str = "auto", settings: dict | None = None) -> None:
        self.name = str(name)
        self.device = device
        self.settings = self.SETTINGS(**(settings or {})) if self.SETTINGS else None
        self._loaded = None

    @classmethod
    def settings_errors(cls, settings: dict, where: str, system_prompt: str = "") -> list[str]:
        """Problems with ``settings`` (and a system prompt this kind cannot take), each as ``where.key: what``."""
        if cls.SETTINGS is None:
            return [f"{where}: this model takes no inference settings, got {', '.join(settings)}"] if settings else []
        return cls.SETTINGS.validate(settings, where)[1]

    def digest(self) -> str:
        """What the model *is*, by content (`porover.models.model_digest`)."""
        from porover.models import model_digest

        return model_digest(self.name)

    def response_settings(self) -> dict:
        """What shapes its responses besides the weights and the sampling settings (part of store keys)."""
        return {"settings": self.settings.__dict__} if self.settings else {}

    def weights(self) -> str:
        """What ``from_pretrained`` loads: a local folder (embedded and adapter models are converted or merged
        once, cached by content) or a Hugging Face id.

        Raises:
            ValueError: The folder cannot be trained from (``trainable`` is False).
        """
        from porover.models import resolve_model

        if not self.trainable:
            raise ValueError(f"{self.name}: a {type(self).__name__} folder holds no model to train from")
        return resolve_model(self.name)

    def load(self):
        """``(model, tokenizer)``, loaded once: eval mode, the tokenizer padding on the left."""
        if self._loaded is None:
            from porover.models import load_model

            self._loaded = load_model(self.weights(), device=self.device)
        return self._loaded

    def generator(self, rows: Sequence[dict], system_prompt: str | None = None, batch_size: int = 16):
        """A generation backend for ``rows`` and the rows with what the model decided per row before generating.

        Returns:
            ``(backend, rows)``; plain models decide nothing and return the rows as given.
        """
        from porover.generation.local import TransformersBackend

        return TransformersBackend(*self.load(), batch_size=batch_size), list(rows)

    def render(self, prompts: Sequence[str], system_prompt: str | None = None) -> list[str]:
        """The prompts as the model reads them (through its chat template)."""
        return render_prompts(self.load()[1], prompts, system_prompt)

    def states(self, prompts: Sequence[str], layers: Sequence[int], system_prompt: str | None = None,
               batch_size: int = 16, max_length: int | None = None) -> dict:
        """Hidden states of ``layers`` at each prompt's last token (`porover.hidden_states.last_token_states`)."""
        from porover.hidden_states import last_token_states

        model, tokenizer = self.load()
        return last_token_states(model, tokenizer, self.render(prompts, system_prompt), layers, batch_size, max_length)

    def summary(self, rows: Sequence[dict], partial_is_refusal: bool = True) -> dict:
        """Metrics of its own kind over judged rows, merged into an evaluation's ``metrics.json`` ({} here)."""
        return {}


def handle_class(name: str | Path) -> type[ModelHandle]:
    """The `ModelHandle` class of a model: the one its folder's `HANDLE_FILE` names, else the base class.

    Raises:
        ValueError: The file names no importable `ModelHandle` subclass.
    """
    spec = Path(str(name)).expanduser() / HANDLE_FILE
    if not spec.is_file():
        return ModelHandle
    target = json.loads(spec.read_text()).get("handle", "")
    module, _, attribute = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"{spec}: handle {target!r} is not importable ({error})") from error
    if not (isinstance(cls, type) and issubclass(cls, ModelHandle)):
        raise ValueError(f"{spec}: {target!r} is no ModelHandle subclass")
    return cls


def mark_model_folder(folder: str | Path, handle: type[ModelHandle]) -> None:
    """Name the `ModelHandle` subclass that opens ``folder`` (a method's model folder)."""
    (Path(folder) / HANDLE_FILE).write_text(json.dumps({"handle": f"{handle.__module__}:{handle.__qualname__}"}))


def open_model(name: str, device: str = "auto", settings: dict | None = None) -> ModelHandle:
    """The handle of a model, whatever produced it; no weights are read until it is used."""
    return handle_class(name)(name, device=device, settings=settings)


def model_folder_errors(model: str, where: str, settings: dict | None = None, system_prompt: str = "",
                        train: bool = False, handle: type[ModelHandle] | None = None) -> list[str]:
    """Problems with the model a stage is given, found before anything loads, each as ``where.<key>: what``.

    Args:
        model: The stage's ``model`` value.
        where: The stage's place in its run file (``params/demo.yaml: stages.evaluate_sft``).
        settings: Its ``model_settings`` (inference settings of a method's folder).
        system_prompt: Its system prompt, which some kinds of folder cannot take.
        train: The stage trains from the model.
        handle: The handle class of the stage a ``stage:NAME`` model refers to (`porover.run_file` knows it);
            None: read it from the folder (a stage reference is then checked by the run file).
    """
    from porover.config import is_stage_ref
    from porover.models import model_errors

    settings = settings or {}
    if handle is None:
        if is_stage_ref(model):
            return []
        try:
            handle = handle_class(model)
        except ValueError as error:
            return [f"{where}.model: {error}"]
    errors = model_errors(model, f"{where}.model") if handle is ModelHandle else []
    if train and not handle.trainable:
        errors.append(f"{where}.model: {model} is a {handle.__name__} folder, which holds no model to train from")
    if not train:
        errors += handle.settings_errors(settings, f"{where}.model_settings", system_prompt)
    return errors
