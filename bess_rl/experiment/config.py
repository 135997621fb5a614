"""Typed schemas of the Hydra config groups, plus the checks types cannot express.

Why: a typo or a wrong type in an override must fail in one line before any training starts.
Hydra merges every ``conf/`` file onto these dataclasses, so ``agent.hparams.batch_size=abc``
or an unknown key is rejected at compose time; ``validate`` then rejects values that have the
right type but no physical meaning (zero sizes, a minibatch larger than the rollout, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from bess_rl.experiment.input_checks import check_config
from bess_rl.site.params import SiteParams


class ConfigError(ValueError):
    """A config value that composes but cannot be trained with."""


class Amp(str, Enum):
    none = "none"
    bf16 = "bf16"
    fp16 = "fp16"


class CompileMode(str, Enum):
    none = "none"
    default = "default"
    reduce_overhead = "reduce-overhead"
    max_autotune = "max-autotune"


@dataclass
class HardwareConfig:
    name: str = "cpu"
    device: str = "cpu"
    torch_threads: int = 1
    amp: Amp = Amp.none
    cuda_graphs: bool = False
    tf32: bool = False
    compile: str = "none"
    memory_budget_gb: float | None = None
    strict: bool = False


@dataclass
class SacHparams:
    learning_rate: float = 3e-4
    buffer_size: int = 1_000_000
    learning_starts: int = 100
    batch_size: int = 256
    tau: float = 0.005
    gamma: float = 0.99
    train_freq: int = 1
    gradient_steps: int = 1
    ent_coef: Any = "auto"
    net_arch: list[int] = field(default_factory=lambda: [256, 256])


@dataclass
class PpoHparams:
    learning_rate: float = 3e-4
    n_steps: int = 2048
    batch_size: int = 64
    n_epochs: int = 10
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    net_arch: list[int] = field(default_factory=lambda: [64, 64])


@dataclass
class A2cHparams:
    learning_rate: float = 7e-4
    n_steps: int = 5
    gamma: float = 0.99
    gae_lambda: float = 1.0
    ent_coef: float = 0.0
    net_arch: list[int] = field(default_factory=lambda: [64, 64])


@dataclass
class AgentConfig:
    name: str = "sac"
    algo: str = "stable_baselines3.SAC"
    device: str = "auto"
    n_envs: int = 1
    total_timesteps: int = 26_280
    log_interval: int = 100


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
    name: str = "iquitos"
    hourly_path: str | None = None
    sessions_path: str | None = None
    hours: int = 8_760
    co2_kg_per_kwh: float = 0.4521
    window_start: int = 0
    window_hours: int | None = None
    episode_hours: int | None = None
    random_start: bool = True
    forecast_hours: int = 3


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore; each group's yaml lists its schema first."""
    cs = ConfigStore.instance()
    cs.store(group="agent", name="sac_schema", node=SacConfig)
    cs.store(group="agent", name="ppo_schema", node=PpoConfig)
    cs.store(group="agent", name="a2c_schema", node=A2cConfig)
    cs.store(group="hardware", name="hardware_schema", node=HardwareConfig)
    cs.store(group="scenario", name="scenario_schema", node=ScenarioConfig)
    cs.store(group="site", name="site_schema", node=SiteParams)


CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_config(overrides: list[str]) -> DictConfig:
    """The run's config for these overrides, composed as ``python -m bess_rl`` composes it."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


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
    keys = ["agent.n_envs", "agent.total_timesteps", "agent.log_interval", "agent.hparams.learning_rate"]
    keys += [f"agent.hparams.{k}" for k in ("batch_size", "buffer_size", "n_steps", "n_epochs", "gradient_steps")]
    keys += [f"agent.hparams.{k}" for k in ("train_freq",) if k in agent.hparams]
    keys += ["hardware.torch_threads", "hardware.memory_budget_gb", "scenario.hours", "scenario.window_hours"]
    keys += ["scenario.episode_hours", "checkpoint_every_steps"]
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
    objectives = [cfg.objective] if isinstance(cfg.objective, str) else list(cfg.objective)
    for name in objectives:
        if name not in OBJECTIVES:
            raise ConfigError(f"objective {name!r} is not one of {list(OBJECTIVES)}")
