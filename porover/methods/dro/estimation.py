"""DRO (Zheng et al., ICML 2024): the estimation and the soft-prompt objective, as the authors' code does them.

Steps (chujiezheng/LLM-Safeguard ``code/estimate.py``, ``code/train.py``; notes in the README's DRO section):

1. Last-token final-layer states of the training queries under each human prompt condition.
2. PCA to ``k`` = 4 dimensions, completed to an orthonormal basis ``V`` of the whole space (`pca_basis`), so
   ``z = (h - mean) @ V`` has the PCA coordinates first and the rest after.
3. Two logistic models on ``z[:k]``, each fitted on 10 folds and averaged over the folds (`fit_logistic_cv`):
   compliance (target: the compliance score, a rate in [0, 1]) and harmlessness (0 harmful, 1 harmless).
4. A soft prompt trained so that, relative to the human prompt's states, harmful queries move toward lower
   compliance and harmless ones away from it (`dro_loss`, `train_soft_prompt`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The authors' safety prompts (code/utils.py): Llama-2's default system prompt, its first sentence, and Mistral's
# guardrail prompt. "none" is an explicitly empty system turn (SmolLM2's template otherwise inserts its own).
SYSTEM_PROMPTS = {
    "none": "",
    "default": (
        "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being "
        "safe. Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or "
        "illegal content. Please ensure that your responses are socially unbiased and positive in nature.\n\n"
        "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
        "something not correct. If you don't know the answer to a question, please don't share false "
        "information."),
    "short": "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while "
             "being safe.",
    "guardrail": "You are an AI assistant. Always assist with care, respect, and truth. Please respond with utmost "
                 "utility yet securely and avoid harmful, unethical, prejudiced, or negative content. Also ensure "
                 "replies promote fairness and positivity.",
}


def pca_basis(states: np.ndarray, k: int = 4, seed: int = 42) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of ``states`` completed to an orthonormal basis of the whole space.

    The first ``k`` columns are the principal axes (sign fixed as scikit-learn's ``svd_flip`` does: the largest
    entry of each axis positive); the others complete them, as the authors' Gram-Schmidt over seeded Gaussian
    vectors does (here one QR, which is Gram-Schmidt in exact arithmetic).

    Returns:
        ``(mean, V, explained_variance_ratio[:k])`` with ``V`` of shape ``(d, d)``, ``V.T @ V = I``.
    """
    states = np.asarray(states, dtype=np.float64)
    mean = states.mean(axis=0)
    _, singular, axes = np.linalg.svd(states - mean, full_matrices=False)
    axes = axes[:k] * np.sign(axes[:k][np.arange(k), np.abs(axes[:k]).argmax(axis=1)])[:, None]
    ratio = singular[:k] ** 2 / (singular ** 2).sum()
    d = states.shape[1]
    rest = np.random.default_rng(seed).standard_normal((d, d - k))
    rest -= axes.T @ (axes @ rest)
    q, _ = np.linalg.qr(rest)
    return mean, np.concatenate([axes.T, q], axis=1), ratio


@dataclass(frozen=True)
class LogisticFit:
    """A logistic model fitted per fold and averaged over the folds, as DRO's ``estimate.py``.

    Attributes:
        weights: ``(folds, k)`` per-fold weights; `weight` is their mean.
        biases: ``(folds,)`` per-fold biases; `bias` is their mean.
        test_losses: Each fold's best held-out BCE.
        epochs: Each fold's epoch of that best loss.
    """

    weights: np.ndarray
    biases: np.ndarray
    test_losses: np.ndarray
    epochs: np.ndarray

    @property
    def weight(self) -> np.ndarray:
        return self.weights.mean(axis=0)

    @property
    def bias(self) -> float:
        return float(self.biases.mean())

    def logits(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z)[:, :len(self.weight)] @ self.weight + self.bias


