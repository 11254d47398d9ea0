"""The ridge floor: closed-form fit, penalty chosen by validation MAE, pooled real rows only."""

import numpy as np
import pytest

from grf_stream.baselines.ridge import Ridge, fit_on_validation, mean_pooled
from grf_stream.data import Sample


def linear_data(n, seed, noise=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8))
    return x, x @ np.arange(1.0, 9.0) - 2.0 + noise * rng.normal(size=n)


def test_recovers_a_linear_function_when_the_penalty_is_small():
    ridge = Ridge.fit(*linear_data(200, 0), alpha=1e-6)
    assert ridge.weights == pytest.approx(np.arange(1.0, 9.0), abs=1e-6)
    x, y = linear_data(20, 1)
    assert ridge.predict(x) == pytest.approx(y, abs=1e-5)


def test_a_larger_penalty_shrinks_the_weights_and_validation_picks_the_penalty():
    train, valid = linear_data(30, 0, noise=5.0), linear_data(500, 1, noise=5.0)
    norms = [np.linalg.norm(Ridge.fit(*train, a).weights) for a in (0.1, 10.0, 1000.0)]
    assert norms[0] > norms[1] > norms[2]
    chosen = fit_on_validation(train, valid)
    mae = lambda r: np.mean(np.abs(r.predict(valid[0]) - valid[1]))  # noqa: E731
    assert all(mae(chosen) <= mae(Ridge.fit(*train, a)) for a in (0.01, 1.0, 1000.0))


def test_mean_pooling_uses_real_rows_only_and_refuses_a_sample_without_any():
    rows = np.array([[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]], np.float32)
    sample = Sample("a", 0.5, {"text": rows}, {"text": np.array([True, True, False])})
    x, y = mean_pooled([sample], "text")
    assert x.tolist() == [[2.0, 3.0]] and y.tolist() == [0.5]
    empty = Sample("b", 0.0, {"text": rows[:1]}, {"text": np.array([False])})
    with pytest.raises(ValueError, match="no text rows"):
        mean_pooled([sample, empty], "text")
