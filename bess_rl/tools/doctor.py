"""``python -m bess_rl.doctor hardware=rtx4060 agent=sac``: the pre-training checklist of docs/presets.md, run for real.

Why: the checklist (torch build, CUDA, the RTX 4060 and its memory, no other GPU processes,
configs applied) was ticked by hand. Here each item is measured: AMP and CUDA graphs run a tiny
matmul, the config is composed with the same overrides as a run and resolved by
``hardware.resolve``, and the memory plan is checked against the profile's budget. Each line is
PASS, WARN, FAIL or SKIP with the value found; the exit code is 1 when any line FAILs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass

import psutil
import pynvml
import torch
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from bess_rl.agents import graphs, onednn_linear
from bess_rl.agents.capabilities import Capabilities, capabilities, cpu_compiler, missing_cpu_compiler
from bess_rl.experiment import hardware, planner
from bess_rl.experiment.build import algo_class, asked_device, make_env
from bess_rl.experiment.config import ConfigError, compose_config, validate
from bess_rl.experiment.errors import USER_ERRORS
from bess_rl.site.env import PvBessEvEnv
from bess_rl.site.params import SiteParams
from bess_rl.site.scenario import default_scenario

# docs/presets.md's thresholds: "GPU temp > 75 C = throttling".
MAX_TEMP_C = 75
# A 32x32 matmul in bf16 (8 mantissa bits) is off by ~0.3% of its norm; 2% means autocast is broken.
AUTOCAST_RTOL = 2e-2


def _asked(cfg: DictConfig) -> str:
    """The device the config asks for; the profile's own when ``agent.algo`` is unusable (the config line FAILs)."""
    try:
        return asked_device(cfg)
    except ConfigError:
        return str(cfg.hardware.device)


@dataclass(frozen=True)
class Check:
    status: str  # PASS, WARN, FAIL or SKIP
    name: str
    value: str
    detail: str = ""  # printed indented below the line (the memory table)

    def render(self) -> str:
        text = f"{self.status:<4}  {self.name:<11} {self.value}"
        return text + "".join(f"\n      {line}" for line in self.detail.splitlines())


@dataclass(frozen=True)
class Wants:
    """What the profile asks of the machine; a missing feature it asks for is worse than one it does not."""

    label: str
    cuda: bool
    strict: bool
    amp: str
    tf32: bool
    cuda_graphs: bool
    budget_gb: float | None
    compile: str = "none"

    @classmethod
    def of(cls, cfg: DictConfig | None) -> Wants:
        if cfg is None:
            return cls("the config (it did not compose)", False, False, "none", False, False, None)
        hw = cfg.hardware
        cuda = _asked(cfg) == "cuda"
        return cls(
            f"hardware={hw.name}",
            cuda,
            bool(hw.strict),
            hardware.amp_mode(hw),
            bool(hw.tf32),
            bool(hw.cuda_graphs),
            hw.memory_budget_gb,
            str(hw.compile),
        )


def check_torch() -> Check:
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    return Check("PASS", "torch", f"{torch.__version__} ({build})")


def check_cuda(wants: Wants) -> Check:
    if torch.cuda.is_available():
        return Check("PASS", "CUDA", f"available, CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s)")
    why = "torch is a CPU-only build" if torch.version.cuda is None else "no usable NVIDIA GPU or driver"
    if not wants.cuda:
        return Check("SKIP", "CUDA", f"not available ({why}); {wants.label} does not ask for it")
    if wants.strict:
        return Check("FAIL", "CUDA", f"not available ({why}); {wants.label} asks for CUDA and hardware.strict=true")
    return Check("WARN", "CUDA", f"not available ({why}); {wants.label} asks for CUDA: the run falls back to CPU")


def check_gpu(wants: Wants) -> Check:
    if not torch.cuda.is_available():
        return Check("SKIP", "GPU", "no CUDA device")
    props = torch.cuda.get_device_properties(0)
    total_gb = props.total_memory / planner.GB
    value = f"{props.name}, {total_gb:.2f} GB, compute capability {props.major}.{props.minor}"
    if wants.budget_gb is not None and wants.budget_gb > total_gb:
        return Check("WARN", "GPU", f"{value}: less than hardware.memory_budget_gb={wants.budget_gb:g}")
    return Check("PASS", "GPU", value)