def fit_logistic_cv(x: np.ndarray, y: np.ndarray, n_splits: int = 10, lr: float = 1e-4, max_epochs: int = 10000,
                    patience: int = 3, min_delta: float = 1e-4, seed: int = 42) -> LogisticFit:
    """One linear logit per fold, averaged: full-batch AdamW, kept at its best held-out BCE, stopped after
    ``patience`` epochs without an improvement of ``min_delta`` (the authors' settings are the defaults).

    Args:
        x: ``(n, k)`` features (the PCA coordinates).
        y: ``(n,)`` targets in [0, 1] (soft labels allowed).
        n_splits: Folds over one seeded shuffle; 1 fits on everything, early-stopping on the training loss.
    """
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float32)
    order = list(range(len(x)))
    random.Random(seed).shuffle(order)
    torch.manual_seed(seed)
    fold = len(order) // n_splits
    weights, biases, losses, epochs = [], [], [], []
    for split in range(n_splits):
        test = order[split * fold:(split + 1) * fold] if n_splits > 1 else order
        train = order[:split * fold] + order[(split + 1) * fold:] if n_splits > 1 else order
        model = torch.nn.Linear(x.shape[1], 1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        best, best_state, best_epoch, stale = float("inf"), None, 0, 0
        for epoch in range(1, max_epochs + 1):
            optimizer.zero_grad()
            F.binary_cross_entropy_with_logits(model(x[train]).squeeze(-1), y[train]).backward()
            optimizer.step()
            with torch.no_grad():
                loss = F.binary_cross_entropy_with_logits(model(x[test]).squeeze(-1), y[test]).item()
            if loss < best - min_delta:
                best, best_epoch, stale = loss, epoch, 0
                best_state = (model.weight.detach().clone()[0], model.bias.detach().clone()[0])
            else:
                stale += 1
                if stale == patience:
                    break
        weights.append(best_state[0].numpy())
        biases.append(best_state[1].item())
        losses.append(best)
        epochs.append(best_epoch)
    return LogisticFit(np.stack(weights), np.array(biases), np.array(losses), np.array(epochs))


def dro_loss(z_new, z_base, refusal_weight, harm_weight, labels, k: int = 4,
             weights: tuple[float, float, float] = (1.0, 0.01, 0.001)):
    """DRO's loss on a batch; returns ``(total, {"refusal", "harmfulness", "norm"})``.

    ``BCE(f_r(z_new) - f_r(z_base), y) + 0.01 BCE(f_h(z_new) - f_h(z_base), y) + 0.001 mean((z_new[k:] -
    z_base[k:])^2)`` with y = 0 harmful, 1 harmless: the logistic biases cancel in the differences, so only the
    weight vectors enter. A zero weight drops its term (the authors' ablations).

    Args:
        z_new, z_base: ``(batch, d)`` coordinates in the basis ``V`` with the soft and the human prompt.
        refusal_weight, harm_weight: ``(k,)`` fold-averaged weights of the compliance and harmlessness models.
        labels: ``(batch,)`` 0 harmful, 1 harmless.
    """
    import torch.nn.functional as F

    refusal = F.binary_cross_entropy_with_logits((z_new[:, :k] - z_base[:, :k]) @ refusal_weight, labels)
    harmfulness = F.binary_cross_entropy_with_logits((z_new[:, :k] - z_base[:, :k]) @ harm_weight, labels)
    norm = ((z_new[:, k:] - z_base[:, k:]) ** 2).mean()
    total = weights[0] * refusal + weights[1] * harmfulness + weights[2] * norm
    return total, {"refusal": refusal.item(), "harmfulness": harmfulness.item(), "norm": norm.item()}


@dataclass
class Estimation:
    """What the soft-prompt objective needs from the estimation: the basis and the two averaged weight vectors."""

    mean: np.ndarray
    basis: np.ndarray
    refusal: LogisticFit
    harmfulness: LogisticFit
    k: int = 4

    def project(self, states: np.ndarray) -> np.ndarray:
        return (np.asarray(states, dtype=np.float64) - self.mean) @ self.basis


def train_soft_prompt(forward: Callable, init, queries: Sequence[str], labels: Sequence[float], z_base: np.ndarray,
                      estimation: Estimation, checkpoint: Path, epochs: int = 40, batch_size: int = 50,
                      lr: float = 1e-3, max_grad_norm: float = 1.0, loss_weights=(1.0, 0.01, 0.001), seed: int = 42,
                      on_step: Callable | None = None):
    """Train the soft prompt with `dro_loss`; resumable from ``checkpoint`` (written after every epoch).

    Args:
        forward: ``(queries, soft_prompt) -> (batch, d)`` final-layer last-token states, differentiable.
        init: ``(n, d)`` initial soft prompt (the human prompt's token embeddings).
        queries, labels: Training queries, 0 harmful / 1 harmless.
        z_base: ``(len(queries), d)`` coordinates of the queries under the human prompt (text).
        estimation: Basis and logistic models.
        checkpoint: File for (prompt, optimizer, epoch, shuffle state, log).
        epochs, batch_size, lr, max_grad_norm, loss_weights, seed: The authors' defaults (AdamW, seeded shuffle
            every epoch; the last partial batch is kept when the query count is no multiple of the batch).
        on_step: Called with each step's log row.

    Returns:
        ``(soft_prompt, log)``: the trained ``(n, d)`` tensor and one row per step.
    """
    import torch

    prompt = torch.nn.Parameter(torch.as_tensor(init, dtype=torch.float32).clone())
    optimizer = torch.optim.AdamW([prompt], lr=lr)
    rng, start, log, order = random.Random(seed), 0, [], list(range(len(queries)))
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        with torch.no_grad():
            prompt.copy_(state["prompt"])
        optimizer.load_state_dict(state["optimizer"])
        rng.setstate(state["rng"])
        start, log, order = state["epoch"], state["log"], state["order"]
    mean = torch.as_tensor(estimation.mean, dtype=torch.float32)
    basis = torch.as_tensor(estimation.basis, dtype=torch.float32)
    w_r = torch.as_tensor(estimation.refusal.weight, dtype=torch.float32)
    w_h = torch.as_tensor(estimation.harmfulness.weight, dtype=torch.float32)
    base = torch.as_tensor(z_base, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.float32)
    for epoch in range(start, epochs):
        rng.shuffle(order)  # in place, every epoch, as the authors' loop (so the order is checkpointed too)
        for first in range(0, len(order), batch_size):
            batch = order[first:first + batch_size]
            optimizer.zero_grad()
            states = forward([queries[i] for i in batch], prompt)
            z_new = (states.float().cpu() - mean) @ basis
            total, parts = dro_loss(z_new, base[batch], w_r, w_h, y[batch], estimation.k, loss_weights)
            total.backward()
            torch.nn.utils.clip_grad_norm_([prompt], max_grad_norm)
            optimizer.step()
            log.append({"epoch": epoch + 1, "step": len(log) + 1, "loss": total.item(), **parts})
            if on_step:
                on_step(log[-1])
        torch.save({"prompt": prompt.detach(), "optimizer": optimizer.state_dict(), "rng": rng.getstate(),
                    "order": order, "epoch": epoch + 1, "log": log}, checkpoint)
    return prompt.detach(), log
