"""Input checks shared by the optimizers."""

import torch


class NonFiniteInputError(ValueError):
    """A gradient or diagonal Hessian given to an optimizer contains NaN or inf."""


MISSING_HESSIAN_HINT = (
    "compute the loss with slstm.curvature.backward(model, loss_fn, inputs, "
    "targets, method=optimizer.curvature_method for a learned optimizer), which "
    "sets p.grad and p.hessian_diag, instead of loss.backward()"
)


# Advice that ends a NonFiniteInputError, for optimizers with a learning rate
# and for learned optimizers, whose step size is the networks' output scale.
LEARNING_RATE_ADVICE = (
    "Lower the learning rate or check the loss and the data for overflow."
)
LEARNED_ADVICE = (
    "Check the loss and the data for overflow. A learned optimizer has no "
    "learning rate, but a smaller output scale takes smaller steps: choose one "
    "with `slstm calibrate CHECKPOINT --scales ...`."
)


def check_finite(
    tensor: torch.Tensor, what: str, advice: str = LEARNING_RATE_ADVICE
) -> None:
    """Raise ``NonFiniteInputError`` if ``tensor`` contains NaN or inf; the
    message ends with ``advice``."""
    if not bool(torch.isfinite(tensor).all()):
        nan = int(torch.isnan(tensor).sum())
        inf = int(torch.isinf(tensor).sum())
        raise NonFiniteInputError(
            f"{what} contains {nan} NaN and {inf} infinite values out of "
            f"{tensor.numel()}; no parameter was changed. {advice}"
        )


def step_inputs(param_groups, *, hessian: bool, advice: str = LEARNING_RATE_ADVICE):
    """Collect ``(group, p, name, hessian_diag)`` for every parameter with a gradient.

    Validates all of them before the caller changes any parameter, so a bad input
    leaves the model untouched. With ``hessian``, a missing ``p.hessian_diag``
    raises ``ValueError``. In groups whose ``"check_inputs"`` is true (the default),
    NaN or inf in a gradient or a used diagonal Hessian raises
    ``NonFiniteInputError``, whose message ends with ``advice``. The common
    all-finite case costs one synchronisation.
    """
    entries = []
    for group_index, group in enumerate(param_groups):
        for param_index, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError("sparse gradients are not supported")
            name = f"parameter {param_index} of group {group_index}"
            if "kind" in group:
                name += f" ({group['kind']})"
            if "param_names" in group:  # torch.optim stores the names of pairs here
                name += f" named {group['param_names'][param_index]!r}"
            hessian_diag = getattr(p, "hessian_diag", None) if hessian else None
            if hessian and hessian_diag is None:
                raise ValueError(
                    f"{name} has no p.hessian_diag, which this optimizer reads; "
                    f"{MISSING_HESSIAN_HINT}"
                )
            if hessian and hessian_diag.shape != p.shape:
                raise ValueError(
                    f"{name} has shape {tuple(p.shape)} but its hessian_diag has "
                    f"shape {tuple(hessian_diag.shape)}"
                )
            entries.append((group, p, name, hessian_diag))
    checked = [entry for entry in entries if entry[0].get("check_inputs", True)]
    if checked:
        tensors = [p.grad for _, p, _, _ in checked]
        tensors += [h for _, _, _, h in checked if h is not None]
        flags = torch.stack([torch.isfinite(t).all() for t in tensors])
        if not bool(flags.all()):
            for _, p, name, hessian_diag in checked:
                check_finite(p.grad, f"the gradient of {name}", advice)
                if hessian_diag is not None:
                    check_finite(
                        hessian_diag, f"the diagonal Hessian of {name}", advice
                    )
    return entries
