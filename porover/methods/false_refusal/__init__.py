"""Surgical false-refusal ablation (Wang et al., ICLR 2025; mainlp/False-Refusal-Mitigation), training-free.

- `vectors`: the false-refusal vector partially orthogonalized against the true refusal vector.
- `stage`: the ``false_refusal`` stage; it reuses `porover.methods.refusal_direction`'s library (means,
  selection, weight orthogonalization, the coefficient curve).
"""
