"""Small helpers shared by the subpackages."""

import shlex
import sys
from pathlib import Path

import torch


def resolve_device(device="auto"):
    """Return a ``torch.device``: CUDA when available for ``"auto"``, else as named."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
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
