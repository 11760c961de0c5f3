"""Errors raised by the curvature engine."""


class UnsupportedModelError(ValueError):
    """A model, module option or loss that the one-pass engine cannot handle.

    The message names the module's path in the model (as in
    ``model.named_modules()``), states what is wrong and lists the alternatives.
    """
