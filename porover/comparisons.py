"""Paired comparisons of evaluations that share prompts: differences with paired bootstrap intervals, McNemar's
exact test, the smallest difference a comparison could detect, and Holm's correction for several comparisons.

Every arm of a run answers the same prompts, so two arms are compared prompt by prompt, not by laying their
marginal intervals side by side: overlapping marginal intervals miss real differences (the prompts two arms both
refuse carry no information about their difference; only the prompts that *flipped* do).

The outcome of a prompt is *good* when an unsafe prompt is refused (safety) or a safe prompt is answered
(usefulness). Outcomes are held as arrays ``refused[replicate, prompt]`` for the ``before`` and ``after`` arms,
one row per training seed (replicate ``r`` of ``after`` is compared with row ``r`` of ``before``; a parent
trained once is repeated). Statistics come from scipy: `scipy.stats.bootstrap` resamples prompts within their
strata (benchmark × label, as the marginal intervals do) *jointly* for both arms, and with several seeds it
resamples the seeds too, so the interval of a difference pooled over seeds carries the seed-to-seed noise as
well as the prompt-to-prompt noise; `scipy.stats.binomtest` gives McNemar's exact p-value.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

METRICS = ("safety", "usefulness", "f1")
RATES = ("safety", "usefulness")  # the two rates with a discordant-pair test (F1 is no rate)


@dataclass
class Paired:
    """Outcomes of two arms on the prompts they share.

    Attributes:
        before: ``refused[replicate, prompt]`` of the arm compared against (bool).
        after: ``refused[replicate, prompt]`` of the arm compared (same shape).
        unsafe: Per prompt, whether its label is unsafe (else safe).
        strata: Per prompt, its stratum (benchmark and label) as a string.
        keys: Per prompt, its ``(source, id)``.
    """

    before: np.ndarray
    after: np.ndarray
    unsafe: np.ndarray
    strata: np.ndarray
    keys: list[tuple] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.before, self.after = np.atleast_2d(self.before).astype(bool), np.atleast_2d(self.after).astype(bool)
        self.unsafe, self.strata = np.asarray(self.unsafe, dtype=bool), np.asarray(self.strata)
        if (self.before.shape != self.after.shape or self.before.shape[1] != len(self.unsafe)
                or len(self.unsafe) != len(self.strata)):
            raise ValueError(f"before {self.before.shape}, after {self.after.shape}, {len(self.unsafe)} labels and "
                             f"{len(self.strata)} strata do not match")

    @property
    def replicates(self) -> int:
        return self.after.shape[0]


def rates(refused: np.ndarray, unsafe: np.ndarray) -> dict[str, np.ndarray]:
    """Safety, usefulness and F1 (shares in [0, 1]) of ``refused[..., prompt]`` along the last axis.

    Returns:
        ``{"safety", "usefulness", "f1"}``, each of ``refused``'s leading shape (NaN where undefined).
    """
    refused = refused.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        safety = (refused * unsafe).sum(axis=-1) / unsafe.sum(axis=-1)
        usefulness = ((1 - refused) * ~unsafe).sum(axis=-1) / (~unsafe).sum(axis=-1)
        total = safety + usefulness
        f1 = np.where(total > 0, 2 * safety * usefulness / np.where(total > 0, total, 1), 0.0)
    return {"safety": safety, "usefulness": usefulness, "f1": np.where(np.isnan(total), np.nan, f1)}


def mcnemar(before: np.ndarray, after: np.ndarray, relevant: np.ndarray, good_when_refused: bool) -> dict:
    """McNemar's exact test on one rate: the prompts whose outcome flipped between two arms.

    Args:
        before, after: Refused or not, per prompt (1-D).
        relevant: The prompts the rate is over (unsafe prompts for safety, safe ones for usefulness).
        good_when_refused: True for safety (a refusal is the good outcome), False for usefulness.

    Returns:
        ``{"gained", "lost", "n", "p"}``: prompts whose outcome became good / became bad, the prompts compared,
        and the two-sided exact p-value (`scipy.stats.binomtest` of ``gained`` in ``gained + lost`` at 1/2;
        1.0 when nothing flipped).
    """
    good_before = before[relevant] == good_when_refused
    good_after = after[relevant] == good_when_refused
    gained, lost = int((~good_before & good_after).sum()), int((good_before & ~good_after).sum())
    p = stats.binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0
    return {"gained": gained, "lost": lost, "n": int(relevant.sum()), "p": float(p)}


def minimum_detectable_difference(n: int, discordance: float, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest difference of two paired rates that McNemar's test detects with ``power`` at level ``alpha``.

    Connor's (1987) sample size for McNemar's test, solved for the difference: with ``n`` pairs of which a
    share ``discordance`` flipped (either way), ``n = (z_{1-α/2} √ψ + z_{power} √(ψ − δ²))² / δ²`` for ψ the
    discordance and δ the difference of the two rates.

    Returns:
        δ as a share (None without pairs or without any flipped prompt: the discordance is then unknown).
    """
    if n <= 0 or discordance <= 0:
        return None
    z_alpha, z_power = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    psi = min(discordance, 1.0)

    def excess(delta: float) -> float:
        return (z_alpha * np.sqrt(psi) + z_power * np.sqrt(max(psi - delta ** 2, 0.0))) / delta - np.sqrt(n)

    if excess(np.sqrt(psi)) > 0:  # too few pairs to detect even the largest difference this discordance allows
        return float(np.sqrt(psi))
    return float(optimize.brentq(excess, 1e-9, np.sqrt(psi)))


