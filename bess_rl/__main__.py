"""``python -m bess_rl agent=sac hardware=rtx4060``: the Hydra entry point."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict
from omegaconf.errors import OmegaConfBaseException

from bess_rl import startup
from bess_rl.experiment.budget import apply_budget
from bess_rl.experiment.config import ConfigError, one_line, register_configs
from bess_rl.experiment.run_dir import HYDRA, LOCK, RunDir, register_resolvers, resume_command
from bess_rl.experiment.sweep_stop import fail_running_trial

log = logging.getLogger("bess_rl")

register_configs()
register_resolvers()

# What Hydra writes into a job's folder before the task function runs.
HYDRA_FILES = {"config.yaml", "hydra.yaml", "overrides.yaml"}


class _Job:
    """Whether Hydra got as far as the task function: an error after that is the run's own."""

    started = False


def remove_refused_folder(hc: DictConfig) -> bool:
    """Remove the job's folder when it holds only what is written before training (``.hydra/``, the log, the
    empty ``.lock``, run_info.json and resolved_config.yaml): a start that was refused, or stopped before training
    began, left nothing to resume, and report and evaluate would otherwise take it for a failed run. Whether it
    removed it.

    Anything else in it (a checkpoint, progress, a model, metrics) keeps it. ``<agent>-<preset>/`` goes too when
    this made it empty.
    """
    path = Path(hc.runtime.output_dir)
    hydra_dir, lock, rd = path / HYDRA, path / LOCK, RunDir(path)
    before_training = {HYDRA, f"{hc.job.name}.log", LOCK, rd.run_info.name, rd.config.name}
    if not hydra_dir.is_dir() or {p.name for p in path.iterdir()} - before_training:
        return False
    if {p.name for p in hydra_dir.iterdir()} - HYDRA_FILES or (lock.is_file() and lock.stat().st_size):
        return False
    shutil.rmtree(path)
    with contextlib.suppress(OSError):  # not empty: other runs of this agent and preset
        path.parent.rmdir()
    return True


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | tuple[float, ...] | None:
    _Job.started = True
    # Imported here, not above: torch and SB3 take seconds to import, and a mistyped override
    # (refused by Hydra before this function runs) should not wait for them.
    from bess_rl.experiment import checkpoint, population_run
    from bess_rl.experiment.checkpoint import NumericalError, TrainingInterrupted
    from bess_rl.experiment.errors import USER_ERRORS
    from bess_rl.experiment.train import objective_value, print_table, resume_config, run

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    with open_dict(cfg):
        cfg.overrides = overrides
    try:
        if cfg.resume is not None:
            if not str(cfg.resume).strip():
                raise ConfigError("resume= needs a run folder, e.g. resume=outputs/runs/sac-after/<time>")
            out, resume = Path(cfg.resume), True
            trained = resume_config(out, cfg, overrides)
        else:
            apply_budget(cfg)
            absolute_paths(cfg)
            trained = cfg
            out = Path(hc.runtime.output_dir)
            # A sweep job's folder is its own (one folder a sweep, a subfolder a job): a checkpoint there is an
            # earlier start's of this very job, which its launcher requeued after a time limit or a preemption.
            resume = hc.mode == RunMode.MULTIRUN and checkpoint.current(RunDir(out).checkpoint) is not None
            if resume:
                log.warning("this job was requeued: it goes on from the checkpoint in %s", out)
        if trained.population.size > 1:  # N members, each its own run folder: a table and objective per member
            members = population_run.run(trained, out, resume)
            with reader_may_go():
                for metrics in members:
                    print_table(metrics)
            return population_run.objective(members, trained.objective)
        metrics = run(trained, out, resume=resume)
    except TrainingInterrupted as exc:
        if hc.mode == RunMode.MULTIRUN and hand_to_launcher(exc.signame):
            log.warning("%s; the job's launcher requeues it, and its next start goes on from there", exc)
            try:
                signal.raise_signal(signal.Signals[exc.signame])  # submitit's handler: requeue, then exit
            except Exception:  # not requeued (submitit: a time limit hit more than max_num_timeout times)
                log.warning("not requeued; its checkpoint stays: %s finishes it", resume_command(out))
                raise
        if hc.mode == RunMode.MULTIRUN:
            trial = fail_running_trial(hc.sweeper, overrides)
            log.warning("%s; sweep stopped%s", exc, f" (trial {trial} marked failed)" if trial is not None else "")
        else:
            log.warning("%s\nresume with: %s", exc, resume_command(exc.path.parent))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:  # a second Ctrl-C, or a Ctrl-C, SIGTERM or SIGHUP outside training
        said, code = startup.how_stopped(exc)
        if hc.mode == RunMode.MULTIRUN:
            trial = fail_running_trial(hc.sweeper, overrides)
            said += f"; sweep stopped (trial {trial} marked failed)" if trial is not None else ""
        elif cfg.resume is None and remove_refused_folder(hc):
            said += f" before training began: nothing was kept (its folder {hc.runtime.output_dir} is removed)"
        log.warning("%s", said)  # a resume's checkpoint, and any a second Ctrl-C left, stay as they were
        sys.exit(code)
    except (MemoryError, *USER_ERRORS) as exc:
        # A resume logs into the run it continues (resumes/<time>/); a sweep's failed trial keeps its folder,
        # whose log says why (the report and the study list it): those stay.
        if cfg.resume is None and hc.mode == RunMode.RUN:
            remove_refused_folder(hc)
        if isinstance(exc, MemoryError):
            log.error("out of memory (%s): lower the scenario size or the agent's buffer/batch", type(exc).__name__)
        else:
            log.error("%s", exc)  # in a sweep: into the job's own log, beside its folder
        if hc.mode == RunMode.MULTIRUN:
            raise  # the sweeper records the trial as failed and goes on
        sys.exit(2 if not isinstance(exc, NumericalError) else 1)
    with reader_may_go():
        print_table(metrics)
    return objective_value(metrics, trained.objective)


