"""The field's sentiment metrics, on cases worked out by hand."""

import numpy as np
import pytest

from grf_stream.metrics import METRIC_NAMES, format_table, sentiment_metrics

LABELS = [-3.0, -1.4, 0.0, 0.6, 2.5]
PREDICTIONS = [-2.6, 0.4, 0.2, 1.4, 3.4]


def test_hand_computed_case():
    m = sentiment_metrics(PREDICTIONS, LABELS)
    # |errors| 0.4 + 1.8 + 0.2 + 0.8 + 0.9 = 4.1 over 5
    assert m["mae"] == pytest.approx(0.82)
    # 7 classes: predictions -> [-3, 0, 0, 1, 3], labels -> [-3, -1, 0, 1, 2] (2.5 rounds to even)
    assert m["acc7"] == pytest.approx(3 / 5)
    # 5 classes: predictions -> [-2, 0, 0, 1, 2], labels -> [-2, -1, 0, 1, 2]
    assert m["acc5"] == pytest.approx(4 / 5)
    # has-0: predicted >= 0 [F T T T T], true >= 0 [F F T T T]
    assert m["acc2_has0"] == pytest.approx(4 / 5)
    # F1(neg) = 2*1/(1+2), F1(non-neg) = 2*3/(4+3); weighted by support 2 and 3
    assert m["f1_has0"] == pytest.approx((2 / 3 * 2 + 6 / 7 * 3) / 5)
    # non-0: the zero label is left out; predicted > 0 [F T T T], true > 0 [F F T T]
    assert m["acc2_non0"] == pytest.approx(3 / 4)
    # F1(neg) = 2*1/(1+2), F1(pos) = 2*2/(3+2); support 2 and 2
    assert m["f1_non0"] == pytest.approx((2 / 3 * 2 + 4 / 5 * 2) / 4)


def test_correlation():
    y = np.array(LABELS)
    assert sentiment_metrics(2 * y + 1, y)["corr"] == pytest.approx(1.0)
    assert sentiment_metrics(-y, y)["corr"] == pytest.approx(-1.0)
    assert sentiment_metrics(np.zeros(5), y)["corr"] == 0.0  # undefined for a constant: reported as 0


def test_perfect_predictions():
    m = sentiment_metrics(LABELS, LABELS)
    assert m["mae"] == 0 and all(m[k] == 1 for k in ("acc7", "acc5", "acc2_has0", "f1_has0", "acc2_non0", "f1_non0"))


def test_all_zero_labels_have_no_non0_scores():
    m = sentiment_metrics([0.5, -0.5], [0.0, 0.0])
    assert np.isnan(m["acc2_non0"]) and np.isnan(m["f1_non0"])


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        sentiment_metrics([1, 2, 3], [1, 2])


def test_table_has_every_metric():
    table = format_table({"test": sentiment_metrics(PREDICTIONS, LABELS)})
    assert all(name in table.splitlines()[0] for name in METRIC_NAMES)
    assert "0.8200" in table


def test_metrics_refuse_to_average_over_nan_or_inf():
    with pytest.raises(ValueError, match="1 predictions and 0 labels are NaN or inf"):
        sentiment_metrics([0.1, float("nan"), 0.3], [0.0, 1.0, -1.0])
    with pytest.raises(ValueError, match="0 predictions and 1 labels"):
        sentiment_metrics([0.1, 0.2], [float("inf"), 1.0])
