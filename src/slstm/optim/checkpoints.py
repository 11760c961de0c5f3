"""Checkpoints of learned optimizers: update-network weights, configuration and
provenance in one file.

A checkpoint is a ``torch.save`` file holding only tensors and plain containers,
so it loads with ``torch.load(..., weights_only=True)`` and loading never runs
code from the file:

    {"format": "slstm-learned-optimizer", "format_version": 1,
     "config": LearnedOptimizerConfig.to_dict(),
     "weights": {kind: UpdateNet.state_dict()},
     "provenance": {"command": ..., "configuration": ..., "dataset": ...,
                    "code_version": ..., "git_commit": ..., "saved_at": ...}}

Checkpoints shipped in ``slstm/optim/pretrained/<name>.pt`` load by name.
"""

import dataclasses
import datetime
import json
import os
import pickle
import pickletools
import re
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from slstm.optim.config import LearnedOptimizerConfig
from slstm.optim.learned import LearnedOptimizer, create_update_nets
from slstm.utils import command_line

FORMAT = "slstm-learned-optimizer"
FORMAT_VERSION = 1
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unsafe, of another format or inconsistent."""


@dataclass
class Checkpoint:
    """The contents of a checkpoint file.

    Attributes:
        nets: ``{kind: UpdateNet}`` with the saved weights.
        config: the configuration the networks were built with.
        provenance: how the networks were trained (JSON-compatible dict).
        path: the file read.
    """

    nets: nn.ModuleDict
    config: LearnedOptimizerConfig
    provenance: dict
    path: Path | None = None


def shipped_checkpoints() -> list[str]:
    """Return the names of the checkpoints shipped with the package."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(path.stem for path in PRETRAINED_DIR.glob("*.pt"))


def git_commit(directory: Path | None = None) -> str | None:
    """Return the commit of the git checkout holding ``directory`` (this package by
    default), or None outside a checkout or without git."""
    directory = Path(__file__).resolve().parent if directory is None else directory
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def save_checkpoint(
    path, nets: nn.ModuleDict, config: LearnedOptimizerConfig, provenance: dict
) -> Path:
    """Write ``nets``, ``config`` and ``provenance`` to ``path`` and return the path.

    ``provenance`` should name the ``"command"``, the meta-training
    ``"configuration"`` and the ``"dataset"``. Saving adds ``"code_version"``
    (``slstm.__version__``), ``"git_commit"`` (None outside a git checkout) and
    ``"saved_at"`` (UTC, ISO 8601), and fills a missing ``"command"`` from
    ``sys.argv``. It must be JSON-compatible, so the file stays loadable with
    ``weights_only=True``. The file is written to a temporary name and renamed, so
    an interrupted save never leaves a truncated checkpoint.
    """
    import slstm

    if not isinstance(provenance, dict):
        raise TypeError(f"provenance must be a dict, got {type(provenance).__name__}")
    missing = [kind for kind in config.kinds if kind not in nets]
    if missing:
        raise ValueError(f"nets lack the networks for kinds {missing}")
    record = {
        "command": command_line(),
        **provenance,
        "code_version": slstm.__version__,
        "git_commit": git_commit(),
        "saved_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    try:
        record = json.loads(json.dumps(record))
    except TypeError as error:
        raise TypeError(
            f"provenance must hold only JSON values (str, numbers, bool, None, lists, "
            f"dicts): {error}"
        ) from error
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "weights": {
            kind: {
                name: tensor.detach().cpu().clone()
                for name, tensor in nets[kind].state_dict().items()
            }
            for kind in config.kinds
        },
        "provenance": record,
    }
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(
            f"{str(path)!r} exists and is not a regular file; pass a file path "
            "for the checkpoint"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        torch.save(payload, temporary)
        # mkstemp creates the file 0600; give it the permissions open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def resolve_checkpoint(name_or_path) -> Path:
    """Return the file for a shipped checkpoint name or a path.

    A string that is exactly a shipped name (``"slstm-fashion-mnist"``) always
    means the shipped file, even when the working directory contains a file or
    folder of that name, such as the ``--out`` folder of a meta-training run.
    Write ``"./slstm-fashion-mnist"``, or pass a ``Path``, for the local one.
    """
    shipped = shipped_checkpoints()
    if isinstance(name_or_path, str) and name_or_path in shipped:
        return PRETRAINED_DIR / f"{name_or_path}.pt"
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.is_dir():
        raise CheckpointError(
            f"{str(path)!r} is a directory, not a checkpoint file; pass a file in "
            "it, such as the best.pt or last.pt that `slstm meta-train` writes"
        )
    if str(path) in shipped:
        return PRETRAINED_DIR / f"{path}.pt"
    listing = ", ".join(shipped) if shipped else "none yet"
    if path.suffix or len(path.parts) > 1:
        raise CheckpointError(
            f"checkpoint file {str(path)!r} not found; pass the path of a file "
            f"written by `slstm meta-train` or save_checkpoint, or the name of a "
            f"shipped checkpoint ({listing})"
        )
    raise CheckpointError(
        f"no shipped checkpoint named {str(name_or_path)!r}; shipped checkpoints: "
        f"{listing}. Pass the path of a file written by `slstm meta-train` or "
        f"save_checkpoint instead"
    )


# Matches both messages of torch's weights-only unpickler (torch 2.13) for a
# rejected global: "Unsupported global: GLOBAL builtins.print was not an allowed
# global" for one outside the allow-list, and "Trying to load unsupported GLOBAL
# posix.system whose module posix is blocked" for a blocked module.
_REJECTED_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*\w)")
# Globals that genuine torch.save files reference; any other global in a pickle
# that torch rejected is reported as code the file would run.
_TORCH_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict")


