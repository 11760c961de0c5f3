"""Every optimizer of the experiments, by name, behind one constructor signature.

``OPTIMIZERS[name].make(params_or_groups, lr=None, **kwargs)`` returns a
``torch.optim.Optimizer``; ``lr=None`` takes the spec's ``default_lr``. The
baselines are ``torch.optim``'s own SGD, RMSprop and Adam, subclassed only to
reject NaN or infinite gradients as the other optimizers do.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from slstm.optim.checkpoints import load_checkpoint
from slstm.optim.checks import step_inputs
from slstm.optim.config import LearnedOptimizerConfig
from slstm.optim.diagonal_newton import DiagonalNewton
from slstm.optim.learned import LearnedOptimizer


class FiniteGradientsMixin:
    """Make a ``torch.optim`` optimizer raise ``NonFiniteInputError`` on a NaN or
    infinite gradient before it changes any parameter."""

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        step_inputs(self.param_groups, hessian=False)
        super().step()
        return loss


class SGD(FiniteGradientsMixin, torch.optim.SGD):
    """``torch.optim.SGD`` that rejects NaN or infinite gradients."""


class RMSprop(FiniteGradientsMixin, torch.optim.RMSprop):
    """``torch.optim.RMSprop`` that rejects NaN or infinite gradients."""


class Adam(FiniteGradientsMixin, torch.optim.Adam):
    """``torch.optim.Adam`` that rejects NaN or infinite gradients."""


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one optimizer of the experiments.

    Attributes:
        name: registry key.
        make: ``make(params_or_groups, lr=None, **kwargs) -> torch.optim.Optimizer``;
            ``params_or_groups`` may also be an ``nn.Module``.
        default_lr: the learning rate ``make`` uses when ``lr`` is None; None for
            learned optimizers, whose step size was meta-trained.
        needs_curvature: whether each step reads ``p.hessian_diag`` (train with
            ``slstm.curvature.backward`` instead of ``loss.backward()``).
        curvature_method: the ``slstm.curvature`` method to compute it with
            (for a learned optimizer: the one its default checkpoint was
            meta-trained on); None when ``needs_curvature`` is False.
        learned: whether the optimizer runs meta-trained update networks.
        description: one line for listings.
    """

    name: str
    make: Callable[..., torch.optim.Optimizer]
    default_lr: float | None
    needs_curvature: bool
    learned: bool
    description: str
    curvature_method: str | None = None


def _parameters(params_or_groups):
    if isinstance(params_or_groups, nn.Module):
        return params_or_groups.parameters()
    return params_or_groups


def _baseline(cls, default_lr, **fixed):
    def make(params_or_groups, lr=None, **kwargs):
        lr = default_lr if lr is None else lr
        return cls(_parameters(params_or_groups), lr=lr, **{**fixed, **kwargs})

    return make


def _learned(name: str, preset: str, default_checkpoint: str, curvature_method=None):
    """Return ``make`` for the learned optimizer ``name`` of ``preset``'s inputs.

    ``curvature_method``, when given, is the diagonal-Hessian estimator that the
    networks must have been meta-trained with: a named variant such as
    ``slstm-hutchinson`` rejects networks trained on another estimator's ``h``.
    """

    def make(
        params_or_groups,
        lr=None,
        *,
        checkpoint=None,
        nets=None,
        config=None,
        map_location=None,
        **kwargs,
    ):
        if lr is not None:
            raise ValueError(
                f"the {name} optimizer has no learning rate to tune (its step "
                f"size is meta-trained), got lr={lr!r}; pass lr=None (to scale "
                "its updates, build it with slstm.optim.load(..., lr=multiplier))"
            )
        source, was = "the given networks", "were"
        if nets is None:
            if config is not None:
                raise ValueError(
                    "config was given without nets; pass both, or a checkpoint "
                    "that contains both"
                )
            loaded = load_checkpoint(
                checkpoint or default_checkpoint, map_location=map_location
            )
            nets, config = loaded.nets, loaded.config
            source, was = f"checkpoint {checkpoint or default_checkpoint}", "was"
        elif checkpoint is not None:
            raise ValueError("pass either nets (with config) or checkpoint, not both")
        config = config or LearnedOptimizerConfig.preset(preset)
        expected = LearnedOptimizerConfig.preset(preset)
        if config.inputs != expected.inputs:
            kind = "slstm" if "hessian" in config.inputs else "lstm"
            raise ValueError(
                f"the {name} optimizer reads {expected.inputs}, but {source} {was} "
                f"built for {config.inputs}; use the {kind} optimizer for it, or "
                f"a checkpoint meta-trained with --optimizer {preset}"
            )
        if curvature_method is not None and config.curvature_method != curvature_method:
            raise ValueError(
                f"the {name} optimizer reads the {curvature_method} diagonal "
                f"Hessian, but {source} {was} meta-trained on "
                f"{config.curvature_method!r}; use the slstm optimizer for it, or a "
                f"checkpoint meta-trained with --curvature-method {curvature_method}"
            )
        optimizer = LearnedOptimizer(params_or_groups, nets, config, **kwargs)
        if map_location is None:
            nets.to(optimizer.param_groups[0]["params"][0].device)
        return optimizer

    return make


OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec(
            "sgd",
            _baseline(SGD, 0.1),
            default_lr=0.1,
            needs_curvature=False,
            learned=False,
            description="stochastic gradient descent (torch.optim.SGD)",
        ),
        OptimizerSpec(
            "rmsprop",
            _baseline(RMSprop, 1e-3, alpha=0.9),
            default_lr=1e-3,
            needs_curvature=False,
            learned=False,
            description="RMSprop with smoothing constant 0.9 (torch.optim.RMSprop)",
        ),
        OptimizerSpec(
            "adam",
            _baseline(Adam, 1e-3, betas=(0.9, 0.99)),
            default_lr=1e-3,
            needs_curvature=False,
            learned=False,
            description="Adam with betas (0.9, 0.99) (torch.optim.Adam)",
        ),
        OptimizerSpec(
            "diagonal-newton",
            _baseline(DiagonalNewton, 1e-3),
            default_lr=1e-3,
            needs_curvature=True,
            learned=False,
            description="damped diagonal Newton step, g / (|h| + eps)",
            curvature_method="becker-lecun",
        ),
        OptimizerSpec(
            "lstm",
            _learned("lstm", "lstm", "lstm-fashion-mnist"),
            default_lr=None,
            needs_curvature=False,
            learned=True,
            description="learned coordinatewise LSTM fed the gradient",
        ),
        OptimizerSpec(
            "slstm",
            _learned("slstm", "slstm", "slstm-fashion-mnist"),
            default_lr=None,
            needs_curvature=True,
            learned=True,
            description="learned coordinatewise LSTM fed the gradient and the "
            "diagonal Hessian",
            curvature_method="becker-lecun",
        ),
        OptimizerSpec(
            "slstm-hutchinson",
            _learned(
                "slstm-hutchinson",
                "slstm",
                "slstm-hutchinson-fashion-mnist",
                curvature_method="hutchinson",
            ),
            default_lr=None,
            needs_curvature=True,
            learned=True,
            description="SLSTM meta-trained and run on Hutchinson's estimate of the "
            "diagonal Hessian (one Rademacher probe per step)",
            curvature_method="hutchinson",
        ),
    )
}


def make_optimizer(name: str, params_or_groups, lr=None, **kwargs):
    """Build the optimizer registered as ``name``; see ``OptimizerSpec.make``."""
    if name not in OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}"
        )
    return OPTIMIZERS[name].make(params_or_groups, lr, **kwargs)
