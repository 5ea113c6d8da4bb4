import math

import pytest
import torch
from sklearn.metrics import average_precision_score

from cnnlab.metrics import (
    average_precision,
    confusion_matrix,
    iou_per_class,
    per_class_accuracy,
    per_class_average_precision,
    pixel_accuracy,
)


def test_confusion_matrix_and_derived_metrics_by_hand():
    target = torch.tensor([[0, 0, 1], [1, 1, 2]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])
    cm = confusion_matrix(pred, target, num_classes=4)
    expected = torch.tensor([[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    assert cm.dtype == torch.int64
    assert torch.equal(cm, expected)

    acc = per_class_accuracy(cm)
    assert acc.dtype == torch.float64
    assert acc[:3].tolist() == [1 / 2, 2 / 3, 1.0]
    assert math.isnan(acc[3])

    iou = iou_per_class(cm)
    # class 0: tp 1, fp 1, fn 1; class 1: tp 2, fp 1, fn 1; class 2: tp 1.
    assert iou[:3].tolist() == [1 / 3, 2 / 4, 1.0]
    assert math.isnan(iou[3])

    assert pixel_accuracy(cm) == 4 / 6


def test_confusion_matrix_rejects_out_of_range_classes():
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), num_classes=3)


def test_pixel_accuracy_of_empty_matrix_is_nan():
    assert math.isnan(pixel_accuracy(torch.zeros(3, 3, dtype=torch.int64)))


@pytest.mark.parametrize("n", [1, 2, 7, 100, 5000])
@pytest.mark.parametrize("decimals", [None, 2, 1])
def test_average_precision_matches_sklearn(n, decimals):
    gen = torch.Generator().manual_seed(n * 31 + (decimals or 0))
    for _ in range(5):
        scores = torch.rand(n, generator=gen, dtype=torch.float64)
        if decimals is not None:
            scores = torch.round(scores, decimals=decimals)  # many ties
        truth = torch.rand(n, generator=gen) < torch.rand(1, generator=gen)
        if not truth.any():
            truth[0] = True
        expected = average_precision_score(truth.numpy(), scores.numpy())
        assert average_precision(scores, truth) == pytest.approx(expected, abs=1e-6)


def test_average_precision_with_all_scores_tied_and_perfect_ranking():
    truth = torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool)
    assert average_precision(torch.full((5,), 0.3), truth) == pytest.approx(2 / 5)
    assert average_precision(truth.double(), truth) == 1.0


def test_average_precision_without_positives_is_nan():
    assert math.isnan(average_precision(torch.rand(10), torch.zeros(10, dtype=torch.bool)))
    assert math.isnan(average_precision(torch.rand(0), torch.zeros(0, dtype=torch.bool)))


def test_per_class_average_precision_matches_sklearn_per_class():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 5, 8, 6, generator=gen), dim=1).round(decimals=2)
    target = torch.randint(0, 5, (3, 8, 6), generator=gen)
    aps = per_class_average_precision(probs, target)
    assert aps.shape == (5,)
    for c in range(5):
        expected = average_precision_score((target == c).flatten().numpy(), probs[:, c].flatten().numpy())
        assert aps[c].item() == pytest.approx(expected, abs=1e-6)
