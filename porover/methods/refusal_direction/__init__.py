"""The refusal direction (Arditi et al. 2024; andyrdt/refusal_direction): training-free, read off the model.

- `directions`: the post-instruction positions, mean states, difference-of-means candidates, refusal and KL scores.
- `interventions`: directional ablation and activation addition by hooks; ablation baked into the weights.
- `selection`: the authors' criteria (bypass, induce, KL, pruned layers) choosing one candidate; resumable.
- `curve`: a safety–usefulness curve over a coefficient on validation prompts (``sweep.csv``).
- `steering`: the stage's ``model/`` (the ablated weights, the vector) and `RefusalDirectionModel`, its handle.
- `workflow`: what both direction stages share (prompt sets, the refusal-score filter, cached means).
- `plots`: per-layer scores and the coefficient curve.
- `stage`: the ``refusal_direction`` stage.
"""
