"""Each config value is written once: no schema default that YAML always overrides or repeats, and the
agent YAML (algorithm defaults) and the preset tables never set the same key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from bess_rl.experiment.config import (
    CONF_DIR,
    A2cConfig,
    HardwareConfig,
    PpoConfig,
    SacConfig,
    ScenarioConfig,
)
from bess_rl.site.params import SiteParams

SCHEMAS = {"agent": {"sac": SacConfig, "ppo": PpoConfig, "a2c": A2cConfig}, "hardware": HardwareConfig,
           "scenario": ScenarioConfig, "site": SiteParams}  # fmt: skip


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def yaml_values(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    data.pop("defaults", None)
    return leaves(data)


def schema_defaults(schema: type) -> dict[str, Any]:
    """The schema's leaves that have a default (MISSING ones are the YAML's to supply)."""
    node = OmegaConf.structured(schema)
    keys = leaves(OmegaConf.to_container(node, throw_on_missing=False, enum_to_str=True))
    return {k: v for k, v in keys.items() if not OmegaConf.is_missing(node, k) and v != "???"}


def group_files() -> list[tuple[str, Path, type]]:
    rows = []
    for group, schema in SCHEMAS.items():
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            rows.append((group, path, schema[path.stem] if isinstance(schema, dict) else schema))
    return rows


@pytest.mark.parametrize(("group", "path", "schema"), group_files(), ids=lambda x: getattr(x, "name", str(x)))
def test_yaml_never_repeats_a_schema_default(group, path, schema):
    defaults = schema_defaults(schema)
    repeated = {k: v for k, v in yaml_values(path).items() if k in defaults and defaults[k] == v}
    assert not repeated, f"{path.name} repeats the schema's defaults {repeated}"


@pytest.mark.parametrize("group", list(SCHEMAS))
def test_no_schema_default_is_dead(group):
    """A default that every YAML of its group overrides is never used: it must be MISSING instead."""
    files = [(p, s) for g, p, s in group_files() if g == group]
    for schema in {s for _, s in files}:
        sets = [set(yaml_values(p)) for p, s in files if s is schema]
        dead = [k for k in schema_defaults(schema) if sets and all(k in keys for keys in sets)]
        assert not dead, f"{schema.__name__} defaults {dead} are overridden by every {group} YAML"


@pytest.mark.parametrize("agent", ["sac", "ppo", "a2c"])
@pytest.mark.parametrize("preset", ["before", "after"])
def test_agent_yaml_and_preset_table_set_disjoint_keys(agent, preset):
    algo_defaults = set(yaml_values(CONF_DIR / "agent" / f"{agent}.yaml"))
    table = set(yaml_values(CONF_DIR / "agent_preset" / f"{agent}_{preset}.yaml"))
    assert not algo_defaults & table, f"written twice: {sorted(algo_defaults & table)}"
