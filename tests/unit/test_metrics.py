"""Quality metrics of test-split predictions (`kdflow.evaluation.metrics`)."""

import numpy as np
import pytest
import torch

from kdflow.evaluation.metrics import (
    accuracy_of_logits,
    confusion_matrix,
    ensemble_accuracy,
    expected_calibration_error,
    macro_f1,
    negative_log_likelihood,
    quality_metrics,
)


def test_accuracy_of_logits_counts_argmax_hits():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0], [0.0, 1.0]])
    assert accuracy_of_logits(logits, torch.tensor([0, 1, 1, 1]).numpy()) == 0.75


def test_ensemble_accuracy_averages_probabilities_not_votes():
    # Teacher A is sure of class 0, B mildly prefers class 1: the mean of probabilities says 0.
    a = torch.tensor([[10.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    assert ensemble_accuracy([a, b], torch.tensor([0]).numpy()) == 1.0


def test_confusion_matrix_has_true_classes_as_rows():
    matrix = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 0, 1, 2]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_macro_f1_matches_scikit_learn_including_a_never_predicted_class():
    from sklearn.metrics import f1_score

    y = np.array([0, 0, 1, 1, 2, 2, 3])
    pred = np.array([0, 1, 1, 1, 2, 0, 0])
    expected = f1_score(y, pred, average="macro", labels=[0, 1, 2, 3], zero_division=0)
    assert macro_f1(confusion_matrix(pred, y, 4)) == pytest.approx(expected)


def test_ece_weighs_each_bin_gap_by_its_share_of_rows():
    # Confidences 0.9 (right), 0.6 (wrong), 0.8 (right) fall in three bins:
    # (|1 - 0.9| + |0 - 0.6| + |1 - 0.8|) / 3 = 0.3
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2]])
    assert expected_calibration_error(probs, np.array([0, 1, 0])) == pytest.approx(0.3)


def test_ece_is_zero_for_confident_correct_predictions():
    probs = np.eye(3)[[0, 1, 2, 1]]
    assert expected_calibration_error(probs, np.array([0, 1, 2, 1])) == 0.0


def test_nll_is_the_mean_cross_entropy_of_the_true_class():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    y = np.array([0, 1])
    expected = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).item()
    nll = negative_log_likelihood(torch.softmax(logits, -1).numpy().astype(np.float64), y)
    assert nll == pytest.approx(expected, rel=1e-6)


def test_quality_metrics_report_agreement_and_per_class_accuracy_by_name():
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    metrics = quality_metrics(probs, np.array([0, 1, 1, 1]), ["cat", "dog"],
                              reference_pred=np.array([0, 0, 0, 1]))
    assert metrics["accuracy"] == 0.75
    assert metrics["agreement"] == 0.75  # rows 0, 2, 3 agree with the reference
    assert metrics["per_class_accuracy"] == {"cat": 1.0, "dog": pytest.approx(2 / 3)}
    assert metrics["confusion_matrix"] == [[1, 0], [1, 2]]
    assert "agreement" not in quality_metrics(probs, np.array([0, 1, 1, 1]), ["cat", "dog"])
