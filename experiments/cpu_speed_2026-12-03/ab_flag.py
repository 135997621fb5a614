"""Scratch: A/B of manual_sac module flags in one process (Dynamo keeps one graph per flag value)."""
import sys, time, statistics, torch
from omegaconf import OmegaConf
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv
from bess_rl.tools.bench import compose_cfg, random_transitions, sbx_sac
from bess_rl.agents.fast_sac import FastSAC
from bess_rl.agents import manual_sac
from bess_rl.experiment.build import make_model
from bess_rl.experiment.hardware import keep_heap
from bess_rl.site.env import PvBessEvEnv

keep_heap(1024)
torch.set_num_threads(2)
cfg = compose_cfg("sac", "after")
hp = OmegaConf.to_container(cfg.agent.hparams, resolve=True)
hp |= {"buffer_size": 10000, "learning_starts": 0}
trans = random_transitions(10000, 0)
flag = sys.argv[1]
values = [int(v) for v in sys.argv[2:]]

def fill(m):
    m.set_logger(Logger(None, []))
    for t in trans:
        m.replay_buffer.add(*t)
    return m

models = {}
for v in values:
    setattr(manual_sac, flag, v)
    m = fill(make_model(FastSAC, DummyVecEnv([PvBessEvEnv]), hp, 0, "cpu", amp="bf16", compile_mode="default"))
    m.train(40, 256)
    models[f"{flag}={v}"] = (m, v)
S = sbx_sac()
hs = {k: v for k, v in hp.items() if k != "net_arch"}
sb = fill(S("MlpPolicy", DummyVecEnv([PvBessEvEnv]), policy_kwargs={"net_arch": hp["net_arch"]}, seed=0, **hs))
sb.train(64, 256)
models["sbx"] = (sb, None)
rates = {k: [] for k in models}
for r in range(9):
    for k, (m, v) in models.items():
        if v is not None:
            setattr(manual_sac, flag, v)
        m.train(8, 256)
        t = time.perf_counter(); m.train(96, 256); rates[k].append(96 / (time.perf_counter() - t))
base = statistics.median(rates["sbx"])
for k, v in rates.items():
    print(f"{k:14s} median {statistics.median(v):7.1f} x sbx {statistics.median(v)/base:5.2f} {[round(x) for x in v]}")