def _nvml_handle() -> object:
    """NVML's handle of the GPU torch calls device 0 (by UUID: the orders can differ), else NVML's first."""
    if torch.cuda.is_available():
        uuid = str(torch.cuda.get_device_properties(0).uuid)
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
        except pynvml.NVMLError:
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(0)


def check_nvml() -> Check:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return Check("SKIP", "NVML", f"no NVIDIA driver ({exc})")
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        if pynvml.nvmlDeviceGetCount() == 0:
            return Check("SKIP", "NVML", f"driver {driver}, no GPU")
        handle = _nvml_handle()
        temp = pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
        others = [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid != os.getpid()]
    except pynvml.NVMLError as exc:
        return Check("WARN", "NVML", f"query failed: {exc}")
    finally:
        pynvml.nvmlShutdown()
    value = f"driver {driver}, {temp} C, {len(others)} other compute process(es)"
    if temp > MAX_TEMP_C:
        return Check("WARN", "NVML", f"{value}: above {MAX_TEMP_C} C the GPU throttles")
    if others:
        return Check("WARN", "NVML", f"{value} (pids {others}): they share the GPU's memory and time")
    return Check("PASS", "NVML", value)


def autocast_error(device: str, dtype: torch.dtype) -> float:
    """Relative error of a tiny autocast matmul against float32; raises if autocast did not use ``dtype``."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(32, 32, generator=gen).to(device) for _ in range(2))
    with torch.autocast(device_type=device, dtype=dtype):
        out = a @ b
    if out.dtype != dtype:
        raise RuntimeError(f"autocast produced {out.dtype}")
    ref = a @ b
    return float((out.float() - ref).norm() / ref.norm())


def check_autocast(dtype: torch.dtype, wants: Wants) -> Check:
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    on_gpu = torch.cuda.is_available()
    if not on_gpu and dtype == torch.float16:
        return Check("SKIP", name, "no CUDA (fp16 autocast is a GPU item)")
    device = "cuda" if on_gpu else "cpu"
    if dtype != torch.bfloat16:
        native, emulated = True, ""
    elif on_gpu:
        native, emulated = torch.cuda.is_bf16_supported(including_emulation=False), ", emulated (no native bf16)"
    else:  # FastSAC's CPU step multiplies in float32 where the CPU has no bf16 instructions: no gain there
        native = onednn_linear.native_bf16()
        emulated = ", emulated (no avx512_bf16/AMX): FastSAC's bf16 products run in float32 on this CPU"
    try:
        err = autocast_error(device, dtype)
        ok = native and err < AUTOCAST_RTOL
        value = f"autocast matmul on {device}: relative error {err:.1e}" + ("" if native else emulated)
    except RuntimeError as exc:
        ok, value = False, f"autocast on {device} failed: {exc}"
    if ok:
        return Check("PASS", name, value)
    # A broken AMP is fatal only on the GPU it was asked for; on a CPU bf16 is an opt-in speed setting.
    return Check("FAIL" if on_gpu and wants.cuda and wants.amp == name else "WARN", name, value)


def check_tf32(wants: Wants) -> Check:
    if not torch.cuda.is_available():
        return Check("SKIP", "TF32", "no CUDA")
    major, minor = torch.cuda.get_device_capability(0)
    if (major, minor) >= (8, 0):
        return Check("PASS", "TF32", f"supported (compute capability {major}.{minor} >= 8.0)")
    value = f"not supported (compute capability {major}.{minor} < 8.0)"
    return (
        Check("WARN", "TF32", f"{value}: hardware.tf32=true has no effect")
        if wants.tf32
        else Check("SKIP", "TF32", value)
    )


def cuda_graph_error() -> float:
    """Max |replay - eager| / max |eager| of a matmul captured in a CUDA graph, replayed on new input values."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    a, b = (torch.randn(64, 64, device="cuda", generator=gen) for _ in range(2))
    graphs.warm_up(lambda: a @ b)  # cuBLAS settles outside the capture
    graph, out = graphs.capture(lambda: a @ b)
    a.copy_(torch.randn(64, 64, device="cuda", generator=gen))
    graph.replay()
    torch.cuda.synchronize()
    eager = a @ b
    return float((out - eager).abs().max() / eager.abs().max())


