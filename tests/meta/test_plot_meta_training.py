"""scripts/plot_meta_training.py on the logs of a real (tiny) run."""

import importlib.util
from pathlib import Path

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
    script.main([str(out), f"tiny={result.out}"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_skips_a_single_horizon(tiny_config):
    script = _load_script()
    result = meta_train(tiny_config(episodes=2, validate_every=1), progress=False)
    assert (result.out / "validation.csv").exists()
    # One step count: its curve is the mean already drawn.
    assert script.read_validation_by_steps(result.out) == {}
