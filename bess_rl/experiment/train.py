"""The task function: config -> scenario, site, env -> SB3 agent -> evaluation -> run folder.

Why one function: a single run, a replay and every sweep trial go through ``run`` so they are
measured the same way; ``objective_value`` picks the metric(s) a sweep optimises.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import resource
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import ProgressBarCallback
from stable_baselines3.common.logger import KVWriter, Logger, make_output_format
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import TrainFrequencyUnit
from tqdm import tqdm
from tqdm.rich import tqdm_rich

from bess_rl.agents.capabilities import capabilities
from bess_rl.baselines.episode import EpisodeResult
from bess_rl.baselines.references import References, co2_table
from bess_rl.experiment import checkpoint, eta, hardware, planner
from bess_rl.experiment.build import (
    algo_class,
    build_eval_env,
    build_references,
    build_scenario,
    build_site,
    make_env,
    new_model,
)
from bess_rl.experiment.config import validate
from bess_rl.experiment.evaluation import (
    LogEverySteps,
    best_evaluation,
    comparison_traces,
    evaluate_part,
    has_eval_part,
    held_out_eval,
)
from bess_rl.experiment.fingerprint import fingerprint
from bess_rl.experiment.input_checks import own_data_warning, untrained_warning
from bess_rl.experiment.monitor import ResourceMonitor
from bess_rl.experiment.plots import dispatch_week
from bess_rl.experiment.provenance import git_commit, package_versions
from bess_rl.experiment.run_dir import (
    RunDir,
    RunDirError,
    WriteError,
    atomic_path,
    atomic_write_text,
    resume_command,
    write_json,
    writing,
)
from bess_rl.site.env import ENV_ID, PvBessEvEnv
from bess_rl.site.params import SiteParams
from bess_rl.site.scenario import Scenario

log = logging.getLogger(__name__)

# A progress line when both have passed since the last: 10 % of the steps and this many seconds.
PROGRESS_LOG_S = 10.0


def reset_peak_memory(device: str) -> None:
    """Start this run's peak from now: a sweep runs several jobs in one process (Linux clear_refs)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with contextlib.suppress(OSError):  # not Linux: the peak is then the process's, since it started
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: str) -> float:
    """Peak resident memory since ``reset_peak_memory``, or peak CUDA memory allocated on a GPU run."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def resume_config(run_dir: Path, requested: DictConfig, overrides: list[str]) -> DictConfig:
    """The saved config of ``run_dir``; refuses overrides that would make it another run."""
    saved = RunDir(run_dir).load_config()
    population = RunDir(run_dir.parent)
    if population.population_config.is_file() and checkpoint.current(RunDir(run_dir).checkpoint) is None:
        raise checkpoint.CheckpointError(
            f"{run_dir} is a member of the population in {population.path}, which checkpoints as a whole: "
            f"resume={population.path}"
        )
    state = checkpoint.read_state(RunDir(run_dir).checkpoint)
    if any(o.startswith("agent=") for o in overrides) and requested.agent.name != state["agent"]:
        raise checkpoint.CheckpointError(
            f"{run_dir} holds a {state['agent']} checkpoint; it cannot be resumed as agent={requested.agent.name}"
        )
    allowed = ("resume=", "progress_bar=", "agent=", "hydra.")
    extra = [o for o in overrides if not o.startswith(allowed)]
    if extra:
        raise checkpoint.CheckpointError(f"resume continues the saved config; drop these overrides: {' '.join(extra)}")
    saved.progress_bar = requested.progress_bar
    return saved


class RunFolderFormat(KVWriter):
    """An SB3 log format (progress.csv, TensorBoard's events) whose failed write is a ``WriteError`` naming ``path``."""

    def __init__(self, inner: KVWriter, path: Path) -> None:
        self.inner, self.path = inner, path

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        with writing(self.path):
            self.inner.write(key_values, key_excluded, step)

    def close(self) -> None:
        with writing(self.path):
            self.inner.close()


def attach_logger(model: BaseAlgorithm, run_dir: Path, resume: bool) -> None:
    """progress.csv + TensorBoard in the run folder; a resume appends to the earlier rows."""
    csv, earlier = RunDir(run_dir).progress, RunDir(run_dir).earlier_progress
    if resume and csv.is_file() and csv.stat().st_size:
        if earlier.is_file():  # an earlier resume was interrupted too: keep both sets of rows
            merge_progress(run_dir)
        with writing(earlier):
            shutil.move(csv, earlier)
    with writing(csv):
        table = make_output_format("csv", str(run_dir))
    named = run_dir / "events.out.tfevents.*"  # TensorBoard names its file itself
    with writing(named):
        events = make_output_format("tensorboard", str(run_dir))
    model.set_logger(Logger(str(run_dir), [RunFolderFormat(table, csv), RunFolderFormat(events, named)]))


@contextlib.contextmanager
def writer_thread_errors_raised_later() -> Iterator[None]:
    """While a run trains, TensorBoard's writer thread failing to write (a full disk) prints no traceback of its
    own: the thread keeps the error, and the next write of the training thread raises it, as a ``WriteError``
    (``RunFolderFormat``). Any other thread's exception is printed as before."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (issubclass(args.exc_type, OSError) and type(args.thread).__module__.startswith("tensorboard.")):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def merge_progress(run_dir: Path) -> None:
    """Put the rows written before a resume back in front of the resumed ones."""
    csv, earlier = RunDir(run_dir).progress, RunDir(run_dir).earlier_progress
    if earlier.is_file():
        frames = [pd.read_csv(p) for p in (earlier, csv) if p.is_file() and p.stat().st_size]
        with writing(csv):
            atomic_write_text(csv, pd.concat(frames, ignore_index=True).to_csv(index=False))
        earlier.unlink()


def steps_to_run(model: BaseAlgorithm, remaining: int) -> int:
    """The env steps ``learn(remaining)`` really takes: SB3 checks the total only between collections, so
    PPO/A2C run whole rollouts (``n_steps x n_envs``) and SAC whole ``train_freq`` blocks."""
    if isinstance(model, OnPolicyAlgorithm):
        block = model.n_steps * model.n_envs
    elif isinstance(model, OffPolicyAlgorithm) and model.train_freq.unit == TrainFrequencyUnit.STEP:
        block = model.train_freq.frequency * model.n_envs
    else:  # train_freq in episodes: the overshoot depends on where episodes end
        block = model.n_envs
    return -(-remaining // block) * block


class ProgressLog(tqdm):
    """tqdm's count, rate and time left as a log line on stderr (and in the run's log), where no terminal shows a
    bar (nohup, sbatch: rich would print one bar at the end). A line when both 10 % of the steps and
    ``PROGRESS_LOG_S`` seconds have passed since the last: at most ~10 lines a run of any length, a short run's
    not one a second; and the last."""

    def __init__(self, total: int, desc: str) -> None:
        # gui: tqdm draws nothing itself, ``display`` is the front end; maxinterval: its monitor thread must not
        # force a line sooner.
        super().__init__(
            total=total,
            desc=desc,
            gui=True,
            miniters=max(total // 10, 1),
            mininterval=PROGRESS_LOG_S,
            maxinterval=math.inf,
        )
        self._logged = 0

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if self.n == self._logged:  # SB3 refreshes, then closes: one last line, not two
            return False
        self._logged = self.n
        elapsed, recent = self.format_dict["elapsed"], self.format_dict["rate"]  # recent: tqdm's moving average
        average = self.n / elapsed if elapsed else 0.0
        done = f"{self.desc}: {self.n:,}/{self.total:,} steps ({100 * self.n / self.total:.0f} %)"
        if self.n >= self.total:
            log.info("%s in %s, %s steps/s", done, self.format_interval(elapsed), f"{average:,.0f}")
            return True
        rate = recent or average
        left = self.format_interval((self.total - self.n) / rate) if rate else "?"
        log.info("%s, %s steps/s, %s left", done, f"{rate:,.0f}", left)
        return True

    def close(self) -> None:
        if self.n >= self.total:  # a run stopped by an error ends at its error line, not at a progress line
            self.display()
        super().close()


def progress_bar(total: int, desc: str) -> tqdm:
    """SB3's rich bar, on stderr, where rich would animate it (a terminal, Jupyter), else ``ProgressLog``'s lines
    named ``desc``: stdout holds only the results, and tqdm.rich's default console is stdout's."""
    console = Console(stderr=True)
    if console.is_interactive or console.is_jupyter:
        return tqdm_rich(total=total, options={"console": console})
    return ProgressLog(total, desc)


class Progress(ProgressBarCallback):
    """SB3's progress bar (``progress_bar``) with the steps that will run as its total (SB3's shows 32,768/26,280
    for PPO)."""

    def __init__(self, total: int, desc: str) -> None:
        super().__init__()
        self.total, self.desc = total, desc
        self.pbar: tqdm | None = None

    def _on_training_start(self) -> None:
        self.pbar = progress_bar(self.total, self.desc)

    def close(self) -> None:
        """End the bar when ``learn`` raised, too: rich's live display otherwise keeps redrawing over the error."""
        if self.pbar is not None:
            self.pbar.close()


