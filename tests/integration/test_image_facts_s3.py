"""Image data on S3: a folder per class under an s3:// prefix, and a table of s3:// paths,
read from moto's standalone S3 server on 127.0.0.1 (the endpoint only in the environment)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.integration.servers import S3, S3_ENV, moto_s3
from tests.unit.test_image_facts import image_folder, noise

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with moto_s3("kdflow-images") as server, pytest.MonkeyPatch.context() as env:
        for name, value in S3_ENV.items():
            env.setenv(name, value)
        env.setenv("AWS_ENDPOINT_URL", server.endpoint)
        yield server


def _upload(s3: S3, local: Path, prefix: str) -> None:
    client = s3.client()
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(local).as_posix()}"
        client.put_object(Bucket=s3.bucket, Key=key, Body=path.read_bytes())


def test_an_s3_image_folder_gives_the_same_facts_as_the_local_one(s3: S3, tmp_path: Path) -> None:
    from kdflow.data.image_facts import is_image_data, read_image_set, usable_rows
    from kdflow.validation.contract import default_contract
    from kdflow.validation.image_checks import validate_images
    from kdflow.validation.image_shapes import image_shape

    local = image_folder(tmp_path / "imgs", {"cat": 3, "dog": 3}, formats=("PNG", "JPEG"))
    (local / "dog" / "broken.png").write_bytes(noise()[:40])
    (local / "cat" / "README.txt").write_text("cats")
    _upload(s3, local, "data/train")
    s3.client().put_object(Bucket=s3.bucket, Key="data/train/empty/", Body=b"")
    uri = f"s3://{s3.bucket}/data/train"
    assert is_image_data(uri, None) and is_image_data(uri + "/", None)
    assert not is_image_data(f"{uri}/cat/000.png", None), "a file is not a folder"
    remote, mirror = read_image_set(uri), read_image_set(str(local))
    columns = ["path", "label", "bytes", "sha256", "format", "width", "decodes", "error"]
    pd.testing.assert_frame_equal(remote.facts[columns], mirror.facts[columns])
    assert remote.other_files == ["cat/README.txt"] and remote.empty_classes == ["empty"]
    assert remote.load([0]) == [(local / "cat" / "000.png").read_bytes()]
    report = validate_images(remote, None, default_contract(images=True))
    failed = {f.check: f.message for f in report.failures}
    assert set(failed) == {"unreadable_images", "empty_classes"}
    assert (
        "1 of 7 train images" in failed["unreadable_images"]
        and "dog/broken.png" in (failed["unreadable_images"])
    )
    assert len(usable_rows(remote)) == 6 and image_shape(remote, None, 0) == [3, 8, 8]


def test_an_s3_table_of_relative_s3_and_missing_paths(s3: S3, tmp_path: Path) -> None:
    from kdflow.data.image_facts import read_image_set

    local = image_folder(tmp_path / "imgs", {"a": 1, "b": 1})
    _upload(s3, local, "tables/imgs")
    table = tmp_path / "list.parquet"
    pd.DataFrame(
        {
            "image": ["imgs/a/000.png", f"s3://{s3.bucket}/tables/imgs/b/000.png", "imgs/gone.png"],
            "label": ["a", "b", "b"],
        }
    ).to_parquet(table)
    s3.client().put_object(Bucket=s3.bucket, Key="tables/list.parquet", Body=table.read_bytes())
    image_set = read_image_set(f"s3://{s3.bucket}/tables/list.parquet", image_column="image")
    assert image_set.facts["decodes"].tolist() == [True, True, False]
    assert image_set.missing == ["imgs/gone.png"]
    assert image_set.load([1]) == [(local / "b" / "000.png").read_bytes()]
