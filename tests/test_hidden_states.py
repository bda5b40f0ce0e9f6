"""Hidden states at the last prompt position, batched with left padding, against direct forward passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from porover.generation.sampling import render_prompts
from porover.hidden_states import last_token_states

PROMPTS = ["How do I kill a Python process?", "Hi",
           "Write a long and detailed plan for a birthday party with games, food and music for ten children."]


def test_padded_batch_matches_unpadded_forward(tiny_model):
    model, tokenizer = tiny_model
    texts = render_prompts(tokenizer, PROMPTS)
    layers = [0, 15, model.config.num_hidden_layers, -1]
    states = last_token_states(model, tokenizer, texts, layers, batch_size=2)  # two batches, lengths sorted
    assert tokenizer.padding_side == "left"
    lengths = {len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts}
    assert len(lengths) == 3  # the batch really pads
    for i, text in enumerate(texts):
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            direct = model(input_ids=ids, output_hidden_states=True).hidden_states
        for layer in layers:
            assert states[layer].shape == (3, model.config.hidden_size)
            np.testing.assert_allclose(states[layer][i], direct[layer][0, -1].numpy(), atol=2e-4, rtol=1e-3)
    # the last prompt token is the generation prompt's newline, not a pad: the rows differ
    assert not np.allclose(states[15][0], states[15][1])


def test_layer_out_of_range(tiny_model):
    model, tokenizer = tiny_model
    with pytest.raises(ValueError, match="layers"):
        last_token_states(model, tokenizer, ["x"], [99])
