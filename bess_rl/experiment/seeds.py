"""Several seeds of one config, aggregated as rliable recommends for few runs.

Why: one seed of an RL agent is an anecdote; with 3-10 seeds a mean is dragged by one outlier and a
median throws most runs away. The interquartile mean (IQM) and the mean, each with a 95 % stratified
bootstrap confidence interval, and the probability that one agent beats another, are the rliable
estimators. The point estimates are ``rliable.metrics``; the bootstrap is the stratified percentile
bootstrap of ``rliable.library`` written out here, because that module imports ``arch``, whose
releases that rliable accepts fail to import with pandas 3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.stats
from rliable import metrics

CONFIDENCE = 0.95
REPS = 2000  # bootstrap resamples: a CI bound moves by well under 0.1 of its width between seeds of the bootstrap


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its confidence interval."""

    value: float
    low: float
    high: float

    def text(self, digits: int = 2, suffix: str = "") -> str:
        if np.isnan(self.low):
            return f"{self.value:.{digits}f}{suffix}"
        return f"{self.value:.{digits}f}{suffix} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _matrix(scores: np.ndarray) -> np.ndarray:
    """Scores as runs x tasks (one evaluation scenario is one task)."""
    scores = np.asarray(scores, dtype=np.float64)
    return scores[:, None] if scores.ndim == 1 else scores


def _resamples(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``REPS`` stratified resamples (reps x runs x tasks): runs drawn with replacement within each task."""
    runs, tasks = scores.shape
    idx = rng.integers(0, runs, size=(REPS, runs, tasks))
    return np.take_along_axis(scores[None], idx, axis=1)


def _interval(samples: np.ndarray, value: float) -> Estimate:
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Estimate(float(value), float(low), float(high))


def _iqm(samples: np.ndarray) -> np.ndarray:
    """``metrics.aggregate_iqm`` of each resample at once (a 25 % trimmed mean over all its scores)."""
    return scipy.stats.trim_mean(samples.reshape(len(samples), -1), 0.25, axis=1)


def _mean(samples: np.ndarray) -> np.ndarray:
    """``metrics.aggregate_mean`` of each resample: the mean over runs, then over tasks."""
    return samples.mean(axis=1).mean(axis=1)


def _poi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``metrics.probability_of_improvement`` of each pair of resamples (ties count half), mean over tasks."""
    greater = (x[:, :, None, :] > y[:, None, :, :]).mean(axis=(1, 2))
    equal = (x[:, :, None, :] == y[:, None, :, :]).mean(axis=(1, 2))
    return (greater + 0.5 * equal).mean(axis=1)


def _estimate(scores: np.ndarray, point: Callable[[np.ndarray], float], batch: Callable, seed: int) -> Estimate:
    scores = _matrix(scores)
    value = float(point(scores))
    if scores.shape[0] < 2:
        return Estimate(value, float("nan"), float("nan"))
    return _interval(batch(_resamples(scores, np.random.default_rng(seed))), value)


def iqm(scores: np.ndarray, seed: int = 0) -> Estimate:
    """Interquartile mean (mean of the middle 50 % of runs) with its 95 % CI."""
    return _estimate(scores, metrics.aggregate_iqm, _iqm, seed)


def mean(scores: np.ndarray, seed: int = 0) -> Estimate:
    return _estimate(scores, metrics.aggregate_mean, _mean, seed)


def probability_of_improvement(x: np.ndarray, y: np.ndarray, seed: int = 0) -> Estimate:
    """P(a run of X scores higher than a run of Y), ties counting half, with both resampled independently."""
    x, y = _matrix(x), _matrix(y)
    value = float(metrics.probability_of_improvement(x, y))
    if min(x.shape[0], y.shape[0]) < 2:
        return Estimate(value, float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    return _interval(_poi(_resamples(x, rng), _resamples(y, rng)), value)