def paired_differences(paired: Paired, n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95,
                       alpha: float = 0.05, power: float = 0.8) -> dict:
    """Δ safety, Δ usefulness and Δ F1 (after − before, shares), pooled over replicates, with paired intervals.

    The point estimate is the mean over replicates of each replicate's difference. The interval is
    `scipy.stats.bootstrap`'s percentile interval over resamples that draw prompts with replacement within each
    stratum (the same prompts for both arms and for every replicate: paired) and, with two or more replicates,
    draw the replicates with replacement too. Identical arms give Δ = 0 and the interval [0, 0].

    Args:
        paired: The two arms' outcomes on their shared prompts.
        n_resamples: Bootstrap resamples (0: no intervals).
        seed: Seed of the bootstrap.
        confidence: Confidence level of the intervals.
        alpha, power: For the minimum detectable difference of each rate.

    Returns:
        ``{metric: {"value", "low", "high", "p_bootstrap", "per_replicate"}}`` for safety, usefulness and F1
        (``p_bootstrap``: `bootstrap_p` of the resampled differences), plus for each rate
        ``mcnemar`` (per replicate, see `mcnemar`) and ``detectable`` (the minimum detectable difference at the
        replicates' mean discordance), and ``n`` (prompts), ``n_safe``, ``n_unsafe``, ``replicates``.
    """
    before, after, unsafe = paired.before, paired.after, paired.unsafe
    per_replicate = {m: rates(after, unsafe)[m] - rates(before, unsafe)[m] for m in METRICS}
    result: dict = {"n": int(len(unsafe)), "n_unsafe": int(unsafe.sum()), "n_safe": int((~unsafe).sum()),
                    "replicates": paired.replicates}
    for metric in METRICS:
        values = per_replicate[metric]
        value = float(np.mean(values)) if not np.isnan(values).any() else None
        result[metric] = {"value": value, "low": None, "high": None, "per_replicate": [float(v) for v in values]}
    if n_resamples and len(unsafe) and (paired.replicates > 1 or any(
            (paired.strata == s).sum() > 1 for s in set(paired.strata))):  # else nothing to resample
        draws = _bootstrap(paired, n_resamples, seed, confidence)
        for i, metric in enumerate(METRICS):
            if result[metric]["value"] is not None:
                low, high = draws.confidence_interval.low[i], draws.confidence_interval.high[i]
                result[metric].update(low=float(low), high=float(high),
                                      p_bootstrap=bootstrap_p(draws.bootstrap_distribution[i]))
    for rate, relevant, good_when_refused in (("safety", unsafe, True), ("usefulness", ~unsafe, False)):
        tests = [mcnemar(b, a, relevant, good_when_refused) for b, a in zip(before, after)]
        result[rate]["mcnemar"] = tests
        discordance = np.mean([(t["gained"] + t["lost"]) / t["n"] for t in tests]) if relevant.any() else 0.0
        result[rate]["detectable"] = minimum_detectable_difference(int(relevant.sum()), float(discordance), alpha, power)
    return result