def learn(cfg: DictConfig, model: BaseAlgorithm, run_dir: Path, resume: bool) -> tuple[float, dict[str, Any]]:
    """Train to ``agent.total_timesteps`` under the checkpoint/NaN guard; returns seconds and resources used.

    Every ``eval_every_steps`` the policy is scored on the held-out part. With ``log_every_steps`` set,
    rows are written by timesteps and SB3's ``agent.log_interval`` (episodes or rollouts) is not used.
    """
    remaining = cfg.agent.total_timesteps - model.num_timesteps
    if remaining <= 0:  # resumed from a checkpoint taken at the end of training: straight to the evaluation
        if hasattr(model, "finish_train"):
            model.finish_train()  # FastSAC: the rest of a last update a signal cut short
        return 0.0, {}
    guard = checkpoint.Guard(cfg.agent.name, RunDir(run_dir).checkpoint, cfg.checkpoint_every_steps, fingerprint(cfg))
    monitor = ResourceMonitor()
    steps = steps_to_run(model, remaining)
    log.info(
        "training %s (%s preset) for %d steps%s on %s%s",
        cfg.agent.name,
        cfg.preset.name,
        remaining,
        f" ({steps} in whole rollouts)" if steps != remaining else "",
        model.device,
        f", resuming at step {model.num_timesteps}" if resume else "",
    )
    env = build_eval_env(cfg)  # a separate env: the calibration leaves the training envs alone
    eta.announce(cfg, model, steps, env, env.episode_hours, resume)
    every = cfg.get("log_every_steps")
    callbacks = [guard, monitor, *held_out_eval(cfg, run_dir), *([LogEverySteps(every)] if every else [])]
    progress = Progress(steps, cfg.agent.name) if cfg.progress_bar else None
    callbacks += [progress] if progress else []
    t0 = time.perf_counter()
    try:
        model.learn(
            remaining,
            callback=callbacks,
            log_interval=None if every else cfg.agent.log_interval,
            reset_num_timesteps=not resume,
        )
    except RunDirError:  # a ValueError too, whose path may hold the words below
        raise
    except ValueError as exc:  # torch.distributions refuses NaN/inf parameters before the guard sees them
        if "distribution" in str(exc).lower() or "expected parameter" in str(exc).lower():
            raise checkpoint.NumericalError(
                f"{cfg.agent.name}: the policy's outputs became non-finite at step {model.num_timesteps} "
                "(try a lower agent.hparams.learning_rate)"
            ) from None
        raise
    finally:
        monitor.stop()
        guard.restore_handlers()
        if progress:
            progress.close()
    return time.perf_counter() - t0, monitor.summary()


