"""One training run: a network, an optimizer, a minibatch stream, and its curves."""

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from slstm.utils import probe_generator

from .records import RunRecord

EVAL_BATCH_SIZE = 1000


@dataclass
class EvalSets:
    """The fixed sets a run is scored on at each evaluation step.

    Attributes:
        loss_split: split whose mean loss is logged as ``train_loss`` (a fixed
            training subset, or the validation split while tuning).
        error_split: split whose error rate is logged as ``test_error`` (the
            test images or a fixed subset of them); None logs nan.
    """

    loss_split: object
    error_split: object = None


@dataclass
class OptimizerFactory:
    """How to build one optimizer for a fresh network.

    Attributes:
        name: registry name, for the record.
        make: ``make(model, lr) -> torch.optim.Optimizer``.
        lr: the learning rate (for learned optimizers: the output multiplier).
        curvature_method: ``slstm.curvature`` method when the optimizer reads
            ``p.hessian_diag``, None when it only reads ``p.grad``.
    """

    name: str
    make: object
    lr: float
    curvature_method: str | None = None


def evaluation_steps(steps, eval_every, extra=()):
    """Return the sorted evaluation steps: 0, every ``eval_every``, ``steps``, extra."""
    if eval_every < 1:
        raise ValueError(f"eval_every must be a positive int, got {eval_every}")
    chosen = set(range(0, steps + 1, eval_every)) | {steps} | set(extra)
    return sorted(s for s in chosen if 0 <= s <= steps)


@torch.no_grad()
def evaluate(model, split, device):
    """Return ``(mean cross-entropy, error fraction)`` of ``model`` on ``split``."""
    from slstm.data import evaluation_batches

    was_training = model.training
    model.eval()
    total_loss, errors, count = 0.0, 0, 0
    for inputs, targets in evaluation_batches(split, EVAL_BATCH_SIZE, device=device):
        logits = model(inputs)
        total_loss += F.cross_entropy(logits, targets, reduction="sum").item()
        errors += (logits.argmax(dim=1) != targets).sum().item()
        count += targets.numel()
    model.train(was_training)
    return total_loss / count, errors / count


def train_run(
    *,
    study,
    seed,
    model,
    initial_state,
    optimizer,
    batches,
    steps,
    eval_steps,
    eval_sets,
    device,
    lr_multiplier=1.0,
    on_step=None,
):
    """Train ``model`` from ``initial_state`` for ``steps`` updates and record it.

    The run stops at the first step with a non-finite minibatch loss, gradient,
    curvature or evaluation loss, and records that step in ``diverged_at``.

    Args:
        study: study name for the record.
        seed: seed the caller used for ``initial_state`` and ``batches``.
        model: the network; its parameters are overwritten with ``initial_state``.
        initial_state: ``state_dict`` of the shared initialisation.
        optimizer: an ``OptimizerFactory``.
        batches: iterator of ``(inputs, targets)`` minibatches on ``device``.
        steps: number of updates.
        eval_steps: steps at which to evaluate ``eval_sets`` (0 = before training).
        eval_sets: ``EvalSets``.
        device: ``torch.device`` of the model and batches.
        lr_multiplier: recorded with the run.
        on_step: optional ``on_step(step, loss)`` callback for progress display.

    Returns:
        ``RunRecord``.
    """
    model.load_state_dict(copy.deepcopy(initial_state))
    model.train()
    torch_optimizer = optimizer.make(model, optimizer.lr)
    record = RunRecord(
        study=study,
        optimizer=optimizer.name,
        seed=seed,
        lr=optimizer.lr,
        lr_multiplier=lr_multiplier,
    )
    eval_steps = set(eval_steps)
    # The curvature pass draws Hutchinson's probes and dropout masks from a
    # generator of the run's own seed, so a run gives the same numbers whatever
    # ran before it in the process.
    probes = probe_generator(seed, device)
    started = time.perf_counter()
    if 0 in eval_steps and not _evaluate_into(record, model, eval_sets, 0, device):
        record.wall_time_s = time.perf_counter() - started
        return record
    for step in range(1, steps + 1):
        inputs, targets = next(batches)
        step_started = time.perf_counter()
        loss, finite = _update(
            model, torch_optimizer, inputs, targets, optimizer.curvature_method, probes
        )
        _synchronize(device)
        record.steps.append(step)
        record.minibatch_loss.append(loss)
        record.step_time_s.append(time.perf_counter() - step_started)
        if on_step is not None:
            on_step(step, loss)
        if not finite:
            record.diverged_at = step
            break
        if step in eval_steps and not _evaluate_into(
            record, model, eval_sets, step, device
        ):
            break
    record.wall_time_s = time.perf_counter() - started
    return record


def _update(model, optimizer, inputs, targets, curvature_method, probes=None):
    """Run one forward, backward and update.

    Returns ``(loss, finite)``: the minibatch loss as a float, and False when the
    loss or the optimizer's inputs (gradient, curvature) were NaN or infinite,
    in which case no update was applied.
    """
    from slstm.optim import NonFiniteInputError

    optimizer.zero_grad(set_to_none=True)
    if curvature_method is None:
        loss = F.cross_entropy(model(inputs), targets)
        value = loss.item()
        if not math.isfinite(value):
            return value, False
        loss.backward()
    else:
        from slstm import curvature

        # One pass sets p.grad and p.hessian_diag for the optimizer to read.
        loss = curvature.backward(
            model,
            torch.nn.CrossEntropyLoss(),
            inputs,
            targets,
            method=curvature_method,
            generator=probes,
        )
        value = float(loss)
        if not math.isfinite(value):
            return value, False
    try:
        optimizer.step()
    except NonFiniteInputError:
        # Every optimizer of slstm.optim checks its inputs before it changes a
        # parameter, so the run ends here with the weights of the previous step.
        return value, False
    return value, True


def _evaluate_into(record, model, eval_sets, step, device):
    """Append one evaluation to ``record``; return False if it diverged."""
    train_loss, _ = evaluate(model, eval_sets.loss_split, device)
    test_error = math.nan
    if eval_sets.error_split is not None:
        _, test_error = evaluate(model, eval_sets.error_split, device)
    record.eval_steps.append(step)
    record.train_loss.append(train_loss)
    record.test_error.append(test_error)
    if not math.isfinite(train_loss):
        record.diverged_at = step
        return False
    return True


def _synchronize(device):
    # CUDA kernels run asynchronously; wait so the step time is the real one.
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
