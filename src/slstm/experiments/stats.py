"""Statistics over seeds, shared by the summary and the plots."""

import math

import numpy as np


def mean_std(values):
    """Return ``(mean, std, n)`` of the finite ``values``.

    ``std`` is the sample standard deviation (divisor ``n - 1``), and 0 when
    ``n == 1``. With no finite value the result is ``(nan, nan, 0)``.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(np.mean(finite))
    std = float(np.std(finite, ddof=1)) if n > 1 else 0.0
    return mean, std, n


def aligned_curves(runs, attribute):
    """Stack one evaluation curve over seeds, up to the first divergence.

    Args:
        runs: ``RunRecord`` objects of one optimizer.
        attribute: ``"train_loss"`` or ``"test_error"``.

    Returns:
        ``(steps, values)``: steps is a list of the evaluation steps that every
        run reached with a finite value, and values an array of shape
        ``(len(runs), len(steps))``. The curves stop at the first step where
        any seed diverged, so a mean never hides a diverged seed.
    """
    if not runs:
        return [], np.zeros((0, 0))
    common = None
    for run in runs:
        finite_steps = []
        for step, value in zip(run.eval_steps, getattr(run, attribute), strict=True):
            if not math.isfinite(value):
                break
            finite_steps.append(step)
        common = (
            finite_steps if common is None else [s for s in common if s in finite_steps]
        )
    if runs and any(run.diverged for run in runs):
        first = min(run.diverged_at for run in runs if run.diverged)
        common = [s for s in common if s < first]
    values = np.array(
        [
            [getattr(run, attribute)[run.eval_steps.index(s)] for s in common]
            for run in runs
        ],
        dtype=float,
    ).reshape(len(runs), len(common))
    return common, values


def aligned_minibatch_losses(runs):
    """Stack the per-step minibatch losses over seeds, up to the first divergence.

    Returns ``(steps, values)`` with values of shape ``(len(runs), len(steps))``.
    """
    if not runs:
        return [], np.zeros((0, 0))
    length = min(_finite_prefix(run.minibatch_loss) for run in runs)
    steps = runs[0].steps[:length]
    values = np.array([run.minibatch_loss[:length] for run in runs], dtype=float)
    return steps, values.reshape(len(runs), length)


def steps_to_reach(runs, target):
    """Return the first evaluation step where the seed-mean training loss <= target.

    None when the mean curve never reaches ``target`` or ``target`` is not finite.
    The resolution is the evaluation interval, and a divergence ends the curve.
    """
    if target is None or not math.isfinite(target):
        return None
    steps, values = aligned_curves(runs, "train_loss")
    if not steps:
        return None
    means = values.mean(axis=0)
    for step, mean in zip(steps, means, strict=True):
        if mean <= target:
            return int(step)
    return None


def _finite_prefix(values):
    for index, value in enumerate(values):
        if not math.isfinite(value):
            return index
    return len(values)
