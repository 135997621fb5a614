"""Before against after in one process: FastSAC bf16 compiled models traced with each value of a
``manual_sac`` module flag (Dynamo keeps one graph per value), SBX beside them, interleaved rounds.

Why: this guest's speed moves by up to 1.8x within minutes, so two processes cannot be compared.
Usage: python experiments/cpu_speed_2026-12-03/ab_flag.py THIN_DIM 0 4
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from omegaconf import OmegaConf
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv

from bess_rl.agents import manual_sac
from bess_rl.agents.fast_sac import FastSAC
from bess_rl.experiment.build import make_model
from bess_rl.experiment.hardware import keep_heap
from bess_rl.site.env import PvBessEvEnv
from bess_rl.tools.bench import compose_cfg, random_transitions, sbx_sac

ROUNDS, UPDATES = 9, 96


def main(flag: str, values: list[int]) -> None:
    keep_heap(1024)
    torch.set_num_threads(2)
    hp = OmegaConf.to_container(compose_cfg("sac", "after").agent.hparams, resolve=True)
    hp |= {"buffer_size": 10000, "learning_starts": 0}
    transitions = random_transitions(10000, 0)

    def filled(model: BaseAlgorithm) -> BaseAlgorithm:
        model.set_logger(Logger(None, []))
        for transition in transitions:
            model.replay_buffer.add(*transition)
        return model

    models: dict[str, tuple[BaseAlgorithm, int | None]] = {}
    for value in values:
        setattr(manual_sac, flag, value)
        env = DummyVecEnv([PvBessEvEnv])
        model = filled(make_model(FastSAC, env, hp, 0, "cpu", amp="bf16", compile_mode="default"))
        model.train(40, 256)  # eager first update, then the compile
        models[f"{flag}={value}"] = (model, value)
    sbx = sbx_sac()
    if sbx is not None:
        sbx_hp = {k: v for k, v in hp.items() if k != "net_arch"}
        arch = {"net_arch": hp["net_arch"]}
        model = filled(sbx("MlpPolicy", DummyVecEnv([PvBessEvEnv]), policy_kwargs=arch, seed=0, **sbx_hp))
        model.train(64, 256)
        models["sbx"] = (model, None)
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(ROUNDS):
        for name, (model, value) in models.items():
            if value is not None:
                setattr(manual_sac, flag, value)
            model.train(8, 256)
            start = time.perf_counter()
            model.train(UPDATES, 256)
            rates[name].append(UPDATES / (time.perf_counter() - start))
    base = statistics.median(rates["sbx"]) if "sbx" in rates else float("nan")
    for name, got in rates.items():
        median = statistics.median(got)
        print(f"{name:14s} median {median:7.1f} x sbx {median / base:5.2f} {[round(x) for x in got]}")


if __name__ == "__main__":
    main(sys.argv[1], [int(v) for v in sys.argv[2:]])
