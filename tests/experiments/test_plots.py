"""Plots are valid PNG images, and `slstm plot` redraws them from saved results."""

import pytest
from PIL import Image

from slstm.cli import main
from slstm.experiments.plots import plot_results
from slstm.experiments.records import write_results

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        assert image.width > 100
        assert image.height > 100


def test_plot_results_writes_every_plot(record, tmp_path):
    paths = plot_results(record, tmp_path)
    names = sorted(path.name for path in paths)
    assert names == ["horizon.png", "loss.png", "lr_sensitivity.png", "test_error.png"]
    for path in paths:
        assert_png(path)


def test_plot_results_without_studies(make_record, tmp_path):
    paths = plot_results(make_record(studies=False), tmp_path)
    assert sorted(path.name for path in paths) == ["loss.png", "test_error.png"]


def test_plot_command_redraws(record, tmp_path, capsys):
    write_results(record, tmp_path)
    assert main(["plot", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    assert "| SLSTM |" in output
    assert "differs" not in output
    for name in ("loss.png", "test_error.png", "lr_sensitivity.png", "horizon.png"):
        assert_png(tmp_path / name)


def test_plot_command_warns_on_edited_csv(record, tmp_path, capsys):
    _, curves = write_results(record, tmp_path)
    lines = curves.read_text().splitlines()
    curves.write_text("\n".join(lines[:-2]) + "\n")
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "png")]) == 0
    assert "differs from results.json" in capsys.readouterr().out
    assert_png(tmp_path / "png" / "loss.png")


def test_plot_command_takes_results_file(record, tmp_path, capsys):
    results, curves = write_results(record, tmp_path)
    curves.unlink()
    assert main(["plot", str(results), "--out", str(tmp_path / "png")]) == 0
    assert (
        "curves.csv not found, so the curves were not checked"
        in capsys.readouterr().out
    )
    assert_png(tmp_path / "png" / "loss.png")


def test_plot_command_rejects_other_json(tmp_path, capsys):
    (tmp_path / "results.json").write_text("[]")
    assert main(["plot", str(tmp_path)]) == 2
    assert "is not the results.json of `slstm experiment`" in capsys.readouterr().out


def test_plot_command_missing_results(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "results.json not found" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["loss.png", "test_error.png"])
def test_plots_survive_all_seeds_diverging(record, tmp_path, name):
    for run in record.runs_of("main", "rmsprop"):
        run.diverged_at = 1
        run.minibatch_loss = [float("nan")]
        run.steps = [1]
        run.step_time_s = [0.001]
        run.eval_steps, run.train_loss, run.test_error = [0], [2.3], [0.9]
    plot_results(record, tmp_path)
    assert_png(tmp_path / name)


def test_one_seed_title_claims_no_spread(make_record):
    from slstm.experiments.plots import _title

    record = make_record(studies=False)
    assert "mean ± std over 3 seeds" in _title(record)
    record.setup["seeds"] = [0]
    assert _title(record).endswith("1 seed, no spread")


def test_test_error_legend_covers_no_data(record):
    import matplotlib.pyplot as plt

    from slstm.experiments.plots import draw_test_error

    fig = draw_test_error(record)
    try:
        fig.tight_layout()
        fig.canvas.draw()
        (ax,) = fig.axes
        legend = ax.get_legend().get_window_extent()
        axes = ax.get_window_extent()
        # The legend lies entirely outside the data area, so no curve is hidden.
        assert not legend.overlaps(axes)
        assert legend.x0 >= 0
        assert legend.x1 <= fig.bbox.width
    finally:
        plt.close(fig)


def test_divergence_marks_at_one_multiplier_do_not_overlap(record):
    import matplotlib.pyplot as plt

    from slstm.experiments.plots import draw_lr_sensitivity

    for run in record.runs_of("lr-sensitivity", "adam"):
        if run.lr_multiplier == 10.0:
            run.diverged_at = 3
    fig = draw_lr_sensitivity(record)
    try:
        (ax,) = fig.axes
        marks = {
            line.get_color(): tuple(line.get_ydata())
            for line in ax.get_lines()
            if line.get_marker() == "x"
        }
        # RMSprop (by the fixture) and Adam diverged at x10: two marks, apart.
        assert len(marks) == 2
        heights = [y for ys in marks.values() for y in ys]
        assert len(set(heights)) == 2
    finally:
        plt.close(fig)


def test_divergence_marks_at_one_step_do_not_overlap(record):
    import matplotlib.pyplot as plt

    from slstm.experiments.plots import draw_test_error

    for name in ("sgd", "rmsprop"):
        for run in record.runs_of("main", name):
            if run.seed == 2:
                run.diverged_at = 7
    fig = draw_test_error(record)
    try:
        (ax,) = fig.axes
        heights = [
            tuple(line.get_ydata())
            for line in ax.get_lines()
            if line.get_marker() == "x"
        ]
        # SGD and RMSprop diverged at step 7: two marks at two heights.
        assert len(heights) == 2
        assert heights[0] != heights[1]
    finally:
        plt.close(fig)


def test_title_names_data_that_replaced_the_preset(make_record):
    from slstm.experiments.plots import _title
    from slstm.experiments.summary import render_summary

    record = make_record(studies=False)
    assert _title(record).startswith("fashion-mnist (small scale)")
    assert render_summary(record).startswith("# Experiment `fashion-mnist`\n")
    record.setup["data"]["name"] = "digits"
    assert _title(record).startswith("fashion-mnist on digits (small scale)")
    assert render_summary(record).startswith("# Experiment `fashion-mnist` on digits")
