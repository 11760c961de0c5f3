"""scripts/plot_meta_training.py on the logs of a real (tiny) run."""

import importlib.util
import shutil
from pathlib import Path

import pytest

from slstm.meta import meta_train

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "plot_meta_training.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("plot_meta_training", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plot_reads_each_validation_horizon(tmp_path, tiny_config):
    script = _load_script()
    config = tiny_config(episodes=2, validate_every=1, validation_horizon=[3, 8])
    result = meta_train(config, progress=False)
    episodes, final_losses, validation = script.read_metrics(result.out)
    assert episodes == [1, 2]
    assert len(final_losses) == 2
    by_steps = script.read_validation_by_steps(result.out)
    assert sorted(by_steps) == [3, 8]
    for episode, mean in validation:
        losses = [dict(by_steps[steps])[episode] for steps in (3, 8)]
        assert abs(sum(losses) / 2 - mean) < 1e-9
    out = tmp_path / "curves.png"
    assert script.main([str(out), f"tiny={result.out}"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_reads_copied_csv_files(tmp_path, tiny_config):
    script = _load_script()
    config = tiny_config(episodes=2, validate_every=1, validation_horizon=[3, 8])
    result = meta_train(config, progress=False)
    copies = tmp_path / "copies"
    copies.mkdir()
    shutil.copy(result.out / "metrics.csv", copies / "tiny-metrics.csv")
    assert script.read_validation_by_steps(copies / "tiny-metrics.csv") == {}
    shutil.copy(result.out / "validation.csv", copies / "tiny-validation.csv")
    copied = copies / "tiny-metrics.csv"
    assert script.read_metrics(copied) == script.read_metrics(result.out)
    assert script.read_validation_by_steps(copied) == script.read_validation_by_steps(
        result.out
    )


@pytest.fixture
def run_dir(tmp_path, tiny_config):
    config = tiny_config(episodes=2, validate_every=1, validation_horizon=[3, 8])
    return meta_train(config, progress=False).out


def _damage(run_dir, name, text):
    (run_dir / name).write_text(text)


@pytest.mark.parametrize(
    "damage, message",
    [
        (None, "no such run"),
        (("metrics.csv", "kind,episode,final_loss,validation_loss\n"),
         "has no episode rows"),
        (("metrics.csv", "kind,episode\nepisode,1\n"), "missing columns"),
        (("metrics.csv", "kind,episode,final_loss,validation_loss\n"
                         "episode,1,0.5,\nepisode,2,abc,\n"),
         "line 3: final_loss is 'abc', not a number"),
        (("validation.csv", "episode,loss\n1,0.5\n"), "missing columns"),
        (("validation.csv", "episode,steps,loss\n1,3,0.5\n1,8,x\n"),
         "line 3: loss is 'x'"),
    ],
)  # fmt: skip
def test_plot_rejects_bad_logs(run_dir, tmp_path, capsys, damage, message):
    script = _load_script()
    run = run_dir if damage else tmp_path / "missing"
    if damage:
        _damage(run_dir, *damage)
    assert script.main([str(tmp_path / "out.png"), f"tiny={run}"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("plot_meta_training.py: ")
    assert message in error
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize(
    "out, message",
    [("curves.xyz", "unknown image format 'xyz'"), ("nodir/curves.png", "create it")],
)
def test_plot_checks_output_first(run_dir, tmp_path, capsys, out, message):
    script = _load_script()
    assert script.main([str(tmp_path / out), f"tiny={run_dir}"]) == 2
    assert message in capsys.readouterr().err


def test_plot_skips_a_single_horizon(tiny_config):
    script = _load_script()
    result = meta_train(tiny_config(episodes=2, validate_every=1), progress=False)
    assert (result.out / "validation.csv").exists()
    # One step count: its curve is the mean already drawn.
    assert script.read_validation_by_steps(result.out) == {}
