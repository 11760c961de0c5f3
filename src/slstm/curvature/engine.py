"""Gradients and diagonal Hessians: the one-pass engine and the autograd methods."""

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from slstm.curvature.chain import Chain
from slstm.curvature.estimators import exact_diagonal, hutchinson_diagonal
from slstm.curvature.losses import check_loss, output_derivatives
from slstm.curvature.rules import BackwardContext, ModuleRule

#: The curvature methods, the default first.
METHODS = ("becker-lecun", "gauss-newton", "hutchinson", "exact")
ONE_PASS_METHODS = ("becker-lecun", "gauss-newton")

#: Largest parameter count ``method="exact"`` accepts by default. The exact
#: diagonal costs one Hessian-vector product per parameter.
EXACT_MAX_PARAMETERS = 20_000


@dataclass
class CurvatureResult:
    """Loss, output, gradients and diagonal Hessians from :func:`functional_backward`.

    Attributes:
        loss: 0-dim loss; keeps the autograd graph to the ``params`` passed in.
        output: model output, shape ``(N, ...)``; keeps the autograd graph too.
        grads: parameter name -> ``dL/dθ``, detached, shaped like the parameter.
        hessian_diags: parameter name -> diagonal estimate of ``d²L/dθ²``,
            detached, shaped like the parameter.
    """

    loss: Tensor
    output: Tensor
    grads: dict[str, Tensor]
    hessian_diags: dict[str, Tensor]


def backward(
    model: nn.Module,
    loss_fn: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    method: str = "becker-lecun",
    *,
    samples: int = 1,
    generator: torch.Generator | None = None,
    return_output: bool = False,
    max_exact_parameters: int = EXACT_MAX_PARAMETERS,
) -> Tensor | tuple[Tensor, Tensor]:
    """Compute the loss, every trainable parameter's gradient and a diagonal Hessian.

    Afterwards each parameter ``p`` with ``p.requires_grad`` has ``p.grad`` (added
    to an existing gradient, as ``loss.backward()`` does) and ``p.hessian_diag``
    (replaced), both shaped like ``p``, and ``p.hessian_method``, the ``method``
    that computed it (learned optimizers check it against their own).

    Args:
        model: for the one-pass methods, a chain of supported modules (see
            ``docs/curvature.md``); any differentiable model for the others.
        loss_fn: ``nn.CrossEntropyLoss`` or ``nn.MSELoss`` for the one-pass
            methods; any loss module for the others. Reduction ``"none"`` is
            treated as the sum of the per-element losses.
        inputs: model input, shape ``(N, ...)``.
        targets: what ``loss_fn(output, targets)`` expects.
        method: one of :data:`METHODS`. ``"becker-lecun"`` propagates
            ``H_x = Σ_j (dy_j/dx)² H_y,j + Σ_j g_y,j d²y_j/dx²`` backward in one
            pass. ``"gauss-newton"`` drops the second term, so its result is never
            negative. ``"hutchinson"`` averages ``v ∘ (H v)`` over ``samples``
            Rademacher vectors ``v``. ``"exact"`` computes the true diagonal with
            one Hessian-vector product per parameter.
        samples: number of Rademacher vectors for ``"hutchinson"``.
        generator: random source for Rademacher vectors and dropout masks.
        return_output: also return the detached model output.
        max_exact_parameters: ``"exact"`` raises above this parameter count.

    Returns:
        The detached 0-dim loss, or ``(loss, output)`` with ``return_output``.

    Raises:
        UnsupportedModelError: a module, option or loss the one-pass methods do
            not handle.
    """
    _check_method(method, samples)
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    loss, output, grads, diagonals = _run_method(
        model,
        named,
        False,
        loss_fn,
        inputs,
        targets,
        method,
        samples,
        generator,
        max_exact_parameters,
    )
    with torch.no_grad():
        for name, p in named.items():
            if p.grad is None:
                p.grad = grads[name]
            else:
                p.grad.add_(grads[name])
            p.hessian_diag = diagonals[name]
            p.hessian_method = method
    loss = loss.detach()
    return (loss, output.detach()) if return_output else loss


def functional_backward(
    model: nn.Module,
    params: dict[str, Tensor],
    loss_fn: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    method: str = "becker-lecun",
    *,
    samples: int = 1,
    generator: torch.Generator | None = None,
    max_exact_parameters: int = EXACT_MAX_PARAMETERS,
) -> CurvatureResult:
    """Like :func:`backward`, with the parameters given as tensors.

    The model runs once through ``torch.func.functional_call`` with ``params``
    (keyed as in ``model.named_parameters()``; parameters not given keep the
    module's own values and get no derivatives). ``p.grad`` is not touched.

    The returned loss and output keep the autograd graph to ``params``, which may
    be non-leaf tensors (for instance produced by a learned optimizer), so a
    meta-loss can be differentiated through them. The gradients and diagonals
    are detached.
    """
    _check_method(method, samples)
    known = {name for name, _ in model.named_parameters()}
    unknown = sorted(set(params) - known)
    if unknown:
        raise KeyError(
            f"params has names that are not parameters of the model: {unknown}; "
            f"use names from model.named_parameters(), e.g. {sorted(known)[:4]}"
        )
    loss, output, grads, diagonals = _run_method(
        model,
        params,
        True,
        loss_fn,
        inputs,
        targets,
        method,
        samples,
        generator,
        max_exact_parameters,
    )
    return CurvatureResult(loss, output, grads, diagonals)