@contextlib.contextmanager
def reader_may_go() -> Iterator[None]:
    """The result table to a reader that went away (``| head -1``): the run folder is complete, so end quietly
    with SIGPIPE's code, here, where Hydra would report the job as failed ("Error executing job with overrides")
    first. Rich ends a console's broken pipe itself, with SystemExit(1)."""
    try:
        yield
    except BrokenPipeError:
        startup.reader_gone()
    except SystemExit as exc:
        if isinstance(exc.__context__, BrokenPipeError):
            startup.reader_gone()
        raise


def absolute_paths(cfg: DictConfig) -> None:
    """``paths.*`` (relative to where the command was launched: ``.`` by default) made absolute in the run's
    config, which its folder keeps: evaluate, replay and a resume launched from another folder read the run's
    references cache there, where they solved them again and wrote a stray ``outputs/`` where they ran."""
    resolved = {key: value for key, value in cfg.paths.items() if isinstance(value, str)}
    with open_dict(cfg):
        for key, value in resolved.items():
            cfg.paths[key] = os.path.abspath(value)


def hand_to_launcher(signame: str) -> bool:
    """Whether the job's launcher handles ``signame`` itself once training has checkpointed on it: submitit's
    SIGUSR2 handler (Slurm's warning ahead of a time limit, or a preemption) requeues the job. Any other
    signal, or a process where nothing else handles it, stops the trial as usual."""
    return signame == "SIGUSR2" and callable(signal.getsignal(signal.SIGUSR2))


def composition_error(exc: HydraException | OmegaConfBaseException) -> str:
    """Hydra's message for an override it cannot compose, in one line (``one_line``), with the override a parse
    error is in and, for an unknown option, the group's options (Hydra lists them one a line, with its search
    path)."""
    text = one_line(exc)
    if isinstance(exc, OverrideParseException):
        text = f"cannot parse the override {exc.override!r}: {text}"
        key, _, value = str(exc.override).partition("=")
        if "[" in value and not value.startswith("["):  # KEY[start:end] is a string to us, a list to Hydra's parser
            text += f""" (quote a value with brackets: '{key}="{value}"')"""
        elif value and value[0] not in "[{'\"" and "(" not in key:  # a path with ~, (, non-ASCII letters...
            text += f""" (quote a value with such characters: '{key}="{value}"')"""
    elif text.startswith("Ambiguous value for argument"):  # Hydra's hints, one a line, are cut: the one a path needs
        key, _, value = text.partition("'")[2].rstrip("'").partition("=")
        text += f""" (a comma makes it a sweep: add -m to sweep; quote a path or text with one: '{key}="{value}"')"""
    if isinstance(exc, MissingConfigException) and exc.options:
        text += f" (options: {', '.join(exc.options)})"
    return text


