"""Where prompts sit in a model's hidden states: MOSR's analysis (Zhang et al., arXiv 2511.19009), per model.

- `probes`: PCA, logistic probes with held-out logits, difference-of-means directions, group tests.
- `stage`: the ``represent`` stage: states of benign, pseudo-malicious (over-refused or answered) and
  malicious prompts for every evaluated model, and where the over-refused ones sit.
"""
