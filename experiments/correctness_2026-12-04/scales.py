"""The observation scales (PV, load, intensity, price peaks and the EV scale) of each shipped scenario's
training and evaluation env: ``python experiments/correctness_2026-12-04/scales.py``."""

from __future__ import annotations

from pathlib import Path

from bess_rl.experiment.build import build_scenario, build_site, make_env
from bess_rl.experiment.config import compose_config


def scales(env) -> list[float]:
    """What the env divides PV, load, intensity and price by (feature 2..5 of the observation), and the EV scale."""
    out = []
    for column, raw in zip((2, 3, 4, 5), (env.pv_kw, env.load_kw, env.co2, env.price), strict=True):
        t = int(raw.argmax())
        out.append(float(raw[t] / env._exog[t, column]))
    return [*out, env.ev_scale_kw]


def main() -> None:
    print("| scenario | part | PV kW | load kW | intensity kg/kWh | price /kWh | EV kW |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for path in sorted((Path(__file__).parents[2] / "bess_rl" / "conf" / "scenario").glob("*.yaml")):
        cfg = compose_config([f"scenario={path.stem}"])
        site = build_site(cfg.site)
        for part in ("train", "eval"):
            env = make_env(build_scenario(cfg.scenario, part), site, cfg.scenario, training=False)
            cells = " | ".join(f"{x:.4g}" for x in scales(env))
            print(f"| {path.stem} | {part} | {cells} |")


if __name__ == "__main__":
    main()
