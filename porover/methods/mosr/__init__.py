"""MOSR-like training, a RECONSTRUCTION (MOSR publishes no code or loss formula).

- `loss`: overlap-aware weights, the training rows and the RepBend-style representation loss.
- `stage`: the ``mosr`` stage: LoRA training with that loss (TRL's trainer, a custom ``compute_loss``).
"""
