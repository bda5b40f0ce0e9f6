"""DRO (Zheng et al., ICML 2024): safety prompts as directions in representation space, a learned soft prompt.

- `estimation`: PCA, the fold-averaged logistic models and the soft-prompt objective.
- `soft_prompt`: the soft prompt in the chat template, in generation and in hidden states; `SoftPromptModel`,
  the model handle that evaluation and representation stages open a DRO folder with.
- `plots`: the before/after figures.
- `stage`: the ``dro`` stage.
"""
