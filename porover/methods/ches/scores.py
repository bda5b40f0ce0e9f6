"""CHES: how alike a preference pair looks to the model, from Razin et al. (arXiv 2410.08847).

"Unintentional Unalignment" shows that DPO can *lower* the likelihood of the chosen response when
the chosen and rejected responses have similar hidden-state embeddings. With h the final-layer
hidden states that predict each response token (the state at position t-1 predicts token t, so the
states run from the last prompt position to the second-to-last response token):

    CHES(y+, y-)      = <Σh+, Σh->  - ||Σh+||²
    CHES_norm(y+, y-) = <Σh+, Σh-> / (|y+| |y-|) - ||Σh+||² / |y+|²  =  <mean h+, mean h-> - ||mean h+||²

High CHES: likelihood displacement is likely; the paper's recipe keeps the lowest-CHES pairs.

The prompt is rendered with the tokenizer's chat template (with the generation prompt), the response
follows as separately tokenized ids plus the end-of-turn (eos) token, as a chat DPO trainer sees it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from porover.generation.sampling import render_prompts


def encode_pair_side(tokenizer, prompt: str, response: str, system_prompt: str | None = None) -> tuple[list[int], int]:
    """Token ids of the rendered prompt followed by the response, and the prompt's length in tokens."""
    rendered = render_prompts(tokenizer, [prompt], system_prompt)[0]
    prompt_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    return prompt_ids + response_ids, len(prompt_ids)


@torch.inference_mode()
def response_hidden_sums(model, tokenizer, prompts: Sequence[str], responses: Sequence[str],
                         system_prompt: str | None = None, batch_size: int = 8) -> tuple[torch.Tensor, list[int]]:
    """Σh over the positions that predict each response token, per (prompt, response).

    Sequences are right-padded (so positions need no shifting) and batched by length.

    Returns:
        ``(sums, lengths)``: a float64 tensor ``[n, hidden]`` on CPU and the response lengths in tokens.
    """
    encoded = [encode_pair_side(tokenizer, p, r, system_prompt) for p, r in zip(prompts, responses, strict=True)]
    sums = torch.zeros(len(encoded), model.config.hidden_size, dtype=torch.float64)
    lengths = [len(ids) - start for ids, start in encoded]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    body = model.base_model  # the decoder without the LM head: no [batch, length, vocab] logits
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(encoded[i][0]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            seq = encoded[i][0]
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        hidden = body(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).last_hidden_state
        for row, i in enumerate(batch):
            seq, prompt_len = encoded[i]
            sums[i] = hidden[row, prompt_len - 1:len(seq) - 1].double().sum(dim=0).cpu()
    return sums, lengths


def ches_from_sums(chosen: torch.Tensor, rejected: torch.Tensor, chosen_len: int, rejected_len: int) -> tuple[float, float]:
    """``(CHES, length-normalised CHES)`` from the summed hidden states of one pair."""
    ches = float(chosen @ rejected - chosen @ chosen)
    normalized = float(chosen @ rejected / (chosen_len * rejected_len) - chosen @ chosen / chosen_len**2)
    return ches, normalized


def ches_scores(model, tokenizer, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str],
                system_prompt: str | None = None, batch_size: int = 8) -> list[dict]:
    """CHES of every pair under ``model``.

    Args:
        model: A causal LM (e.g. from `porover.load_model`).
        tokenizer: Its tokenizer; the chat template comes from it.
        prompts: The pairs' prompts.
        chosen: The preferred responses.
        rejected: The dispreferred responses.
        system_prompt: System message the prompt is rendered with (None for none).
        batch_size: Sequences per forward pass.

    Returns:
        Per pair: ``ches``, ``ches_normalized``, ``chosen_tokens``, ``rejected_tokens``.
    """
    n = len(prompts)
    sums, lengths = response_hidden_sums(model, tokenizer, list(prompts) * 2, [*chosen, *rejected],
                                         system_prompt=system_prompt, batch_size=batch_size)
    results = []
    for i in range(n):
        ches, normalized = ches_from_sums(sums[i], sums[n + i], lengths[i], lengths[n + i])
        results.append({"ches": ches, "ches_normalized": normalized, "chosen_tokens": lengths[i],
                        "rejected_tokens": lengths[n + i]})
    return results
