"""Linear reading of hidden states: PCA, logistic probes with held-out (cross-fitted) logits, difference-of-means
directions, and group comparisons with intervals. numpy and scipy only (no sklearn in the dependencies)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def pca(x: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal components by SVD of the centred data.

    Returns:
        ``(coordinates (n, k), components (k, d) orthonormal rows, explained variance ratio (k,))``.
    """
    mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = min(k, vt.shape[0])
    variance = singular ** 2
    return (x - mean) @ vt[:k].T, vt[:k], variance[:k] / max(variance.sum(), 1e-12)


@dataclass
class Probe:
    """A binary logistic probe on standardised features; ``logit(x) > 0`` predicts class 1."""

    weights: np.ndarray
    bias: float
    mean: np.ndarray
    std: np.ndarray

    def logit(self, x: np.ndarray) -> np.ndarray:
        """The probe's logit per row: its signed margin from the boundary."""
        return ((x - self.mean) / self.std) @ self.weights + self.bias

    def direction(self) -> np.ndarray:
        """The unit vector in the raw state space along which the logit grows fastest."""
        raw = self.weights / self.std
        return raw / max(np.linalg.norm(raw), 1e-12)


def fit_probe(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> Probe:
    """Fit an L2-regularised logistic regression (L-BFGS, classes weighted to balance, intercept unpenalised).

    Args:
        x: ``(n, d)`` states.
        y: ``(n,)`` 0/1 labels; both classes present.
        l2: Penalty strength on the standardised weights.

    Raises:
        ValueError: Fewer than two classes.
    """
    from scipy.optimize import minimize

    y = np.asarray(y, dtype=float)
    if len(np.unique(y)) < 2:
        raise ValueError("a probe needs examples of both classes")
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / std
    weight = np.where(y == 1, 0.5 / y.sum(), 0.5 / (1 - y).sum())  # balanced: each class half the loss

    def loss_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        logits = z @ w + b
        loss = float((weight * (np.logaddexp(0, logits) - y * logits)).sum() + 0.5 * l2 / len(y) * w @ w)
        residual = weight * (1 / (1 + np.exp(-logits)) - y)
        return loss, np.append(z.T @ residual + l2 / len(y) * w, residual.sum())

    theta = minimize(loss_and_gradient, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B",
                     options={"maxiter": 2000}).x
    return Probe(theta[:-1], float(theta[-1]), mean, std)


def folds_of(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number per row, stratified by class and shuffled by ``seed``."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), dtype=int)
    for value in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == value))
        fold[rows] = np.arange(len(rows)) % folds
    return fold


def cross_fitted_logits(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0, l2: float = 1.0,
                        extra: np.ndarray | None = None) -> tuple[np.ndarray, float, np.ndarray | None]:
    """Held-out probe logits: each row scored by the probe fitted on the other folds.

    Args:
        x, y: Training states and 0/1 labels.
        folds: Folds (at least 2; fewer when a class has fewer rows).
        seed: Fold assignment seed.
        l2: See `fit_probe`.
        extra: Rows outside the training classes (e.g. pseudo-malicious prompts) scored by every fold's probe,
            averaged.

    Returns:
        ``(out-of-fold logits, balanced held-out accuracy, logits of extra or None)``.
    """
    y = np.asarray(y).astype(int)
    folds = max(2, min(folds, int(np.bincount(y).min())))
    fold = folds_of(y, folds, seed)
    held_out, extra_logits = np.zeros(len(y)), []
    for k in range(folds):
        probe = fit_probe(x[fold != k], y[fold != k], l2)
        held_out[fold == k] = probe.logit(x[fold == k])
        if extra is not None and len(extra):
            extra_logits.append(probe.logit(extra))
    correct = (held_out > 0) == (y == 1)
    accuracy = float(np.mean([correct[y == value].mean() for value in (0, 1)]))
    return held_out, accuracy, (np.mean(extra_logits, axis=0) if extra_logits else None)


def mean_difference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The unit difference-of-means direction ``mean(x[y == 1]) - mean(x[y == 0])``."""
    y = np.asarray(y).astype(bool)
    direction = x[y].mean(axis=0) - x[~y].mean(axis=0)
    return direction / max(np.linalg.norm(direction), 1e-12)


def boundary_position(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Where rows sit on the segment between two class means: 0 at ``low``'s mean, 1 at ``high``'s."""
    a, b = low.mean(axis=0), high.mean(axis=0)
    axis = b - a
    return (x - a) @ axis / max(float(axis @ axis), 1e-12)


def compare_groups(a: np.ndarray, b: np.ndarray, bootstrap_samples: int = 1000, seed: int = 0) -> dict:
    """How group ``a`` differs from group ``b`` on a score.

    Returns:
        ``n_a``, ``n_b``, ``mean_a``, ``mean_b``, ``difference`` (mean a − mean b) with a percentile bootstrap
        95% ``interval``, ``auc`` = P(a > b) + ½P(a = b) (0.5: no shift) and the two-sided Mann–Whitney ``p_value``;
        the statistics are None when a group is empty.
    """
    from scipy.stats import mannwhitneyu

    a, b = np.asarray(a, float), np.asarray(b, float)
    out = {"n_a": len(a), "n_b": len(b), "mean_a": float(a.mean()) if len(a) else None,
           "mean_b": float(b.mean()) if len(b) else None, "difference": None, "interval": None, "auc": None,
           "p_value": None}
    if not (len(a) and len(b)):
        return out
    out["difference"] = float(a.mean() - b.mean())
    if bootstrap_samples:
        rng = np.random.default_rng(seed)
        draws = [rng.choice(a, len(a)).mean() - rng.choice(b, len(b)).mean() for _ in range(bootstrap_samples)]
        out["interval"] = [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]
    test = mannwhitneyu(a, b, alternative="two-sided")
    out["auc"], out["p_value"] = float(test.statistic / (len(a) * len(b))), float(test.pvalue)
    return out
