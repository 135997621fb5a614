"""Scoring a policy on a scenario part: held-out and training part, during training and after.

Why one module: the final metrics, the periodic evaluation while training, ``evaluate`` on another
scenario and the degenerate-policy flags must score with the same formulas on the same episode runner,
so an agent is never judged on the year it trained on without saying so.
"""

from __future__ import annotations

import json
import logging
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.vec_env import DummyVecEnv

from bess_rl.agents.capabilities import capabilities
from bess_rl.baselines.episode import EpisodeResult, Policy, run_episode
from bess_rl.baselines.optimum import solve_optimum
from bess_rl.baselines.references import References, degenerate
from bess_rl.baselines.rules import uncontrolled
from bess_rl.experiment import checkpoint, hardware
from bess_rl.experiment.build import algo_class, build_eval_env, has_eval_part, make_model
from bess_rl.experiment.config import ConfigError
from bess_rl.experiment.run_dir import RunDir, RunDirError, resume_command
from bess_rl.experiment.safe_load import first_line, load_model
from bess_rl.site.env import PvBessEvEnv
from bess_rl.site.params import penalised_kg, reduction_pct

log = logging.getLogger(__name__)

# TensorBoard / progress.csv keys of the periodic held-out evaluation (besides SB3's eval/mean_reward).
EVAL_KEYS = ("eval/co2_kg", "eval/co2_reduction_pct", "eval/penalised_reduction_pct", "eval/ev_unmet_kwh")


class NoEvalPartError(ValueError):
    """The scenario declares no evaluation part, so there is no held-out data to score on."""


def require_eval_part(scenario_cfg: DictConfig) -> None:
    """``evaluate`` scores held-out data only; training falls back to the training part instead."""
    if not has_eval_part(scenario_cfg):
        raise NoEvalPartError(
            f"scenario {scenario_cfg.get('name')!r} has no evaluation part: set scenario.eval_data "
            "(an embedded data set) or scenario.eval_hourly_path (your file)"
        )


def score(result: EpisodeResult, refs: References, penalty: float) -> dict[str, float]:
    """CO2 reduction vs uncontrolled, the share of the LP's possible (penalised) reduction achieved, the KPIs.

    CO2 alone rewards leaving EVs uncharged, so the penalised figure (CO2 + penalty x unmet EV
    kWh, what the reward and the LP minimise) is reported beside it and is the default objective. It is
    measured against uncontrolled charging's own penalised kg, so uncontrolled scores 0 % on both.
    """
    base = refs.uncontrolled.co2_kg
    penalised_base = penalised_kg(base, refs.uncontrolled.ev_unmet_kwh, penalty)
    # The LP minimises penalised kg, so only that is bounded by it: on CO2 alone an agent that leaves EVs
    # uncharged closed "more than 100 %" of the gap.
    possible = penalised_base - penalised_kg(refs.optimum_co2_kg, refs.optimum_unmet_kwh, penalty)
    penalised = penalised_kg(result.co2_kg, result.ev_unmet_kwh, penalty)
    return {
        "co2_kg": result.co2_kg,
        "co2_reduction_pct": reduction_pct(base, result.co2_kg),
        "penalised_kg": penalised,
        "penalised_reduction_pct": reduction_pct(penalised_base, penalised),
        "lp_gap_closed_pct": 100.0 * (penalised_base - penalised) / possible if possible > 0 else 0.0,
        "ev_unmet_kwh": result.ev_unmet_kwh,
        "ev_served_kwh": result.ev_served_kwh,
        "grid_import_kwh": result.grid_import_kwh,
        **result.kpis(),
    }


def deterministic_policy(model: BaseAlgorithm) -> Policy:
    """The policy ``predict(deterministic=True)`` gives, in the episode runner's signature."""

    def policy(env: PvBessEvEnv, obs: np.ndarray) -> np.ndarray:
        return model.predict(obs, deterministic=True)[0]

    return policy


def comparison_traces(env: PvBessEvEnv, refs: References) -> dict[str, dict[str, np.ndarray]]:
    """Grid import and SOC of the rule-based controller and the LP optimum, for the dispatch plot."""
    opt = solve_optimum(env.scenario, env.site)
    rule = refs.rule_based.trace
    return {
        "rule-based": {"grid_import_kw": rule["grid_import_kw"], "soc": rule["soc"]},
        "LP optimum": {"grid_import_kw": opt.grid_import_kw, "soc": opt.soc},
    }


def evaluate_part(model: BaseAlgorithm, env: PvBessEvEnv, refs: References) -> tuple[dict[str, Any], EpisodeResult]:
    """The model's deterministic episode on ``env`` scored against references on the same data."""
    result = run_episode(env, deterministic_policy(model))
    scored, table = score(result, refs, env.site.unmet_penalty_kg_per_kwh), refs.table()
    metrics = {
        **scored,
        "references": table,
        "eval_hours": result.hours,
        "flags": degenerate(scored, table["uncontrolled"], result.hours),
    }
    return metrics, result


