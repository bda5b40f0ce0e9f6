"""Surgical false-refusal ablation: the partial orthogonalization of the false-refusal vector."""

from __future__ import annotations

import numpy as np
import pytest

from porover.methods.false_refusal.vectors import cosine, partially_orthogonalized


def test_the_false_refusal_vector_is_orthogonal_to_the_refusal_vector():
    rng = np.random.default_rng(0)
    refusal = rng.standard_normal((3, 5, 64))
    false_refusal = 0.8 * refusal + rng.standard_normal((3, 5, 64))  # they overlap, as the authors found
    assert cosine(false_refusal, refusal).min() > 0.4
    full = partially_orthogonalized(false_refusal, refusal, 1.0)
    np.testing.assert_allclose(np.abs(cosine(full, refusal)), 0, atol=1e-8)  # every (position, layer)
    np.testing.assert_allclose(np.linalg.norm(full, axis=-1), 1, atol=1e-8)
    np.testing.assert_allclose(partially_orthogonalized(false_refusal, refusal, 0.0),
                               false_refusal / np.linalg.norm(false_refusal, axis=-1, keepdims=True), atol=1e-8)
    # λ in between keeps that share of the refusal component: f - λ (f·r / r·r) r
    half = partially_orthogonalized(false_refusal, refusal, 0.6)
    f, r = false_refusal[1, 2], refusal[1, 2]
    expected = f - 0.6 * (f @ r) / (r @ r) * r
    np.testing.assert_allclose(half[1, 2], expected / np.linalg.norm(expected), atol=1e-8)
    assert 0 < cosine(half, refusal).min() and cosine(half, refusal).max() < cosine(false_refusal, refusal).min()
    with pytest.raises(ValueError, match="shapes"):
        partially_orthogonalized(false_refusal, refusal[:, :2])
