"""Physical sizes of the site: PV, stationary battery and the EV penalty; validated on creation.

Sign convention used everywhere: battery power > 0 charges, < 0 discharges (kW at the AC side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from numbers import Real

# Upper limits with their units: a gigawatt(-hour) is a power plant, not a site with EV chargers, and a
# penalty of 1e6 kg/kWh is two million times the grid's intensity. They keep the LP's coefficients finite
# (HiGHS reads 1e20 as infinity and gives "Model error" on site.pv_kwp=1e308).
MAX_SIZES = {
    "pv_kwp": (1e6, "kWp"),
    "bess_capacity_kwh": (1e6, "kWh"),
    "bess_power_kw": (1e6, "kW"),
    "import_cap_kw": (1e6, "kW"),
    "unmet_penalty_kg_per_kwh": (1e6, "kg/kWh"),
}


class SiteError(ValueError):
    """A site parameter outside its physical range."""


@dataclass
class SiteParams:
    """Site sizes; defaults are the Iquitos mall. Also the Hydra schema of ``conf/site``."""

    pv_kwp: float = 4_050.0
    bess_capacity_kwh: float = 2_000.0
    bess_power_kw: float = 1_000.0
    bess_eta_charge: float = 0.95
    bess_eta_discharge: float = 0.95
    soc_min: float = 0.2
    soc_max: float = 1.0
    soc_init: float = 0.2
    # kg CO2-equivalent charged per kWh an EV still lacks when it leaves. It must exceed the grid
    # intensity (0.45), or the cheapest "policy" is to never charge EVs; 2.0 is ~4x that.
    unmet_penalty_kg_per_kwh: float = 2.0
    # Grid connection limit on import (kW); None = no limit. Flexible demand (battery charging, then EV
    # charging) is cut to respect it; the site load is always served, so load alone above the cap is
    # counted as a cap violation, not shed.
    import_cap_kw: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "import_cap_kw" and value is None:
                continue
            if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value):
                raise SiteError(f"site.{f.name} must be a finite number, got {value!r}")
        for name, (limit, unit) in MAX_SIZES.items():
            value = getattr(self, name)
            if value is not None and value > limit:
                raise SiteError(f"site.{name} must be at most {limit:g} {unit} (a unit mistake?), got {value:g}")
        for name in ("bess_capacity_kwh", "bess_power_kw"):
            if getattr(self, name) <= 0:
                raise SiteError(f"site.{name} must be > 0, got {getattr(self, name)}")
        for name in ("pv_kwp", "unmet_penalty_kg_per_kwh"):
            if getattr(self, name) < 0:
                raise SiteError(f"site.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("bess_eta_charge", "bess_eta_discharge"):
            if not 0 < getattr(self, name) <= 1:
                raise SiteError(f"site.{name} must be in (0, 1], got {getattr(self, name)}")
        if self.import_cap_kw is not None and self.import_cap_kw <= 0:
            raise SiteError(f"site.import_cap_kw must be > 0 or null, got {self.import_cap_kw}")
        if not 0 <= self.soc_min < self.soc_max <= 1:
            raise SiteError(f"site needs 0 <= soc_min < soc_max <= 1, got {self.soc_min}, {self.soc_max}")
        if not self.soc_min <= self.soc_init <= self.soc_max:
            raise SiteError(f"site.soc_init {self.soc_init} must lie in [soc_min, soc_max]")


def penalised_kg(co2_kg: float, unmet_kwh: float, penalty_kg_per_kwh: float) -> float:
    """CO2 plus the EV penalty: the one quantity the env's reward, the scores and the LP optimum minimise."""
    return co2_kg + penalty_kg_per_kwh * unmet_kwh


def reduction_pct(base_kg: float, kg: float) -> float:
    """How much less than ``base_kg`` (uncontrolled charging's figure of the same kind: CO2, or penalised
    kg, never one against the other) ``kg`` is, in %; 0 on a grid with no CO2 at all."""
    return 100.0 * (base_kg - kg) / base_kg if base_kg > 0 else 0.0
