"""Hidden states at the last prompt positions: what representation analyses (MOSR, DRO, the refusal direction)
read off a model.

Prompts are rendered through the chat template with the generation prompt (the model's state just before it
answers), batched with LEFT padding so position -1 is every row's real last token, and given position ids
counted from each row's first real token, so a padded row's states equal its un-padded forward pass.
`last_token_states` reads the last position; `tail_states` the last few (the chat template's tokens after the
instruction, where the refusal direction is read).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def last_token_states(model, tokenizer, texts: Sequence[str], layers: Sequence[int], batch_size: int = 16,
                      max_length: int | None = None) -> dict[int, np.ndarray]:
    """Hidden states of ``layers`` at the last token of each already-rendered text.

    Args:
        model: A causal LM (a PEFT model works too), in eval mode.
        tokenizer: Its tokenizer; padding is set to the left for the call and restored after.
        texts: Rendered prompts (`porover.generation.sampling.render_prompts`, as generation renders them: with
            ``system_prompt`` None, SmolLM2's template inserts its default system message); no special tokens
            are added.
        layers: Indices into transformers' ``hidden_states`` tuple: 0 = the embeddings, ``i`` = the output of
            block ``i`` (1-based), ``num_hidden_layers`` (or -1) = the last block after the final norm.
        batch_size: Texts per forward pass.
        max_length: Keep at most this many tokens, cut from the left so the last prompt token stays (None = all).

    Returns:
        Layer (as given) -> float32 array of shape ``(len(texts), hidden_size)``.

    Raises:
        ValueError: A layer outside ``[-(L+1), L]`` for a model of L blocks.
    """
    return {layer: states[:, 0] for layer, states in
            tail_states(model, tokenizer, texts, layers, 1, batch_size, max_length).items()}


def tail_states(model, tokenizer, texts: Sequence[str], layers: Sequence[int], positions: int = 1,
                batch_size: int = 16, max_length: int | None = None) -> dict[int, np.ndarray]:
    """Hidden states of ``layers`` at the last ``positions`` tokens of each already-rendered text.

    Args:
        positions: How many of the last tokens (every text must have at least this many).
        model, tokenizer, texts, layers, batch_size, max_length: As `last_token_states`.

    Returns:
        Layer (as given) -> float32 array of shape ``(len(texts), positions, hidden_size)``; position ``j`` is
        the text's token ``j - positions`` (the last one is ``[:, -1]``).

    Raises:
        ValueError: A layer outside ``[-(L+1), L]`` for a model of L blocks.
    """
    import torch

    count = model.config.num_hidden_layers
    bad = [layer for layer in layers if not -(count + 1) <= layer <= count]
    if bad:
        raise ValueError(f"layers {bad}: expected indices in [-{count + 1}, {count}] (0 = embeddings, "
                         f"{count} = the last block after the final norm)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    side, truncation = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    out: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    device = next(model.parameters()).device
    # Batches of similar lengths waste little compute on padding; rows go back to their order at the end.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer([texts[i] for i in order[start:start + batch_size]], return_tensors="pt", padding=True,
                              add_special_tokens=False, truncation=max_length is not None, max_length=max_length)
            mask = batch["attention_mask"].to(device)
            # A plain forward numbers positions 0..n-1 whatever the mask; left-padded rows need theirs to start at
            # their first real token, as generate() does.
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                result = model(input_ids=batch["input_ids"].to(device), attention_mask=mask, position_ids=position_ids,
                               output_hidden_states=True, use_cache=False)
            for layer in layers:
                out[layer].append(result.hidden_states[layer][:, -positions:, :].float().cpu().numpy())
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = side, truncation
    size, back = model.config.hidden_size, np.argsort(order)
    return {layer: np.concatenate(parts)[back] if parts else np.zeros((0, positions, size), np.float32)
            for layer, parts in out.items()}