def write_provenance(cfg: DictConfig, run_dir: Path, scenario: Scenario, runtime: hardware.Runtime) -> None:
    """resolved_config.yaml and run_info.json: what is needed to trust and rerun this run."""
    rd = RunDir(run_dir)
    with writing(rd.config):
        atomic_write_text(rd.config, OmegaConf.to_yaml(cfg, resolve=True))
    info = {
        "seed": cfg.seed,
        "agent": cfg.agent.name,
        "preset": cfg.preset.name,
        "scenario": scenario.name,
        # The observation layout's version: a model saved under another one cannot be used with this env.
        "env_id": ENV_ID,
        "overrides": list(cfg.get("overrides") or []),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "machine": hardware.describe_machine(),
        "runtime": runtime.as_dict(),
        "resumed": [],
    }
    with writing(rd.run_info):
        write_json(rd.run_info, info)


def run(cfg: DictConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train (or resume), evaluate and write the run folder; returns metrics.json's content.

    The agent is scored on the scenario's evaluation part, with the training part beside it; a scenario
    without one is scored on its training part, with a warning and ``held_out: false`` in metrics.json.
    """
    validate(cfg)
    rd = RunDir(run_dir)
    with rd.lock(), writer_thread_errors_raised_later():
        try:
            return _run(cfg, rd, resume)
        except WriteError as exc:
            raise failed_write(exc, rd) from None


def failed_write(exc: WriteError, rd: RunDir) -> RunDirError:
    """``exc`` with what is kept and what to do: free space and resume from the last checkpoint, or run again."""
    if exc.errno == errno.ENOENT and not rd.holds_config():
        return RunDirError(f"the run folder {rd.path} disappeared while training ({exc}): run it again")
    found = checkpoint.current(rd.checkpoint)
    if found is None:
        return RunDirError(f"{exc}; no checkpoint to resume from: free space and run it again")
    step = checkpoint.read_state(found)["num_timesteps"]
    return RunDirError(f"{exc}; the last checkpoint (step {step}) is kept: free space and {resume_command(rd.path)}")


def _run(cfg: DictConfig, rd: RunDir, resume: bool) -> dict[str, Any]:
    run_dir = rd.path
    algo = algo_class(cfg.agent.algo)
    runtime = hardware.resolve(cfg.hardware, algo, cfg.agent.device)
    reset_peak_memory(runtime.device)
    scenario = build_scenario(cfg.scenario, "train")  # a file's values are checked as it loads
    for warning in (untrained_warning(cfg), own_data_warning(cfg, list(cfg.get("overrides") or []))):
        if warning:
            log.warning("%s", warning)
    planner.check_scenario(scenario, cfg.agent.n_envs, cfg.hardware.memory_budget_gb, f"hardware={cfg.hardware.name}")
    site = build_site(cfg.site)
    held_out = has_eval_part(cfg.scenario)
    if not held_out:
        log.warning("scenario %s has no evaluation part: it is scored on the data it trains on", cfg.scenario.name)
    eval_env = make_env(build_scenario(cfg.scenario, "eval"), site, cfg.scenario, training=False)
    plan = planner.for_run(cfg, eval_env.observation_space, eval_env.action_space, runtime.device)
    table = plan.table()
    log.info("%s, about %s in all", table.splitlines()[0], planner.size(plan.total))
    log.debug("%s", table)
    planner.check(plan, cfg.hardware.memory_budget_gb, f"hardware={cfg.hardware.name}")
    if resume:
        switches = runtime.switches(capabilities(algo))
        template = new_model(cfg, scenario, site, runtime)
        model = checkpoint.load(rd.checkpoint, cfg.agent.name, template, runtime.device, fingerprint(cfg), **switches)
        with writing(rd.run_info):
            rd.update_run_info(resumed={"from_step": model.num_timesteps, "time": time.strftime("%c")})
    else:
        write_provenance(cfg, run_dir, scenario, runtime)
        model = new_model(cfg, scenario, site, runtime)
    refs = build_references(cfg, eval_env)
    attach_logger(model, run_dir, resume)
    start_step = model.num_timesteps
    try:
        train_s, resources = learn(cfg, model, run_dir, resume)
    except torch.cuda.OutOfMemoryError as exc:
        model = retry_after_oom(cfg, run_dir, scenario, site, runtime, exc)
        start_step, (train_s, resources) = 0, learn(cfg, model, run_dir, resume=False)
    merge_progress(run_dir)
    if cfg.save_model:
        rd.save_model(model)

    trained = model.num_timesteps - start_step
    metrics, result = final_metrics(cfg, model, eval_env, refs, scenario, site, train_s, trained, resources)
    best = best_evaluation(rd.progress) if rd.best_model.is_file() else None
    if best:
        metrics["best_model"] = {"path": rd.best_model.name, **best}
    for flag in metrics["flags"]:
        log.warning("%s (%s): degenerate policy: %s", cfg.agent.name, cfg.preset.name, flag)
    with writing(rd.metrics):
        write_json(rd.metrics, metrics)
    if cfg.plot:
        title = f"{cfg.agent.name} ({cfg.preset.name}) dispatch, {'held-out' if held_out else 'training'} data"
        others = comparison_traces(eval_env, refs)
        with writing(rd.dispatch_plot), atomic_path(rd.dispatch_plot) as tmp:
            dispatch_week(result.trace, tmp, title, timestamps=eval_env.scenario.timestamps, others=others)
    checkpoint.discard(rd.checkpoint)  # the results are on disk: the "trained" checkpoint is no longer needed
    return metrics


def final_metrics(
    cfg: DictConfig,
    model: BaseAlgorithm,
    eval_env: PvBessEvEnv,
    refs: References,
    scenario: Scenario,
    site: SiteParams,
    train_s: float,
    trained: int,
    resources: dict[str, Any],
) -> tuple[dict[str, Any], EpisodeResult]:
    """metrics.json's content for a trained model (one run or one population member) and its evaluation episode.

    :param cfg: the run's (or member's) config.
    :param model: the trained model.
    :param eval_env: the evaluation env; ``refs`` the references on it.
    :param scenario: the training part, scored beside the evaluation part when that is held out.
    :param site: the site sizes.
    :param train_s: training wall seconds; ``trained`` the env steps trained in them.
    :param resources: the resource monitor's summary.
    """
    held_out = has_eval_part(cfg.scenario)
    scored, result = evaluate_part(model, eval_env, refs)
    metrics = {
        "agent": cfg.agent.name,
        "preset": cfg.preset.name,
        "seed": cfg.seed,
        "held_out": held_out,
        **scored,
        "total_timesteps": int(model.num_timesteps),
        "gradient_updates": eta.gradient_steps(model),
        "train_seconds": train_s,
        "timesteps_per_hour": trained / train_s * 3600.0 if train_s > 0 else 0.0,
        "peak_memory_mb": peak_memory_mb(str(model.device.type)),
        "device": str(model.device.type),
        "resources": resources,
    }
    if held_out:  # the same final model on the year it trained on: over-fitting shows as a gap
        train_env = make_env(scenario, site, cfg.scenario, training=False)
        train_refs = build_references(cfg, train_env)
        train_scored, _ = evaluate_part(model, train_env, train_refs)
        metrics["train_part"] = {k: v for k, v in train_scored.items() if k != "flags"}
    return metrics, result


def retry_after_oom(
    cfg: DictConfig, run_dir: Path, scenario: Scenario, site: SiteParams, runtime: hardware.Runtime, exc: Exception
) -> BaseAlgorithm:
    """The out-of-memory remedy of docs/presets.md, once and on the record: restart with batch_size halved."""
    rd = RunDir(run_dir)
    if cfg.agent.hparams.get("batch_size", 0) < 2 or rd.oom_retry.exists():
        raise exc
    old = int(cfg.agent.hparams.batch_size)
    cfg.agent.hparams.batch_size = old // 2
    record = {"error": str(exc).splitlines()[0][:300], "batch_size_from": old, "batch_size_to": old // 2}
    with writing(rd.oom_retry):
        write_json(rd.oom_retry, record)
    with writing(rd.run_info):
        rd.update_run_info(oom_retry=record)
    with writing(rd.config):
        atomic_write_text(rd.config, OmegaConf.to_yaml(cfg, resolve=True))
    log.warning("out of memory: restarting once with agent.hparams.batch_size=%d (was %d)", old // 2, old)
    if runtime.device == "cuda":
        torch.cuda.empty_cache()
    model = new_model(cfg, scenario, site, runtime)
    attach_logger(model, run_dir, resume=False)
    return model


def objective_value(metrics: dict[str, Any], objective: Any) -> float | tuple[float, ...]:
    """The number (or tuple, for multi-objective sweeps) a sweep optimises."""
    if isinstance(objective, str):
        return float(metrics[objective])
    return tuple(float(metrics[name]) for name in objective)


def print_table(metrics: dict[str, Any], console: Console | None = None) -> None:
    """References and agent on the evaluation part ranked by penalised kg, the training part beside it, flags."""
    rows = dict(metrics["references"])
    rows[f"{metrics['agent']} ({metrics['preset']})"] = metrics
    part = "held-out evaluation part" if metrics.get("held_out", False) else "training part (no held-out part)"
    (console or Console()).print(co2_table(rows, metrics["eval_hours"]), f"scored on the {part}")
    refs = metrics["references"]
    base = refs["uncontrolled"]["penalised_kg"]
    possible = base - refs["lp_optimum"]["penalised_kg"]
    # A gap of ~0 (nothing to gain over uncontrolled) makes the share noise: 1e17 % once.
    gap = f"{metrics['lp_gap_closed_pct']:.1f}%" if possible > 1e-6 * max(base, 1.0) else "n/a"
    speed = metrics.get("timesteps_per_hour")
    print(
        f"{metrics['agent']}: {metrics['co2_reduction_pct']:.2f}% CO2 reduction "
        f"({metrics['penalised_reduction_pct']:.2f}% counting unmet EV energy as penalty), "
        f"{gap} of the LP optimum's"
        + (f", {speed:,.0f} timesteps/hour on {metrics['device']}" if speed is not None else "")
        + (" (untrained: no gradient update ran)" if metrics.get("gradient_updates") == 0 else "")
    )
    if "train_part" in metrics:
        t = metrics["train_part"]
        print(
            f"on its training part: {t['co2_reduction_pct']:.2f}% CO2 reduction "
            f"({t['penalised_reduction_pct']:.2f}% penalised)"
        )
    for flag in metrics.get("flags", []):
        print(f"WARNING degenerate policy: {flag}")
