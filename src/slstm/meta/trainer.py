"""Meta-training: episodes of truncated unrolls, validation, checkpoints, resume.

An episode trains a freshly initialised network from :class:`TaskSampler` for
``horizon`` steps with the learned optimizer, in truncations of ``T`` steps.
After each truncation the meta-gradient of that truncation's meta-loss (see
:mod:`slstm.meta.unroll`) is averaged over the ranks, clipped to
``clip_norm`` and applied by Adam. Then parameters and recurrent state are
detached, so memory does not grow along the episode.

Everything random in an episode is a function of ``(seed, rank, episode)``
(see :mod:`slstm.meta.tasks`), and the update networks, Adam's state and the
counters are saved at episode boundaries. Resuming from ``state/latest.pt``
therefore replays the remaining episodes exactly as an uninterrupted run would
(bit for bit on CPU with the same thread count).
"""

from __future__ import annotations

import copy
import datetime
import logging
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.func import functional_call

from slstm.meta.config import MetaTrainConfig
from slstm.meta.distributed import DistributedContext, setup_distributed
from slstm.meta.io import (
    atomic_torch_save,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    capture_rng_state,
    remove_stale_temporaries,
    restore_rng_state,
)
from slstm.meta.metrics import VALIDATION_FIELDS, MetricsLog
from slstm.meta.tasks import (
    Task,
    TaskData,
    TaskSampler,
    build_task_model,
    task_num_classes,
)
from slstm.meta.unroll import Optimizee, cross_entropy, unroll_truncation
from slstm.utils import probe_generator, resolve_device

logger = logging.getLogger("slstm.meta")

STATE_FORMAT = 1
STATE_FILE = Path("state") / "latest.pt"

# The folder in which --keep-validated saves each validation's update networks.
VALIDATED_DIR = "validated"
# The folder in which --snapshot-every saves the update networks.
SNAPSHOT_DIR = "snapshots"

# Options that may change between a run and its --resume without changing
# what the remaining episodes compute.
RESUMABLE_CHANGES = frozenset(
    {
        "episodes",
        "device",
        "num_threads",
        "out",
        "data_dir",
        "validate_every",
        "checkpoint_every",
        "keep_validated",
        "snapshot_every",
        "search",
        "search_low",
        "search_high",
        "search_episodes",
        "search_storage",
        "recompute_updates",
    }
)


@dataclass
class Counters:
    """Progress of a run; saved in every checkpoint."""

    episode: int = 0  # episodes finished on each rank
    meta_steps: int = 0  # meta-updates applied
    inner_steps: int = 0  # optimizee steps on this rank
    skipped: int = 0  # meta-updates skipped: no rank had a usable meta-gradient
    nonfinite: int = 0  # non-finite meta-losses or meta-gradients on this rank
    diverged: int = 0  # episodes on this rank whose optimizee diverged
    seconds: float = 0.0  # wall time, summed over resumptions


@dataclass
class EpisodeSummary:
    """Averages of one episode over the ranks."""

    meta_loss: float
    final_loss: float
    diverged: int
    nonfinite: int
    inner_steps: int
    seconds: float


@dataclass
class MetaTrainResult:
    """Outcome of a meta-training run: its files and counters.

    Attributes:
        out: the output folder.
        best_checkpoint: ``best.pt`` (lowest validation loss), or None when no
            validation ran.
        last_checkpoint: ``last.pt``, the update networks at the end.
        episodes: episodes finished on each rank.
        meta_steps: meta-updates applied.
        skipped: meta-updates skipped because no rank had a usable (finite)
            meta-gradient.
        nonfinite: non-finite meta-losses or meta-gradients on this rank.
        diverged: diverged episodes on this rank.
        best_validation_loss: the validation loss of ``best.pt`` (inf if none).
        final_validation_loss: the validation loss of the networks after the
            last episode (inf if they were not validated).
        meta_lr: the meta learning rate used (the search's choice with --search).
        search_trials: ``(meta_lr, validation loss)`` of each search trial.
    """

    out: Path
    best_checkpoint: Path | None
    last_checkpoint: Path
    episodes: int
    meta_steps: int
    skipped: int
    nonfinite: int
    diverged: int
    best_validation_loss: float
    meta_lr: float
    final_validation_loss: float = math.inf
    search_trials: list = field(default_factory=list)


