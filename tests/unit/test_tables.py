"""Reading tables (`kdflow.data.tables`): local and S3, streaming, and a clear DataError for
every unreadable file."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdflow.data.tables import TableSource, open_table, read_table
from kdflow.errors import DataError


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.normal(size=50), "b": np.arange(50), "label": ["x", "y"] * 25})


@pytest.fixture
def parquet_file(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "data.parquet"
    frame.to_parquet(path, index=False)
    return path


def test_reads_parquet_and_csv_alike(
    tmp_path: Path, frame: pd.DataFrame, parquet_file: Path
) -> None:
    csv = tmp_path / "data.csv"
    frame.to_csv(csv, index=False)
    pd.testing.assert_frame_equal(read_table(str(parquet_file)), frame, check_dtype=False)
    pd.testing.assert_frame_equal(read_table(str(csv)), frame, check_dtype=False)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"absent\.parquet: no such file"):
        read_table(str(tmp_path / "absent.parquet"))


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory; give the path of one Parquet or CSV file"):
        read_table(str(tmp_path))


@pytest.mark.parametrize("name", ["empty.parquet", "empty.csv"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataError, match=r"the file is empty \(0 bytes\)"):
        read_table(str(tmp_path / name))


@pytest.mark.parametrize("text", ["a,b,label\n", "a,b,label"])
def test_header_only_csv(tmp_path: Path, text: str) -> None:
    (tmp_path / "head.csv").write_text(text)
    with pytest.raises(DataError, match="has a header but no rows"):
        read_table(str(tmp_path / "head.csv"))


def test_parquet_without_rows(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.iloc[:0].to_parquet(tmp_path / "none.parquet")
    with pytest.raises(DataError, match="has no rows"):
        read_table(str(tmp_path / "none.parquet"))


def test_truncated_parquet(tmp_path: Path, parquet_file: Path) -> None:
    data = parquet_file.read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        DataError, match=r"not a readable Parquet file \(truncated or another format"
    ):
        read_table(str(tmp_path / "cut.parquet"))


def test_text_file_named_parquet(tmp_path: Path) -> None:
    (tmp_path / "fake.parquet").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_table(str(tmp_path / "fake.parquet"))


def test_truncated_csv(tmp_path: Path) -> None:
    (tmp_path / "cut.csv").write_text("a,b,label\n1,2,0\n3,4,1\n5,")
    with pytest.raises(DataError, match=r"cut\.csv: not a well-formed CSV file \(truncated"):
        read_table(str(tmp_path / "cut.csv"))


def test_csv_with_text_late_in_a_numeric_column_keeps_the_text(tmp_path: Path) -> None:
    # Far past the first 4 MB block, where pyarrow inferred int64.
    lines = ["a,b,label"] + ["1,2,0"] * 700_000 + ["oops,2.5,1"]
    (tmp_path / "late.csv").write_text("\n".join(lines) + "\n")
    with open_table(str(tmp_path / "late.csv")) as source:
        assert source.schema.field("a").type == pa.string()
        assert source.schema.field("b").type == pa.float64()
        assert source.num_rows == 700_001


def test_iter_batches_streams_the_columns_asked_for(parquet_file: Path) -> None:
    with open_table(str(parquet_file)) as source:
        batches = list(source.iter_batches(["b"], batch_rows=16))
    assert [b.num_rows for b in batches] == [16, 16, 16, 2]
    assert all(b.schema.names == ["b"] for b in batches)


def test_take_returns_rows_by_number(parquet_file: Path, frame: pd.DataFrame) -> None:
    with open_table(str(parquet_file)) as source:
        rows = source.take([40, 3, 17, 3], batch_rows=8)
    assert list(rows.index) == [3, 17, 40]
    assert list(rows["b"]) == [3, 17, 40]


def test_frames_mixing_text_and_numbers_become_text() -> None:
    source = TableSource.from_frame(pd.DataFrame({"a": [1.0, "n/a", 3], "label": [0, 1, 0]}))
    assert source.schema.field("a").type == pa.string()


def test_unsupported_scheme() -> None:
    with pytest.raises(DataError, match="unsupported scheme 'gs'"):
        read_table("gs://bucket/data.parquet")


# --------------------------------------------------------------------------- S3 (moto)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    import boto3

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": moto_endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    client.create_bucket(Bucket="kdflow-data")
    yield client


def test_reads_parquet_from_s3(s3: object, parquet_file: Path, frame: pd.DataFrame) -> None:
    s3.put_object(Bucket="kdflow-data", Key="train.parquet", Body=parquet_file.read_bytes())  # type: ignore[attr-defined]
    pd.testing.assert_frame_equal(read_table("s3://kdflow-data/train.parquet"), frame)


def test_missing_bucket_and_missing_key_on_s3(s3: object) -> None:
    with pytest.raises(DataError, match="bucket 'no-such-bucket' does not exist"):
        read_table("s3://no-such-bucket/train.parquet")
    with pytest.raises(DataError, match="no such object in bucket 'kdflow-data'"):
        read_table("s3://kdflow-data/absent.parquet")


def test_parquet_written_in_row_groups_streams_across_them(tmp_path: Path) -> None:
    table = pa.table({"a": np.arange(100.0), "label": np.arange(100) % 2})
    pq.write_table(table, tmp_path / "groups.parquet", row_group_size=30)
    with open_table(str(tmp_path / "groups.parquet")) as source:
        assert source.num_rows == 100
        assert sum(b.num_rows for b in source.iter_batches(["a"], batch_rows=25)) == 100
        assert list(source.take([29, 30, 99])["a"]) == [29.0, 30.0, 99.0]
