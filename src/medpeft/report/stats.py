"""Pure numerics of the report: CIs, tests and the Pareto front (no files, no frames).

Per-example values come in two shapes (see run/metrics.py): a number per example, whose statistic
is the mean, or [tp, fp, fn] per example, whose statistic is the F1 of the summed counts. Every
function here takes either. All resampling uses a fixed RNG seed, so a report is reproducible
byte for byte.
"""
from __future__ import annotations

import math

import numpy as np

ALPHA = 0.05  # the one significance level of every verdict, answer line and note medpeft prints


def statistic(values) -> float:
    """The mean of per-example numbers, or the micro F1 of per-example [tp, fp, fn] counts."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()) if values.ndim == 1 else float(f1_of_sums(values.sum(axis=0)))


def f1_of_sums(sums: np.ndarray) -> np.ndarray:
    """2tp / (2tp + fp + fn) over the last axis of summed [tp, fp, fn]; 0 where there is nothing at all."""
    sums = np.asarray(sums, dtype=float)
    tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)


def resampled(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The statistic of each resample (one row of `index` per resample)."""
    picked = values[index]
    return picked.mean(axis=1) if values.ndim == 1 else f1_of_sums(picked.sum(axis=1))


def t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Student-t CI of the mean, mean ± t(n-1) · s/√n: the right interval for a handful of seed scores
    (a bootstrap over 3 values is far too narrow: it covers ~74 %, not 95 %). (nan, nan) below 2 values."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return (math.nan, math.nan)
    mean, half = values.mean(), stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return (float(mean - half), float(mean + half))


def bootstrap_ci(values, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the statistic (mean, or F1 of counts); (nan, nan) with fewer than two values."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    stats = resampled(values, rng.integers(0, len(values), size=(n_resamples, len(values))))
    alpha = (1 - level) / 2
    return (float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha)))


def paired_bootstrap_ci(a, b, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of statistic(a) - statistic(b), resampling the shared examples in pairs."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim == 1:
        return bootstrap_ci(a - b, n_resamples, seed, level)  # the mean of differences is the difference of means
    if len(a) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(a), size=(n_resamples, len(a)))
    deltas = resampled(a, index) - resampled(b, index)
    alpha = (1 - level) / 2
    return (float(np.quantile(deltas, alpha)), float(np.quantile(deltas, 1 - alpha)))


def paired_randomization_p(a, b, n_resamples: int = 2000, seed: int = 0) -> float:
    """Two-sided approximate randomisation test of mean(a) = mean(b) on paired per-example scores.

    Under the null either system could have produced either score of a pair, so each difference's
    sign is flipped at random. Exact (every sign pattern) when 2**n <= n_resamples; otherwise
    Monte Carlo with the +1 correction, so p is never 0. Identical inputs give p = 1.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim == 2:
        return paired_randomization_p_counts(a, b, n_resamples, seed)
    diff = a - b
    n = len(diff)
    if n == 0 or not np.isfinite(diff).all():  # a NaN would miss every comparison: p = 0, "significant"
        return math.nan
    observed = abs(diff.mean())
    tol = 1e-12 * max(1.0, observed)  # float noise must not turn a tie into a miss
    if n <= 20 and 2**n <= n_resamples:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
        return float(np.mean(np.abs((signs * diff).mean(axis=1)) >= observed - tol))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_resamples, 500):  # chunks keep memory at 500 x n
        signs = rng.choice([-1.0, 1.0], size=(min(500, n_resamples - start), n))
        hits += int(np.sum(np.abs((signs * diff).mean(axis=1)) >= observed - tol))
    return (hits + 1) / (n_resamples + 1)


def paired_randomization_p_counts(a: np.ndarray, b: np.ndarray, n_resamples: int = 2000, seed: int = 0) -> float:
    """The same test for an F1 of per-example [tp, fp, fn]: each example's pair of counts is swapped
    at random and the F1 difference recomputed (exact when every swap pattern fits in n_resamples)."""
    n = len(a)
    if n == 0 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.nan
    observed = abs(statistic(a) - statistic(b))
    tol = 1e-12 * max(1.0, observed)
    if n <= 20 and 2**n <= n_resamples:
        swaps = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(float)
        exact = True
    else:
        swaps = np.random.default_rng(seed).integers(0, 2, size=(n_resamples, n)).astype(float)
        exact = False
    sums_a = (1 - swaps) @ a + swaps @ b
    sums_b = swaps @ a + (1 - swaps) @ b
    hits = int(np.sum(np.abs(f1_of_sums(sums_a) - f1_of_sums(sums_b)) >= observed - tol))
    return hits / len(swaps) if exact else (hits + 1) / (n_resamples + 1)


def welch_p(a, b) -> float:
    """Welch's t-test p over seed-level scores; nan unless both sides have >= 2 seeds.

    Two groups whose seeds all score the same have no spread to test against: p is 1 when their means
    are equal and nan (untestable, never 0) when they differ."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # exact: std() of equal floats can come out as 1e-17
        return 1.0 if a.mean() == b.mean() else math.nan
    return _t_test_p("ttest_ind", a, b, equal_var=False)


def one_sample_p(values, reference: float) -> float:
    """One-sample t-test p of seed scores against a fixed score (an untrained baseline: one deterministic
    run, no seeds of its own); nan below 2 values. Seeds without spread: 1 when they equal the reference,
    nan (untestable, never 0) when they do not."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2 or reference != reference:
        return math.nan
    if np.ptp(values) == 0:
        return 1.0 if values[0] == reference else math.nan
    return _t_test_p("ttest_1samp", values, reference)


def _t_test_p(test: str, *args, **kwargs) -> float:
    """p of scipy.stats' `test`, its RuntimeWarnings silenced: one side without spread (fine for Welch) or
    nearly equal seeds make scipy warn about precision, and the p is still right."""
    import warnings

    from scipy import stats  # scikit-learn's own dependency

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(getattr(stats, test)(*args, **kwargs).pvalue)


def holm(pvalues) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (same order back): the k-th smallest of m is
    multiplied by m - k + 1, never below the one before it, capped at 1. It keeps the chance of any false
    "real difference" in the family at or below the level, whatever the tests' dependence. A nan p is an
    untested comparison: it stays nan and does not count towards m."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p == p)
    out, running = [math.nan] * len(pvalues), 0.0
    for k, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - k) * p))
        out[i] = running
    return out


def pareto_front(xs, ys) -> list[int]:
    """Indices of points no other point beats (lower-or-equal x and higher-or-equal y, one strictly), by x."""
    points = [(x, y, i) for i, (x, y) in enumerate(zip(xs, ys)) if x == x and y == y]
    front = []
    for x, y, i in points:
        dominated = any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for x2, y2, _ in points)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (xs[i], -ys[i]))


def std_or_nan(values) -> float:
    """Sample standard deviation (ddof=1) as the papers print it; nan for a single seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


