"""PPO's and A2C's update with the rollout on the device and each minibatch step one CUDA graph replay.

Why: on a GPU, SB3's update copies every minibatch from host numpy, builds distribution objects and
reads five numbers back to the host per minibatch: a small MLP's step is then launch and sync bound.
Here the flattened rollout is copied to the device once per ``train``, a minibatch is a gather by a
device index tensor, the policy forward is SB3's ops called directly (``torch.distributions`` would
validate its arguments on the host), and the whole step (losses, backward, gradient clipping, a
capturable optimiser step) is captured once and replayed. Losses are read once per ``train``.
``StaticUpdate(model, capture=False)`` runs the same step eagerly: on the CPU, that is how the maths
is tested against SB3's own ``train``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from bess_rl.agents import gaussian, graphs
from bess_rl.agents.tensor_lr import TensorLr

WARMUP_STEPS = 3  # eager steps on a side stream before capture, as torch's CUDA graph docs advise
COLUMNS = ("observations", "actions", "values", "log_probs", "advantages", "returns")  # RolloutBuffer's own


class Batch(Protocol):
    """What a loss reads: SB3's ``RolloutBufferSamples`` fields, as device tensors."""

    observations: torch.Tensor
    actions: torch.Tensor
    old_values: torch.Tensor
    old_log_prob: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class _Rows:
    """One minibatch: the named columns of the gathered rows."""

    def __init__(self, rows: torch.Tensor, spans: dict[str, slice]) -> None:
        self.observations = rows[:, spans["observations"]]
        self.actions = rows[:, spans["actions"]]
        self.old_values = rows[:, spans["values"]].flatten()
        self.old_log_prob = rows[:, spans["log_probs"]].flatten()
        self.advantages = rows[:, spans["advantages"]].flatten()
        self.returns = rows[:, spans["returns"]].flatten()


def evaluate_actions(
    policy: torch.nn.Module, obs: torch.Tensor, actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ActorCriticPolicy.evaluate_actions`` for an MLP with a diagonal Gaussian, op for op, without
    ``torch.distributions`` objects (their argument checks sync with the host: not capturable)."""
    features = obs.flatten(1)
    mlp = policy.mlp_extractor
    latent_pi, latent_vf = mlp.policy_net(features), mlp.value_net(features)
    mean = policy.action_net(latent_pi)
    scale = torch.ones_like(mean) * policy.log_std.exp()
    log_prob = gaussian.log_prob(actions, mean, scale).sum(dim=1)
    values = policy.value_net(latent_vf)
    return values, log_prob, gaussian.entropy(scale).sum(dim=1)


Loss = Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]  # batch -> (loss, detached stats vector)


class StaticUpdate:
    """Runs an on-policy model's minibatch steps on a device copy of its rollout, optionally as a graph.

    ``loss`` is the algorithm's (``FastPPO``/``FastA2C`` supply SB3's); ``step`` returns its stats
    vector as a device tensor, so nothing is read back until the caller asks.
    """

    def __init__(self, model: OnPolicyAlgorithm, loss: Loss, capture: bool) -> None:
        self.model, self.loss, self.capture = model, loss, capture
        buf = model.rollout_buffer
        n_rows = buf.buffer_size * buf.n_envs
        widths = [int(np.prod(buf.obs_shape)), buf.action_dim, 1, 1, 1, 1]  # in COLUMNS' order
        bounds = np.cumsum([0, *widths])
        self.spans = {name: slice(int(a), int(b)) for name, a, b in zip(COLUMNS, bounds[:-1], bounds[1:], strict=True)}
        self.data = torch.empty((n_rows, int(bounds[-1])), dtype=torch.float32, device=model.device)
        self.params = list(model.policy.parameters())
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_rows = 0  # minibatch size the graph was captured for
        self.warm = 0
        self.lr: TensorLr | None = None
        if capture:
            if model.device.type != "cuda":
                raise ValueError(f"cuda_graphs=True needs a CUDA device, this model is on {model.device}")
            flags = {"capturable": True, "foreach": True}
            self.lr = TensorLr(model.lr_schedule(1), model.device, flags, on_load=self.drop_graph)
            model.policy.optimizer = self.lr.rebuild(model.policy.optimizer)

    def drop_graph(self) -> None:
        """The optimiser's state tensors were replaced (a load): capture again on the next step."""
        self.graph, self.warm = None, 0

    def load_rollout(self) -> int:
        """Flatten the rollout as ``RolloutBuffer.get`` does (in place, once) and copy it to the device."""
        buf = self.model.rollout_buffer
        if not buf.generator_ready:
            for name in COLUMNS:
                setattr(buf, name, buf.swap_and_flatten(getattr(buf, name)))
            buf.generator_ready = True
        host = np.concatenate([getattr(buf, name).reshape(len(self.data), -1) for name in COLUMNS], axis=1)
        self.data.copy_(torch.from_numpy(host.astype(np.float32, copy=False)))
        return len(self.data)

    def _step(self, idx: torch.Tensor) -> torch.Tensor:
        """One SB3 optimisation step on the rows at ``idx``."""
        model = self.model
        loss, stats = self.loss(_Rows(self.data[idx], self.spans))
        model.policy.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, model.max_grad_norm)
        model.policy.optimizer.step()
        return stats

    def step(self, idx: torch.Tensor) -> torch.Tensor:
        """The step for minibatch ``idx`` (a device index tensor): eager, warm-up, capture or replay."""
        if not self.capture or (self.graph is not None and len(idx) != self.graph_rows):
            return self._step(idx)  # e.g. a last, shorter minibatch: its own shape, run eagerly
        if self.graph is None:
            if self.warm < WARMUP_STEPS:
                self.warm += 1
                return graphs.warm_up(lambda: self._step(idx))
            self.idx, self.graph_rows = idx.clone(), len(idx)
            self.model.policy.optimizer.zero_grad(set_to_none=True)  # gradients are then the graph's own
            self.graph, self.out = graphs.capture(lambda: self._step(self.idx))
        else:
            self.idx.copy_(idx)
        self.graph.replay()
        return self.out.clone()

    def permutation(self, n_rows: int) -> torch.Tensor:
        """``RolloutBuffer.get``'s shuffle (numpy's global RNG, as SB3 draws it), on the device."""
        return torch.as_tensor(np.random.permutation(n_rows), device=self.model.device)