def check_cuda_graph(wants: Wants) -> Check:
    if not torch.cuda.is_available():
        return Check("SKIP", "CUDA graph", "no CUDA")
    try:
        err = cuda_graph_error()
        ok, value = err < 1e-3, f"captured and replayed a matmul: relative difference to eager {err:.1e}"
    except RuntimeError as exc:
        ok, value = False, f"capture or replay failed: {exc}"
    if ok:
        return Check("PASS", "CUDA graph", value)
    return Check("FAIL" if wants.cuda_graphs else "WARN", "CUDA graph", value)


def check_compile(wants: Wants) -> Check:
    """``torch.compile`` on a CPU builds C++ kernels: the compiler it would use (``missing_cpu_compiler``)."""
    missing = missing_cpu_compiler()
    if missing is None:
        return Check("PASS", "compile", f"C++ compiler for torch.compile on a CPU: {cpu_compiler()}")
    value = f"no C++ compiler, {missing}: torch.compile cannot run on a CPU"
    return Check("FAIL" if wants.compile != "none" and not wants.cuda else "WARN", "compile", value)


def check_config(cfg: DictConfig) -> tuple[Check, hardware.Runtime | None]:
    """Validate and resolve the hardware as a run would; the resolver's warnings become this line."""
    hw_log = logging.getLogger(hardware.__name__)
    level = hw_log.level
    hw_log.setLevel(logging.ERROR)
    try:
        validate(cfg)
        rt = hardware.resolve(cfg.hardware, algo_class(cfg.agent.algo), cfg.agent.device)
    except USER_ERRORS as exc:  # every value a run refuses in one line is a FAIL line here, not a traceback
        return Check("FAIL", "config", str(exc)), None
    finally:
        hw_log.setLevel(level)
    chosen = f"agent={cfg.agent.name} preset={cfg.preset.name} hardware={cfg.hardware.name}"
    on_off = {True: "on", False: "off"}
    switches = f"device {rt.device}, amp {rt.amp}, CUDA graphs {on_off[rt.cuda_graphs]}, TF32 {on_off[rt.tf32]}"
    value = f"{chosen} -> {switches}, {rt.torch_threads} torch thread(s)"
    fell_back = rt.device != _asked(cfg)
    tip = bf16_tip(rt, capabilities(algo_class(cfg.agent.algo)))
    return Check("WARN" if fell_back else "PASS", "config", "; ".join([value, *rt.notes, *tip])), rt


def bf16_tip(rt: hardware.Runtime, caps: Capabilities) -> list[str]:
    """The faster setting a CPU with native bf16 offers an update that has one but was not asked for it:
    the ``cpu`` profile stays float32 and eager, which is ~3x slower for SAC on such a CPU."""
    if rt.device != "cpu" or rt.amp != "none" or "bf16" not in caps.amp or not onednn_linear.native_bf16():
        return []
    flags = ", ".join(f for f in hardware.cpu_features() if "bf16" in f) or "native bf16"
    return [
        f"tip: this CPU multiplies bf16 natively ({flags}): hardware.amp=bf16 hardware.compile=default "
        "hardware.torch_threads=2 trains this agent fastest (3.1x SB3 on a 2-core AMX Xeon, "
        "experiments/cpu_speed_2026-12-03b/)"
    ]


