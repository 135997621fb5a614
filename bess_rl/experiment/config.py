"""Typed schemas of the Hydra config groups, plus the checks types cannot express.

Why: a typo or a wrong type in an override must fail in one line before any training starts.
Hydra merges every ``conf/`` file onto these dataclasses, so ``agent.hparams.batch_size=abc``
or an unknown key is rejected at compose time; ``validate`` then rejects values that have the
right type but no physical meaning (zero sizes, a minibatch larger than the rollout, ...).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from bess_rl.baselines.mpc import MpcSettings
from bess_rl.experiment.input_checks import check_config, check_population
from bess_rl.site.params import SiteParams


class ConfigError(ValueError):
    """A config value that composes but cannot be trained with."""


def one_line(exc: BaseException) -> str:
    """A bad override's message in one line, with its cause (Hydra puts the reason there); an exception
    without a message is named by its type. Here, not in ``errors``: the entry point needs it before torch."""

    def first(error: BaseException) -> str:
        return next(iter(str(error).strip().splitlines()), type(error).__name__).rstrip(".")

    return f"{first(exc)}: {first(exc.__cause__)}" if exc.__cause__ is not None else first(exc)


class Amp(str, Enum):
    none = "none"
    bf16 = "bf16"
    fp16 = "fp16"


class CompileMode(str, Enum):
    none = "none"
    default = "default"
    reduce_overhead = "reduce-overhead"
    max_autotune = "max-autotune"


# The schemas state types only (MISSING: the group's YAML must supply the value). Each value lives in
# one place: conf/agent/<agent>.yaml the algorithm's own defaults, conf/agent_preset/<agent>_<preset>.yaml
# only the preset tables (docs/presets.md), conf/hardware/<profile>.yaml each profile.


@dataclass
class HardwareConfig:
    name: str = MISSING
    device: str = MISSING
    torch_threads: int = MISSING
    amp: Amp = MISSING
    cuda_graphs: bool = MISSING
    tf32: bool = MISSING
    compile: str = MISSING
    memory_budget_gb: float | None = MISSING
    heap_keep_mb: int | None = MISSING
    strict: bool = MISSING


@dataclass
class SacHparams:
    learning_rate: float = MISSING
    buffer_size: int = MISSING
    learning_starts: int = MISSING
    batch_size: int = MISSING
    tau: float = MISSING
    gamma: float = MISSING
    train_freq: int = MISSING
    gradient_steps: int = MISSING
    ent_coef: Any = MISSING
    target_entropy: Any = MISSING
    net_arch: list[int] = MISSING


@dataclass
class PpoHparams:
    learning_rate: float = MISSING
    n_steps: int = MISSING
    batch_size: int = MISSING
    n_epochs: int = MISSING
    gamma: float = MISSING
    gae_lambda: float = MISSING
    clip_range: float = MISSING
    ent_coef: float = MISSING
    net_arch: list[int] = MISSING


@dataclass
class A2cHparams:
    learning_rate: float = MISSING
    n_steps: int = MISSING
    gamma: float = MISSING
    gae_lambda: float = MISSING
    ent_coef: float = MISSING
    net_arch: list[int] = MISSING


@dataclass
class AgentConfig:
    name: str = MISSING
    algo: str = MISSING
    device: str = MISSING
    n_envs: int = MISSING
    total_timesteps: int = MISSING
    log_interval: int = MISSING


@dataclass
class SacConfig(AgentConfig):
    hparams: SacHparams = field(default_factory=SacHparams)


@dataclass
class PpoConfig(AgentConfig):
    hparams: PpoHparams = field(default_factory=PpoHparams)


@dataclass
class A2cConfig(AgentConfig):
    hparams: A2cHparams = field(default_factory=A2cHparams)


@dataclass
class ScenarioConfig:
    name: str = MISSING
    # The training part: an embedded data set (bess_rl/site/data/<data>_hourly.parquet) or your files.
    data: str | None = MISSING
    hourly_path: str | None = MISSING
    sessions_path: str | None = MISSING
    # The evaluation part, never trained on (eval_data or eval_hourly_path); null: the training part.
    eval_data: str | None = MISSING
    eval_hourly_path: str | None = None
    eval_sessions_path: str | None = None
    hours: int = MISSING
    co2_kg_per_kwh: float = MISSING
    # Flat tariff (per kWh) where the hourly data has no price_per_kwh column.
    price_per_kwh: float = MISSING
    window_start: int = MISSING
    window_hours: int | None = MISSING
    episode_hours: int | None = MISSING
    random_start: bool = MISSING
    forecast_hours: int = MISSING
    # Forecast error in the observation: exact (oracle), persistence (same hour yesterday) or noise
    # (relative error forecast_noise x sqrt(lead hours), seeded); see bess_rl/site/env.py.
    forecast_error: str = MISSING
    forecast_noise: float = MISSING


@dataclass
class PopulationConfig:
    """``population.size`` SAC members trained as one stacked update (``bess_rl.agents.population``);
    each list, when given, holds one value per member and replaces the agent's hyper-parameter."""

    size: int = MISSING
    seeds: list[int] | None = MISSING
    learning_rate: list[float] | None = MISSING
    tau: list[float] | None = MISSING
    gamma: list[float] | None = MISSING
    target_entropy: list[float] | None = MISSING


# The per-member lists of ``population``: each replaces ``seed`` or ``agent.hparams.<key>`` of one member.
POPULATION_LISTS = ("seeds", "learning_rate", "tau", "gamma", "target_entropy")


