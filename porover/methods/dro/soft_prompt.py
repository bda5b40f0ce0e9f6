"""A learned soft safety prompt (DRO): its folder, its place in the chat template, and generation with it.

The soft prompt is a matrix of ``n`` input embeddings that stands for the *content* of the system turn. Every
prompt is rendered with a system message of ``n`` placeholder tokens (the tokenizer's eos, as DRO's code does);
the embeddings at those positions are replaced by the soft prompt and the model runs on ``inputs_embeds``. The
placeholder's offset is measured from the rendered prefix and every placeholder position is checked, so a
template that puts an eos token earlier cannot shift it silently.

A DRO stage saves ``model/`` = ``soft_prompt.safetensors`` + ``soft_prompt.json`` (the base model it was trained
for, with that model's content digest), opened by `SoftPromptModel`: ``model: stage:dro`` in an evaluation stage
generates with the base model and the soft prompt (`SoftPromptBackend`), in a representation stage reads the base
model's states with the soft prompt as the system turn.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from porover.generation.local import RowSampler, TransformersBackend
from porover.generation.sampling import Sampling
from porover.model_folders import ModelHandle, mark_model_folder

SPEC_FILE = "soft_prompt.json"
WEIGHTS_FILE = "soft_prompt.safetensors"


@dataclass(frozen=True)
class SoftPromptSpec:
    """What a soft-prompt folder holds besides the weights.

    Attributes:
        base: The model the prompt was trained for (embedded name, hub id or absolute folder).
        base_digest: That model's content digest when it was trained (`porover.models.model_digest`).
        init_prompt: The human safety prompt it was initialised from (its condition name).
        n_tokens: Its length.
    """

    base: str
    base_digest: str
    init_prompt: str
    n_tokens: int


def save_soft_prompt(folder: str | Path, soft_prompt, spec: SoftPromptSpec) -> None:
    """Write the weights (float32) and the spec; the folder becomes what ``stage:dro`` stands for."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"soft_prompt": soft_prompt.detach().float().cpu().contiguous()}, str(folder / WEIGHTS_FILE))
    (folder / SPEC_FILE).write_text(json.dumps(spec.__dict__, indent=1))
    mark_model_folder(folder, SoftPromptModel)


def is_soft_prompt_folder(path: str | Path) -> bool:
    """Whether a folder holds a DRO stage's soft prompt (no weights are read)."""
    return (Path(path).expanduser() / SPEC_FILE).is_file()


def read_soft_prompt(model: str | Path) -> tuple[SoftPromptSpec, object] | None:
    """``(spec, weights)`` of a soft-prompt folder, else None (any other model name or folder)."""
    if not is_soft_prompt_folder(str(model)):
        return None
    path = Path(str(model)).expanduser()
    from safetensors.torch import load_file

    weights = load_file(str(path / WEIGHTS_FILE))["soft_prompt"]
    return SoftPromptSpec(**json.loads((path / SPEC_FILE).read_text())), weights


def render_with_system_turn(tokenizer, prompts: Sequence[str], system_prompt: str) -> list[str]:
    """Prompts rendered with a system turn that is always there: ``""`` gives an explicitly *empty* one.

    `porover.generation.sampling.render_prompts` leaves an empty system prompt out, and SmolLM2's template then
    inserts its own default system message; DRO's "no prompt" condition must not get it.
    """
    return [tokenizer.apply_chat_template([{"role": "system", "content": system_prompt},
                                           {"role": "user", "content": prompt}], add_generation_prompt=True,
                                          tokenize=False) for prompt in prompts]


