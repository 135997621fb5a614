"""Persistence forecast: what a deployed controller can say about the next hours from the past alone."""

from __future__ import annotations

import numpy as np


def persistence(values: np.ndarray, t: int, hours: int) -> np.ndarray:
    """``values`` for hours t..t+hours-1 as known at hour t: hour t itself (a nowcast), each later
    hour from the latest same hour of day already seen (yesterday's for the next 24 h).

    The year wraps around as the env's forecasts do, so the first day looks back at the year's last.
    """
    lead = np.arange(hours)
    lag = 24 * np.ceil(lead / 24).astype(np.int64)
    return values[(t + lead - lag) % values.shape[0]]
