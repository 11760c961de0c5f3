"""``slstm plot RESULTS_DIR``: redraw the plots of a saved experiment."""

from pathlib import Path

from . import records
from .plots import plot_results
from .summary import format_main_table


def add_arguments(parser):
    """Add the options of ``slstm plot`` to ``parser``."""
    parser.add_argument(
        "results_dir",
        metavar="RESULTS_DIR",
        help="directory written by `slstm experiment` (it contains results.json)",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where to write the PNG files (default: RESULTS_DIR)",
    )


def run(args):
    """Redraw the plots from results.json, check curves.csv, print the table."""
    results_dir = Path(args.results_dir)
    if results_dir.name == records.RESULTS_FILE and results_dir.is_file():
        results_dir = results_dir.parent
    try:
        record = records.load_results(results_dir)
    except (FileNotFoundError, ValueError) as error:
        print(f"slstm plot: error: {error}")
        return 2
    curves = results_dir / records.CURVES_FILE
    if not curves.is_file():
        print(
            f"slstm plot: warning: {curves} not found, so the curves were not "
            "checked against results.json"
        )
    else:
        problems = records.compare_with_csv(record, curves)
        if problems:
            print(f"slstm plot: warning: {curves} differs from results.json:")
            for problem in problems:
                print(f"  {problem}")
    paths = plot_results(record, args.out or results_dir)
    print(format_main_table(record))
    for path in paths:
        print(f"wrote {path}")
    return 0
