"""Per-episode KPIs beside CO2 and EV energy unmet, from hourly arrays (env traces and LP plans alike).

Why: two controllers with the same CO2 can differ in what a site owner pays, how hard the grid
connection is used and how much the battery wears; and a policy that never touches the battery
or leaves cars empty should be visible as such.
"""

from __future__ import annotations

import numpy as np

KPI_KEYS = (
    "cost",
    "peak_import_kw",
    "pv_self_consumption_pct",
    "curtailed_pv_kwh",
    "battery_throughput_kwh",
    "battery_cycles",
)


def curtailed_pv_kw(
    pv_kw: np.ndarray, demand_kw: np.ndarray, bess_kw: np.ndarray, surplus_kw: np.ndarray
) -> np.ndarray:
    """The PV part of each hour's surplus: PV beyond the load, EVs and battery charging (``demand_kw`` is
    load plus EVs), never more than the surplus. A battery discharging into a surplus adds to the surplus
    (energy sent off for nothing), not to the PV curtailed: counted as PV, it pushed the self-consumption
    of a policy that does so below zero."""
    return np.clip(pv_kw - demand_kw - np.maximum(bess_kw, 0.0), 0.0, surplus_kw)


def kpis(
    grid_import_kw: np.ndarray,
    bess_kw: np.ndarray,
    curtailed_kw: np.ndarray,
    pv_kw: np.ndarray,
    price_per_kwh: np.ndarray,
    capacity_kwh: float,
) -> dict[str, float]:
    """KPIs of one run of hourly steps (kW over an hour = kWh), arrays of the same hours.

    Self-consumption is the share of PV used on site (load, EVs or battery), i.e. not curtailed
    (``curtailed_kw``: PV only, ``curtailed_pv_kw``); throughput is the battery's charged plus
    discharged energy at its AC side, and an equivalent full cycle is one capacity charged and one
    discharged.
    """
    pv = float(np.sum(pv_kw))
    curtailed = float(np.sum(curtailed_kw))
    throughput = float(np.abs(bess_kw).sum())
    return {
        "cost": float(np.dot(price_per_kwh, grid_import_kw)),
        "peak_import_kw": float(np.max(grid_import_kw, initial=0.0)),
        "pv_self_consumption_pct": 100.0 * (pv - curtailed) / pv if pv > 0 else 0.0,
        "curtailed_pv_kwh": curtailed,
        "battery_throughput_kwh": throughput,
        "battery_cycles": throughput / (2.0 * capacity_kwh),
    }
