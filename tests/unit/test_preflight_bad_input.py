"""Preflight (`kdflow.preflight.check_run`) on bad input that used to hang or go wrong later:
more Ray workers than the machine can place, labels that cannot be matched or split, and a
contract's features as the columns that train."""

from __future__ import annotations

import pandas as pd
import pytest

from kdflow.config import DataConfig, DistillConfig, RunConfig, TeacherConfig
from kdflow.errors import ConfigError
from kdflow.preflight import check_run
from kdflow.validation.contract import DataContract, FeatureSpec


@pytest.fixture
def table(tmp_path):
    def write(name: str, labels: list, rows: int = 20) -> str:
        frame = pd.DataFrame({"a": range(rows), "b": [i * 2 for i in range(rows)],
                              "y": [labels[i % len(labels)] for i in range(rows)]})
        path = tmp_path / name
        frame.to_csv(path, index=False) if name.endswith(".csv") else frame.to_parquet(path)
        return str(path)

    return write


def _cfg(data: str, test: str | None = None, workers: int = 1, contract: str | None = None,
         input_shape: list[int] | None = None, **distill) -> RunConfig:
    return RunConfig(
        data=DataConfig(data=data, test_data=test, label_column="y", contract=contract,
                        input_shape=input_shape),
        teachers=TeacherConfig(teachers=["mlp:hidden=4"]),
        distill=DistillConfig(student="mlp:hidden=4", workers=workers, **distill),
    )


@pytest.fixture
def two_cpus(monkeypatch):
    import torch

    monkeypatch.setattr("kdflow.distill.runtime.cpu_budget", lambda: 2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_more_workers_than_cpus_is_refused(table, two_cpus, monkeypatch) -> None:
    data = table("d.csv", [0, 1])
    with pytest.raises(ConfigError) as err:
        check_run(_cfg(data, workers=8))
    assert str(err.value) == (
        "--workers: 8 Ray Train workers need 8 CPUs; this machine has 2 (use --workers 2 or "
        "fewer, or --ray-address for a cluster)"
    )
    assert err.value.option == "--workers"
    check_run(_cfg(data, workers=2))  # as many as the CPUs: fine
    # A cluster may autoscale: not checked.
    check_run(_cfg(data, workers=8, ray_address="http://head:8265",
                   storage_path="s3://bucket/kd"))
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    check_run(_cfg(data, workers=8))


def test_with_gpus_each_worker_needs_a_gpu(table, two_cpus, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="--workers: 2 Ray Train workers need 2 GPUs; this "
                                          "machine has 1 "):
        check_run(_cfg(table("d.csv", [0, 1]), workers=2))


def test_use_gpu_on_without_a_gpu_for_the_local_ray_is_refused(table, two_cpus,
                                                                monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = table("d.csv", [0, 1])
    with pytest.raises(ConfigError) as err:
        check_run(_cfg(data, use_gpu="on"))
    assert str(err.value) == (
        "--use-gpu on: this machine has no GPU for the local Ray (use auto or off, or "
        "--ray-address for a cluster with GPU workers)"
    )
    assert err.value.option == "--use-gpu"
    check_run(_cfg(data, use_gpu="auto"))
    # A cluster may start GPU workers (scaled from zero): not checked.
    check_run(_cfg(data, use_gpu="on", ray_address="http://head:8265",
                   storage_path="s3://bucket/kd"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_run(_cfg(data, use_gpu="on"))


def test_text_test_labels_against_numbers_are_refused(table) -> None:
    with pytest.raises(ConfigError) as err:
        check_run(_cfg(table("d.csv", [0, 1]), table("t.csv", ["a", "b"])))
    assert str(err.value).startswith("--test-data: label column 'y' holds text in ")
    assert "('a', 'b') but numbers in " in str(err.value)
    assert err.value.option == "--test-data"
    # Labels equal as numbers are one class: 0.0 and "0" against 0 pass.
    check_run(_cfg(table("d.csv", [0, 1]), table("t.csv", [0.0, 1.0])))
    check_run(_cfg(table("d.csv", [0, 1]), table("t.parquet", ["0", "1"])))


def test_a_single_row_class_is_refused_when_kdflow_splits(table) -> None:
    data = table("d.csv", [0, 1] * 9 + [5, 6], rows=20)  # 5 and 6 have one row each
    with pytest.raises(ConfigError) as err:
        check_run(_cfg(data))
    assert str(err.value).startswith("--label-column: classes 5, 6 have a single row in ")
    assert err.value.option == "--label-column"
    check_run(_cfg(data, table("t.csv", [0, 1])))  # with --test-data nothing is split off


def test_a_contracts_features_set_the_feature_count(table, tmp_path) -> None:
    data = table("d.csv", [0, 1])
    contract = tmp_path / "c.yaml"
    DataContract(label_column="y", features={"a": FeatureSpec()}).to_yaml(contract)
    cfg = _cfg(data, contract=str(contract), input_shape=[1])
    check_run(cfg)  # before: "--input-shape: 1 holds 1 values but ... has 2 feature columns"
    DataContract(label_column="y", features={"a": FeatureSpec(), "z": FeatureSpec()}).to_yaml(
        contract)
    with pytest.raises(ConfigError, match="--contract: 'z' is not a column of "):
        check_run(cfg)
