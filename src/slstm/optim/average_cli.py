"""``slstm average``: average the update networks of several checkpoints."""

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``slstm average`` to ``parser``."""
    parser.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CHECKPOINT",
        help="checkpoints of one meta-training run, e.g. its "
        "validated/episode-*.pt files",
    )
    parser.add_argument(
        "--out", required=True, metavar="FILE", help="where to write the average"
    )


def run(args: argparse.Namespace) -> int:
    """Write the average; a user error prints one line and returns 2."""
    from slstm.optim import average_checkpoints, save_checkpoint
    from slstm.utils import check_output_path

    try:
        _check_not_a_source(args.out, args.checkpoints)
        check_output_path(args.out, example="average.pt")
        average = average_checkpoints(args.checkpoints)
        # save_checkpoint records this command as the file's "command".
        path = save_checkpoint(
            args.out, average.nets, average.config, average.provenance
        )
    except (ValueError, OSError) as error:
        print(f"slstm average: {error}", file=sys.stderr)
        return 2
    print(f"wrote the mean of {len(args.checkpoints)} checkpoints to {path}")
    return 0


def _check_not_a_source(out: str, checkpoints: list[str]) -> None:
    """Refuse an ``--out`` that would replace one of the averaged files."""
    target = Path(out)
    for source in checkpoints:
        path = Path(source)
        same = (
            target.exists() and path.exists() and target.samefile(path)
        ) or target.resolve() == path.resolve()
        if same:
            raise ValueError(
                f"--out {out!r} is one of the checkpoints being averaged and "
                "would be overwritten; pass a new file name"
            )
