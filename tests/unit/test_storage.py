"""Storage (`kdflow.data.storage`) on a local folder: the same calls as on S3
(tests/integration/test_storage_s3.py), and Parquet row ranges by row group."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdflow.data import storage


def test_storage_on_a_folder_round_trips_and_leaves_no_temporary_files(tmp_path):
    root = str(tmp_path / "store")
    uri = storage.join(root, "a", "b.bin")
    storage.write_bytes(uri, b"0123456789")
    assert storage.exists(uri) and storage.size(uri) == 10
    assert storage.read_range(uri, 3, 4) == b"3456"
    assert storage.list_files(root) == ["a/b.bin"]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.txt").write_text("x")
    storage.upload_dir(tmp_path / "src", storage.join(root, "copy"))
    storage.download_dir(storage.join(root, "copy"), tmp_path / "back")
    assert (tmp_path / "back" / "f.txt").read_text() == "x"
    storage.delete(uri)
    assert not storage.exists(uri)
    with pytest.raises(storage.StorageError, match="no such file"):
        storage.read_bytes(uri)
    assert storage.join("s3://b/p/", "x", "y") == "s3://b/p/x/y"


def test_parquet_row_groups_are_respected_by_read_parquet_rows(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"v": list(range(35))}), path, row_group_size=10)
    assert storage.read_parquet_rows(str(path), 9, 21).column("v").to_pylist() == list(
        range(9, 21)
    )
    assert storage.read_parquet_rows(str(path), 30).num_rows == 5