def _check_method(method: str, samples: int) -> None:
    if method not in METHODS:
        raise ValueError(f"method={method!r} is invalid; use one of {METHODS}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples={samples!r} must be a positive integer")


def _run_method(
    model: nn.Module,
    params: dict[str, Tensor],
    functional: bool,
    loss_fn: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    method: str,
    samples: int,
    generator: torch.Generator | None,
    max_exact_parameters: int,
) -> tuple[Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Dispatch to the one-pass rules or to autograd, by ``method``.

    ``functional`` True means ``params`` replace the model's own parameters and
    the returned loss keeps its graph to them.
    """
    if method in ONE_PASS_METHODS:
        forward_params = params if functional else None
        return _one_pass(
            model,
            forward_params,
            loss_fn,
            inputs,
            targets,
            method,
            generator,
            set(params),
        )
    return _autograd_pass(
        model,
        params,
        functional,
        loss_fn,
        inputs,
        targets,
        method,
        samples,
        generator,
        max_exact_parameters,
    )


def _one_pass(
    model: nn.Module,
    params: dict[str, Tensor] | None,
    loss_fn: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    method: str,
    generator: torch.Generator | None,
    requested: set[str],
) -> tuple[Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Run one recorded forward pass, then the rules backward, last module first.

    With ``params`` None the forward runs under ``torch.no_grad()``: the rules
    save what they need, so no autograd graph is built.
    """
    check_loss(loss_fn)
    chain = Chain(model)
    grad_mode = torch.no_grad() if params is None else nullcontext()
    with chain.record(inputs, generator), grad_mode:
        output = (
            model(inputs)
            if params is None
            else functional_call(model, params, (inputs,))
        )
    rules = chain.verify(output, requested)
    with grad_mode:
        loss = loss_fn(output, targets)
        if loss.dim() > 0:
            loss = loss.sum()

    with torch.no_grad():
        g, h = output_derivatives(loss_fn, output.detach(), targets.detach())
        local_names = [_requested_local_names(rule, requested) for rule in rules]
        # Modules before the first one with requested parameters need no backward step.
        first = next((i for i, names in enumerate(local_names) if names), len(rules))
        grads, diagonals = {}, {}
        for index in range(len(rules) - 1, first - 1, -1):
            rule = rules[index]
            ctx = BackwardContext(
                need_input=index > first,
                second_order=method == "becker-lecun",
                params=local_names[index],
            )
            g, h, derivatives = rule.backward(g, h, ctx)
            _release(rule)
            for name, (grad, diagonal) in derivatives.items():
                full_name = f"{rule.path}.{name}" if rule.path else name
                grads[full_name] = grad
                diagonals[full_name] = diagonal
    return loss, output, grads, diagonals


def _requested_local_names(rule: ModuleRule, requested: set[str]) -> frozenset[str]:
    prefix = f"{rule.path}." if rule.path else ""
    return frozenset(
        name
        for name, _ in rule.module.named_parameters(recurse=False)
        if prefix + name in requested
    )


def _release(rule: ModuleRule) -> None:
    """Drop the tensors a rule saved, so memory falls as the pass moves backward."""
    for key, value in list(vars(rule).items()):
        if isinstance(value, Tensor):
            delattr(rule, key)


def _autograd_pass(
    model: nn.Module,
    params: dict[str, Tensor],
    functional: bool,
    loss_fn: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    method: str,
    samples: int,
    generator: torch.Generator | None,
    max_exact_parameters: int,
) -> tuple[Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Differentiate with autograd twice: Hutchinson probes or the exact diagonal."""
    names = list(params)
    if method == "exact":
        count = sum(params[name].numel() for name in names)
        if count > max_exact_parameters:
            raise ValueError(
                f"method='exact' needs one Hessian-vector product per parameter and "
                f"the model has {count} trainable parameters, more than "
                f"max_exact_parameters={max_exact_parameters}; use "
                "method='hutchinson' or 'becker-lecun', or raise "
                "max_exact_parameters"
            )
    # Tensors without a graph get a differentiable alias.
    tensors = {
        name: t if t.requires_grad else t.detach().requires_grad_()
        for name, t in params.items()
    }
    with torch.enable_grad():
        if functional:
            output = functional_call(model, tensors, (inputs,))
        else:
            output = model(inputs)
        loss = loss_fn(output, targets)
        if loss.dim() > 0:
            loss = loss.sum()
        inputs_list = [tensors[name] for name in names]
        grads = torch.autograd.grad(
            loss, inputs_list, create_graph=True, allow_unused=True
        )
        if method == "exact":
            diagonals = exact_diagonal(grads, inputs_list)
        else:
            diagonals = hutchinson_diagonal(grads, inputs_list, samples, generator)
    grads = [
        torch.zeros_like(t) if grad is None else grad.detach()
        for grad, t in zip(grads, inputs_list, strict=True)
    ]
    return (
        loss,
        output,
        dict(zip(names, grads, strict=True)),
        dict(zip(names, diagonals, strict=True)),
    )
