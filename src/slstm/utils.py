"""Small helpers shared by the subpackages."""

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