def read_torch_file(path, *, map_location=None, fix: str):
    """Load ``path`` with ``torch.load(weights_only=True)`` or raise CheckpointError.

    The error names ``path`` and what was wrong: missing, empty, not a zip or
    pickle file, damaged, or referencing a global that only running code from the
    file could rebuild. It ends with ``fix``, a sentence saying which file to pass
    instead. torch's own advice to retry with ``weights_only=False`` is never
    passed on, because that would run the code.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise CheckpointError(
            f"cannot read {str(path)!r}: {error.strerror}. {fix}"
        ) from error
    if size == 0:
        raise CheckpointError(
            f"{str(path)!r} is not a torch checkpoint: the file is empty. {fix}"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        # On garbage, torch raises IndexError, KeyError, UnpicklingError,
        # RuntimeError and more, depending on the first bytes.
        global_name = _rejected_global(error, path)
        if global_name is not None:
            raise CheckpointError(
                f"rejected {str(path)!r}: it references {global_name}, which only "
                f"running code from the file could rebuild, but slstm checkpoints "
                f"hold only tensors and plain values. Do not load it with "
                f"weights_only=False unless you trust its source. {fix}"
            ) from error
        reason = _describe_unreadable(path, error)
        raise CheckpointError(
            f"{str(path)!r} is not a torch checkpoint: {reason}. {fix}"
        ) from error


def _rejected_global(error: Exception, path: Path) -> str | None:
    """Return the global that made torch reject ``path``, or None if none did."""
    if not isinstance(error, pickle.UnpicklingError):
        return None
    found = _REJECTED_GLOBAL.search(str(error))
    if found is not None:
        return found.group(1)
    # torch's unpickler stops at opcodes it does not know (the FRAME of pickle
    # protocol 4, for one) before it reaches the global, so scan the plain pickle
    # without running it.
    if zipfile.is_zipfile(path):
        return None
    try:
        data = path.read_bytes()
        strings = []
        for opcode, argument, _ in pickletools.genops(data):
            name = None
            if opcode.name == "GLOBAL":
                name = argument.replace(" ", ".")
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                name = f"{strings[-2]}.{strings[-1]}"
            elif isinstance(argument, str):
                strings.append(argument)
            if name is not None and not name.startswith(_TORCH_GLOBAL_PREFIXES):
                return name
            if opcode.name == "STOP":
                return None
    except Exception:
        # pickletools raises ValueError and others on bytes that are not a pickle.
        return None
    return None


def _describe_unreadable(path: Path, error: Exception) -> str:
    """Say why torch could not read the non-empty file ``path``."""
    with path.open("rb") as file:
        head = file.read(2)
    # torch.save writes a zip archive, or a pickle starting with the PROTO opcode
    # (0x80) in the legacy format.
    if not zipfile.is_zipfile(path) and not head.startswith(b"\x80"):
        return (
            "the file is neither a zip archive nor a pickle, the formats "
            "torch.save writes"
        )
    if isinstance(error, pickle.UnpicklingError):
        # torch's message here advises weights_only=False, so it is left out.
        return (
            "the file is a damaged pickle or holds objects that torch's "
            "weights-only loader does not read"
        )
    lines = str(error).splitlines()
    detail = f": {lines[0][:200]}" if lines else ""
    return f"the file is damaged ({type(error).__name__}{detail})"


def load_checkpoint(name_or_path, map_location=None) -> Checkpoint:
    """Read a checkpoint by shipped name or path.

    Raises ``CheckpointError`` when the file is missing, contains anything besides
    tensors and plain containers (``torch.load`` with ``weights_only=True`` would
    have to run code to rebuild it), is not a checkpoint of this format, was
    written by a newer format version, or its weights do not fit its
    configuration.
    """
    path = resolve_checkpoint(name_or_path)
    payload = read_torch_file(
        path,
        map_location=map_location,
        fix=(
            "Pass a best.pt or last.pt written by `slstm meta-train`, or the name "
            f"of a shipped checkpoint ({', '.join(shipped_checkpoints()) or 'none'})"
        ),
    )
    if isinstance(payload, dict) and {"counters", "config"} <= payload.keys():
        raise CheckpointError(
            f"{str(path)!r} is the resume state of a meta-training run "
            "(state/latest.pt), not an optimizer checkpoint; pass that run's "
            "best.pt, last.pt or a file in its validated/ or snapshots/ folder"
        )
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a learned-optimizer checkpoint (expected "
            f"format {FORMAT!r}); write one with slstm.optim.save_checkpoint"
        )
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format version {version!r}, but this "
            f"slstm reads version {FORMAT_VERSION}; use the slstm version that wrote "
            f"it or re-run meta-training"
        )
    try:
        config = LearnedOptimizerConfig.from_dict(payload["config"])
        weights = payload["weights"]
        nets = create_update_nets(config)
        for kind in config.kinds:
            nets[kind].load_state_dict(weights[kind])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{str(path)!r} is damaged or inconsistent: {type(error).__name__}: {error}"
        ) from error
    provenance = payload.get("provenance", {})
    if not isinstance(provenance, dict):
        raise CheckpointError(
            f"{str(path)!r} is damaged or inconsistent: its provenance is a "
            f"{type(provenance).__name__}, not a dict; write the file again with "
            "slstm.optim.save_checkpoint"
        )
    if map_location is not None:
        nets.to(map_location)
    return Checkpoint(
        nets=nets,
        config=config,
        provenance=dict(provenance),
        path=path,
    )


def load(name_or_path, params_or_model, *, map_location=None, **kwargs):
    """Return a ``LearnedOptimizer`` over ``params_or_model`` from a checkpoint.

    ``params_or_model`` is a model, parameter groups with ``"kind"``,
    ``model.parameters()`` or ``model.named_parameters()``; the networks move to
    the first parameter's device unless ``map_location`` is given. ``kwargs`` go
    to ``LearnedOptimizer``.
    """
    checkpoint = load_checkpoint(name_or_path, map_location=map_location)
    optimizer = LearnedOptimizer(
        params_or_model, checkpoint.nets, checkpoint.config, **kwargs
    )
    if map_location is None:
        first = optimizer.param_groups[0]["params"][0]
        checkpoint.nets.to(first.device)
    return optimizer


# Provenance entries that describe a whole meta-training run, kept by an average.
AVERAGE_KEEPS = (
    "dataset",
    "meta_train_config",
    "init",
    "world_size",
    "slstm_version",
    "torch_version",
)


def average_checkpoints(names_or_paths) -> Checkpoint:
    """Return a checkpoint whose networks are the mean of several checkpoints'.

    Averaging the update networks saved along one meta-training run (for example
    its ``validated/`` files) smooths out the episode-to-episode noise of the
    meta-gradient, as stochastic weight averaging does for ordinary training.
    Every checkpoint must have the same configuration. The provenance is the last
    checkpoint's run-wide entries (``AVERAGE_KEEPS``) and a ``"weight_average"``
    record of every source: its path, episode, validation loss, git commit and
    time of saving, and the command that wrote the last one.

    Raises:
        CheckpointError: fewer than two checkpoints, or configurations that
            differ (the message names the first file that differs).
    """
    if isinstance(names_or_paths, str | os.PathLike):
        raise CheckpointError(
            f"average_checkpoints takes a list of checkpoints, got the single "
            f"path {str(names_or_paths)!r}; pass e.g. [first, second]"
        )
    sources = list(names_or_paths)
    if len(sources) < 2:
        raise CheckpointError(
            f"averaging needs at least two checkpoints, got {len(sources)}; pass "
            "the files to average, e.g. a run's validated/episode-*.pt"
        )
    loaded = [load_checkpoint(source, map_location="cpu") for source in sources]
    paths = [checkpoint.path.resolve() for checkpoint in loaded]
    repeated = sorted({str(path) for path in paths if paths.count(path) > 1})
    if repeated:
        raise CheckpointError(
            f"{repeated[0]!r} is given more than once; pass each checkpoint once"
        )
    for checkpoint in loaded:
        if "weight_average" in (checkpoint.provenance or {}):
            raise CheckpointError(
                f"{str(checkpoint.path)!r} is itself an average (slstm average), "
                "so its sources would count twice; pass the files it averaged "
                "instead"
            )
    first = loaded[0]
    for checkpoint in loaded[1:]:
        differences = _run_differences(first, checkpoint)
        if differences:
            raise CheckpointError(
                f"{str(checkpoint.path)!r} and {str(first.path)!r} differ in "
                f"{'; '.join(differences)}; average only checkpoints of one "
                "meta-training run"
            )
    nets = create_update_nets(first.config)
    for kind in first.config.kinds:
        states = [checkpoint.nets[kind].state_dict() for checkpoint in loaded]
        nets[kind].load_state_dict(
            {
                name: torch.stack([state[name] for state in states]).mean(0)
                for name in states[0]
            }
        )
    # Scores and counters describe one source, not the average, so only the
    # run-wide entries carry over.
    last = loaded[-1].provenance
    provenance = {key: last[key] for key in AVERAGE_KEEPS if key in last}
    provenance["created_by"] = "slstm average"
    provenance["weight_average"] = {
        "sources": [
            {
                "path": str(checkpoint.path),
                "episode": checkpoint.provenance.get("episodes"),
                "validation_loss": checkpoint.provenance.get("validation_loss"),
                "git_commit": checkpoint.provenance.get("git_commit"),
                "saved_at": checkpoint.provenance.get("saved_at"),
            }
            for checkpoint in loaded
        ],
        "source_command": last.get("command"),
    }
    return Checkpoint(nets=nets, config=first.config, provenance=provenance)


# Meta-training options that may differ between the files of one run: a
# --resume may change them without changing what the episodes compute, and
# the output folder may differ for a run that was moved. Any other option
# that differs makes two checkpoints belong to different runs.
_SAME_RUN_MAY_DIFFER = frozenset(
    {
        "episodes",
        "out",
        "data_dir",
        "device",
        "num_threads",
        "validate_every",
        "checkpoint_every",
        "keep_validated",
        "snapshot_every",
        "recompute_updates",
        "search",
        "search_low",
        "search_high",
        "search_episodes",
        "search_storage",
    }
)


def _run_differences(first: Checkpoint, other: Checkpoint) -> list[str]:
    """Return ``"name: value vs value"`` for each setting the two runs differ in."""
    differences = [
        f"{name}: {getattr(other.config, name)!r} vs {getattr(first.config, name)!r}"
        for name in (field.name for field in dataclasses.fields(first.config))
        if getattr(other.config, name) != getattr(first.config, name)
    ]
    runs = [c.provenance.get("meta_train_config") for c in (first, other)]
    if all(isinstance(run, dict) for run in runs):
        differences += [
            f"meta-training {name}: {runs[1].get(name)!r} vs {runs[0].get(name)!r}"
            for name in sorted(runs[0].keys() & runs[1].keys())
            if name not in _SAME_RUN_MAY_DIFFER and runs[1][name] != runs[0][name]
        ]
    return differences
