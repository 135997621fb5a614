"""Optimisers whose learning rate is one device tensor, for updates captured as CUDA graphs.

Why: a captured ``optimizer.step()`` replays the numbers it saw at capture, so a scheduled learning
rate must live in a device tensor the graph reads, and the optimiser must be capturable (step
counters on the device, no host sync). SB3's ``load``/``set_parameters`` restore plain floats and
CPU step counters through ``load_state_dict``: a post-hook puts ours back and tells the owner, whose
graphs captured the old state tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class TensorLr:
    """The shared learning-rate tensor and the optimiser flags of one model's optimisers."""

    def __init__(self, value: float, device: torch.device, flags: dict[str, bool], on_load: Callable[[], None]) -> None:
        self.lr = torch.tensor(value, dtype=torch.float32, device=device)
        self.flags = flags
        self.on_load = on_load

    def set(self, value: float) -> None:
        """A new scheduled rate, seen by eager steps and graph replays alike."""
        self.lr.fill_(value)

    def rebuild(self, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The same optimiser class and hyper-parameters, with our flags and the shared lr tensor."""
        groups = [{**group, "lr": self.lr, **self.flags} for group in opt.param_groups]
        new = type(opt)(groups, **{**opt.defaults, "lr": self.lr, **self.flags})
        new.register_load_state_dict_post_hook(self.conform)
        return new

    def conform(self, opt: torch.optim.Optimizer) -> None:
        """After ``load_state_dict``: our flags, the lr tensor and step counters on the device again."""
        for group in opt.param_groups:
            group.update(lr=self.lr, **self.flags)
            for p in group["params"]:
                state = opt.state.get(p)
                if state and "step" in state:
                    state["step"] = state["step"].to(dtype=torch.float32, device=p.device)
        self.on_load()
