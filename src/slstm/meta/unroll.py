"""One truncation of the unrolled optimisation, and its meta-loss.

Notation: ``theta_t`` are the optimizee's parameters after ``t`` steps, ``L_t``
the loss of ``theta_t`` on minibatch ``B_t``, ``g_t = dL_t/dtheta_t`` and
``h_t`` the diagonal of the Hessian of ``L_t``. A step is

    theta_{t+1}, s_{t+1} = learned_update(nets, theta_t, g_t, h_t, s_t)

and a truncation of ``T`` steps starting at ``theta_0`` has the meta-loss

    M = sum_{t=1..T} w_t L_{t}(theta_t)       (or w_t log L_t with meta_loss="log")

back-propagated into the update networks only: ``g`` and ``h`` enter the update
networks as constants, so no derivative flows through them.

Because ``B_t`` is the same minibatch whose gradient feeds step ``t``, every
``L_t`` is evaluated exactly once: the forward pass at ``theta_t`` gives both
``L_t`` (for the meta-loss) and ``g_t, h_t`` (for the next step).

Two ways give the same meta-gradient:

- ``"surrogate"`` (default): the forward/backward pass runs on a detached copy
  of ``theta_t`` and the CNN graph is freed at once. The meta-loss term is the
  linear surrogate ``w_t <g_t, theta_t>`` (``w_t <g_t, theta_t> / L_t`` for the
  log loss), whose derivative with respect to ``theta_t`` is exactly
  ``w_t dL_t/dtheta_t`` because ``g_t`` *is* that derivative on ``B_t``. The
  graph kept across the truncation is then only the update networks' own, so
  memory and backward time do not include the CNN.
- ``"backprop"``: the meta-loss is built from the losses themselves, whose
  graphs reach ``theta_t``, and back-propagated through the CNN. Kept as the
  reference the surrogate is tested against.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

META_GRADIENTS = ("surrogate", "backprop")


# Mean cross-entropy of logits (B, K) against labels (B,), in nats. A module,
# because the curvature engine reads its type and reduction.
cross_entropy = nn.CrossEntropyLoss()

# Curvature methods that differentiate with autograd, so their inputs must
# require grad; the others run their own backward pass and need no graph.
_AUTOGRAD_METHODS = ("hutchinson", "exact")


@dataclass
class Evaluation:
    """Loss, gradient and diagonal Hessian of the optimizee at one point.

    ``loss`` keeps its graph to the parameters only in ``"backprop"`` mode;
    ``grads`` and ``hessian_diags`` are always detached. ``hessian_diags`` is
    None for an optimizer that reads only the gradient.
    """

    loss: torch.Tensor
    grads: list[torch.Tensor]
    hessian_diags: list[torch.Tensor] | None


@dataclass
class TruncationResult:
    """Result of one truncation.

    Attributes:
        meta_loss: the tensor to differentiate with respect to the update
            networks' weights (the surrogate in ``"surrogate"`` mode); None when
            no step was taken.
        meta_loss_value: ``sum_t w_t L_t`` (or ``sum_t w_t log L_t``) as a float.
        losses: ``L_1 .. L_T`` of the steps taken, as floats.
        diverged: the optimizee's loss became non-finite or exceeded the
            divergence threshold; the truncation stopped at that step.
    """

    meta_loss: torch.Tensor | None
    meta_loss_value: float
    losses: list[float] = field(default_factory=list)
    diverged: bool = False


class Optimizee:
    """A network being trained by the learned optimizer inside one episode.

    The network module serves only as a functional template: its parameters
    live in :attr:`params` (a list ordered as ``model.named_parameters()``) and
    change by :func:`slstm.optim.learned_update`, not in place.

    Args:
        model: the optimizee network (its parameters are the initial point).
        kinds: the parameter kind (``"conv"`` or ``"fc"``) of each trainable
            parameter, in ``named_parameters()`` order.
        batches: an endless iterator of ``(inputs, targets)`` minibatches.
        uses_hessian: compute ``h`` (SLSTM) or only ``g`` (LSTM).
        curvature_method: the :mod:`slstm.curvature` method for ``h``.
        generator: random source of stochastic curvature methods (Hutchinson).
        divergence_factor: loss above this factor times the initial loss, or a
            non-finite loss, ends the episode as diverged.
    """

    def __init__(
        self,
        model: nn.Module,
        kinds: Sequence[str],
        batches: Iterator,
        *,
        uses_hessian: bool,
        curvature_method: str = "becker-lecun",
        generator: torch.Generator | None = None,
        divergence_factor: float = 10.0,
    ):
        self.model = model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        if len(kinds) != len(self.names):
            raise ValueError(
                f"got {len(kinds)} parameter kinds for {len(self.names)} trainable "
                "parameters; pass one kind per parameter in named_parameters() order"
            )
        self.kinds = list(kinds)
        self.params: list[torch.Tensor] = [p.detach().clone() for _, p in named]
        self.state: list | None = None
        self.batches = batches
        self.uses_hessian = uses_hessian
        self.curvature_method = curvature_method
        self.generator = generator
        self.divergence_factor = divergence_factor
        self.step = 0
        self.diverged = False
        self.current: Evaluation | None = None
        self.initial_loss: float | None = None

    def start(self) -> float:
        """Evaluate the initial point (loss, g, h on the first minibatch)."""
        self.current = self.evaluate(self.params, keep_graph=False)
        self.initial_loss = float(self.current.loss)
        if not math.isfinite(self.initial_loss):
            self.diverged = True
        return self.initial_loss

    def evaluate(
        self, params: Sequence[torch.Tensor], *, keep_graph: bool
    ) -> Evaluation:
        """Draw the next minibatch and return loss, ``g`` and ``h`` at ``params``.

        With ``keep_graph`` the loss keeps its graph to ``params``; otherwise the
        pass runs on detached copies and only detached values come back.
        """
        inputs, targets = next(self.batches)
        if keep_graph:
            leaves = list(params)
        elif self.uses_hessian and self.curvature_method not in _AUTOGRAD_METHODS:
            leaves = [p.detach() for p in params]
        else:
            leaves = [p.detach().requires_grad_() for p in params]
        named = dict(zip(self.names, leaves, strict=True))
        if self.uses_hessian:
            from slstm.curvature import functional_backward

            result = functional_backward(
                self.model,
                named,
                cross_entropy,
                inputs,
                targets,
                method=self.curvature_method,
                generator=self.generator,
            )
            grads = [result.grads[n] for n in self.names]
            hessian_diags = [result.hessian_diags[n] for n in self.names]
            loss = result.loss
        else:
            output = functional_call(self.model, named, (inputs,))
            loss = cross_entropy(output, targets)
            grads = torch.autograd.grad(loss, leaves, retain_graph=keep_graph)
            grads = [g.detach() for g in grads]
            hessian_diags = None
        if not keep_graph:
            loss = loss.detach()
        return Evaluation(loss, grads, hessian_diags)

    def move_to(self, params: Sequence[torch.Tensor]) -> bool:
        """Take one step to ``params`` without a graph and evaluate it there.

        Used by runs that are not meta-trained (validation, baselines). Returns
        False when the new loss diverged.
        """
        self.params = list(params)
        with torch.enable_grad():
            self.current = self.evaluate(self.params, keep_graph=False)
        self.step += 1
        return not self.is_divergent(float(self.current.loss))

    def is_divergent(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        return loss > self.divergence_factor * max(self.initial_loss, 1e-8)

    def detach_(self) -> None:
        """Cut the graph: parameters and recurrent state become constants.

        Called after each truncation's meta-update so the next truncation's
        graph starts fresh and memory does not grow with the episode.
        """
        self.params = [p.detach() for p in self.params]
        self.state = _detach_nested(self.state)
        if self.current is not None:
            self.current = Evaluation(
                self.current.loss.detach(),
                self.current.grads,
                self.current.hessian_diags,
            )


def _detach_nested(value):
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, list | tuple):
        return type(value)(_detach_nested(v) for v in value)
    if isinstance(value, dict):
        return {k: _detach_nested(v) for k, v in value.items()}
    return value


def unroll_truncation(
    optimizee: Optimizee,
    nets: nn.ModuleDict,
    config,
    steps: int,
    weights: Sequence[float],
    *,
    meta_loss: str = "sum",
    meta_gradient: str = "surrogate",
    recompute_updates: bool = False,
) -> TruncationResult:
    """Run up to ``steps`` learned-optimizer steps and build their meta-loss.

    Args:
        optimizee: positioned at ``theta_0`` with its evaluation at ``theta_0``
            (call :meth:`Optimizee.start` first).
        nets, config: the update networks and their
            :class:`slstm.optim.LearnedOptimizerConfig`.
        steps: ``T``; fewer are taken if the optimizee diverges.
        weights: ``w_1 .. w_T``.
        meta_loss: ``"sum"`` or ``"log"`` (see the module docstring).
        meta_gradient: ``"surrogate"`` or ``"backprop"`` (see the module docstring).
        recompute_updates: keep only each step's parameters and LSTM state for
            the meta-backward and recompute the update networks' activations
            there (activation checkpointing). Cuts a truncation's memory several
            times at the cost of one more update-network forward pass per step.

    Returns:
        A :class:`TruncationResult`. The optimizee is left at ``theta_T`` with
        the graph still attached; call :meth:`Optimizee.detach_` after the
        meta-update.
    """
    if meta_gradient not in META_GRADIENTS:
        raise ValueError(
            f"meta_gradient must be one of {META_GRADIENTS}, got {meta_gradient!r}"
        )
    if meta_loss not in ("sum", "log"):
        raise ValueError(f"meta_loss must be 'sum' or 'log', got {meta_loss!r}")
    if len(weights) < steps:
        raise ValueError(f"got {len(weights)} loss weights for {steps} steps")
    if optimizee.current is None:
        raise RuntimeError("call Optimizee.start() before unrolling")

    keep_graph = meta_gradient == "backprop"
    total: torch.Tensor | None = None
    total_value = 0.0
    losses: list[float] = []
    diverged = False
    for t in range(steps):
        current = optimizee.current
        step = _recomputed_update if recompute_updates else _learned_update
        new_params, new_state = step(
            nets,
            config,
            optimizee.params,
            current.grads,
            current.hessian_diags,
            optimizee.kinds,
            optimizee.state,
        )
        evaluation = optimizee.evaluate(new_params, keep_graph=keep_graph)
        optimizee.params, optimizee.state = list(new_params), new_state
        optimizee.current = evaluation
        optimizee.step += 1

        loss_value = float(evaluation.loss.detach())
        losses.append(loss_value)
        weight = float(weights[t])
        if weight != 0.0:
            term = _meta_loss_term(
                evaluation, new_params, loss_value, meta_loss, keep_graph
            )
            total = weight * term if total is None else total + weight * term
            total_value += weight * (
                math.log(loss_value)
                if meta_loss == "log" and loss_value > 0
                else loss_value
            )
        if optimizee.is_divergent(loss_value):
            optimizee.diverged = diverged = True
            break
    if meta_loss == "log" and any(not loss > 0 for loss in losses):
        total_value = math.nan
    return TruncationResult(total, total_value, losses, diverged)


def _learned_update(nets, config, params, grads, hessian_diags, kinds, state):
    from slstm.optim import learned_update

    # Non-finite inputs need no check here: they make the loss or the meta-loss
    # non-finite, which ends the episode or skips the meta-update.
    return learned_update(
        nets, config, params, grads, hessian_diags, kinds, state, check_inputs=False
    )


def _recomputed_update(nets, config, params, grads, hessian_diags, kinds, state):
    """:func:`_learned_update` under activation checkpointing.

    The parameters and the state tensors go through
    :func:`torch.utils.checkpoint.checkpoint` as flat positional inputs, so
    autograd saves only them and reruns the update networks in the backward.
    """
    from torch.utils.checkpoint import checkpoint

    count = len(params)
    flat_state = [] if state is None else [t for entry in state for t in entry]

    def run(*tensors):
        step_params = list(tensors[:count])
        step_state = None
        if flat_state:
            step_state = [
                tuple(tensors[count + 2 * i : count + 2 * i + 2]) for i in range(count)
            ]
        new_params, new_state = _learned_update(
            nets, config, step_params, grads, hessian_diags, kinds, step_state
        )
        return (*new_params, *(t for entry in new_state for t in entry))

    outputs = checkpoint(run, *params, *flat_state, use_reentrant=False)
    new_params = list(outputs[:count])
    new_state = [
        tuple(outputs[count + 2 * i : count + 2 * i + 2]) for i in range(count)
    ]
    return new_params, new_state


def _meta_loss_term(evaluation, params, loss_value, meta_loss, keep_graph):
    if keep_graph:
        loss = evaluation.loss
        return torch.log(loss) if meta_loss == "log" else loss
    # Linear surrogate with the same derivative in theta: d<g, theta>/dtheta = g.
    term = sum((g * p).sum() for g, p in zip(evaluation.grads, params, strict=True))
    if meta_loss == "log":
        # d log L / dtheta = g / L.
        term = term / loss_value
    return term
