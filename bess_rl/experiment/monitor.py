"""Resource monitor for SB3 training: GPU (NVML) or CPU (psutil) samples, thresholds, a summary.

Why: the presets' expected speed-ups (docs/presets.md) rest on a busy, cool GPU with memory to spare; this measures that
in every run instead of trusting a table. A background thread samples every few seconds; the values
go to the SB3 logger (TensorBoard, progress.csv, under ``monitor/``), min/mean/max go to
metrics.json, and the note's thresholds (utilisation < 50 %, temperature > 75 C, memory > 90 %)
are warned about once each. Without a GPU (or when the agent trains on the CPU) it samples the
process's CPU % and resident memory and the machine's RAM instead.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psutil
from stable_baselines3.common.callbacks import BaseCallback

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Threshold:
    """``key``'s ``statistic`` over the samples so far is a problem when above (or below) ``limit``."""

    key: str
    limit: float
    above: bool
    statistic: str  # "mean": sustained (utilisation); "max": a single sample is enough
    message: str
    min_samples: int = 1


# The critical thresholds of docs/presets.md; RAM is the CPU run's OOM risk.
THRESHOLDS = (
    Threshold(
        "gpu_util_pct", 50.0, False, "mean", "GPU utilisation below 50 %: bottlenecked, raise batch_size or n_steps", 3
    ),
    Threshold("gpu_temp_c", 75.0, True, "max", "GPU above 75 C: throttling, reduce batch_size"),
    Threshold("gpu_mem_pct", 90.0, True, "max", "GPU memory above 90 %: OOM risk, reduce buffer_size or batch_size"),
    Threshold("ram_pct", 90.0, True, "max", "RAM above 90 %: OOM risk, reduce buffer_size"),
)


def mean(values: Sequence[float]) -> float:
    """The mean, kept within [min, max]: ``fmean([6.4] * 3)`` is 6.400000000000001, above the max."""
    return min(max(statistics.fmean(values), min(values)), max(values))


def breaches(samples: Sequence[Mapping[str, float]], thresholds: Sequence[Threshold] = THRESHOLDS) -> list[Threshold]:
    """The thresholds the samples cross (pure: the monitor's warnings and the tests use it)."""
    crossed = []
    for th in thresholds:
        values = [s[th.key] for s in samples if th.key in s]
        if len(values) < th.min_samples:
            continue
        stat = mean(values) if th.statistic == "mean" else (max(values) if th.above else min(values))
        if (stat > th.limit) if th.above else (stat < th.limit):
            crossed.append(th)
    return crossed


class Nvml:
    """One GPU through NVML (nvidia-ml-py's ``pynvml``); ``open`` is None where there is no driver."""

    def __init__(self, pynvml: Any, handle: Any) -> None:
        self.pynvml, self.handle = pynvml, handle
        self.closed = False
        name = pynvml.nvmlDeviceGetName(handle)
        self.name = name.decode() if isinstance(name, bytes) else str(name)

    @classmethod
    def open(cls, index: int) -> Nvml | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            return cls(pynvml, pynvml.nvmlDeviceGetHandleByIndex(index))
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, NVMLError_InvalidArgument, ...
            log.info("no NVML GPU %d (%s): monitoring CPU and RAM only", index, exc)
            return None

    def sample(self) -> dict[str, float]:
        """Each reading the GPU supports; one it does not (e.g. power on some boards) is left out."""
        nv, h = self.pynvml, self.handle
        readings = {
            "gpu_util_pct": lambda: float(nv.nvmlDeviceGetUtilizationRates(h).gpu),
            "gpu_temp_c": lambda: float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
            "gpu_power_w": lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
        }
        out = {}
        for key, read in readings.items():
            with contextlib.suppress(nv.NVMLError):
                out[key] = read()
        with contextlib.suppress(nv.NVMLError):
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            out |= {
                "gpu_mem_used_mb": mem.used / 2**20,
                "gpu_mem_total_mb": mem.total / 2**20,
                "gpu_mem_pct": 100.0 * mem.used / mem.total,
            }
        return out

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pynvml.nvmlShutdown()


class ResourceMonitor(BaseCallback):
    """Samples resources every ``interval_s`` seconds while SB3 trains; see the module docstring."""

    def __init__(self, interval_s: float = 5.0, gpu_index: int = 0, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.interval_s = interval_s
        self.gpu_index = gpu_index
        self.samples: list[dict[str, float]] = []
        self.warnings: list[str] = []
        self.gpu: Nvml | None = None
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._recorded = 0
        self._t0 = 0.0

    @property
    def backend(self) -> str:
        return "nvml" if self.gpu is not None else "psutil"

    def _on_training_start(self) -> None:
        if self.model.device.type == "cuda":
            self.gpu = Nvml.open(self.gpu_index)
        self._process.cpu_percent(None)  # the first call only starts psutil's CPU-time counter
        self._t0 = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="resource-monitor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.take_sample()

    def take_sample(self) -> dict[str, float]:
        """Read every source now, keep the sample and warn about newly crossed thresholds."""
        sample = {
            "time_s": time.monotonic() - self._t0,
            "cpu_pct": self._process.cpu_percent(None),
            "rss_mb": self._process.memory_info().rss / 2**20,
            "ram_pct": psutil.virtual_memory().percent,
        }
        if self.gpu is not None:
            sample |= self.gpu.sample()
        self.samples.append(sample)
        for th in breaches(self.samples):
            if th.message not in self.warnings:
                self.warnings.append(th.message)
                log.warning("%s", th.message)
        return sample

    def _on_step(self) -> bool:
        if len(self.samples) > self._recorded:  # record in the training thread: SB3's logger is not thread-safe
            self._record()
        return True

    def _record(self) -> None:
        self._recorded = len(self.samples)
        for key, value in self.samples[-1].items():
            if key != "time_s":
                self.logger.record(f"monitor/{key}", value)

    def _on_training_end(self) -> None:
        self._join()
        self.take_sample()  # a run shorter than interval_s still gets one sample
        self._record()
        self.stop()

    def _join(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def stop(self) -> None:
        """End sampling and release NVML (idempotent); call it in ``finally`` when ``learn`` may raise."""
        self._join()
        if self.gpu is not None:
            self.gpu.close()

    def summary(self) -> dict[str, Any]:
        """For metrics.json: what was sampled, min/mean/max of each reading, the warnings given."""
        keys = sorted({k for s in self.samples for k in s} - {"time_s"})
        stats = {}
        for key in keys:
            values = [s[key] for s in self.samples if key in s]
            stats[key] = {"min": min(values), "mean": mean(values), "max": max(values)}
        return {
            "backend": self.backend,
            "gpu": self.gpu.name if self.gpu is not None else None,
            "interval_s": self.interval_s,
            "samples": len(self.samples),
            "stats": stats,
            "warnings": list(self.warnings),
        }
