import math

import pytest
import torch

from slstm.optim import (
    LearnedOptimizerConfig,
    build_features,
    build_features_into,
    num_features,
    preprocess,
)

P = 10.0


def features_and_grad(value, dtype=torch.float64, p=P):
    x = torch.tensor([value], dtype=dtype, requires_grad=True)
    out = preprocess(x, p)
    (grad,) = torch.autograd.grad(out.sum(), x)
    return out.detach()[0], grad[0]


def test_preprocess_shape():
    x = torch.randn(3, 4, 5)
    assert preprocess(x).shape == (3, 4, 5, 2)


def test_preprocess_zero():
    out, grad = features_and_grad(0.0)
    assert out.tolist() == [-1.0, 0.0]
    assert torch.isfinite(grad)
    assert grad.item() == pytest.approx(math.exp(P))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_preprocess_at_threshold(dtype, sign):
    threshold = torch.tensor(math.exp(-P), dtype=dtype)
    out, grad = features_and_grad(sign * threshold.item(), dtype)
    assert out[0].item() == pytest.approx(-1.0, abs=1e-6)
    assert out[1].item() == sign
    assert torch.isfinite(grad)
    # Just inside the linear branch the first feature is still -1 and the second
    # approaches the sign: the two branches meet at |x| = e^-p.
    below = torch.nextafter(threshold, torch.zeros((), dtype=dtype)).item()
    inner, _ = features_and_grad(sign * below, dtype)
    assert inner[0].item() == -1.0
    assert inner[1].item() == pytest.approx(sign, rel=1e-5)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_preprocess_tiny_values(sign):
    out, grad = features_and_grad(sign * 1e-12)
    assert out[0].item() == -1.0
    assert out[1].item() == pytest.approx(sign * 1e-12 * math.exp(P))
    assert grad.item() == pytest.approx(math.exp(P))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_preprocess_large_values(sign):
    out, grad = features_and_grad(sign * 1e3)
    assert out[0].item() == pytest.approx(math.log(1e3) / P)
    assert out[1].item() == sign
    assert grad.item() == pytest.approx(sign / (1e3 * P))


@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        (1e-40, torch.float32),
        (-1e-45, torch.float32),
        (5e-324, torch.float64),
        (-2e-310, torch.float64),
    ],
)
def test_preprocess_subnormals(value, dtype):
    assert torch.tensor(value, dtype=dtype).abs() < torch.finfo(dtype).tiny
    out, grad = features_and_grad(value, dtype)
    assert torch.isfinite(out).all()
    assert out[0].item() == -1.0
    assert abs(out[1].item()) < 1e-30
    assert torch.isfinite(grad)


def test_preprocess_exponent_is_configurable():
    x = torch.tensor([1e-3])
    # log(1e-3) = -6.9: linear branch for p = 5, logarithmic for p = 10.
    assert preprocess(x, 5.0)[0].tolist() == pytest.approx([-1.0, 1e-3 * math.exp(5)])
    assert preprocess(x, 10.0)[0].tolist() == pytest.approx([math.log(1e-3) / 10, 1])


def test_preprocess_rejects_bad_exponent():
    with pytest.raises(ValueError, match="must be positive"):
        preprocess(torch.zeros(1), 0.0)


def test_build_features_lstm_columns():
    config = LearnedOptimizerConfig.preset("lstm")
    grad = torch.randn(3, 4)
    features = build_features(grad, None, config)
    assert num_features(config) == 2
    assert features.shape == (12, 2)
    torch.testing.assert_close(features, preprocess(grad.reshape(-1), 10.0))


def test_build_features_slstm_columns():
    config = LearnedOptimizerConfig.preset("slstm", preprocess_p=7.0)
    grad, hessian = torch.randn(5), torch.rand(5)
    features = build_features(grad, hessian, config)
    assert num_features(config) == 4
    assert features.shape == (5, 4)
    torch.testing.assert_close(features[:, :2], preprocess(grad, 7.0))
    torch.testing.assert_close(features[:, 2:], preprocess(hessian, 7.0))


def test_build_features_missing_hessian():
    config = LearnedOptimizerConfig.preset("slstm")
    with pytest.raises(ValueError, match="slstm.curvature.backward"):
        build_features(torch.randn(3), None, config)


def test_build_features_shape_mismatch():
    config = LearnedOptimizerConfig.preset("slstm")
    with pytest.raises(ValueError, match="must match"):
        build_features(torch.randn(3), torch.randn(4), config)


def _edge_values(dtype):
    threshold = torch.tensor(math.exp(-P), dtype=dtype)
    below = torch.nextafter(threshold, torch.zeros((), dtype=dtype))
    smallest = torch.finfo(dtype).smallest_normal
    edges = [0.0, threshold.item(), below.item(), 1e-12, 1e3, smallest / 4, 1.0]
    values = torch.tensor(edges + [-v for v in edges], dtype=dtype)
    return torch.cat(
        (
            values,
            torch.randn(500, dtype=dtype)
            * 10.0 ** torch.randint(-8, 3, (500,), dtype=dtype),
        )
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("preset", ["lstm", "slstm"])
def test_build_features_into_matches_build_features_bitwise(dtype, preset):
    config = LearnedOptimizerConfig.preset(preset, preprocess_p=P)
    grad = _edge_values(dtype)
    hessian = grad.flip(0) * 3.0
    expected = build_features(grad, hessian, config)
    out = torch.full((num_features(config), grad.numel()), float("nan"), dtype=dtype)
    result = build_features_into(out, grad, hessian, config)
    assert result is out
    assert torch.equal(out.t(), expected)


def test_build_features_into_checks_like_build_features():
    config = LearnedOptimizerConfig.preset("slstm")
    out = torch.empty(4, 3)
    with pytest.raises(ValueError, match="diagonal Hessian"):
        build_features_into(out, torch.ones(3), None, config)


def test_build_features_into_rejects_bad_out():
    config = LearnedOptimizerConfig.preset("slstm")
    grad, hessian = torch.ones(3), torch.ones(3)
    with pytest.raises(ValueError, match=r"shape \(4, 3\)"):
        build_features_into(torch.empty(4, 5), grad, hessian, config)
    with pytest.raises(ValueError, match="contiguous"):
        build_features_into(torch.empty(3, 4).t(), grad, hessian, config)
    with pytest.raises(ValueError, match="dtype"):
        build_features_into(
            torch.empty(4, 3, dtype=torch.float64), grad, hessian, config
        )
