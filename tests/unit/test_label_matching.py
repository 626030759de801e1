"""Labels across files and splits (`kdflow.data.labels`): 1, 1.0 and "1" are one class,
"a" against 1 is one error naming the column and both kinds; a class with a single row
cannot be split into train and test; a contract's feature list is what trains."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kdflow.config import DataConfig
from kdflow.data.labels import LabelTypeError, class_keys
from kdflow.data.prepared import read_split, split_frame
from kdflow.errors import DataError, DataValidationError
from kdflow.steps import validate_data
from kdflow.validation.checks import validate_frames
from kdflow.validation.contract import DataContract, FeatureSpec, default_contract
from tests.unit.validation_helpers import make_split, only


def _frame(rows: int, seed: int, labels: list) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, 3)), columns=["f0", "f1", "f2"])
    frame["y"] = [labels[i % len(labels)] for i in range(rows)]
    return frame


def _validate(tmp_path, train: pd.DataFrame, test: pd.DataFrame, suffix: str = ".csv",
              **extra) -> dict:
    paths = []
    for name, frame in (("train", train), ("test", test)):
        path = tmp_path / f"{name}{suffix}"
        if suffix == ".csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        paths.append(str(path))
    cfg = DataConfig(data=paths[0], test_data=paths[1], label_column="y", **extra)
    return validate_data(cfg, 0, tmp_path / "dataset", tmp_path / "report.md")


def test_integers_floats_and_integer_text_are_one_class() -> None:
    key = class_keys({"test": [1.0, 2.0], "train": [1, 2]}, "y")
    assert {key(1), key(2)} == {key(1.0), key(2.0)} == {1, 2}
    key = class_keys({"test": ["1", " 2"], "train": [np.int64(1), np.int64(2)]}, "y")
    assert [key("1"), key(" 2"), key(np.int64(2))] == [1, 2, 2]


def test_text_against_numbers_names_the_column_and_both_kinds() -> None:
    with pytest.raises(LabelTypeError) as err:
        class_keys({"test.csv": ["a", "b"], "data.csv": [1, 2]}, "species")
    assert str(err.value).startswith(
        "label column 'species' holds text in test.csv ('a', 'b') but numbers in data.csv "
        "(1, 2)"
    )


def test_float_test_labels_match_integer_training_labels(tmp_path) -> None:
    # A test CSV written as 0.0 / 1.0 against a training CSV of 0 / 1: the same classes.
    train = _frame(60, 1, [0, 1])
    test = _frame(20, 2, [0.0, 1.0])
    info = _validate(tmp_path, train, test)
    assert info["passed"] and info["classes"] == ["0", "1"]
    got = read_split(tmp_path / "dataset", "test").y
    assert got.tolist() == [i % 2 for i in range(20)]


def test_integer_text_test_labels_match_integer_training_labels(tmp_path) -> None:
    train = _frame(60, 1, [3, 5])
    test = _frame(20, 2, ["3", "5"])  # Parquet keeps them text
    info = _validate(tmp_path, train, test, suffix=".parquet")
    assert info["passed"] and info["classes"] == ["3", "5"]
    assert read_split(tmp_path / "dataset", "test").y.tolist() == [i % 2 for i in range(20)]


def test_text_test_labels_against_numbers_fail_validation_naming_both(tmp_path) -> None:
    with pytest.raises(DataValidationError):
        _validate(tmp_path, _frame(60, 1, [0, 1]), _frame(20, 2, ["a", "b"]))
    report = (tmp_path / "report.md").read_text()
    assert "label column 'y' holds text in the test split ('a', 'b') but numbers in the " \
           "training split (0, 1)" in report


def test_scan_matches_integer_text_with_integers() -> None:
    train, test = make_split(60, seed=1), make_split(30, seed=2)
    test["label"] = test["label"].astype(str)
    report = validate_frames(train, test, default_contract())
    assert not [f for f in report.failures if f.check in ("test_classes", "label_type")]
    test.loc[0, "label"] = "x"
    finding = only(validate_frames(train, test, default_contract()).failures, "label_type")
    assert "holds text in the test split ('x')" in finding.message


def test_a_single_row_class_cannot_be_split_into_train_and_test() -> None:
    frame = pd.concat([_frame(20, 1, [0, 1]), _frame(1, 2, [7])], ignore_index=True)
    with pytest.raises(DataError) as err:
        split_frame(frame, "y", 0.2, 0, "data.csv")
    assert str(err.value).startswith(
        "--label-column: class 7 has a single row in data.csv (label column 'y')"
    )


def test_the_validation_split_keeps_a_single_row_class_in_train() -> None:
    # Taking validation rows from the training rows: the class stays trainable (before, the
    # whole split went unstratified and the row landed in validation alone for some seeds).
    frame = pd.concat([_frame(40, 1, [0, 1]), _frame(1, 2, [7])], ignore_index=True)
    for seed in range(6):
        first, second = split_frame(frame, "y", 0.5, seed)
        assert 7 in set(first["y"]) and 7 not in set(second["y"]), seed
        assert len(first) + len(second) == len(frame)
        assert set(second["y"]) <= set(first["y"])


def test_a_contracts_features_are_what_trains(tmp_path) -> None:
    train, test = _frame(60, 1, [0, 1]), _frame(20, 2, [0, 1])
    train.insert(0, "id", range(60))
    test.insert(0, "id", range(0, 60, 3))
    contract = DataContract(label_column="y", features={"f0": FeatureSpec(),
                                                        "f2": FeatureSpec()})
    contract.to_yaml(tmp_path / "contract.yaml")
    _validate(tmp_path, train, test, contract=str(tmp_path / "contract.yaml"))
    meta = json.loads((tmp_path / "dataset" / "meta.json").read_text())
    assert meta["feature_columns"] == ["f0", "f2"] and meta["input_shape"] == [2]
    assert read_split(tmp_path / "dataset", "train").x.shape[1] == 2
    # Without a contract every column but the label trains, as before.
    (tmp_path / "plain").mkdir()
    _validate(tmp_path / "plain", train, test)
    meta = json.loads((tmp_path / "plain" / "dataset" / "meta.json").read_text())
    assert meta["feature_columns"] == ["id", "f0", "f1", "f2"]
