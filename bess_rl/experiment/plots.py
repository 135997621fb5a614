"""Figures for a run folder and the report: a dispatch week and bar charts. Headless (Agg)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np

from bess_rl.baselines.kpis import curtailed_pv_kw


def _pyplot() -> ModuleType:
    """matplotlib's pyplot on the headless Agg backend, imported at the first figure: importing it costs
    0.8 s, paid by every run with ``plot=false`` and every sweep trial when done at module import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def busiest_pv_week(pv_kw: np.ndarray) -> int:
    """First hour of the calendar week (day-aligned) with most PV: where control matters most."""
    weeks = len(pv_kw) // 168
    if weeks == 0:
        return 0
    return int(np.argmax(pv_kw[: weeks * 168].reshape(weeks, 168).sum(axis=1))) * 168


def dispatch_week(
    trace: dict[str, np.ndarray],
    path: Path,
    title: str,
    start: int | None = None,
    timestamps: np.ndarray | None = None,
    others: dict[str, dict[str, np.ndarray]] | None = None,
) -> Path:
    """One week's hourly flows (kW) with the PV curtailed, the grid import and battery SOC of the agent beside
    those of ``others`` (e.g. the rule-based controller and the LP optimum: grid_import_kw, soc), as PNG.

    The x axis shows ``timestamps`` (the scenario's local time) when the data has them, else the hour index.
    """
    start = busiest_pv_week(trace["pv_kw"]) if start is None else start
    sl = slice(start, start + 168)
    x = np.arange(len(trace["pv_kw"]))[sl] if timestamps is None else np.asarray(timestamps)[sl]
    width = 1.0 if timestamps is None else np.timedelta64(1, "h")
    others = others or {}
    plt = _pyplot()
    fig, (ax, ax_grid, ax_soc) = plt.subplots(3, 1, figsize=(11, 8), sharex=True, height_ratios=[3, 2, 1])
    ax.fill_between(x, trace["pv_kw"][sl], color="gold", alpha=0.5, label="PV")
    demand = trace["load_kw"][sl] + trace["ev_kw"][sl]
    curtailed = curtailed_pv_kw(trace["pv_kw"][sl], demand, trace["bess_kw"][sl], trace["surplus_kw"][sl])
    ax.fill_between(x, curtailed, color="tab:red", alpha=0.35, hatch="//", label="PV curtailed")
    ax.plot(x, trace["load_kw"][sl], color="black", lw=1, label="site load")
    ax.plot(x, trace["load_kw"][sl] + trace["ev_kw"][sl], color="tab:blue", lw=1, label="load + EV")
    ax.plot(x, trace["grid_import_kw"][sl], color="tab:red", lw=1.2, label="grid import")
    ax.bar(x, trace["bess_kw"][sl], color="tab:green", alpha=0.6, width=width, label="battery (+charge)")
    ax.set_ylabel("kW")
    ax.legend(loc="upper left", ncols=6, fontsize=8)
    ax.set_title(title)
    styles = ("tab:purple", "tab:gray", "tab:brown")
    ax_grid.plot(x, trace["grid_import_kw"][sl], color="tab:red", lw=1.2, label="agent")
    ax_soc.plot(x, trace["soc"][sl], color="tab:green", label="agent")
    for (name, other), color in zip(others.items(), styles, strict=False):
        ax_grid.plot(x, other["grid_import_kw"][sl], color=color, lw=1, ls="--", label=name)
        ax_soc.plot(x, other["soc"][sl], color=color, lw=1, ls="--", label=name)
    ax_grid.set_ylabel("grid import kW")
    ax_grid.legend(loc="upper left", ncols=4, fontsize=8)
    ax_soc.set_ylim(0, 1)
    ax_soc.set_ylabel("SOC")
    ax_soc.set_xlabel("local time" if timestamps is not None else "hour of the evaluated data")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