SCHEMAS = {
    "sac_schema": SacConfig,
    "ppo_schema": PpoConfig,
    "a2c_schema": A2cConfig,
    "hardware_schema": HardwareConfig,
    "scenario_schema": ScenarioConfig,
    "site_schema": SiteParams,
    "mpc_schema": MpcSettings,
    "population_schema": PopulationConfig,
}


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore; each group's yaml lists its schema first (``/<name>@_here_``).

    Why outside the groups: in a group, ``--help`` would list ``sac_schema`` as an option of ``agent`` and
    ``agent=sac_schema`` would compose; configs at the root are neither.
    """
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=name, node=node)


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: list[str]) -> DictConfig:
    """The run's config for these overrides, composed as ``python -m bess_rl`` composes it; a copy of
    the one composed before for the same overrides (Hydra's compose takes ~0.16 s, and the bench, the
    doctor and ``evaluate`` compose several). Interpolations (``${oc.env:...}``) resolve on access."""
    return copy.deepcopy(_composed(tuple(overrides)))


@functools.lru_cache(maxsize=64)
def _composed(overrides: tuple[str, ...]) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


OBJECTIVES = (
    "penalised_reduction_pct",
    "co2_reduction_pct",
    "lp_gap_closed_pct",
    "timesteps_per_hour",
    "co2_kg",
    "ev_unmet_kwh",
)


def _positive(cfg: DictConfig, keys: list[str]) -> None:
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")


def validate(cfg: DictConfig) -> None:
    """Reject values of the right type that cannot work; messages name the override to fix."""
    # The top level has no schema (its defaults list composes the groups), so its types are checked here.
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed must be an integer, got {cfg.seed!r}")
    for key in ("progress_bar", "save_model", "plot"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"{key} must be true or false, got {cfg[key]!r}")
    check_config(cfg)
    agent = cfg.agent
    keys = ["agent.n_envs", "agent.total_timesteps", "agent.log_interval"]
    keys += [f"agent.hparams.{k}" for k in ("batch_size", "buffer_size", "n_steps", "n_epochs", "gradient_steps")]
    keys += [f"agent.hparams.{k}" for k in ("train_freq",) if k in agent.hparams]
    keys += ["hardware.torch_threads", "scenario.hours", "scenario.window_hours", "scenario.episode_hours"]
    keys += ["mpc.horizon_hours", "mpc.every_hours"]
    _positive(cfg, keys)
    if agent.hparams.get("learning_starts", 0) < 0:
        raise ConfigError(f"agent.hparams.learning_starts must be >= 0, got {agent.hparams.learning_starts}")
    if any(n <= 0 for n in agent.hparams.net_arch):
        raise ConfigError(f"agent.hparams.net_arch sizes must be > 0, got {list(agent.hparams.net_arch)}")
    if "n_steps" in agent.hparams and "batch_size" in agent.hparams:
        rollout = agent.n_envs * agent.hparams.n_steps
        if agent.hparams.batch_size > rollout:
            raise ConfigError(
                f"agent.hparams.batch_size {agent.hparams.batch_size} exceeds the rollout "
                f"n_envs x n_steps = {rollout}: lower batch_size or raise n_steps"
            )
    if agent.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"agent.device must be auto, cpu or cuda, got {agent.device!r}")
    if cfg.hardware.device not in ("cpu", "cuda"):
        raise ConfigError(f"hardware.device must be cpu or cuda, got {cfg.hardware.device!r}")
    valid_compile = [m.value for m in CompileMode]
    if cfg.hardware.compile not in valid_compile:
        raise ConfigError(f"hardware.compile must be one of {valid_compile}, got {cfg.hardware.compile!r}")
    validate_population(cfg)
    objective_names(cfg.objective)


def objective_names(objective: Any) -> list[str]:
    """``objective`` (conf/train.yaml: one metric's name or a list of them) as a list of names. Also checked
    before a sweep's study is made: a study holds its objective for good (bess_rl.experiment.sweeper)."""
    if not isinstance(objective, str | ListConfig | list):
        raise ConfigError(f"objective must be a metric's name or a list of them, got {objective!r}")
    names = [objective] if isinstance(objective, str) else list(objective)
    if not names:
        raise ConfigError(f"objective is an empty list: name one or more of {list(OBJECTIVES)}")
    for name in names:
        if name not in OBJECTIVES:
            raise ConfigError(f"objective {name!r} is not one of {list(OBJECTIVES)}")
    return names


def validate_population(cfg: DictConfig) -> None:
    """A population is FastSAC members of one env each, with one list entry per member."""
    pop = cfg.get("population")
    if pop is None:
        return
    if pop.size < 1:
        raise ConfigError(f"population.size must be >= 1, got {pop.size}")
    for key in POPULATION_LISTS:
        values = pop.get(key)
        if values is not None and len(values) != pop.size:
            raise ConfigError(f"population.{key} has {len(values)} values for population.size={pop.size}")
    check_population(pop)
    if pop.size == 1:  # a plain run: its seed and hyper-parameters are seed and agent.hparams
        given = [key for key in POPULATION_LISTS if pop.get(key) is not None]
        if given:
            where = "seed" if given[0] == "seeds" else f"agent.hparams.{given[0]}"
            raise ConfigError(f"population.{given[0]} is read only when population.size > 1: set {where} instead")
        return
    if cfg.agent.name != "sac" or cfg.agent.algo != "bess_rl.agents.fast_sac.FastSAC":
        raise ConfigError(
            f"population.size={pop.size} trains FastSAC members only: use agent=sac with "
            f"agent.algo=bess_rl.agents.fast_sac.FastSAC (got agent={cfg.agent.name}, agent.algo={cfg.agent.algo})"
        )
    if cfg.agent.n_envs != 1:
        raise ConfigError(f"population members train on one env each: set agent.n_envs=1 (got {cfg.agent.n_envs})")