def check_memory(cfg: DictConfig, env: PvBessEvEnv, device: str, name: str = "memory", over: str = "FAIL") -> Check:
    """The planner's estimate for ``device`` against ``hardware.memory_budget_gb``, as a run checks it.

    ``over``: the status when over budget; WARN for the device the profile names when the run falls
    back to another, as the run itself is not refused then.
    """
    try:
        plan = planner.for_run(cfg, env.observation_space, env.action_space, device)
    except (ImportError, ValueError) as exc:  # an agent.algo that does not import: the config line FAILs on it
        return Check("SKIP", name, f"no estimate: {str(exc).splitlines()[0]}")
    budget = cfg.hardware.memory_budget_gb
    memory = "GPU memory" if plan.budgeted_where == "device" else "host RAM"
    try:
        planner.check(plan, budget, f"hardware={cfg.hardware.name}")
    except planner.MemoryBudgetError as exc:
        return Check(over, name, str(exc), plan.table())
    limit = "no budget set" if budget is None else f"budget {budget:g} GB"
    value = f"{planner.size(plan.budgeted)} of {memory} ({limit})"
    available = psutil.virtual_memory().available
    if plan.bytes_on("host") > available:
        free = planner.size(available)
        return Check("WARN", name, f"{value}; host part exceeds the {free} of RAM available now", plan.table())
    return Check("PASS", name, value, plan.table())


def spaces_env(cfg: DictConfig) -> PvBessEvEnv:
    """The env whose spaces the memory plan sizes: the embedded year (the spaces do not depend on the data) with
    the run's ``scenario.forecast_*``, which ``make_env`` refuses as a run's env does (a negative forecast_hours)."""
    return make_env(default_scenario(), SiteParams(), cfg.scenario, training=False)


def run_checks(overrides: list[str]) -> list[Check]:
    """Every checklist item for the config these overrides compose."""
    cfg: DictConfig | None = None
    try:
        cfg, unusable = compose_config(overrides), None
    except (HydraException, OmegaConfBaseException) as exc:
        unusable = Check("FAIL", "config", f"{type(exc).__name__}: {exc}".splitlines()[0])
    wants = Wants.of(cfg)
    checks = [
        check_torch(),
        check_cuda(wants),
        check_gpu(wants),
        check_nvml(),
        check_autocast(torch.bfloat16, wants),
        check_autocast(torch.float16, wants),
        check_tf32(wants),
        check_cuda_graph(wants),
        check_compile(wants),
    ]
    if cfg is None:
        return [*checks, unusable]
    try:
        env = spaces_env(cfg)
    except ConfigError as exc:
        return [*checks, Check("FAIL", "config", str(exc)), Check("SKIP", "memory", "no estimate: no env to size")]
    config, runtime = check_config(cfg)
    checks.append(config)
    asked = _asked(cfg)
    if runtime is not None:
        checks.append(check_memory(cfg, env, runtime.device))
    if runtime is None or runtime.device != asked:  # also show whether it fits the device the profile names
        checks.append(check_memory(cfg, env, asked, f"memory@{asked}", "FAIL" if runtime is None else "WARN"))
    return checks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The Hydra overrides to check; ``--help`` is the usage, not an override the config fails to parse."""
    p = argparse.ArgumentParser(
        prog="python -m bess_rl.doctor",
        description="The pre-training checklist of docs/presets.md, measured on this machine for the config a run "
        "would use: the torch build, CUDA, the GPU and its memory, NVML (driver, temperature, other GPU "
        "processes), bf16 and fp16 autocast, TF32, a CUDA graph capture, the C++ compiler torch.compile needs "
        "on a CPU, the config validated and its hardware resolved as a run does, and the memory plan against "
        "hardware.memory_budget_gb. Each line is PASS, WARN, FAIL or SKIP with the value found.",
        epilog="exit codes: 0 nothing FAILed (WARN and SKIP lines included), 1 some line FAILed, "
        "2 bad command-line arguments",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="Hydra overrides, as python -m bess_rl takes them (e.g. hardware=rtx4060 agent=sac preset=after): "
        "the checks are of the config that run would use",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Print the checklist for these Hydra overrides; 1 if any item FAILs, else 0."""
    checks = run_checks(parse_args(argv).overrides)
    for check in checks:
        print(check.render())
    failed = [c.name for c in checks if c.status == "FAIL"]
    print(f"{len(checks)} checks, " + (f"FAIL: {', '.join(failed)}" if failed else "nothing failed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