def storage_failure(exc: BaseException) -> BaseException | None:
    """The Optuna storage's database failing (a server that went down mid-sweep and stayed down) that ``exc`` is or
    was raised while handling: the sweeper's own code raises it, and its ``tell`` of FAIL after a failed ``tell``
    raises a ValueError over it. Its modules are looked up, not imported: without a sweep, nothing raised is one
    of theirs."""
    db, optuna = sys.modules.get("sqlalchemy.exc"), sys.modules.get("optuna.exceptions")
    kinds = tuple(k for k in (getattr(db, "DBAPIError", None), getattr(optuna, "StorageInternalError", None)) if k)
    seen: BaseException | None = exc
    while kinds and seen is not None:
        if isinstance(seen, kinds):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def fail_asked_trials() -> None:
    """A sweep that stops (Ctrl-C, SIGTERM) fails the trials it asked and did not finish. The storage module is
    looked up, not imported: only a sweep with a storage loaded it."""
    storage = sys.modules.get("bess_rl.experiment.storage")
    if storage is not None:
        storage.fail_unfinished_trials()


def hydra_usage_error(exc: BaseException) -> bool:
    """Whether ``exc`` is Hydra refusing its own command-line flags (``-m`` with ``--cfg``): a ValueError raised
    in Hydra's code, not in a job's."""
    frames = traceback.extract_tb(exc.__traceback__)
    return isinstance(exc, ValueError) and bool(frames) and f"{os.sep}hydra{os.sep}" in frames[-1].filename


def no_trial_completed(exc: BaseException) -> bool:
    """Whether ``exc`` is Optuna's answer to the Optuna sweeper asking, after its last trial, for the best trial of a
    study without a complete one (every trial of a new study failed): a database's or the in-memory storage's."""
    return isinstance(exc, ValueError) and str(exc) in ("Record does not exist.", "No trials are completed yet.")


def cli() -> None:
    """Run ``main``, an override Hydra cannot compose (``agent=nope``, ``nosuchkey=1``, ``seed=[``) said in
    one line with exit 2, like a value ``validate`` refuses.

    Why the environment variable: without it Hydra prints such errors itself, over 5-10 lines, and exits 1;
    with it, it raises them. Errors of the run itself keep their traceback, and a ``HYDRA_FULL_ERROR=1``
    the user set keeps every traceback.
    """
    asked = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # Hydra's argparse names the command after argv[0]: "usage: __main__.py" and "__main__.py: error:" otherwise.
    script, sys.argv[0] = sys.argv[0], "python -m bess_rl"
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        startup.hand_over()  # a Ctrl-C before this (the imports above) was bess_rl.startup's
        startup.stop_on_terminate()
        main()
    except (HydraException, OmegaConfBaseException) as exc:
        if _Job.started or asked == "1":
            raise
        print(f"error: {composition_error(exc)}", file=sys.stderr)
        sys.exit(2)
    except SystemExit:
        fail_asked_trials()
        raise
    except KeyboardInterrupt as exc:  # outside training's own Ctrl-C handling (while torch imports, between jobs)
        fail_asked_trials()
        # Cut while torch imported, before it set its loggers to WARNING: its exit hooks would log INFO lines
        # (FakeTensor cache stats) at the root's level, Hydra's INFO. bess_rl's own loggers keep theirs.
        torch_log = logging.getLogger("torch")
        if torch_log.level == logging.NOTSET:
            torch_log.setLevel(logging.WARNING)
        said, code = startup.how_stopped(exc)
        print(f"{said}: finished runs and checkpoints are kept", file=sys.stderr)
        sys.exit(code)
    except BrokenPipeError:
        startup.reader_gone()
    except OSError as exc:
        if _Job.started or asked == "1" or exc.filename is None:
            raise
        # Hydra creating the sweep folder (hydra.sweep.dir) where a file is, or where it may not write.
        print(f"error: cannot create {exc.filename} ({exc.strerror})", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        if hydra_usage_error(exc) and not _Job.started and asked != "1":
            print(f"error: {exc}", file=sys.stderr)  # e.g. -m with --cfg
            sys.exit(2)
        if no_trial_completed(exc) and asked != "1":
            print(
                "error: every trial failed and the study has no complete trial, so it has no best one: the "
                "'Failed experiment' lines above and each trial's bess_rl.log in the sweep folder say why",
                file=sys.stderr,
            )
            sys.exit(1)
        failure = storage_failure(exc)
        if failure is not None and asked != "1":
            print(
                f"error: the study's storage failed during the sweep ({one_line(failure)}); finished trials and their "
                "run folders are kept: run the same command again to resume the study",
                file=sys.stderr,
            )
            sys.exit(1)
        from bess_rl.experiment.errors import USER_ERRORS  # torch: only once a job ran

        # Hydra's basic sweeper stops at a job it refused (an Optuna sweep marks the trial failed instead).
        if not isinstance(exc, USER_ERRORS) or asked == "1":
            raise
        print(f"error: a job of the sweep was refused: {str(exc).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    finally:
        sys.argv[0] = script
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if asked is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = asked


if __name__ == "__main__":
    cli()
