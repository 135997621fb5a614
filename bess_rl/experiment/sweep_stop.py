"""Ctrl-C / SIGTERM during a sweep: fail the interrupted trial, then end the whole sweep.

Why: Hydra records an exception of the task function as a failed job and the Optuna sweeper goes on
to the next trial, so a Ctrl-C stopped only one trial and the sweep exited 0. Ending the sweep takes
an exception Hydra does not catch (SystemExit), which the sweeper never records, so the trial is told
FAIL here first, in the study's storage (an in-memory study ends with the process anyway).
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def fail_running_trial(sweeper: DictConfig, overrides: list[str]) -> int | None:
    """Mark FAIL the RUNNING trial of the sweep's study whose parameters are these overrides; its number."""
    storage, name = OmegaConf.select(sweeper, "storage"), OmegaConf.select(sweeper, "study_name")
    if storage is None or name is None:
        return None
    import optuna  # only sweeps need it
    from optuna.trial import TrialState

    given = dict(o.split("=", 1) for o in overrides if "=" in o)
    study = optuna.load_study(study_name=name, storage=storage)
    running = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if all(given.get(k, "").replace(" ", "") == str(v).replace(" ", "") for k, v in t.params.items())
    ]
    if len(running) != 1:
        log.warning("could not tell which RUNNING trial of study %r was interrupted: none marked failed", name)
        return None
    study.tell(running[0].number, state=TrialState.FAIL)
    return running[0].number