def next_multiple(step: int, every: int) -> int:
    """The first multiple of ``every`` after ``step``: schedules by the run's own timestep count, which a resume
    carries on, so that a resumed run evaluates and logs where the uninterrupted run does."""
    return (step // every + 1) * every


class HeldOutEval(EvalCallback):
    """SB3's EvalCallback on the held-out env, at the first step on or after each multiple of ``every_steps``
    timesteps, with CO2 logged beside the reward.

    Why not SB3's ``eval_freq``: it counts this process's calls, which start at 0 again on a resume, so a resumed
    run evaluated off the schedule (at 1,000 and 2,768, not 2,000 and 3,000) and one resumed more often than
    ``every_steps`` never did. The env reward is -(penalised CO2)/scale, so SB3's best-by-mean-reward is best by
    the penalised objective; the best model is saved as ``best_model.zip`` in ``save_dir`` (``SaveBestModel``).
    """

    def __init__(self, env: PvBessEvEnv, every_steps: int, save_dir: str):
        super().__init__(
            env,
            n_eval_episodes=1,
            eval_freq=1,  # due steps are ``_on_step``'s to pick; SB3's own test then always passes
            callback_on_new_best=SaveBestModel(RunDir(Path(save_dir))),
            deterministic=True,
            verbose=0,
            warn=False,
        )
        self.env = env
        self.every_steps = every_steps
        self._due = every_steps
        self.baseline: EpisodeResult | None = None
        self._co2 = self._unmet = 0.0

    def _init_callback(self) -> None:
        super()._init_callback()
        self.baseline = run_episode(self.env, uncontrolled)

    def _on_training_start(self) -> None:
        self._due = next_multiple(self.num_timesteps, self.every_steps)

    def _on_step(self) -> bool:
        if self.num_timesteps < self._due:
            return True
        self._due = next_multiple(self.num_timesteps, self.every_steps)
        return super()._on_step()

    def _log_success_callback(self, locals_: dict[str, Any], globals_: dict[str, Any]) -> None:
        """Sum the episode's CO2 and unmet EV energy from the infos; record them when it ends."""
        super()._log_success_callback(locals_, globals_)
        info = locals_["info"]
        self._co2 += info["co2_kg"]
        self._unmet += info["ev_unmet_kwh"]
        if locals_["done"]:
            base, penalty = self.baseline, self.env.site.unmet_penalty_kg_per_kwh
            assert base is not None, "_init_callback runs before the first evaluation"
            values = (
                self._co2,
                reduction_pct(base.co2_kg, self._co2),
                reduction_pct(
                    penalised_kg(base.co2_kg, base.ev_unmet_kwh, penalty), penalised_kg(self._co2, self._unmet, penalty)
                ),
                self._unmet,
            )
            for key, value in zip(EVAL_KEYS, values, strict=True):
                self.logger.record(key, float(value))
            self._co2 = self._unmet = 0.0


class SaveBestModel(BaseCallback):
    """``best_model.zip`` on each new best evaluation, through ``RunDir.save_model`` (atomic): SB3's own save
    (``best_model_save_path``) writes the zip in place, and a full disk left half of one over the last best."""

    def __init__(self, run_dir: RunDir) -> None:
        super().__init__()
        self.run_dir = run_dir

    def _on_step(self) -> bool:
        self.run_dir.save_model(self.model, self.run_dir.best_model)
        return True


def held_out_eval(cfg: DictConfig, run_dir: Path) -> list[BaseCallback]:
    """The periodic held-out evaluation of a run config, or none when ``eval_every_steps`` is null.

    A resumed run starts from the best reward its earlier rows recorded, so best_model.zip is not
    replaced by a worse model after the resume.
    """
    every = cfg.get("eval_every_steps")
    if not every:
        return []
    callback = HeldOutEval(build_eval_env(cfg), every, str(run_dir))
    rd = RunDir(run_dir)
    for progress in (rd.earlier_progress, rd.progress):
        rewards = _column(progress, "eval/mean_reward")
        if rewards is not None and rd.best_model.is_file():
            callback.best_mean_reward = max(callback.best_mean_reward, float(rewards.max()))
    return [callback]


def _column(progress: Path, key: str) -> pd.Series | None:
    """A progress.csv column without its empty cells, or None when the file or the column is absent."""
    try:
        rows = pd.read_csv(progress)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return None
    values = rows[key].dropna() if key in rows else None
    return values if values is not None and len(values) else None


def best_evaluation(progress: Path) -> dict[str, float] | None:
    """The progress.csv row of the best periodic evaluation (by the penalised objective): its step and scores."""
    values = _column(progress, "eval/penalised_reduction_pct")
    if values is None:
        return None
    best = pd.read_csv(progress).loc[values.idxmax()]
    scores = {k.removeprefix("eval/"): float(best[k]) for k in EVAL_KEYS}
    return {"timesteps": int(best["time/total_timesteps"]), **scores}


class LogEverySteps(BaseCallback):
    """A progress.csv / TensorBoard row at the first rollout end on or after each multiple of ``every_steps``
    timesteps (``next_multiple``: a resumed run's rows fall where the uninterrupted run's do).

    Why: SB3 writes rows every ``log_interval`` episodes (off-policy) or rollouts (on-policy); year-long
    episodes and 8,192-step rollouts make that never in most runs, so rows follow timesteps instead.
    """

    def __init__(self, every_steps: int) -> None:
        super().__init__()
        self.every_steps = every_steps
        self._due = every_steps

    def _on_training_start(self) -> None:
        self._due = next_multiple(self.num_timesteps, self.every_steps)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self.num_timesteps >= self._due:
            self._due = next_multiple(self.num_timesteps, self.every_steps)
            self.model.dump_logs()


def refuse_unfinished(run_dir: Path, missing: Path) -> None:
    """An interrupted run (a complete checkpoint: what ``resume=`` goes on from) lacks ``missing``: say so, with the
    command that finishes it, for evaluate, export and replay alike."""
    if checkpoint.current(RunDir(run_dir).checkpoint) is not None:
        raise RunDirError(
            f"{run_dir} is unfinished (interrupted, no {missing.name} yet): resume with: {resume_command(run_dir)}"
        )


def load_trained(run_dir: Path, best: bool = False) -> tuple[BaseAlgorithm, DictConfig]:
    """A run folder's final (or best) model on the CPU, with the run's saved config moved to the CPU.

    Loaded without an env: the env it is scored on may be another scenario, checked by ``check_spaces``.
    What cannot be loaded is one line saying why: a population's folder, an unfinished run, a damaged
    zip, another algorithm's model (SB3 would fail deep inside its policy constructor).
    """
    rd = RunDir(run_dir)
    members = [] if rd.config.is_file() else sorted(run_dir.glob(f"member_*/{rd.config.name}"))
    if members:
        raise RunDirError(
            f"{run_dir} is a population run folder: pass one member's folder, {run_dir}/member_<i> "
            f"(<i> from 0 to {len(members) - 1})"
        )
    cfg = rd.load_config()
    path = rd.best_model if best else rd.model
    if not path.is_file():
        refuse_unfinished(run_dir, path)
        why = "no periodic evaluation kept one: see eval_every_steps" if best else "trained with save_model=false?"
        raise RunDirError(f"{run_dir} has no {path.name} ({why})")
    check_model_zip(path)
    cfg.hardware.device = cfg.agent.device = "cpu"
    algo = algo_class(cfg.agent.algo)
    runtime = hardware.resolve(cfg.hardware, algo, "cpu")
    switches = runtime.switches(capabilities(algo))
    # A run folder may come from anyone: its pickled fields come from a model of the run's own config instead.
    # The spaces depend only on the forecast length, so the template needs none of the run's data files.
    env = DummyVecEnv([lambda: PvBessEvEnv(forecast_hours=cfg.scenario.forecast_hours)])
    hparams = OmegaConf.to_container(cfg.agent.hparams, resolve=True)
    assert isinstance(hparams, dict)
    template = make_model(algo, env, hparams, int(cfg.seed), "cpu", **switches)
    try:
        model = load_model(path, algo, template, {}, "cpu", **switches)
    except RunDirError as exc:  # the zip is intact (check_model_zip): another algorithm's model, or crafted fields
        raise RunDirError(f"{path} is not a {cfg.agent.algo} model ({exc})") from None
    return model, cfg


def check_model_zip(path: Path) -> None:
    """Refuse a model zip that is empty, truncated or corrupt before SB3 reads it: its errors (``wasn't a
    zip-file``, an AssertionError, a torch unpickling error) do not say that the file is the problem."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"{bad} fails its checksum")
            json.loads(archive.read("data"))
    except KeyError:
        raise RunDirError(f"{path} is damaged: it has no 'data' entry (truncated, or not a saved model)") from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:  # JSON errors are ValueErrors
        why = "the file is empty" if path.stat().st_size == 0 else first_line(exc)
        raise RunDirError(f"{path} is damaged: {why} (copy it again, or retrain)") from None


def check_spaces(model: BaseAlgorithm, env: PvBessEvEnv) -> None:
    """Refuse a scenario whose observation or action layout is not the one the model was trained on."""
    for what in ("observation", "action"):
        trained, given = getattr(model, f"{what}_space").shape, getattr(env, f"{what}_space").shape
        if trained != given:
            raise ConfigError(
                f"the model was trained on {what}s of shape {trained}, this scenario gives {given} "
                "(e.g. another scenario.forecast_hours)"
            )
