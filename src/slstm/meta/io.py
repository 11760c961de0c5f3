"""Atomic file writes and capture/restore of every random number generator.

A checkpoint that is the target of ``--resume`` must never be half written: a
crash or SIGKILL during ``torch.save`` would otherwise leave a truncated zip that
fails to load. Every writer here writes a temporary file in the destination's
folder, flushes it to disk, and renames it over the destination with
``os.replace``, which POSIX makes atomic within one file system.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

TEMPORARY_PREFIX = ".tmp-"


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one step.

    ``write`` receives a fresh path in the same folder as ``path``. If it raises,
    or the process dies before the rename, ``path`` keeps its previous content
    and the temporary file is removed (on an exception) or left under a
    ``.tmp-`` name that no reader looks at (on SIGKILL).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the destination's suffix for writers that check it.
    handle, tmp_name = tempfile.mkstemp(
        prefix=f"{TEMPORARY_PREFIX}{path.stem}.", suffix=path.suffix, dir=path.parent
    )
    os.close(handle)
    tmp_path = Path(tmp_name)
    try:
        write(tmp_path)
        # mkstemp creates the file 0600; give it the permissions open() would.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` that never leaves ``path`` truncated."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(obj, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete temporary files that a killed writer left in ``folder``."""
    folder = Path(folder)
    if folder.is_dir():
        for stale in folder.glob(f"{TEMPORARY_PREFIX}*"):
            stale.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(folder: Path) -> None:
    # Makes the rename itself durable; not every platform can open a folder.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def capture_rng_state() -> dict:
    """Return the state of Python's, NumPy's and torch's global generators.

    CUDA generators are included when CUDA is initialised. The result contains
    only tensors, strings, ints and tuples, so ``torch.load(weights_only=True)``
    reads it back.
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()  # noqa: NPY002 (the legacy global generator)
    state = {
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "numpy": {
            "name": numpy_state[0],
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Restore the generators from a :func:`capture_rng_state` result."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
