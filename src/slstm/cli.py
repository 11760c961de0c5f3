"""The ``slstm`` command line.

Each subcommand lives in the module that implements it. That module defines
``add_arguments(parser)`` and ``run(args) -> int``; this file only lists them and
imports one when it is called, so ``slstm --help`` does not import torch.
"""

import argparse
import importlib
import os
import sys

# (name, module, one-line help)
COMMANDS = [
    ("info", "slstm.info", "list data sets and networks with parameter counts"),
    ("demo", "slstm.curvature.demo", "show g and the diagonal Hessian on real batches"),
    ("meta-train", "slstm.meta.cli", "meta-train an LSTM or SLSTM optimizer"),
    (
        "calibrate",
        "slstm.meta.calibrate",
        "choose a learned optimizer's output scale on validation tasks",
    ),
    (
        "average",
        "slstm.optim.average_cli",
        "average the update networks of several checkpoints",
    ),
    (
        "train",
        "slstm.meta.train_cli",
        "train one CNN, optionally meta-learning jointly",
    ),
    ("experiment", "slstm.experiments.cli", "run a preset comparison of optimizers"),
    ("plot", "slstm.experiments.plot_cli", "redraw the plots of a saved experiment"),
]


def build_parser(argv):
    parser = argparse.ArgumentParser(
        prog="slstm",
        description="Train CNNs with learned optimizers that see curvature.",
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    commands = {}
    for name, module_name, help_text in COMMANDS:
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        commands[name] = sub
        # Only the chosen command's module is imported to add its options.
        if name == chosen:
            importlib.import_module(module_name).add_arguments(sub)
    return parser, commands


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, commands = build_parser(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # Report under the subcommand's own usage line, not the top-level one.
        target = commands.get(args.command, parser)
        target.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        return module.run(args) or 0
    except BrokenPipeError:
        # The reader of stdout has gone (as `| head` does). Point stdout at
        # devnull so that Python's final flush does not fail a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, the status a shell reports for it


def _version():
    from slstm import __version__

    return f"slstm {__version__}"
