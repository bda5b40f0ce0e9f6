"""The false-refusal vector and its partial orthogonalization against the true refusal vector (Wang et al., ICLR
2025; mainlp/False-Refusal-Mitigation, ``ortho_refusal_directions`` in ``pipeline/run_pipeline.py``).

Both vectors are differences in means at the same (position, layer): pseudo-harmful minus harmless prompts (the
false-refusal vector ``f``) and harmful minus harmless prompts (the true refusal vector ``r``). The authors remove
``λ`` times ``f``'s projection on ``r``, ``f - λ (f·r / r·r) r``, and normalise: λ = 1 makes it orthogonal to
the refusal vector, so ablating it should leave refusal of harmful prompts alone; a smaller λ keeps part of the
refusal component, so ablating it makes the model more compliant (their demo notebook lowers λ to 0.6 for that).
"""

from __future__ import annotations

import numpy as np


def partially_orthogonalized(false_refusal: np.ndarray, refusal: np.ndarray, coefficient: float = 1.0,
                             epsilon: float = 1e-8) -> np.ndarray:
    """Unit vectors ``f - λ (f·r / r·r) r`` along the last axis (any leading shape: one per position and layer).

    Args:
        false_refusal: ``f``, e.g. ``(positions, layers, d)``.
        refusal: ``r``, the same shape.
        coefficient: λ, the share of the projection removed (1 = fully orthogonal).
    """
    if false_refusal.shape != refusal.shape:
        raise ValueError(f"vectors of different shapes: {false_refusal.shape} and {refusal.shape}")
    scale = (false_refusal * refusal).sum(axis=-1, keepdims=True) / ((refusal * refusal).sum(axis=-1, keepdims=True)
                                                                      + epsilon)
    kept = false_refusal - coefficient * scale * refusal
    return kept / (np.linalg.norm(kept, axis=-1, keepdims=True) + epsilon)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity along the last axis."""
    return (a * b).sum(axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
