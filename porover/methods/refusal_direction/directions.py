"""Candidate directions and the scores that choose among them (Arditi et al. 2024; andyrdt/refusal_direction,
``generate_directions.py`` and ``select_direction.py``).

A candidate is the difference in means of the residual stream between two prompt sets (harmful minus harmless)
at one post-instruction position and one layer. The post-instruction positions are the chat template's tokens
after the instruction (``<|im_end|>\\n<|im_start|>assistant\\n`` for SmolLM2), computed from the template as the
authors' ``eoi_toks`` are. The refusal score of a prompt is the log-odds of the refusal tokens at the first
response position; the KL score compares the next-token distributions at that position with and without an
intervention.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from typing import TYPE_CHECKING

import numpy as np

from porover.generation.sampling import render_prompts

if TYPE_CHECKING:
    import torch

MARKER = "\x1fINSTRUCTION\x1f"  # a stand-in instruction no template rewrites


def instruction_tail(tokenizer, system_prompt: str | None = None) -> list[int]:
    """Token ids the chat template puts after the instruction (the authors' ``eoi_toks``).

    Raises:
        ValueError: The template does not end every rendered prompt with the same tokens after the instruction.
    """
    text = render_prompts(tokenizer, [MARKER], system_prompt)[0]
    tail = tokenizer(text.split(MARKER)[-1], add_special_tokens=False)["input_ids"]
    probe = render_prompts(tokenizer, ["How do I bake bread?"], system_prompt)[0]
    ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    if not tail or ids[-len(tail):] != tail:
        raise ValueError(f"the chat template's tokens after the instruction ({tail}) are not how a rendered prompt "
                         "ends; cannot locate the post-instruction positions")
    return tail


def mean_states(model, tokenizer, texts: Sequence[str], positions: int, batch_size: int = 16) -> np.ndarray:
    """Mean residual stream over ``texts`` at their last ``positions`` tokens, entering every block.

    Returns:
        float64 array ``(positions, num_hidden_layers, hidden_size)``: ``[j, l]`` is position ``j - positions``
        at the input of block ``l`` (transformers' ``hidden_states[l]``).
    """
    from porover.hidden_states import tail_states

    layers = list(range(model.config.num_hidden_layers))
    total = np.zeros((positions, len(layers), model.config.hidden_size))
    for start in range(0, len(texts), batch_size):  # a chunk at a time: every layer of every prompt is large
        states = tail_states(model, tokenizer, texts[start:start + batch_size], layers, positions, batch_size)
        total += np.stack([states[layer].astype(np.float64).sum(axis=0) for layer in layers], axis=1)
    return total / max(len(texts), 1)


def candidate_directions(first_means: np.ndarray, second_means: np.ndarray) -> np.ndarray:
    """Difference in means, first set minus second, per position and layer (unnormalised: its length is the
    activation-addition unit)."""
    if first_means.shape != second_means.shape:
        raise ValueError(f"mean states of different shapes: {first_means.shape} and {second_means.shape}")
    return first_means - second_means


def refusal_token_ids(tokenizer, tokens: Sequence[str]) -> list[int]:
    """Ids of the refusal tokens (each must be one token of the vocabulary).

    Raises:
        ValueError: A token is not a single token of this tokenizer.
    """
    ids = []
    for token in tokens:
        found = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(found) != 1:
            raise ValueError(f"refusal token {token!r} is {len(found)} tokens for this tokenizer; give single tokens "
                             "a refusal starts with (e.g. 'I', 'Sorry')")
        ids.append(found[0])
    return ids


def refusal_scores(logits: torch.Tensor, refusal_ids: Sequence[int], epsilon: float = 1e-8) -> torch.Tensor:
    """Per row: log P(a refusal token) - log P(any other token), from next-token logits ``(n, vocab)``."""
    import torch

    probs = torch.softmax(logits.double(), dim=-1)
    refusal = probs[:, list(refusal_ids)].sum(dim=-1)
    return torch.log(refusal + epsilon) - torch.log(1 - refusal + epsilon)


def kl_divergence(base: torch.Tensor, other: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    """Per row KL(base ‖ other) of next-token distributions from logits (the authors' ``kl_div_fn``)."""
    import torch

    p, q = torch.softmax(base.double(), dim=-1), torch.softmax(other.double(), dim=-1)
    return (p * (torch.log(p + epsilon) - torch.log(q + epsilon))).sum(dim=-1)


def last_logits(model, tokenizer, texts: Sequence[str], batch_size: int = 16) -> Iterator[torch.Tensor]:
    """Next-token logits at each rendered text's last position, batch by batch (left padded, positions counted
    from each row's first real token as generation counts them), in the order of ``texts``."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
                              add_special_tokens=False)
            mask = batch["attention_mask"].to(device)
            with torch.no_grad():
                out = model(input_ids=batch["input_ids"].to(device), attention_mask=mask, use_cache=False,
                            position_ids=(mask.cumsum(-1) - 1).clamp(min=0), logits_to_keep=1)
            yield out.logits[:, -1, :].float()
    finally:
        tokenizer.padding_side = side
