"""SB3's SAC gradient step with hand-written backward passes, for one agent or a stacked population.

Why: on a 2-core CPU an update at batch 256, 256x256 is ~16 large matmuls plus ~250 small ops;
autograd and Python custom functions add ~40 % on top of the matmuls. For SB3's plain
``MlpPolicy`` (Linear + ReLU stacks, a flatten features extractor) the gradients are short enough
to write out: each layer is one matmul forward (ReLU fused) and at most two backward, the actor
runs once on ``obs`` and ``next_obs`` together, and the actor loss only back-propagates to the
critics' inputs. Same losses, same order, same noise draws as ``stable_baselines3.SAC.train``.

Every op is written over the last two dimensions, so the same ``sac_step`` runs one agent (2-D
weights: oneDNN matmuls, ``bess_rl.agents.onednn_linear``) and ``bess_rl.agents.population``'s N agents at once
(weights stacked to (N, out, in): batched matmuls). ``ManualUpdate`` binds it to a ``FastSAC``
whose parameters are the SB3 modules' own tensors, stepped by their own optimisers, so
``save``/``load`` are untouched. With bf16 products the two critics' bf16 copies are laid out stacked, so
each critic layer is one batched product (``SacNets.stack_critics``), and ``compile_mode`` compiles the
whole step as one graph (``ManualUpdate``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from torch import nn

from bess_rl.agents import onednn_linear
from bess_rl.agents.gaussian import LOG_SQRT_2PI

if TYPE_CHECKING:
    from bess_rl.agents.fast_sac import FastSAC

log = logging.getLogger(__name__)
_SQUASH_EPS = 1e-6  # SB3's SquashedDiagGaussianDistribution epsilon
_LOG_STD_MIN, _LOG_STD_MAX = -20, 2  # SB3's actor clamp
Layer = tuple[torch.Tensor, torch.Tensor]  # (weight (..., out, in), bias (..., out))
Stack = list[Layer]
Scalar = float | torch.Tensor  # a float, or one value per member shaped (N, 1, 1)
THIN_DIM = 4  # a compiled step writes products with a side this small as loops (``_thin``), not GEMM calls


def matmul_t(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """``x @ w^T (+ b)`` (then ReLU) over the last two dims. Stacked float32 members: one oneDNN product
    per member where oneDNN takes the shape (its kernels are ~1.9x torch's batched MKL ones on AMD CPUs),
    else one batched matmul; stacked bf16 ones: one batched matmul, which torch runs on oneDNN's bf16
    GEMM (4 x 256^3: 365 us against 478 us for four single products), or in float32 where a 2-D product
    would be (thin shapes, a CPU without native bf16)."""
    if x.shape[-1] == 1 and b is None and not relu:
        return x * _t(w)  # an outer product: one multiply per element, exactly what the GEMM computes
    if torch.compiler.is_compiling() and x.device.type == "cpu" and min(*x.shape[-2:], w.shape[-2]) <= THIN_DIM:
        return _thin(x, w, b, relu)
    if x.dim() == 2:
        return onednn_linear.matmul_t(x, w, b, relu)
    if x.device.type == "cpu" and not onednn_linear.takes(x[0], w[0]):
        x, w, b = onednn_linear.in_float32(x, w, b)  # as a 2-D product would: thin, or no native bf16
    if x.dtype != torch.bfloat16 and onednn_linear.takes(x[0], w[0]):
        return torch.stack(
            [onednn_linear.matmul_t(x[i], w[i], None if b is None else b[i], relu) for i in range(x.shape[0])]
        )
    wt = w.transpose(-1, -2)
    y = torch.bmm(x, wt) if b is None else torch.baddbmm(b.unsqueeze(-2), x, wt)
    return y.relu_() if relu else y


def _thin(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, relu: bool) -> torch.Tensor:
    """``matmul_t`` as a broadcast product and a sum in float32 (as eager runs thin bf16 products), for a
    compiled CPU step. Why: a GEMM library call costs 15-60 us on 2 threads at these shapes whatever its
    size (a critic's single output, the actor's two-wide heads and their gradients: 9 calls and ~15 % of an
    update's matmul time at the after preset), where inductor folds the product into the loops around it
    (measured: experiments/cpu_speed_2026-12-03/)."""
    y = (x.float().unsqueeze(-2) * w.float().unsqueeze(-3)).sum(-1)
    y = y if b is None else y + b.float().unsqueeze(-2)
    return y.relu_() if relu else y


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2)


def relu_stack(seq: nn.Sequential, last_relu: bool) -> list[nn.Linear] | None:
    """The Linear layers of ``seq`` when it is Linear, ReLU, ..., Linear (+ ReLU when ``last_relu``), else None."""
    modules = list(seq)
    linears, relus = modules[0::2], modules[1::2]
    if len(relus) != len(linears) - (not last_relu):
        return None
    if all(isinstance(m, nn.Linear) for m in linears) and all(isinstance(m, nn.ReLU) for m in relus):
        return linears
    return None


def supports(model: FastSAC) -> bool:
    """True when the model's networks are what ``sac_step`` differentiates by hand (SB3's ``MlpPolicy``)."""
    actor, critic = model.actor, model.critic
    plain = all(isinstance(m.features_extractor, FlattenExtractor) for m in (actor, critic, model.critic_target))
    return (
        plain
        and not actor.use_sde
        and len(actor.latent_pi) > 0
        and relu_stack(actor.latent_pi, last_relu=True) is not None
        and all(relu_stack(q, last_relu=False) is not None for q in critic.q_networks)
    )


@dataclass
class SacNets:
    """The tensors one SAC step reads, in each optimiser's parameter order (weight, bias per layer)."""

    latent: Stack  # actor trunk, ReLU after every layer
    mu: Layer
    log_std: Layer
    q: list[Stack]  # critics, no ReLU after the last layer
    q_target: list[Stack]

    @classmethod
    def of(cls, model: FastSAC) -> SacNets:
        def layers(linears: list[nn.Linear] | None) -> Stack:
            return [(m.weight, m.bias) for m in linears or []]

        actor = model.actor
        return cls(
            layers(relu_stack(actor.latent_pi, last_relu=True)),
            (actor.mu.weight, actor.mu.bias),
            (actor.log_std.weight, actor.log_std.bias),
            [layers(relu_stack(q, last_relu=False)) for q in model.critic.q_networks],
            [layers(relu_stack(q, last_relu=False)) for q in model.critic_target.q_networks],
        )

    def actor_params(self) -> list[torch.Tensor]:
        return [t for layer in [*self.latent, self.mu, self.log_std] for t in layer]

    def critic_params(self) -> list[torch.Tensor]:
        return [t for stack in self.q for layer in stack for t in layer]

    def target_params(self) -> list[torch.Tensor]:
        return [t for stack in self.q_target for layer in stack for t in layer]

    def params(self) -> list[torch.Tensor]:
        return [*self.actor_params(), *self.critic_params(), *self.target_params()]

    def stack_critics(self) -> tuple[Stack, Stack]:
        """The critics' and their targets' layers as one (C x members, out, in) / (C x members, out) tensor
        each, ``q`` and ``q_target`` rebound to views into them (a copy into those views lands in the
        stacks), so the twin critics run as one batched product per layer (the bf16 copies ``cast`` makes)."""

        def stacked(stacks: list[Stack]) -> tuple[Stack, list[Stack]]:
            full = [[torch.stack([s[i][j] for s in stacks]) for j in (0, 1)] for i in range(len(stacks[0]))]
            layers = [(w.flatten(0, w.dim() - 3), b.flatten(0, b.dim() - 2)) for w, b in full]
            return layers, [[(w[k], b[k]) for w, b in full] for k in range(len(stacks))]

        q, self.q = stacked(self.q)
        q_target, self.q_target = stacked(self.q_target)
        return q, q_target

    def cast(self, dtype: torch.dtype) -> SacNets:
        """Detached copies of every tensor in ``dtype``: the matmuls' weights, kept current by ``sac_step``."""

        def copy(stack: Stack) -> Stack:
            return [(w.detach().to(dtype, copy=True), b.detach().to(dtype, copy=True)) for w, b in stack]

        return SacNets(
            copy(self.latent),
            copy([self.mu])[0],
            copy([self.log_std])[0],
            [copy(stack) for stack in self.q],
            [copy(stack) for stack in self.q_target],
        )


@dataclass
class StepTerms:
    """What a step needs besides the networks: SB3's hyper-parameters and its three optimiser steps."""

    gamma: Scalar
    target_entropy: Scalar
    log_ent_coef: torch.Tensor | None  # None: fixed ``ent_coef``
    ent_coef: torch.Tensor  # the fixed coefficient (ignored when ``log_ent_coef`` is learned)
    step_ent_coef: Callable[[torch.Tensor], None]  # given d(ent_coef_loss)/d(log_ent_coef)
    step_critic: Callable[[list[torch.Tensor]], None]  # given gradients in ``critic_params`` order
    step_actor: Callable[[list[torch.Tensor]], None]  # given gradients in ``actor_params`` order
    # bf16 copies of the networks (``SacNets.cast``) the matmuls read, rewritten in place once per optimiser
    # step rather than cast at every use; None: the matmuls read the float32 networks themselves.
    low: SacNets | None = None
    # ``low``'s critics and targets stacked (``SacNets.stack_critics``); None: one critic after the other.
    stacked: tuple[Stack, Stack] | None = None


def forward(layers: Stack, x: torch.Tensor, last_relu: bool) -> list[torch.Tensor]:
    """Every layer's output (ReLU applied, in the weights' dtype) with ``x`` first: what ``backward`` needs."""
    outs = [x.to(layers[0][0].dtype)]
    for i, (w, b) in enumerate(layers):
        outs.append(matmul_t(outs[-1], w, b, last_relu or i < len(layers) - 1))
    return outs


def backward(
    layers: Stack, outs: list[torch.Tensor], grad: torch.Tensor, last_relu: bool, weights: bool
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """For ``grad`` w.r.t. the stack's output: with ``weights``, each layer's weight and bias gradients
    (parameter order, float32) and no input gradient; without, the gradient w.r.t. the stack's input only."""
    grad = grad.to(outs[0].dtype)
    grads: list[torch.Tensor] = []
    for i in range(len(layers) - 1, -1, -1):
        if last_relu or i < len(layers) - 1:
            grad = torch.ops.aten.threshold_backward(grad, outs[i + 1], 0)  # ReLU's own backward
        if weights:
            grads[:0] = [matmul_t(_t(grad), _t(outs[i])).float(), grad.sum(-2).float()]
        if i > 0 or not weights:
            grad = matmul_t(grad, _t(layers[i][0]))
    return (None if weights else grad.float()), grads


def squash(
    mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SB3's tanh-Gaussian sample (op for op as ``fast_sac.squashed_sample``; its ``ones_like(mean) * std``
    is ``std`` exactly): action, log-prob (..., B, 1), and for the backward pass std, ``u - mean`` and
    ``1 - action**2``."""
    std = log_std.exp()
    gaussian = mean + noise * std
    action = torch.tanh(gaussian)
    diff = gaussian - mean
    one_minus_sq = 1 - action**2
    log_prob = (-(diff**2) / (2 * std**2) - std.log() - LOG_SQRT_2PI).sum(dim=-1)
    log_prob = log_prob - torch.sum(torch.log(one_minus_sq + _SQUASH_EPS), dim=-1)
    return action, log_prob.unsqueeze(-1), std, diff, one_minus_sq


def _mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the batch rows and columns: a scalar for one agent, (N,) for a population."""
    return x.mean(dim=(-2, -1))


@torch.no_grad()  # the gradients are written out: autograd would only record (and keep) a graph nobody uses
def sac_step(
    nets: SacNets, batch: ReplayBufferSamples, noise: torch.Tensor, next_noise: torch.Tensor, terms: StepTerms
) -> torch.Tensor:
    """SB3's SAC step (entropy coefficient, critics, actor) on ``batch`` (..., B, dim) with the actor's two
    noise draws; returns the logged statistics stacked as (4, ...): critic, actor, entropy losses, coefficient."""
    obs, actions, next_obs = batch.observations, batch.actions, batch.next_observations
    n = obs.shape[-2]
    low = nets if terms.low is None else terms.low
    if low is not nets:
        torch._foreach_copy_(low.params(), nets.params())

    def critics(stacks: list[Stack], together: Stack | None, x: torch.Tensor) -> tuple[list, torch.Tensor]:
        """Each critic's layer outputs (a list per critic, or one list of (C x members, B, ...) stacks) and
        all critics' Q values as (..., B, C)."""
        if together is None:
            runs = [forward(stack, x, False) for stack in stacks]
            return runs, torch.cat([outs[-1].float() for outs in runs], dim=-1)
        outs = forward(together, x.expand(len(stacks), *x.shape).flatten(0, x.dim() - 2), False)
        return outs, outs[-1].float().reshape(len(stacks), *x.shape[:-1]).movedim(0, -1)

    def critic_backward(
        stacks: list[Stack], together: Stack | None, runs: list, grad: torch.Tensor, weights: bool
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """``backward`` of every critic for ``grad`` (..., B, C) w.r.t. their Q values: the input gradients
        summed over the critics, or the weight gradients in ``critic_params`` order."""
        if together is None:
            parts = [
                backward(stack, outs, grad[..., k : k + 1], False, weights)
                for k, (stack, outs) in enumerate(zip(stacks, runs, strict=True))
            ]
            if weights:
                return None, [g for _, grads in parts for g in grads]
            return functools.reduce(torch.add, [d for d, _ in parts]), []
        c, lead = len(stacks), grad.shape[:-2]  # lead: the members' dimension of a population, if any
        stacked_grad = grad.movedim(-1, 0).flatten(0, len(lead)).unsqueeze(-1)  # (C x members, B, 1)
        d_in, grads = backward(together, runs, stacked_grad, False, weights)
        if weights:
            return None, [g.reshape(c, *lead, *g.shape[1:])[k] for k in range(c) for g in grads]
        return d_in.reshape(c, *lead, *d_in.shape[1:]).sum(0), []

    q_stacks, target_stacks = terms.stacked or (None, None)

    def head(layer: Layer, latent: torch.Tensor) -> torch.Tensor:
        return matmul_t(latent, *layer).float()

    # The actor once on obs and next_obs (both with the weights from before this step's updates), and one
    # squash of both halves: every op is row by row.
    outs = forward(low.latent, torch.cat([obs, next_obs], dim=-2), True)
    mean, log_std_raw = head(low.mu, outs[-1]), head(low.log_std, outs[-1])
    log_std = torch.clamp(log_std_raw, _LOG_STD_MIN, _LOG_STD_MAX)
    both = squash(mean, log_std, torch.cat([noise, next_noise], dim=-2))
    pi, log_prob, std, diff, one_minus_sq = (t[..., :n, :] for t in both)
    next_actions, next_log_prob = both[0][..., n:, :], both[1][..., n:, :]

    if terms.log_ent_coef is not None:
        ent_coef = torch.exp(terms.log_ent_coef.detach())
        excess = (log_prob + terms.target_entropy).mean(dim=(-2, -1), keepdim=True)
        ent_coef_loss = -(terms.log_ent_coef.detach() * excess)
        terms.step_ent_coef(-excess.reshape(terms.log_ent_coef.shape))
    else:
        ent_coef = terms.ent_coef
        ent_coef_loss = torch.zeros_like(log_prob[..., :1, :])

    next_input = torch.cat([next_obs, next_actions], dim=-1)
    next_q = critics(low.q_target, target_stacks, next_input)[1]
    next_q, _ = torch.min(next_q, dim=-1, keepdim=True)
    next_q = next_q - ent_coef * next_log_prob
    target_q = batch.rewards + (1 - batch.dones) * terms.gamma * next_q

    # Critics: 0.5 * sum of MSEs; d/dq = (q - target) / n for each.
    q_input = torch.cat([obs, actions], dim=-1)
    q_runs, q = critics(low.q, q_stacks, q_input)
    err = q - target_q
    critic_loss = 0.5 * (err**2).mean(dim=-2).sum(dim=-1)
    terms.step_critic(critic_backward(low.q, q_stacks, q_runs, err / n, weights=True)[1])
    if low is not nets:
        torch._foreach_copy_(low.critic_params(), nets.critic_params())

    # Actor: mean(ent_coef * log_prob - min_q(obs, pi)) with the updated critics.
    pi_input = torch.cat([obs, pi], dim=-1)
    pi_runs, q_pi = critics(low.q, q_stacks, pi_input)
    min_q, which = torch.min(q_pi, dim=-1, keepdim=True)
    actor_loss = _mean(ent_coef * log_prob - min_q)
    chosen = (which == torch.arange(q_pi.shape[-1], device=q_pi.device)).to(q_pi.dtype) * (-1 / n)
    d_input = critic_backward(low.q, q_stacks, pi_runs, chosen, weights=False)[0]
    d_pi = d_input[..., obs.shape[-1] :]
    g = ent_coef / n  # d actor_loss / d log_prob, per row
    d_action = d_pi + g * 2 * pi / (one_minus_sq + _SQUASH_EPS)
    inv_var = 1 / std**2
    g_diff = g * diff * inv_var
    d_gauss = d_action * one_minus_sq - g_diff
    d_mean = d_gauss + g_diff
    d_std = d_gauss * noise + g * (diff**2 * inv_var / std - 1 / std)
    raw = log_std_raw[..., :n, :]
    d_log_std = d_std * std * ((raw >= _LOG_STD_MIN) & (raw <= _LOG_STD_MAX))
    latent = outs[-1][..., :n, :]
    head_grads: list[torch.Tensor] = []
    d_latent = None
    for (w, _), d_head in zip((low.mu, low.log_std), (d_mean, d_log_std), strict=True):
        low_head = d_head.to(w.dtype)
        head_grads += [matmul_t(_t(low_head), _t(latent)).float(), d_head.sum(-2)]
        d = matmul_t(low_head, _t(w))
        d_latent = d if d_latent is None else d_latent + d
    trunk = [o[..., :n, :] for o in outs]
    latent_grads = backward(low.latent, trunk, d_latent, True, weights=True)[1]
    terms.step_actor(latent_grads + head_grads)
    stats = (critic_loss, actor_loss, ent_coef_loss.reshape(critic_loss.shape), ent_coef.reshape(critic_loss.shape))
    return torch.stack(stats)


def stacked_critics(low: SacNets | None) -> tuple[Stack, Stack] | None:
    """bf16 twin critics as one batched product per layer (``SacNets.stack_critics``) where the CPU
    multiplies bf16 natively (measured in experiments/cpu_speed_2026-12-02d/); float32 products and
    emulated bf16 ones stay critic by critic."""
    return low.stack_critics() if low is not None and onednn_linear.native_bf16() else None


class ManualUpdate:
    """``sac_step`` on a ``FastSAC`` whose ``supports`` holds, stepping the model's own optimisers.

    With ``compile_mode`` other than "none" the step (optimiser steps and polyak update included) is one
    ``torch.compile`` graph: inductor fuses the ~1,300 small ops an update issues into a few C++ loops
    that use every torch thread, where eager runs each alone (measured at the after preset:
    ``experiments/cpu_speed_2026-12-02d/``). It is compiled once every optimiser has its direct step; the
    first update, which makes the optimisers' state, runs eagerly (after a resume too, so a compiled run's
    resume follows it to float32 rounding rather than bit for bit: inductor fuses sums differently).
    """

    def __init__(self, model: FastSAC) -> None:
        self.model = model
        self.nets = SacNets.of(model)
        self.actor_params = [p for group in model.actor.optimizer.param_groups for p in group["params"]]
        self.critic_params = [p for group in model.critic.optimizer.param_groups for p in group["params"]]
        same = [id(p) for p in self.nets.actor_params()] == [id(p) for p in self.actor_params] and [
            id(p) for p in self.nets.critic_params()
        ] == [id(p) for p in self.critic_params]
        if not same:
            raise ValueError("optimiser parameter order differs from the networks' layer order")
        self._direct: dict[int, DirectAdam | None] = {}
        self.low = self.nets.cast(torch.bfloat16) if model.amp == "bf16" else None
        self.stacked = stacked_critics(self.low)
        self.compile_mode = model.compile_mode
        self.compiled: Callable[..., torch.Tensor] | None = None  # made by the first step that can use it
        if self.compile_mode != "none" and not all(DirectAdam.covers(opt) for opt in self.model._optimizers()):
            raise ValueError(
                f"compile_mode={self.compile_mode!r} compiles Adam/AdamW with one fused group and no amsgrad: "
                "these optimisers would run uncompiled (use compile_mode='none')"
            )

    def step(
        self,
        batch: ReplayBufferSamples,
        noise: torch.Tensor,
        next_noise: torch.Tensor,
        then: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """One SAC step on ``batch`` and then ``then`` (the polyak update, when due): compiled where asked
        and every optimiser has a current direct step, else eagerly."""
        n = batch.observations.shape[0]
        flat = batch._replace(
            observations=batch.observations.reshape(n, -1), next_observations=batch.next_observations.reshape(n, -1)
        )
        if self.compile_mode == "none" or not self._direct_ready():
            return self._update(flat, noise, next_noise, then, traced=False)
        if self.compiled is None:
            log.info("compiling the SAC step (torch.compile, mode %s): ~20-60 s, once", self.compile_mode)
            self.compiled = onednn_linear.compile_step(self._update, self.compile_mode)
        return self.compiled(flat, noise, next_noise, then, traced=True)

    def _direct_ready(self) -> bool:
        """Every optimiser's direct step exists and still holds its state (``load_state_dict`` replaces it)."""
        for opt in self.model._optimizers():
            direct = self._direct.get(id(opt))
            if direct is None or not direct.current(opt):
                return False
        return True

    def _update(
        self,
        batch: ReplayBufferSamples,
        noise: torch.Tensor,
        next_noise: torch.Tensor,
        then: Callable[[], None] | None,
        traced: bool,
    ) -> torch.Tensor:
        """The step itself; ``traced``: the optimisers step through ``DirectAdam.in_graph`` (inside a graph)."""
        model = self.model
        learned = model.ent_coef_optimizer is not None

        def stepper(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> Callable[[list[torch.Tensor]], None]:
            if traced:
                return self._direct[id(opt)].in_graph
            return lambda grads: self.apply(opt, params, grads)

        terms = StepTerms(
            gamma=model.gamma,
            target_entropy=model.target_entropy,
            log_ent_coef=model.log_ent_coef if learned else None,
            ent_coef=model.ent_coef_tensor if not learned else torch.ones(()),
            step_ent_coef=(lambda grad: stepper(model.ent_coef_optimizer, [model.log_ent_coef])([grad])),
            step_critic=stepper(model.critic.optimizer, self.critic_params),
            step_actor=stepper(model.actor.optimizer, self.actor_params),
            low=self.low,
            stacked=self.stacked,
        )
        stats = sac_step(self.nets, batch, noise, next_noise, terms)
        if then is not None:
            then()
        return stats

    def apply(self, opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        step = self._direct.get(id(opt))
        if step is None or not step.current(opt):
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            opt.step()  # creates the state on the first step; DirectAdam takes over from the second
            self._direct[id(opt)] = DirectAdam.of(opt, params)
            self.compiled = None  # a graph compiled before read the old state
        else:
            step(grads)


class DirectAdam:
    """One fused ``Adam``/``AdamW`` step called straight on cached state lists: the same kernel and
    arguments ``opt.step()`` passes it, without its ~0.2 ms of Python per call (three calls an update)."""

    def __init__(self, opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
        state = [opt.state[p] for p in params]
        self.opt, self.group, self.params = opt, opt.param_groups[0], params
        self.exp_avgs = [s["exp_avg"] for s in state]
        self.exp_avg_sqs = [s["exp_avg_sq"] for s in state]
        self.steps = [s["step"] for s in state]
        self.fn = torch._fused_adamw_ if self.group.get("decoupled_weight_decay") else torch._fused_adam_

    @classmethod
    def of(cls, opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> DirectAdam | None:
        """The direct step for ``opt`` when it is what it covers (one fused group over ``params``, plain
        float tensors, state made), else None (``opt.step()`` stays)."""
        plain = cls.covers(opt) and opt.param_groups[0]["params"] == params
        plain = plain and all("exp_avg" in opt.state.get(p, {}) for p in params)
        return cls(opt, params) if plain else None

    @staticmethod
    def covers(opt: torch.optim.Optimizer) -> bool:
        """Whether ``opt`` is what a direct step covers: one fused group of plain float32 tensors."""
        group = opt.param_groups[0]
        plain = len(opt.param_groups) == 1 and group["fused"]
        plain = plain and not (group["amsgrad"] or group["capturable"] or group["differentiable"])
        return plain and all(p.dtype == torch.float32 for p in group["params"])

    def current(self, opt: torch.optim.Optimizer) -> bool:
        """Still ``opt``'s state (``load_state_dict`` replaces the tensors)."""
        return opt is self.opt and opt.state.get(self.params[0], {}).get("exp_avg") is self.exp_avgs[0]

    def __call__(self, grads: list[torch.Tensor]) -> None:
        group = self.group
        beta1, beta2 = group["betas"]
        torch._foreach_add_(self.steps, 1)
        self.fn(
            self.params, grads, self.exp_avgs, self.exp_avg_sqs, [], self.steps,
            lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
            amsgrad=False, maximize=group["maximize"], grad_scale=None, found_inf=None,
        )  # fmt: skip

    def in_graph(self, grads: list[torch.Tensor]) -> None:
        """The same step as ``plain_adam`` ops, for a compiled update."""
        group = self.group
        beta1, beta2 = group["betas"]
        plain_adam(
            self.params, grads, self.exp_avgs, self.exp_avg_sqs, self.steps, lr=group["lr"], beta1=beta1,
            beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
            decoupled=self.fn is torch._fused_adamw_, maximize=group["maximize"],
        )  # fmt: skip


@torch.no_grad()
def plain_adam(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    *,
    lr: Scalar,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    decoupled: bool = False,
    maximize: bool = False,
) -> None:
    """torch's fused Adam (``decoupled``: AdamW) step in foreach ops, for a compiled update: inductor fuses
    them, where the fused kernel is opaque to it (and, with a tensor learning rate, breaks the graph).
    ``steps`` are the parameters' step counters, which step together."""
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay and decoupled:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    elif weight_decay:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_add_(steps, 1)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    step = steps[0]
    denom = torch._foreach_div(torch._foreach_sqrt(exp_avg_sqs), (1 - beta2**step).sqrt())
    torch._foreach_add_(denom, eps)
    update = torch._foreach_div(exp_avgs, denom)
    torch._foreach_mul_(update, -lr / (1 - beta1**step))
    torch._foreach_add_(params, update)
