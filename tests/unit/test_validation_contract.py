"""Data contracts: YAML checked on load, cross-field rules, the lenient default."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from kdflow.config import field_docs
from kdflow.errors import ConfigError
from kdflow.validation.contract import DataContract, FeatureSpec, default_contract


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "contract.yaml"
    path.write_text(text)
    return path


def test_yaml_round_trip_keeps_every_field(tmp_path: Path) -> None:
    contract = DataContract(
        label_column="y",
        classes=["cat", "dog"],
        features={"a": FeatureSpec(min=0.0, max=1.0), "b": FeatureSpec(dtype="int")},
        max_null_fraction=0.1,
        min_rows_per_class=5,
        input_shape=[2],
    )
    assert DataContract.from_yaml(contract.to_yaml(tmp_path / "c.yaml")) == contract


def test_yaml_carries_each_fields_documentation(tmp_path: Path) -> None:
    text = default_contract().to_yaml(tmp_path / "c.yaml").read_text()
    assert "# Largest allowed ratio of the biggest to the smallest class count" in text
    assert "max_class_imbalance: 100.0" in text


def test_unknown_key_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "label_column: y\nmax_nul_fraction: 0.1\n")
    with pytest.raises(ConfigError, match=r"contract\.yaml: unknown key max_nul_fraction") as err:
        DataContract.from_yaml(path)
    assert err.value.option == "max_nul_fraction"
    assert "max_null_fraction" in str(err.value)  # the allowed keys are listed


def test_unknown_key_of_a_feature_names_the_feature(tmp_path: Path) -> None:
    path = write(tmp_path, "features:\n  pixel:\n    minimum: 0\n")
    with pytest.raises(ConfigError, match=r"unknown key features\.pixel\.minimum"):
        DataContract.from_yaml(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_null_fraction: lots\n", "max_null_fraction must be a number, got 'lots'"),
        ("min_rows_per_class: 2.5\n", "min_rows_per_class must be an integer"),
        ("min_rows_per_class: true\n", "min_rows_per_class must be an integer, got True"),
        ("check_leakage: 1\n", "check_leakage must be true or false"),
        ("classes: [0, 1.5]\n", "classes must be a list of a string or an integer"),
        ("input_shape: 64\n", "input_shape must be a list of an integer or null"),
        ("features: [a, b]\n", "features must be a mapping of column names"),
        ("features:\n  a:\n    max: high\n", "features.a.max must be a number or null"),
        ("on_constant_feature: maybe\n", "on_constant_feature must be one of 'fail', 'warn'"),
    ],
)
def test_wrong_type_names_the_key_never_a_type_error(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        DataContract.from_yaml(write(tmp_path, text))


def test_contract_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a mapping of keys to values, got list"):
        DataContract.from_yaml(write(tmp_path, "- label\n"))


def test_invalid_yaml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        DataContract.from_yaml(write(tmp_path, "classes: [0, 1\n"))
    with pytest.raises(ConfigError, match="cannot read the contract"):
        DataContract.from_yaml(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"max_null_fraction": 1.5}, "max_null_fraction"),
        ({"max_duplicate_fraction": -0.1}, "max_duplicate_fraction"),
        ({"min_rows_per_class": 0}, "min_rows_per_class"),
        ({"max_class_imbalance": 0.5}, "max_class_imbalance"),
        ({"max_drift_ks": 0.0}, "max_drift_ks"),
        ({"classes": [1]}, "classes"),
        ({"classes": [1, 1, 2]}, "classes"),
        ({"features": {"label": FeatureSpec()}}, "features"),
        ({"features": {}}, "features"),
        ({"input_shape": [0, 8]}, "input_shape"),
        ({"on_constant_feature": "ignore"}, "on_constant_feature"),
    ],
)
def test_cross_field_checks_name_the_field(kwargs: dict, option: str) -> None:
    with pytest.raises(ConfigError) as err:
        DataContract(**kwargs)
    assert err.value.option == option


def test_feature_spec_checks_its_range() -> None:
    with pytest.raises(ConfigError, match=r"min \(2\.0\) is larger than max \(1\.0\)"):
        FeatureSpec(min=2.0, max=1.0)
    with pytest.raises(ConfigError, match="must be a finite number"):
        FeatureSpec(max=float("inf"))


def test_input_shape_must_match_the_number_of_features() -> None:
    features = {f"f{i}": FeatureSpec() for i in range(63)}
    with pytest.raises(
        ConfigError, match=r"input_shape \[1, 8, 8\] needs 64 features, but there are 63"
    ):
        DataContract(features=features, input_shape=[1, 8, 8])


def test_errors_from_yaml_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "classes: [3]\n")
    with pytest.raises(ConfigError, match=r"contract\.yaml: classes needs at least 2 classes"):
        DataContract.from_yaml(path)


def test_default_contract_is_lenient_but_checks_the_basics() -> None:
    contract = default_contract("target", input_shape=[1, 8, 8])
    assert contract.label_column == "target"
    assert contract.input_shape == [1, 8, 8]
    assert contract.features is None and contract.classes is None
    assert contract.max_null_fraction == 0.0 and contract.check_leakage
    assert contract.on_constant_feature == "warn"


def test_every_field_is_documented() -> None:
    for cls in (DataContract, FeatureSpec):
        assert set(field_docs(cls)) == {f.name for f in fields(cls)}
