"""Refusal tokens (Jain et al., arXiv 2412.06748): a token before every response, a threshold at inference.

- `tokens`: the token scheme, first-token probabilities, the threshold rule, the sweep, the curves.
- `training`: adding the tokens to a model and its tokenizer for training.
- `inference`: `RefusalTokenModel`, the model handle that forces the first token when a model is evaluated.
- `plots`: the threshold sweep figures.
- `stage`: the ``refusal_tokens`` stage: build the data, train, sweep the threshold, evaluate chosen points.
"""
