"""Small helpers shared by the subpackages."""

import os
import shlex
import sys
import tempfile
from pathlib import Path

import torch


def resolve_device(device="auto"):
    """Return a ``torch.device``: CUDA when available for ``"auto"``, else as named."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device {device!r} is invalid; use auto, cpu, cuda or cuda:N"
        ) from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(
            f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N"
        )
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} requested but CUDA is not available; "
            "use --device cpu or --device auto"
        )
    return resolved


def command_line(argv=None) -> str:
    """Return the command line (``sys.argv`` by default) as one shell-quoted string.

    ``python -m slstm`` puts the path of ``slstm/__main__.py`` in ``argv[0]``;
    it is written as ``slstm``, the console command that runs the same code.
    """
    argv = list(sys.argv if argv is None else argv)
    if argv:
        program = Path(argv[0])
        if program.name == "__main__.py" and program.parent.name == "slstm":
            argv[0] = "slstm"
    return " ".join(shlex.quote(arg) for arg in argv)


# XORed into a run's seed for the curvature pass's generator, so that it does
# not replay the random numbers of the minibatch generator of the same seed.
PROBE_SEED_MASK = 0x5EED


def probe_generator(seed: int, device) -> torch.Generator:
    """Return the generator of a run's curvature-pass draws (Hutchinson's probes,
    dropout masks) for a run of ``seed``."""
    return torch.Generator(device=device).manual_seed(seed ^ PROBE_SEED_MASK)


def check_output_path(out, example: str = "calibrated.pt") -> Path:
    """Reject an output path that cannot take a file, before the command's work.

    The check creates the missing folders and a scratch file in the last one,
    then removes all of them, so that a rejected or failed run leaves nothing
    behind. ``example`` is the file name the empty-path error suggests.
    """
    if str(out) == "":
        raise ValueError(f"--out is empty; pass a file path such as {example}")
    out = Path(out)
    if out.exists() and not out.is_file():
        raise ValueError(
            f"--out {str(out)!r} exists and is not a regular file; pass a file path"
        )
    _check_writable_folder(out.parent, f"--out {str(out)!r}")
    return out


def check_output_dir(out, option: str = "--out") -> Path:
    """Reject an output folder that cannot be created or written, before work.

    Like :func:`check_output_path`, for a folder that the command fills with
    several files. An existing regular file is rejected, and the folders the
    check creates are removed again.
    """
    if str(out) == "":
        raise ValueError(f"{option} is empty; pass a folder path such as runs/mine")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(
            f"{option} {str(out)!r} is a file, not a folder; pass a folder path "
            "(it is created if missing)"
        )
    _check_writable_folder(out, f"{option} {str(out)!r}")
    return out


def _check_writable_folder(folder: Path, described: str) -> None:
    """Raise ValueError unless a file can be created in ``folder``."""
    missing = []  # deepest first, the order to remove them in
    parent = folder
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(
            f"{described} cannot be written: {str(parent)!r} is not a folder; pass a "
            "path in a writable folder"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # os.access cannot tell: for root it reports every folder, even /proc,
        # as writable.
        handle, scratch = tempfile.mkstemp(dir=folder, suffix=".tmp")
        os.close(handle)
        os.remove(scratch)
    except OSError as error:
        raise ValueError(
            f"{described} cannot be written: creating a file in {str(folder)!r} "
            f"failed ({error.strerror or error}); pass a path in a writable folder"
        ) from None
    finally:
        for created in missing:
            try:
                created.rmdir()
            except OSError:  # never created, or not empty
                pass


def in_option_words(message: str, fields, renamed=None) -> str:
    """Return ``message`` with a leading configuration field named as its option.

    Configuration classes report "num_threads must ..."; a command-line user
    typed ``--threads``. ``fields`` are the field names of the configuration,
    and ``renamed`` maps the fields whose option is not ``--field-name``.
    """
    field, _, rest = message.partition(" ")
    if not rest or field not in fields:
        return message
    option = (renamed or {}).get(field, "--" + field.replace("_", "-"))
    return f"{option} {rest}"
