"""One ``make_*``/``build_*`` factory per object a run needs: scenario, site, envs, algorithm, model.

Why here: the task function, resume, the doctor, the bench and the references command build the same
objects from the same config keys; each key is read by one factory.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env

from bess_rl.agents.capabilities import capabilities
from bess_rl.agents.vec_env import FreshInfoVecEnv
from bess_rl.baselines.mpc import MpcSettings
from bess_rl.baselines.references import References, compute_references
from bess_rl.experiment.config import ConfigError
from bess_rl.experiment.hardware import Runtime, requested_device
from bess_rl.experiment.input_checks import check_scenario_values
from bess_rl.site.env import PvBessEvEnv
from bess_rl.site.params import SiteParams
from bess_rl.site.scenario import Scenario, embedded_scenario, load_scenario

# ``agent.algo`` may name only algorithm classes of these packages: a saved config is not a way to run code.
ALGO_PACKAGES = ("bess_rl.agents.", "stable_baselines3.")


def algo_class(path: str) -> type[BaseAlgorithm]:
    """The algorithm class ``agent.algo`` names, if it is one of bess_rl's or Stable-Baselines3's."""
    module, _, name = str(path).rpartition(".")
    if not str(path).startswith(ALGO_PACKAGES) or not module:
        raise ConfigError(
            f"agent.algo {path!r} is not allowed: name a class of bess_rl.agents or stable_baselines3, "
            "e.g. stable_baselines3.SAC"
        )
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ConfigError(f"agent.algo {path!r} cannot be imported: e.g. stable_baselines3.SAC") from None
    if not _is_algorithm(cls):
        raise ConfigError(f"agent.algo {path!r} is not a Stable-Baselines3 algorithm class")
    return cls


def _is_algorithm(cls: object) -> bool:
    """Whether ``cls`` is an SB3 algorithm class; False, not TypeError, for what only passes for a class (on
    Python 3.10 a generic alias such as SB3's ``Schedule`` is an instance of ``type``)."""
    try:
        return isinstance(cls, type) and issubclass(cls, BaseAlgorithm)
    except TypeError:
        return False


def asked_device(cfg: DictConfig) -> str:
    """The device ``cfg`` asks for (its algorithm class's preference applied), before this machine is looked at."""
    return requested_device(cfg.hardware, capabilities(algo_class(cfg.agent.algo)), cfg.agent.device)


def has_eval_part(cfg: DictConfig) -> bool:
    """``scenario.*`` declares held-out data: ``eval_hourly_path``, or ``eval_data`` beside embedded training
    data (your own ``hourly_path`` is never evaluated on the embedded data set's other year)."""
    if cfg.get("eval_hourly_path") is not None:
        return True
    return cfg.get("eval_data") is not None and cfg.get("hourly_path") is None


def build_scenario(cfg: DictConfig, part: str = "train") -> Scenario:
    """The ``train`` or ``eval`` part of ``scenario.*``: an embedded data set (``data`` / ``eval_data``) or
    the user's files (``hourly_path`` / ``eval_hourly_path``), cut to the configured window.

    A scenario without an evaluation part (``has_eval_part``) is evaluated on its training part.
    """
    check_scenario_values(cfg)
    if part == "eval" and not has_eval_part(cfg):
        return build_scenario(cfg, "train")
    prefix = "eval_" if part == "eval" else ""
    hourly_path, data = cfg.get(f"{prefix}hourly_path"), cfg.get(f"{prefix}data")
    if hourly_path is not None:
        sessions = cfg.get(f"{prefix}sessions_path")
        scenario = load_scenario(hourly_path, sessions, cfg.name, cfg.hours, cfg.co2_kg_per_kwh, cfg.price_per_kwh)
    elif data is not None:
        scenario = embedded_scenario(data, cfg.co2_kg_per_kwh, cfg.name, cfg.price_per_kwh)
    else:
        raise ConfigError("scenario needs data (an embedded data set) or hourly_path (your own file)")
    if cfg.window_hours is not None or cfg.window_start:
        hours = cfg.window_hours if cfg.window_hours is not None else scenario.hours - cfg.window_start
        scenario = scenario.window(cfg.window_start, hours)
    return scenario


def build_site(cfg: DictConfig) -> SiteParams:
    """``site.*`` as validated physical sizes."""
    return SiteParams(**OmegaConf.to_container(cfg, resolve=True))


def build_mpc_settings(cfg: DictConfig) -> MpcSettings:
    """``mpc.*`` as the MPC references' horizon."""
    try:
        return MpcSettings(**OmegaConf.to_container(cfg, resolve=True))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def build_references(cfg: DictConfig, env: PvBessEvEnv) -> References:
    """The references of ``env`` at the run's ``mpc.*``, read from ``paths.cache_dir`` where a process
    computed them before with the same code (null: no disk cache)."""
    cache_dir = OmegaConf.select(cfg, "paths.cache_dir")
    return compute_references(env, build_mpc_settings(cfg.mpc), None if cache_dir is None else Path(cache_dir))


def make_env(scenario: Scenario, site: SiteParams, cfg: DictConfig, training: bool) -> PvBessEvEnv:
    """Training envs start on random days; the evaluation env runs the scenario from hour 0."""
    try:
        return PvBessEvEnv(
            scenario,
            site,
            episode_hours=cfg.episode_hours if training else None,
            random_start=cfg.random_start if training else False,
            forecast_hours=cfg.forecast_hours,
            forecast_error=cfg.forecast_error,
            forecast_noise=cfg.forecast_noise,
        )
    except ValueError as exc:  # the env names the argument; the user set it as scenario.<name>
        raise ConfigError(f"scenario.{exc}") from None


def build_eval_env(cfg: DictConfig) -> PvBessEvEnv:
    """The evaluation env of a whole run config (the references and the doctor use it alone)."""
    return make_env(build_scenario(cfg.scenario, "eval"), build_site(cfg.site), cfg.scenario, training=False)


def make_model(
    algo: type[BaseAlgorithm], env: Any, hparams: Mapping[str, Any], seed: int, device: str, **switches: Any
) -> BaseAlgorithm:
    """``algo("MlpPolicy", env, ...)`` from an ``agent.hparams`` mapping (``net_arch`` goes to the policy).

    :param algo: the algorithm class.
    :param env: a vec env (or env factory SB3 accepts).
    :param hparams: constructor keyword arguments, plus ``net_arch``.
    :param seed: the algorithm's seed.
    :param device: "cpu" or "cuda".
    :param switches: the hardware switches the class declares (``Runtime.switches``).
    """
    hp = dict(hparams)
    net_arch = hp.pop("net_arch")
    policy_kwargs = {"net_arch": list(net_arch)}
    return algo("MlpPolicy", env, policy_kwargs=policy_kwargs, seed=seed, device=device, verbose=0, **hp, **switches)


def build_model(cfg: DictConfig, env: Any, runtime: Runtime) -> BaseAlgorithm:
    """The SB3 algorithm named by ``agent.algo`` with ``agent.hparams`` and the switches it takes."""
    algo = algo_class(cfg.agent.algo)
    hp = OmegaConf.to_container(cfg.agent.hparams, resolve=True)
    return make_model(algo, env, hp, cfg.seed, runtime.device, **runtime.switches(capabilities(algo)))


def new_model(cfg: DictConfig, scenario: Scenario, site: SiteParams, runtime: Runtime) -> BaseAlgorithm:
    """Fresh seeded training envs (``agent.n_envs``) and an untrained agent."""

    def env_factory() -> PvBessEvEnv:
        return make_env(scenario, site, cfg.scenario, training=True)

    vec_env = make_vec_env(env_factory, n_envs=cfg.agent.n_envs, seed=cfg.seed, vec_env_cls=FreshInfoVecEnv)
    return build_model(cfg, vec_env, runtime)