def _bootstrap(paired: Paired, n_resamples: int, seed: int, confidence: float):
    """`scipy.stats.bootstrap` of (Δ safety, Δ usefulness, Δ F1) over joint resamples of prompts (within strata)
    and replicates: each stratum's prompt indices and the replicate indices are separate samples for scipy, which
    resamples each independently; the statistic applies the drawn indices to both arms at once (paired)."""
    groups = [np.flatnonzero(paired.strata == s) for s in dict.fromkeys(paired.strata)]
    # a stratum of one prompt resamples to itself (and scipy wants two or more per sample): kept as it is
    strata = [g for g in groups if len(g) > 1]
    fixed = np.concatenate([g for g in groups if len(g) == 1] or [np.array([], dtype=int)])
    samples = tuple(strata) + ((np.arange(paired.replicates),) if paired.replicates > 1 else ())
    before, after, unsafe = paired.before, paired.after, paired.unsafe

    def statistic(*drawn: np.ndarray, axis: int = -1) -> np.ndarray:
        batch = int(np.prod(drawn[0].shape[:-1]))
        prompts = (np.concatenate(drawn[:len(strata)], axis=-1).reshape(batch, -1) if strata  # stratum sizes kept
                   else np.empty((batch, 0), dtype=int))
        prompts = np.concatenate([prompts, np.broadcast_to(fixed, (len(prompts), len(fixed)))], axis=-1)
        mask = unsafe[prompts]
        deltas = {m: [] for m in METRICS}
        for b, a in zip(before, after):  # per replicate: (resamples,) differences
            then, now = rates(b[prompts], mask), rates(a[prompts], mask)
            for m in METRICS:
                deltas[m].append(now[m] - then[m])
        stacked = np.stack([np.stack(deltas[m]) for m in METRICS])  # (metric, replicate, resample)
        if paired.replicates > 1:
            chosen = drawn[-1].reshape(-1, paired.replicates)  # (resample, replicate draws)
            pooled = np.take_along_axis(stacked, chosen.T[None, :, :], axis=1).mean(axis=1)
        else:
            pooled = stacked[:, 0, :]
        return pooled.reshape((len(METRICS), *drawn[0].shape[:-1]))

    with warnings.catch_warnings():  # identical arms, or a rate without prompts: a degenerate (or NaN) distribution
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        return stats.bootstrap(samples, statistic, n_resamples=n_resamples, confidence_level=confidence,
                               method="percentile", vectorized=True, rng=np.random.default_rng(seed))


def bootstrap_p(distribution: np.ndarray) -> float:
    """A two-sided bootstrap p-value of "no difference" from resampled differences: twice the smaller share on
    either side of 0 (the level at which the percentile interval would just reach 0), at most 1."""
    distribution = np.asarray(distribution, dtype=float)
    distribution = distribution[~np.isnan(distribution)]
    if not len(distribution):
        return 1.0
    return float(min(1.0, 2 * min((distribution <= 0).mean(), (distribution >= 0).mean())))


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for several comparisons (family-wise error), in input order.

    (scipy has Benjamini-Hochberg but not Holm; statsmodels' ``multipletests(method="holm")`` computes the same.)
    """
    order = np.argsort(pvalues)
    m = len(pvalues)
    adjusted, running = np.empty(m), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return [float(p) for p in adjusted]
