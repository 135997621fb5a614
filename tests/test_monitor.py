"""ResourceMonitor: the CPU path samples during real SB3 training; thresholds are judged on injected samples."""

from __future__ import annotations

import logging
import sys
import threading
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.logger import configure

from bess_rl.experiment.monitor import THRESHOLDS, Nvml, ResourceMonitor, breaches
from bess_rl.site.env import PvBessEvEnv


def test_cpu_path_samples_while_training_and_summarises(scenario, site, tmp_path):
    model = PPO("MlpPolicy", PvBessEvEnv(scenario, site), n_steps=64, batch_size=32, n_epochs=1,
                policy_kwargs={"net_arch": [16]}, seed=0, device="cpu")  # fmt: skip
    model.set_logger(configure(str(tmp_path), ["csv"]))
    monitor = ResourceMonitor(interval_s=0.02)
    model.learn(640, callback=monitor, log_interval=1)

    summary = monitor.summary()
    assert summary["backend"] == "psutil" and summary["gpu"] is None
    assert summary["samples"] >= 2  # the thread sampled during training, plus the final sample
    for key in ("cpu_pct", "rss_mb", "ram_pct"):
        stats = summary["stats"][key]
        assert stats["min"] <= stats["mean"] <= stats["max"], key
    assert summary["stats"]["rss_mb"]["min"] > 50  # this process holds torch: tens of MB at least
    assert not any(t.name == "resource-monitor" for t in threading.enumerate())
    assert "monitor/rss_mb" in pd.read_csv(tmp_path / "progress.csv")


def test_summary_mean_stays_within_min_and_max():
    """Constant readings: float summation alone put the mean above the max once (CI, ram_pct 6.4)."""
    monitor = ResourceMonitor()
    monitor.samples = [{"time_s": float(i), "ram_pct": 6.4} for i in range(3)]
    stats = monitor.summary()["stats"]["ram_pct"]
    assert stats == {"min": 6.4, "mean": 6.4, "max": 6.4}


def test_thresholds_on_injected_samples():
    healthy = [{"gpu_util_pct": 90.0, "gpu_temp_c": 65.0, "gpu_mem_pct": 40.0, "ram_pct": 30.0}] * 5
    assert breaches(healthy) == []
    idle = [{"gpu_util_pct": u} for u in (20.0, 30.0, 40.0)]
    assert [t.key for t in breaches(idle)] == ["gpu_util_pct"]
    assert breaches(idle[:2]) == []  # two samples may be warm-up: utilisation needs three
    assert breaches([{"gpu_util_pct": u} for u in (100.0, 100.0, 0.0)]) == []  # judged on the mean
    assert [t.key for t in breaches([*healthy, {"gpu_temp_c": 80.0}])] == ["gpu_temp_c"]  # one hot sample is enough
    assert {t.key for t in breaches([{"gpu_mem_pct": 95.0, "ram_pct": 91.0}])} == {"gpu_mem_pct", "ram_pct"}
    assert breaches([{"gpu_temp_c": 75.0, "gpu_mem_pct": 90.0, "ram_pct": 90.0}]) == []  # at the limit is fine
    assert {t.key for t in THRESHOLDS} == {"gpu_util_pct", "gpu_temp_c", "gpu_mem_pct", "ram_pct"}


class HotGpu:
    """Stands in for Nvml: an idle, hot GPU."""

    name = "fake"

    def sample(self) -> dict[str, float]:
        return {"gpu_util_pct": 10.0, "gpu_temp_c": 82.0, "gpu_mem_pct": 20.0}

    def close(self) -> None:
        pass


def test_each_threshold_is_warned_once(caplog):
    monitor = ResourceMonitor()
    monitor.gpu = HotGpu()
    with caplog.at_level(logging.WARNING, logger="bess_rl.experiment.monitor"):
        for _ in range(5):
            monitor.take_sample()
    assert sorted(monitor.warnings) == sorted(t.message for t in THRESHOLDS if t.key in ("gpu_util_pct", "gpu_temp_c"))
    assert len(caplog.records) == 2
    assert monitor.summary()["backend"] == "nvml" and monitor.summary()["warnings"] == monitor.warnings


def test_nvml_readings_are_converted(monkeypatch):
    """The NVML path against a stub pynvml (no GPU here): units, and a reading the board lacks is left out."""

    class NVMLError(Exception):
        pass

    def no_power(handle: str) -> float:
        raise NVMLError("Not Supported")

    stub = SimpleNamespace(
        NVMLError=NVMLError,
        NVML_TEMPERATURE_GPU=0,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda index: f"gpu{index}",
        nvmlDeviceGetName=lambda handle: b"Stub RTX",
        nvmlDeviceGetUtilizationRates=lambda handle: SimpleNamespace(gpu=87),
        nvmlDeviceGetTemperature=lambda handle, sensor: 66,
        nvmlDeviceGetPowerUsage=no_power,
        nvmlDeviceGetMemoryInfo=lambda handle: SimpleNamespace(used=2 * 2**30, total=8 * 2**30),
    )
    monkeypatch.setitem(sys.modules, "pynvml", stub)
    gpu = Nvml.open(0)
    assert gpu is not None and gpu.name == "Stub RTX"
    assert gpu.sample() == {"gpu_util_pct": 87.0, "gpu_temp_c": 66.0, "gpu_mem_used_mb": 2048.0,
                            "gpu_mem_total_mb": 8192.0, "gpu_mem_pct": 25.0}  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_driver_there_is_no_gpu():
    assert Nvml.open(0) is None
