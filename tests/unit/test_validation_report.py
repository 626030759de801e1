"""The validation report: Markdown for people, strict JSON, one error listing each failure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kdflow.errors import DataValidationError
from kdflow.validation.checks import validate_frames
from kdflow.validation.contract import DataContract
from kdflow.validation.report import ValidationReport
from tests.unit.validation_helpers import make_split


@pytest.fixture(scope="module")
def failed_report() -> ValidationReport:
    train = make_split(90, seed=1)
    train.loc[5, "f0"] = np.inf
    train.loc[6, "label"] = 8
    return validate_frames(train, None, DataContract(classes=[0, 1, 2]))


def test_markdown_lists_each_failure_with_column_observed_value_and_rows(
    failed_report: ValidationReport,
) -> None:
    text = failed_report.to_markdown()
    assert text.startswith("# Data validation: FAILED")
    assert "## Failed checks (2)" in text
    assert (
        "- [non_finite] train · f0: f0 has 1 infinite values (+inf: 1, -inf: 0) of 90 rows" in text
    )
    assert '  - observed: `{"posinf": 1' in text
    assert "  | row | label | f0 |" in text and "  | 5 | 2 | inf |" in text


def test_json_result_is_strict_json(failed_report: ValidationReport) -> None:
    data = json.loads(json.dumps(failed_report.to_dict(), allow_nan=False))
    assert data["passed"] is False
    assert {f["check"] for f in data["failures"]} == {"non_finite", "unknown_classes"}
    assert data["statistics"]["train"]["features"]["f0"]["posinf"] == 1


def test_failure_raises_a_plain_words_error(failed_report: ValidationReport) -> None:
    assert failed_report.summary_line() == "data validation FAILED (2 failed checks): train 90 rows"
    with pytest.raises(DataValidationError) as err:
        failed_report.raise_for_failures()
    assert (
        "  - [unknown_classes] train · label: the label has 1 class(es) not in the contract"
        in str(err.value)
    )