class MetaTrainer:
    """Owns the update networks, the meta-optimizer and the run's files.

    Args:
        config: the run's configuration.
        context: the distributed context (default: a single process).
        device: where the optimizee and the update networks live (default:
            ``config.device`` resolved).
        progress: show a progress bar (rank 0 only).
        data: an already loaded :class:`slstm.data.DataSplits` to reuse.
    """

    def __init__(
        self,
        config: MetaTrainConfig,
        *,
        context: DistributedContext | None = None,
        device: torch.device | None = None,
        progress: bool = True,
        data=None,
    ):
        from slstm.optim import create_update_nets

        self.config = config
        self.device = device if device is not None else resolve_device(config.device)
        self.context = context or DistributedContext(device=self.device)
        self.progress = progress
        self.out = Path(config.out)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)

        if data is None:
            data = load_task_data(config, self.device)
        self.data = data if isinstance(data, TaskData) else TaskData(data)
        if config.validate_every and self.data.splits.validation is None:
            raise ValueError(
                "validation is enabled (validate_every="
                f"{config.validate_every}) but validation={config.validation!r} "
                "carves no validation split; set validation to a positive count or "
                "fraction, or validate_every to 0"
            )
        self._check_split_sizes()
        self.sampler = TaskSampler(
            config.seed,
            [name.strip() for name in config.net.split(",")],
            config.net_sizes,
            num_classes=self.data.num_classes,
            task_classes=config.task_classes,
            validation_seed=config.validation_seed,
        )
        # Build one task's network now, so a bad --net or --net-sizes fails
        # before any file is written.
        first_task = self.sampler.sample(0, self.context.rank)
        build_task_model(
            first_task,
            self.data.input_shape,
            task_num_classes(first_task, self.data),
            "cpu",
        )
        self.optimizer_config = learned_optimizer_config(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.nets = create_update_nets(self.optimizer_config).to(self.device)
        # The path, configuration and provenance of the --init checkpoint, kept
        # in every file this run writes (and in its state, so that --resume
        # never reads that file again) to trace chains of continued runs.
        self.init_provenance: dict | None = None
        self.meta_params = [p for p in self.nets.parameters() if p.requires_grad]
        self.meta_optimizer = torch.optim.Adam(self.meta_params, lr=config.meta_lr)
        self.counters = Counters()
        self.best_validation_loss = math.inf
        self.best_episode: int | None = None
        self.last_validation: tuple[float, float] | None = None
        # (loss, error) per validation horizon of the last validation.
        self.last_validation_by_horizon: list[tuple[float, float]] = []
        self.validated_episode = -1
        # Totals over the ranks, as rank 0 logs them.
        self._totals = {"diverged": 0, "nonfinite": 0, "inner_steps": 0}
        self.metrics = MetricsLog(self.out / "metrics.csv")
        self.validation_log = MetricsLog(self.out / "validation.csv", VALIDATION_FIELDS)
        self._kinds_cache: dict = {}
        self._written_episode = -1
        # Set by SIGTERM or Ctrl-C in a distributed run; the ranks agree on it
        # at the next meta-gradient all-reduce and stop together.
        self._stop_requested = False

    # ----------------------------------------------------------------- episodes

    def _check_split_sizes(self) -> None:
        """Reject a split too small for one minibatch, in the options' words."""
        batch_size = self.config.batch_size
        splits = [("training", self.data.splits.train, "")]
        if self.config.validate_every:
            splits.append(
                ("validation", self.data.splits.validation, " or a larger --validation")
            )
        for name, split, remedy in splits:
            if len(split) < batch_size:
                raise ValueError(
                    f"the {name} split has {len(split)} examples, fewer than one "
                    f"minibatch of --batch-size {batch_size}; pass a smaller "
                    f"--batch-size{remedy}"
                )

    def start_episode(self, episode: int, rank: int | None = None) -> Optimizee:
        """Build and evaluate the optimizee of ``episode`` on ``rank``."""
        rank = self.context.rank if rank is None else rank
        return self.make_optimizee(self.sampler.sample(episode, rank), "train")

    def make_optimizee(self, task: Task, split_name: str) -> Optimizee:
        """Build the task's network and minibatch stream, positioned at step 0."""
        from slstm.data import batch_iterator

        num_classes = task_num_classes(task, self.data)
        model = build_task_model(task, self.data.input_shape, num_classes, self.device)
        kinds = self._parameter_kinds(task, model)
        split = self.data.split(split_name, task.classes)
        split_device = getattr(split, "device", torch.device("cpu"))
        batch_generator = torch.Generator(device=split_device).manual_seed(
            task.data_seed
        )
        batches = batch_iterator(
            split, self.config.batch_size, generator=batch_generator, device=self.device
        )
        probes = probe_generator(task.data_seed, self.device)
        optimizee = Optimizee(
            model,
            kinds,
            batches,
            uses_hessian=self.config.uses_hessian,
            curvature_method=self.config.curvature_method,
            generator=probes,
            divergence_factor=self.config.divergence_factor,
        )
        optimizee.start()
        return optimizee

    def _parameter_kinds(self, task: Task, model) -> list[str]:
        from slstm.optim import parameter_kinds

        key = (task.net, tuple(sorted(task.net_sizes.items())))
        if key not in self._kinds_cache:
            by_name = parameter_kinds(model)
            self._kinds_cache[key] = [
                by_name[name] for name, p in model.named_parameters() if p.requires_grad
            ]
        return self._kinds_cache[key]

    def truncation_gradients(self, optimizee: Optimizee, steps: int):
        """Unroll one truncation and return ``(meta_grads, usable, result)``.

        ``usable`` is False (and the gradients zeros) when the meta-loss or the
        meta-gradient is not finite, or when no step carried weight.
        """
        config = self.config
        result = unroll_truncation(
            optimizee,
            self.nets,
            self.optimizer_config,
            steps,
            config.step_weights(steps),
            meta_loss=config.meta_loss,
            recompute_updates=config.recompute_updates,
        )
        zeros = [torch.zeros_like(p) for p in self.meta_params]
        if result.meta_loss is None:
            return zeros, False, result
        if not math.isfinite(result.meta_loss_value):
            self._report_nonfinite("meta-loss", result.meta_loss_value)
            return zeros, False, result
        grads = torch.autograd.grad(
            result.meta_loss, self.meta_params, allow_unused=True
        )
        grads = [
            torch.zeros_like(p) if g is None else g
            for g, p in zip(grads, self.meta_params, strict=True)
        ]
        if not bool(torch.stack([g.isfinite().all() for g in grads]).all()):
            self._report_nonfinite("meta-gradient", math.nan)
            return zeros, False, result
        return grads, True, result

    def _report_nonfinite(self, what: str, value: float) -> None:
        self.counters.nonfinite += 1
        logger.warning(
            "rank %d episode %d: non-finite %s (%s); meta-update skipped "
            "(%d non-finite so far)",
            self.context.rank,
            self.counters.episode + 1,
            what,
            value,
            self.counters.nonfinite,
        )

    def apply_meta_gradients(self, grads: list[torch.Tensor], usable: bool) -> bool:
        """Average over ranks, clip and take one Adam step; False if skipped.

        Raises ``_CoordinatedStop`` on every rank, before the step, when any
        rank was asked to stop.
        """
        averaged, contributors, stop = self.context.average_gradients(
            grads, usable, self._stop_requested
        )
        if stop:
            raise _CoordinatedStop("a rank received SIGTERM or Ctrl-C")
        if contributors == 0:
            self.counters.skipped += 1
            return False
        for param, grad in zip(self.meta_params, averaged, strict=True):
            param.grad = grad
        torch.nn.utils.clip_grad_norm_(self.meta_params, self.config.clip_norm)
        self.meta_optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)
        self.counters.meta_steps += 1
        return True

    def train_episode(self, episode: int) -> EpisodeSummary:
        """Run one episode on this rank with one meta-update per truncation."""
        config = self.config
        started = time.perf_counter()
        nonfinite_before = self.counters.nonfinite
        optimizee = self.start_episode(episode)
        meta_losses = []
        horizon = config.horizon_at(episode)
        for index in range(config.truncations_at(episode)):
            steps = min(config.unroll, horizon - index * config.unroll)
            if optimizee.diverged:
                if not self.context.active:
                    break
                # Other ranks still unroll: take part in the collective with nothing.
                self.apply_meta_gradients(
                    [torch.zeros_like(p) for p in self.meta_params], False
                )
                continue
            grads, usable, result = self.truncation_gradients(optimizee, steps)
            self.apply_meta_gradients(grads, usable)
            optimizee.detach_()
            self.counters.inner_steps += len(result.losses)
            meta_losses.append(result.meta_loss_value)
        diverged = int(optimizee.diverged)
        self.counters.diverged += diverged
        final_loss = float(optimizee.current.loss) if not diverged else math.inf
        mean_meta_loss = (
            sum(meta_losses) / len(meta_losses) if meta_losses else math.nan
        )
        seconds = time.perf_counter() - started
        return EpisodeSummary(
            meta_loss=mean_meta_loss,
            final_loss=final_loss,
            diverged=diverged,
            nonfinite=self.counters.nonfinite - nonfinite_before,
            inner_steps=optimizee.step,
            seconds=seconds,
        )

    # --------------------------------------------------------------- validation

    @torch.no_grad()
    def _frozen_run(self, optimizee: Optimizee, steps: int) -> bool:
        from slstm.optim import learned_update

        for _ in range(steps):
            if self._stop_requested:
                raise _ValidationAbandoned
            current = optimizee.current
            params, optimizee.state = learned_update(
                self.nets,
                self.optimizer_config,
                optimizee.params,
                current.grads,
                current.hessian_diags,
                optimizee.kinds,
                optimizee.state,
                check_inputs=False,
            )
            if not optimizee.move_to(params):
                return False
        return True

    def validate(self) -> tuple[float, float]:
        """Train fresh networks on held-out data with the frozen update networks.

        Returns the mean over ``validation_tasks`` networks of the loss and the
        classification error of their final parameters on the whole validation
        split. A run that diverges counts as loss ``inf`` and error 1. With
        several validation horizons, each network is scored after each of
        them within one run, and both numbers are averaged over the horizons.
        """
        scores = self.validate_at(self.config.validation_horizons)
        self.last_validation_by_horizon = scores
        loss = sum(loss for loss, _ in scores) / len(scores)
        error = sum(error for _, error in scores) / len(scores)
        return loss, error

    def validate_at(self, horizons, make_runner=None) -> list[tuple[float, float]]:
        """Like :meth:`validate`, scoring each network after each of ``horizons``
        steps (increasing) of one run; returns one ``(loss, error)`` per horizon.

        A run that diverges counts as loss ``inf`` and error 1 from then on.
        ``make_runner(optimizee)`` returns ``run(steps) -> alive`` that trains
        one network; the default trains it with the frozen update networks.
        """
        if make_runner is None:

            def make_runner(optimizee):
                return lambda steps: self._frozen_run(optimizee, steps)

        horizons = check_horizons(horizons)
        losses = [[] for _ in horizons]
        errors = [[] for _ in horizons]
        for index in range(self.config.validation_tasks):
            task = self.sampler.validation_task(index)
            optimizee = self.make_optimizee(task, "validation")
            split = self.data.split("validation", task.classes)
            run = make_runner(optimizee)
            alive = not optimizee.diverged
            done = 0
            for slot, horizon in enumerate(horizons):
                alive = alive and run(horizon - done)
                done = horizon
                if not alive:
                    losses[slot].append(math.inf)
                    errors[slot].append(1.0)
                    continue
                loss, error = evaluate_split(optimizee, split, self.device)
                losses[slot].append(loss)
                errors[slot].append(error)
        return [
            (sum(slot_losses) / len(slot_losses), sum(slot_errors) / len(slot_errors))
            for slot_losses, slot_errors in zip(losses, errors, strict=True)
        ]

    # ----------------------------------------------------------------- the run

    def run(self, *, resume: bool = False) -> MetaTrainResult:
        """Meta-train until ``config.episodes`` episodes are done on each rank."""
        config = self.config
        if resume:
            self._resume()
        else:
            if config.init:
                self.start_from_init()
            if self.context.is_main:
                self._prepare_new_output()
        self.context.barrier()

        start_episode = self.counters.episode
        if resume and start_episode >= config.episodes and self.context.is_main:
            logger.warning(
                "the run in %s has done %d episodes, already at least --episodes "
                "%d, so no episode runs; pass a larger --episodes to continue it",
                self.out,
                start_episode,
                config.episodes,
            )
        run_started = time.perf_counter()
        seconds_before = self.counters.seconds
        boundary = self._snapshot()
        bar = self._progress_bar(start_episode)
        previous_handlers = self._install_stop_handlers()
        try:
            if config.init and config.validate_every and self.validated_episode < 0:
                # Score the weights the run starts from, so that best.pt is
                # never worse on validation than the --init checkpoint.
                self._run_validation(bar)
                boundary = self._snapshot()
            elif self._validation_missed():
                self._run_validation(bar)
                boundary = self._snapshot()
            for episode in range(start_episode, config.episodes):
                summary = self._summarise(self.train_episode(episode))
                self.counters.episode = episode + 1
                self.counters.seconds = (
                    seconds_before + time.perf_counter() - run_started
                )
                self._record_episode(summary, bar)
                if config.validate_every and (episode + 1) % config.validate_every == 0:
                    self._run_validation(bar)
                if config.snapshot_every and (episode + 1) % config.snapshot_every == 0:
                    self._keep_networks()
                boundary = self._snapshot()
                if (
                    config.checkpoint_every
                    and (episode + 1) % config.checkpoint_every == 0
                ):
                    self.save_checkpoint()
            if (
                config.validate_every
                and self.validated_episode != self.counters.episode
            ):
                # Validate the final weights too, so best.pt considers them.
                self._run_validation(bar)
                boundary = self._snapshot()
        except KeyboardInterrupt as interrupt:
            # Roll back to the last episode boundary, whose state resumes exactly.
            self._restore_snapshot(boundary)
            coordinated = isinstance(interrupt, _CoordinatedStop)
            if coordinated or not self.context.active:
                # A single process, or ranks that all stopped at the same
                # all-reduce: the boundary is the same everywhere.
                if self.context.is_main:
                    logger.warning(
                        "interrupted; saving the state after episode %d to %s",
                        self.counters.episode,
                        self.out / STATE_FILE,
                    )
                self.save_checkpoint()
                self.context.barrier()
            raise
        finally:
            _restore_handlers(previous_handlers)
            if bar is not None:
                bar.close()
        if self._written_episode != self.counters.episode:
            self.save_checkpoint()
        self.context.barrier()
        return self.result()

    def _validation_missed(self) -> bool:
        """Return whether a stop abandoned the validation due at the episode the
        run starts from."""
        every = self.config.validate_every
        episode = self.counters.episode
        return bool(
            every
            and episode > 0
            and episode % every == 0
            and self.validated_episode != episode
        )

    def _install_stop_handlers(self) -> list:
        """Route SIGTERM (and, in a distributed run, Ctrl-C) to a clean stop.

        One process raises at once and saves the last episode boundary. The
        ranks of a distributed run are at different points when the signal
        comes, so each one only records the request. They learn of it at the
        next meta-gradient all-reduce and stop there together. Returns the
        previous handlers for :func:`_restore_handlers`.
        """
        if threading.current_thread() is not threading.main_thread():
            return []
        if not self.context.active:
            return [(signal.SIGTERM, signal.signal(signal.SIGTERM, _raise_terminated))]

        def request_stop(signum, frame):
            if not self._stop_requested:
                logger.warning(
                    "received signal %d; stopping at the next meta-step", signum
                )
            self._stop_requested = True

        return [
            (signum, signal.signal(signum, request_stop))
            for signum in (signal.SIGTERM, signal.SIGINT)
        ]

    def start_from_init(self) -> None:
        """Load the weights of the ``config.init`` checkpoint into the networks."""
        loaded = load_initial_weights(
            self.nets, self.optimizer_config, self.config.init
        )
        self.init_provenance = {
            "path": str(loaded.path.resolve()),
            "config": loaded.config.to_dict(),
            "provenance": loaded.provenance,
        }

    def result(self) -> MetaTrainResult:
        best = self.out / "best.pt"
        return MetaTrainResult(
            out=self.out,
            best_checkpoint=best if best.exists() else None,
            last_checkpoint=self.out / "last.pt",
            episodes=self.counters.episode,
            meta_steps=self.counters.meta_steps,
            skipped=self.counters.skipped,
            nonfinite=self.counters.nonfinite,
            diverged=self.counters.diverged,
            best_validation_loss=self.best_validation_loss,
            final_validation_loss=(
                self.last_validation[0]
                if self.last_validation
                and self.validated_episode == self.counters.episode
                else math.inf
            ),
            meta_lr=self.config.meta_lr,
        )

    def _summarise(self, summary: EpisodeSummary) -> EpisodeSummary:
        if not self.context.active:
            return summary
        world = self.context.world_size
        meta_loss, final_loss, diverged, nonfinite, steps = self.context.all_reduce_sum(
            [
                summary.meta_loss,
                summary.final_loss,
                summary.diverged,
                summary.nonfinite,
                summary.inner_steps,
            ]
        )
        return EpisodeSummary(
            meta_loss / world,
            final_loss / world,
            int(diverged),
            int(nonfinite),
            int(steps),
            summary.seconds,
        )

    def _record_episode(self, summary: EpisodeSummary, bar) -> None:
        if not self.context.is_main:
            return
        counters = self.counters
        self._totals["diverged"] += summary.diverged
        self._totals["nonfinite"] += summary.nonfinite
        self._totals["inner_steps"] += summary.inner_steps
        if summary.diverged:
            logger.warning(
                "episode %d: %d optimizee(s) diverged and the episode ended early "
                "(%d diverged so far)",
                counters.episode,
                summary.diverged,
                self._totals["diverged"],
            )
        steps_per_second = summary.inner_steps / max(summary.seconds, 1e-9)
        self.metrics.append(
            {
                "kind": "episode",
                "episode": counters.episode,
                "meta_steps": counters.meta_steps,
                "inner_steps": self._totals["inner_steps"],
                "meta_loss": summary.meta_loss,
                "final_loss": summary.final_loss,
                "diverged": self._totals["diverged"],
                "nonfinite": self._totals["nonfinite"],
                "skipped": counters.skipped,
                "meta_lr": self.config.meta_lr,
                "seconds": counters.seconds,
                "steps_per_second": steps_per_second,
            }
        )
        if bar is not None:
            postfix = {
                "meta_loss": f"{summary.meta_loss:.4g}",
                "loss": f"{summary.final_loss:.4g}",
            }
            if self.last_validation is not None:
                postfix["val_loss"] = f"{self.last_validation[0]:.4g}"
            postfix["steps/s"] = f"{steps_per_second:.1f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)

    def _run_validation(self, bar) -> None:
        if not self.context.is_main:
            return
        started = time.perf_counter()
        try:
            loss, error = self.validate()
        except _ValidationAbandoned:
            # The other ranks wait at the next all-reduce to stop together; a
            # resumed run validates this episode first.
            logger.warning(
                "validation after episode %d abandoned: stop requested",
                self.counters.episode,
            )
            return
        self.last_validation = (loss, error)
        self.validated_episode = self.counters.episode
        improved = loss < self.best_validation_loss
        if improved:
            self.best_validation_loss = loss
            self.best_episode = self.counters.episode
            self._save_optimizer(self.out / "best.pt")
        if self.config.keep_validated:
            name = f"episode-{self.counters.episode:06d}.pt"
            validated_path = self.out / VALIDATED_DIR / name
            validated_path.parent.mkdir(exist_ok=True)
            self._save_optimizer(validated_path)
        horizons = self.config.validation_horizons
        detail = ""
        if len(horizons) > 1:
            detail = (
                " (mean of "
                + ", ".join(
                    f"{h_loss:.4f} / {100 * h_error:.2f}% @{steps}"
                    for steps, (h_loss, h_error) in zip(
                        horizons, self.last_validation_by_horizon, strict=True
                    )
                )
                + ")"
            )
        message = (
            f"validation after episode {self.counters.episode}: loss {loss:.4f}, "
            f"error {100 * error:.2f}%{detail} "
            f"({time.perf_counter() - started:.1f} s)"
            + (", new best" if improved else f", best {self.best_validation_loss:.4f}")
        )
        if bar is not None:
            bar.write(message)
        else:
            logger.info(message)
        self.metrics.append(
            {
                "kind": "validation",
                "episode": self.counters.episode,
                "meta_steps": self.counters.meta_steps,
                "inner_steps": self._totals["inner_steps"],
                "validation_loss": loss,
                "validation_error": error,
                "meta_lr": self.config.meta_lr,
                "seconds": self.counters.seconds,
            }
        )
        for steps, (h_loss, h_error) in zip(
            horizons, self.last_validation_by_horizon, strict=True
        ):
            self.validation_log.append(
                {
                    "episode": self.counters.episode,
                    "meta_steps": self.counters.meta_steps,
                    "steps": steps,
                    "loss": h_loss,
                    "error": h_error,
                }
            )

    def _progress_bar(self, initial: int):
        # Redrawn bars fill a log file with carriage returns; without a
        # terminal the log lines alone report progress.
        if not (self.progress and self.context.is_main and sys.stderr.isatty()):
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.config.episodes,
            initial=initial,
            unit="episode",
            desc=f"meta-train {self.config.optimizer}",
            file=sys.stderr,
            dynamic_ncols=True,
        )

    # ------------------------------------------------------------- checkpoints

    def state_dict(self, rng_states: list | None = None) -> dict:
        """Everything ``--resume`` needs, in types ``weights_only`` loading accepts."""
        return {
            "format": STATE_FORMAT,
            "config": self.config.to_dict(),
            "counters": asdict(self.counters),
            "totals": dict(self._totals),
            "nets": self.nets.state_dict(),
            "meta_optimizer": self.meta_optimizer.state_dict(),
            "best_validation_loss": self.best_validation_loss,
            "best_episode": self.best_episode,
            "last_validation": list(self.last_validation)
            if self.last_validation
            else None,
            "validated_episode": self.validated_episode,
            "last_validation_by_horizon": [
                list(score) for score in self.last_validation_by_horizon
            ],
            "init_provenance": self.init_provenance,
            "rng": rng_states if rng_states is not None else [capture_rng_state()],
            "world_size": self.context.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"unsupported meta-training state format {state.get('format')!r}; "
                f"this version reads format {STATE_FORMAT}"
            )
        self.nets.load_state_dict(state["nets"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.counters = Counters(**state["counters"])
        self._totals = dict(state["totals"])
        self.best_validation_loss = float(state["best_validation_loss"])
        self.best_episode = state["best_episode"]
        self.init_provenance = state.get("init_provenance")
        last = state["last_validation"]
        self.last_validation = tuple(last) if last else None
        self.validated_episode = int(state["validated_episode"])
        # States written before validation at several horizons lack the key.
        self.last_validation_by_horizon = [
            tuple(score) for score in state.get("last_validation_by_horizon", [])
        ]
        rng_states = state["rng"]
        if self.context.rank < len(rng_states):
            restore_rng_state(rng_states[self.context.rank])

    def save_checkpoint(self) -> None:
        """Write ``state/latest.pt`` and ``last.pt`` atomically (rank 0 writes)."""
        # Every rank records the write, so all of them agree on whether the
        # final checkpoint (a collective call) is still due.
        rng_states = self.context.all_gather_object(capture_rng_state())
        self._written_episode = self.counters.episode
        if not self.context.is_main:
            return
        atomic_torch_save(self.state_dict(rng_states), self.out / STATE_FILE)
        self._save_optimizer(self.out / "last.pt")

    def _keep_networks(self) -> None:
        if not self.context.is_main:
            return
        provenance = self.provenance()
        if self.validated_episode != self.counters.episode:
            # The last validation scored other networks; its numbers would
            # misdescribe these.
            provenance["validation_loss"] = None
            provenance["validation_by_horizon"] = {}
        path = self.out / SNAPSHOT_DIR / f"episode-{self.counters.episode:06d}.pt"
        path.parent.mkdir(exist_ok=True)
        self._save_optimizer(path, provenance)

    def _save_optimizer(self, path: Path, provenance: dict | None = None) -> None:
        from slstm.optim import save_checkpoint

        if provenance is None:
            provenance = self.provenance()
        atomic_write(
            path,
            lambda tmp: save_checkpoint(
                tmp, self.nets, self.optimizer_config, provenance
            ),
        )

    def provenance(self) -> dict:
        from slstm import __version__

        return {
            "created_by": "slstm meta-train",
            "dataset": self.config.data,
            "slstm_version": __version__,
            "torch_version": torch.__version__,
            "created": datetime.datetime.now(datetime.UTC).isoformat(
                timespec="seconds"
            ),
            "meta_train_config": self.config.to_dict(),
            "episodes": self.counters.episode,
            "meta_steps": self.counters.meta_steps,
            "inner_steps": self._totals["inner_steps"],
            "world_size": self.context.world_size,
            "seconds": round(self.counters.seconds, 1),
            "validation_loss": (
                self.last_validation[0] if self.last_validation else None
            ),
            "best_validation_loss": (
                self.best_validation_loss if self.best_episode is not None else None
            ),
            "best_episode": self.best_episode,
            "validation_by_horizon": self._validation_by_horizon(),
            "init": self.init_provenance,
        }

    def _validation_by_horizon(self) -> dict:
        """Return the last validation's ``{steps: {"loss", "error"}}``, or {}
        before the first validation."""
        if not self.last_validation_by_horizon:
            return {}
        return {
            str(steps): {"loss": loss, "error": error}
            for steps, (loss, error) in zip(
                self.config.validation_horizons,
                self.last_validation_by_horizon,
                strict=True,
            )
        }

    def _snapshot(self) -> dict:
        return {
            "nets": copy.deepcopy(self.nets.state_dict()),
            "meta_optimizer": copy.deepcopy(self.meta_optimizer.state_dict()),
            "counters": asdict(self.counters),
            "totals": dict(self._totals),
            "best": (
                self.best_validation_loss,
                self.best_episode,
                self.last_validation,
                self.validated_episode,
                list(self.last_validation_by_horizon),
            ),
        }

    def _restore_snapshot(self, snapshot: dict) -> None:
        self.nets.load_state_dict(snapshot["nets"])
        self.meta_optimizer.load_state_dict(snapshot["meta_optimizer"])
        self.counters = Counters(**snapshot["counters"])
        self._totals = dict(snapshot["totals"])
        (
            self.best_validation_loss,
            self.best_episode,
            self.last_validation,
            self.validated_episode,
            self.last_validation_by_horizon,
        ) = snapshot["best"]

    def _prepare_new_output(self) -> None:
        state_path = self.out / STATE_FILE
        if state_path.exists():
            raise FileExistsError(
                f"{self.out} already contains a meta-training run ({state_path}); "
                "pass --resume to continue it, or choose another --out"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "metrics.csv").unlink(missing_ok=True)
        (self.out / "validation.csv").unlink(missing_ok=True)
        self._write_config()

    def _write_config(self) -> None:
        text = self.config.to_json()
        atomic_write_text(text, self.out / "config.json")
        atomic_write_text(text, self.out / STATE_FILE.parent / "config.json")

    def _resume(self) -> None:
        from slstm.optim.checkpoints import read_torch_file

        state_path = self.out / STATE_FILE
        state = None
        if self.context.is_main:
            if not state_path.exists():
                raise FileNotFoundError(
                    f"--resume found no checkpoint at {state_path}; start without "
                    "--resume, or point --out at the folder of an earlier run"
                )
            state = read_torch_file(
                state_path,
                map_location="cpu",
                fix=(
                    "Restore the file from a copy, or start a new run by dropping "
                    "--resume or pointing --out at another folder"
                ),
            )
            check_resumable(MetaTrainConfig.from_saved(state["config"]), self.config)
        state = self.context.broadcast_object(state)
        self.load_state_dict(_to_device(state, self.device))
        if self.context.is_main:
            remove_stale_temporaries(self.out)
            remove_stale_temporaries(self.out / STATE_FILE.parent)
            self.metrics.truncate_after(self.counters.episode)
            self.validation_log.truncate_after(self.counters.episode)
            self._write_config()
            logger.info(
                "resumed %s after episode %d (%d meta-steps)",
                self.out,
                self.counters.episode,
                self.counters.meta_steps,
            )
        self._written_episode = self.counters.episode


def check_resumable(saved: MetaTrainConfig, requested: MetaTrainConfig) -> None:
    """Raise ValueError when ``requested`` changes what the saved run computes."""
    saved_values, requested_values = saved.to_dict(), requested.to_dict()
    changed = sorted(
        name
        for name in saved_values
        if name not in RESUMABLE_CHANGES
        and saved_values[name] != requested_values[name]
    )
    if changed:
        # Every option that can differ here is named on the command line as
        # --name-with-hyphens.
        details = ", ".join(
            f"--{name.replace('_', '-')}: saved {saved_values[name]!r}, "
            f"requested {requested_values[name]!r}"
            for name in changed
        )
        hint = ""
        if "validation_seed" in changed:
            hint = (
                "; a config.json without validation_seed, as runs before that "
                "option wrote, uses its seed as the validation seed"
            )
        raise ValueError(
            f"--resume would change options that alter the run ({details}){hint}; "
            "resume with the saved values (they are in config.json) or start a new "
            "--out"
        )


def _to_device(state: dict, device: torch.device) -> dict:
    # Adam's moments and the networks' weights go to the device; RNG states
    # (ByteTensors of the CPU generator) must stay on the CPU.
    moved = dict(state)
    moved["nets"] = {k: v.to(device) for k, v in state["nets"].items()}
    optimizer_state = copy.deepcopy(state["meta_optimizer"])
    for slot in optimizer_state["state"].values():
        for key, value in slot.items():
            if isinstance(value, torch.Tensor) and key != "step":
                slot[key] = value.to(device)
    moved["meta_optimizer"] = optimizer_state
    return moved


def evaluate_split(optimizee: Optimizee, split, device, batch_size: int = 1000):
    """Return ``(mean loss, error rate)`` of the optimizee's parameters on ``split``."""
    params = dict(
        zip(optimizee.names, (p.detach() for p in optimizee.params), strict=True)
    )
    return evaluate_model(optimizee.model, split, device, params, batch_size)


def evaluate_model(model, split, device, params=None, batch_size: int = 1000):
    """Return ``(mean loss, error rate)`` of ``model`` on every example of ``split``.

    ``params`` (keyed as ``model.named_parameters()``) replace the module's own
    parameters when given. A non-finite loss is returned as ``inf``.
    """
    total_loss, wrong, count = 0.0, 0, 0
    with torch.no_grad():
        for inputs, targets in _ordered_batches(split, batch_size, device):
            if params is None:
                output = model(inputs)
            else:
                output = functional_call(model, params, (inputs,))
            total_loss += float(cross_entropy(output, targets)) * len(targets)
            wrong += int((output.argmax(dim=1) != targets).sum())
            count += len(targets)
    if count == 0:
        raise ValueError("the evaluation split is empty; choose a non-empty split")
    loss = total_loss / count
    return (loss if math.isfinite(loss) else math.inf), wrong / count


def _ordered_batches(split, batch_size, device):
    if hasattr(split, "inputs"):
        for start in range(0, len(split), batch_size):
            yield (
                split.inputs[start : start + batch_size].to(device),
                split.targets[start : start + batch_size].to(device),
            )
        return
    loader = torch.utils.data.DataLoader(split, batch_size=batch_size, shuffle=False)
    for inputs, targets in loader:
        yield inputs.to(device), targets.to(device)


def check_horizons(horizons) -> list[int]:
    """Return ``horizons`` as a list; ValueError unless it is strictly increasing
    positive step counts."""
    horizons = list(horizons)
    if any(isinstance(h, bool) or not isinstance(h, int) for h in horizons):
        raise ValueError(f"horizons must be int step counts, got {horizons}")
    if not horizons or horizons != sorted(set(horizons)) or horizons[0] < 1:
        raise ValueError(
            f"horizons must be increasing positive step counts, got {horizons}"
        )
    return horizons


def learned_optimizer_options(optimizer_config) -> dict:
    """Return the meta-training options that rebuild ``optimizer_config``.

    The inverse of :func:`learned_optimizer_config` for the lstm and slstm
    presets: ``optimizer`` is ``"slstm"`` when the inputs include the Hessian.
    """
    return {
        "optimizer": "slstm" if "hessian" in optimizer_config.inputs else "lstm",
        "hidden_size": optimizer_config.hidden_size,
        "num_layers": optimizer_config.num_layers,
        "preprocess_p": optimizer_config.preprocess_p,
        "output_scale": optimizer_config.output_scale,
        "curvature_method": optimizer_config.curvature_method,
    }


def copy_update_nets(source, nets, kinds) -> None:
    """Copy the weights of ``source[kind]`` into ``nets[kind]`` for each kind."""
    with torch.no_grad():
        for kind in kinds:
            nets[kind].load_state_dict(source[kind].state_dict())


def learned_optimizer_config(config: MetaTrainConfig):
    """Build the :class:`slstm.optim.LearnedOptimizerConfig` a run meta-trains."""
    from slstm.optim import LearnedOptimizerConfig

    return LearnedOptimizerConfig.preset(
        config.optimizer,
        preprocess_p=config.preprocess_p,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        output_scale=config.output_scale,
        curvature_method=config.curvature_method,
    )


# Fields that must agree between a run and the checkpoint it starts from, with
# the option that sets each (None: no option can change it). The output scale
# and the curvature method may differ: a new scale multiplies the learned step,
# and a new method feeds another estimate of the same quantity.
_INIT_FIELDS = {
    "inputs": "--optimizer",
    "hidden_size": "--hidden-size",
    "num_layers": "--num-layers",
    "preprocess_p": "--preprocess-p",
    "kinds": None,
}


def load_initial_weights(nets, optimizer_config, checkpoint: str):
    """Copy the update-network weights of ``checkpoint`` into ``nets``.

    Returns the loaded :class:`slstm.optim.Checkpoint`. Raises ValueError naming
    the first architecture field on which the run and the checkpoint disagree,
    or a weight that is not finite.
    """
    from slstm.optim import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    where = f"cannot start from {str(loaded.path)!r}"
    for name, option in _INIT_FIELDS.items():
        ours, theirs = getattr(optimizer_config, name), getattr(loaded.config, name)
        if ours == theirs:
            continue
        if option is None:
            fix = "this run cannot start from it; meta-train from scratch instead"
        else:
            fix = f"drop {option} so that the checkpoint's value is used"
        raise ValueError(
            f"{where}: its {name} is {theirs!r} but this run's is {ours!r}; {fix}"
        )
    for kind, net in loaded.nets.items():
        for weight_name, weight in net.state_dict().items():
            if not bool(weight.isfinite().all()):
                raise ValueError(
                    f"{where}: its {kind} network's {weight_name} contains NaN or "
                    "infinite values; start from another checkpoint"
                )
    copy_update_nets(loaded.nets, nets, optimizer_config.kinds)
    return loaded


def load_task_data(config: MetaTrainConfig, device: torch.device) -> TaskData:
    """Load the run's data set once, with its validation split carved out."""
    from slstm.data import load_dataset

    splits = load_dataset(
        config.data,
        config.data_dir,
        classes=config.classes,
        validation=config.validation,
        seed=config.validation_seed,
        device=device,
        image_size=config.image_size,
    )
    return TaskData(splits)


def meta_train(
    config: MetaTrainConfig, *, resume: bool = False, progress: bool = True
) -> MetaTrainResult:
    """Meta-train a learned optimizer as ``config`` describes; see the module docs.

    Under ``torchrun`` every process calls this; it joins the process group,
    and rank 0 writes the files. With ``config.search > 0`` a random search
    over ``meta_lr`` runs first (see :func:`slstm.meta.search.search_meta_lr`).
    """
    out = Path(config.out)
    if resume and not (out / STATE_FILE).exists() and (out / "config.json").exists():
        # Killed during the search or the first episodes: nothing to resume yet.
        logger.warning("%s has no checkpoint yet; starting from episode 0", out)
        resume = False
    device = resolve_device(config.device)
    context, device = setup_distributed(device)
    try:
        trials: list = []
        if config.search and not resume:
            from slstm.meta.search import search_meta_lr

            best_lr, trials = search_meta_lr(config, context=context, device=device)
            config = config.replace(meta_lr=best_lr)
        trainer = MetaTrainer(config, context=context, device=device, progress=progress)
        result = trainer.run(resume=resume)
        result.search_trials = trials
        return result
    finally:
        context.close()


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so the run saves its state on the way out."""


class _CoordinatedStop(_Terminated):
    """Raised on every rank at the same all-reduce when any rank was asked to
    stop, so all of them roll back to the same episode boundary."""


class _ValidationAbandoned(Exception):
    """A stop was requested while rank 0 validated."""


def _raise_terminated(signum, frame):
    raise _Terminated(f"received signal {signum}")


def _restore_handlers(previous: list) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, handler in previous:
        signal.signal(signum, handler)


def write_search_record(out: Path, trials: list, best_lr: float) -> None:
    """Save the search's trials beside the run's configuration."""
    atomic_write_json(
        {"best_meta_lr": best_lr, "trials": [list(t) for t in trials]},
        out / "search.json",
    )
