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

import datetime
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from slstm.optim.config import LearnedOptimizerConfig
from slstm.optim.learned import LearnedOptimizer, create_update_nets

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
        "command": " ".join(sys.argv),
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
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def resolve_checkpoint(name_or_path) -> Path:
    """Return the file for a shipped checkpoint name or a path."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_checkpoints()
    if str(name_or_path) in shipped:
        return PRETRAINED_DIR / f"{name_or_path}.pt"
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


def load_checkpoint(name_or_path, map_location=None) -> Checkpoint:
    """Read a checkpoint by shipped name or path.

    Raises ``CheckpointError`` when the file is missing, contains anything besides
    tensors and plain containers (``torch.load`` with ``weights_only=True`` would
    have to run code to rebuild it), is not a checkpoint of this format, was
    written by a newer format version, or its weights do not fit its
    configuration.
    """
    path = resolve_checkpoint(name_or_path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message suggests allow-listing the global; name only the global.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found is None:
            raise CheckpointError(
                f"cannot read {str(path)!r} as a torch checkpoint: the file is "
                f"damaged or of another kind"
            ) from error
        raise CheckpointError(
            f"rejected {str(path)!r}: it references {found.group(1)}, which only "
            f"running code from the file could rebuild, but slstm checkpoints hold "
            f"only tensors and plain values. Do not load it with weights_only=False "
            f"unless you trust its source"
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(
            f"cannot read {str(path)!r} as a torch checkpoint: {error}"
        ) from error
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
    if map_location is not None:
        nets.to(map_location)
    return Checkpoint(
        nets=nets,
        config=config,
        provenance=dict(payload.get("provenance", {})),
        path=path,
    )


def load(name_or_path, params_or_model, *, map_location=None, **kwargs):
    """Return a ``LearnedOptimizer`` over ``params_or_model`` from a checkpoint.

    ``params_or_model`` is a model, parameter groups with ``"kind"``, or
    ``model.parameters()``; the networks move to the first parameter's device
    unless ``map_location`` is given. ``kwargs`` go to ``LearnedOptimizer``.
    """
    checkpoint = load_checkpoint(name_or_path, map_location=map_location)
    optimizer = LearnedOptimizer(
        params_or_model, checkpoint.nets, checkpoint.config, **kwargs
    )
    if map_location is None:
        first = optimizer.param_groups[0]["params"][0]
        checkpoint.nets.to(first.device)
    return optimizer