def placeholder_ids(tokenizer, prompt: str, n_tokens: int) -> tuple[list[int], int]:
    """Token ids of ``prompt`` rendered with a system turn of ``n_tokens`` placeholders, and where they start.

    Raises:
        ValueError: The placeholder does not come out as ``n_tokens`` eos tokens at the measured offset.
    """
    placeholder = tokenizer.eos_token * n_tokens
    messages = [{"role": "system", "content": placeholder}, {"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    start = len(tokenizer(text[:text.index(placeholder)], add_special_tokens=False)["input_ids"])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if ids[start:start + n_tokens] != [tokenizer.eos_token_id] * n_tokens:
        raise ValueError(f"the chat template does not keep {n_tokens} placeholder tokens at position {start}")
    return ids, start


def soft_prompt_batch(model, tokenizer, prompts: Sequence[str], soft_prompt, padding_side: str = "right"):
    """``(inputs_embeds, attention_mask, lengths)`` of prompts with the soft prompt as their system turn.

    Differentiable in ``soft_prompt``. Right padding (training: read the state at ``length - 1``, as DRO's code
    does) or left padding (generation: ``generate`` numbers positions from the mask).
    """
    import torch

    n = soft_prompt.shape[0]
    rendered = [placeholder_ids(tokenizer, prompt, n) for prompt in prompts]
    width = max(len(ids) for ids, _ in rendered)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask, starts = [], [], []
    for row, start in rendered:
        fill = width - len(row)
        left = fill if padding_side == "left" else 0
        ids.append([pad] * left + row + [pad] * (fill - left))
        mask.append([0] * left + [1] * len(row) + [0] * (fill - left))
        starts.append(left + start)
    device = model.get_input_embeddings().weight.device
    ids = torch.tensor(ids, device=device)
    embeds = model.get_input_embeddings()(ids)
    # One boolean mask for every row's soft-prompt positions keeps the replacement differentiable and batched.
    where = torch.zeros(ids.shape, dtype=torch.bool, device=device)
    for row, start in enumerate(starts):
        where[row, start:start + n] = True
    prompt = soft_prompt.to(device=device, dtype=embeds.dtype)
    embeds = embeds.masked_scatter(where.unsqueeze(-1), prompt.repeat(len(prompts), 1))
    lengths = [len(row) for row, _ in rendered]
    return embeds, torch.tensor(mask, device=device), lengths


def soft_prompt_states(model, tokenizer, prompts: Sequence[str], soft_prompt, layers: Sequence[int] | None = None):
    """States at each prompt's last position, with the soft prompt inserted (differentiable in it).

    Args:
        layers: Indices into transformers' ``hidden_states`` (see `porover.hidden_states.last_token_states`);
            None: the final layer after the last norm alone, returned as one tensor (what DRO trains on).

    Returns:
        A ``(len(prompts), hidden_size)`` tensor, or layer -> such a tensor when ``layers`` are given.
    """
    import torch

    embeds, mask, lengths = soft_prompt_batch(model, tokenizer, prompts, soft_prompt, padding_side="right")
    last = torch.tensor(lengths) - 1
    rows = torch.arange(len(lengths))
    if layers is None:
        # The decoder alone: its last_hidden_state is hidden_states[-1], and the LM head over every position (a
        # 49k-wide matmul) would cost more than the rest of a 135M model's backward pass.
        hidden = model.base_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        return hidden[rows, last]
    hidden = model.base_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False,
                              output_hidden_states=True).hidden_states
    return {layer: hidden[layer][rows, last] for layer in layers}


class SoftPromptBackend(TransformersBackend):
    """`TransformersBackend` that generates with a soft prompt as every prompt's system turn (batched, left padded).

    Args:
        model, tokenizer, batch_size: As `TransformersBackend` (the base model the prompt was trained for).
        soft_prompt: ``(n_tokens, hidden_size)`` embeddings.
    """

    name = "transformers+soft_prompt"

    def __init__(self, model, tokenizer, soft_prompt, batch_size: int = 16) -> None:
        super().__init__(model, tokenizer, batch_size)
        self.soft_prompt = soft_prompt
        self._prompt_of: dict[str, str] = {}

    def render(self, prompt: str, sampling: Sampling) -> str:
        if sampling.system_prompt:
            raise ValueError("a soft-prompt model takes no system_prompt: the soft prompt is its system turn")
        ids, _ = placeholder_ids(self.tokenizer, prompt, self.soft_prompt.shape[0])
        text = self.tokenizer.decode(ids)
        self._prompt_of[text] = prompt
        return text

    def _generate_batch(self, texts: list[str], sampling: Sampling, seeds: list[int]) -> list[tuple[str, int, str]]:
        import torch
        from transformers import LogitsProcessorList

        prompts = [self._prompt_of[text] for text in texts]
        options = {}
        if sampling.temperature > 0:
            options["logits_processor"] = LogitsProcessorList([RowSampler(seeds, sampling.temperature, sampling.top_p)])
        with torch.inference_mode():
            embeds, mask, _ = soft_prompt_batch(self.model, self.tokenizer, prompts, self.soft_prompt, "left")
            # With inputs_embeds alone, generate returns only the new tokens.
            output = self.model.generate(inputs_embeds=embeds, attention_mask=mask,
                                         max_new_tokens=self._budget(embeds.shape[1], sampling),
                                         pad_token_id=self.tokenizer.pad_token_id, do_sample=False, top_k=None,
                                         top_p=None, temperature=None, **options)
        return self._decode_new(output.tolist())


class SoftPromptModel(ModelHandle):
    """A DRO stage's ``model/``: the base model it names, with the soft prompt as every prompt's system turn."""

    trainable = False

    @classmethod
    def settings_errors(cls, settings: dict, where: str, system_prompt: str = "") -> list[str]:
        errors = super().settings_errors(settings, where, system_prompt)
        if system_prompt:
            errors.append(f"{where.rsplit('.', 1)[0]}.system_prompt: must be '' for a DRO soft prompt: the soft "
                          "prompt is the system turn")
        return errors

    def load(self):
        """``(base model, tokenizer)``; the soft prompt is read too (`soft_prompt`).

        Raises:
            ValueError: The folder holds no soft prompt, or its base model's content changed since training.
        """
        if self._loaded is None:
            from porover.models import load_model, model_digest

            found = read_soft_prompt(self.name)
            if found is None:
                raise ValueError(f"{self.name}: no {SPEC_FILE}: not a soft-prompt folder")
            spec, self.soft_prompt = found
            if model_digest(spec.base) != spec.base_digest:
                raise ValueError(f"{self.name}: its base model {spec.base} changed since the soft prompt was trained; "
                                 "re-run DRO")
            self._loaded = load_model(spec.base, device=self.device)
        return self._loaded

    def generator(self, rows: Sequence[dict], system_prompt: str | None = None, batch_size: int = 16):
        model, tokenizer = self.load()
        return SoftPromptBackend(model, tokenizer, self.soft_prompt, batch_size), list(rows)

    def states(self, prompts: Sequence[str], layers: Sequence[int], system_prompt: str | None = None,
               batch_size: int = 16, max_length: int | None = None) -> dict:
        import numpy as np
        import torch

        if system_prompt:
            raise ValueError("a soft-prompt model takes no system_prompt: the soft prompt is its system turn")
        model, tokenizer = self.load()
        parts: dict[int, list] = {layer: [] for layer in layers}
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                found = soft_prompt_states(model, tokenizer, prompts[start:start + batch_size], self.soft_prompt, layers)
                for layer in layers:
                    parts[layer].append(found[layer].float().cpu().numpy())
        size = model.config.hidden_size
        return {layer: np.concatenate(chunks) if chunks else np.zeros((0, size), np.float32)
                for layer, chunks in parts.items()}
