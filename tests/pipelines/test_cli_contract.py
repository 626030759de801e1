"""`kdflow contract profile`: a contract from trusted data that a later run is held to."""

from __future__ import annotations

import pandas as pd
from sklearn.datasets import load_digits

from kdflow.validation.checks import validate_dataset
from kdflow.validation.contract import DataContract
from pipelines.cli import main


def _digits(path, rows=600):
    digits = load_digits()
    frame = pd.DataFrame(digits.data[:rows], columns=[f"px{i}" for i in range(64)])
    frame["label"] = digits.target[:rows]
    frame.to_parquet(path)
    return frame


def test_profiled_contract_passes_its_source_and_fails_unit_errors(tmp_path, capsys):
    frame = _digits(tmp_path / "ref.parquet")
    assert main(["contract", "profile", str(tmp_path / "ref.parquet"), "-o",
                 str(tmp_path / "contract.yaml")]) == 0
    assert "--contract" in capsys.readouterr().out
    contract = DataContract.from_yaml(tmp_path / "contract.yaml")
    assert sorted(map(int, contract.classes)) == list(range(10))
    assert validate_dataset(str(tmp_path / "ref.parquet"), None, contract).passed
    scaled = frame.copy()
    scaled["px20"] = scaled["px20"] * 1000  # a unit error in one column
    scaled.to_parquet(tmp_path / "scaled.parquet")
    report = validate_dataset(str(tmp_path / "scaled.parquet"), None, contract)
    assert not report.passed
    assert any(f.column == "px20" for f in report.failures)


def test_profiling_a_missing_file_is_one_line(tmp_path, capsys):
    assert main(["contract", "profile", str(tmp_path / "nope.parquet")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file" in err[0]
