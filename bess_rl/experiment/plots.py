"""Figures for a run folder and the report: a dispatch week and bar charts. Headless (Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def busiest_pv_week(pv_kw: np.ndarray) -> int:
    """First hour of the calendar week (day-aligned) with most PV: where control matters most."""
    weeks = len(pv_kw) // 168
    if weeks == 0:
        return 0
    return int(np.argmax(pv_kw[: weeks * 168].reshape(weeks, 168).sum(axis=1))) * 168


def dispatch_week(trace: dict[str, np.ndarray], path: Path, title: str, start: int | None = None) -> Path:
    """Stack of one week's hourly flows (kW) and the battery SOC, saved as PNG."""
    start = busiest_pv_week(trace["pv_kw"]) if start is None else start
    sl = slice(start, start + 168)
    hours = np.arange(len(trace["pv_kw"]))[sl]
    fig, (ax, ax_soc) = plt.subplots(2, 1, figsize=(11, 6), sharex=True, height_ratios=[3, 1])
    ax.fill_between(hours, trace["pv_kw"][sl], color="gold", alpha=0.5, label="PV")
    ax.plot(hours, trace["load_kw"][sl], color="black", lw=1, label="site load")
    ax.plot(hours, trace["load_kw"][sl] + trace["ev_kw"][sl], color="tab:blue", lw=1, label="load + EV")
    ax.plot(hours, trace["grid_import_kw"][sl], color="tab:red", lw=1.2, label="grid import")
    ax.bar(hours, trace["bess_kw"][sl], color="tab:green", alpha=0.6, width=1.0, label="battery (+charge)")
    ax.set_ylabel("kW")
    ax.legend(loc="upper left", ncols=5, fontsize=8)
    ax.set_title(title)
    ax_soc.plot(hours, trace["soc"][sl], color="tab:green")
    ax_soc.set_ylim(0, 1)
    ax_soc.set_ylabel("SOC")
    ax_soc.set_xlabel("hour of year")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
