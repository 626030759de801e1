"""Teachers (`kdflow.distill.teachers`) without Ray: a teacher's outputs filling its cache
entry, cached teachers read back without running them, and teachers that do not fit the
data refused."""

from __future__ import annotations

import numpy as np
import pytest

from kdflow.config import DistillConfig
from kdflow.data.prepared import read_split
from kdflow.data.sources import load_meta
from kdflow.distill import cache as teacher_cache
from kdflow.distill import teachers
from kdflow.distill.tasks import Classification
from kdflow.distill.teachers import _teacher_task, load_teacher, teacher_outputs, teacher_spec
from kdflow.errors import KdflowError, ModelFormatError
from kdflow.models.artifacts import save_model
from kdflow.models.inference import predict_logits
from kdflow.models.zoo import build_classifier
from tests.unit.distill_helpers import prepared


@pytest.fixture
def data_and_teacher(tmp_path):
    data = prepared(tmp_path / "data")
    meta = load_meta(str(data))
    teacher = build_classifier("mlp:hidden=8", [4], 3, 4)
    save_model(teacher, tmp_path / "teacher", meta.classes, meta.feature_columns)
    return data, meta, tmp_path / "teacher"


def _entry_meta(data, meta, teacher, top_k: int) -> dict:
    return {
        "dataset_key": teacher_cache.dataset_key(str(data)),
        "teacher_sha256": teacher_spec(str(teacher))["weights_sha256"],
        "top_k": top_k,
        "rows": meta.rows["train"],
        "classes": meta.n_classes,
    }


def test_teacher_task_fills_the_cache_in_float16_at_top_k(data_and_teacher, tmp_path):
    data, meta, teacher = data_and_teacher
    rows = meta.rows["train"]
    entry_meta = _entry_meta(data, meta, teacher, top_k=2)
    uri = str(tmp_path / "cache")
    # What in-process runs (workers=0) do for an uncached teacher: the Ray Data fill's
    # read, predictor and shards, in this process.
    out = _teacher_task(str(data), str(teacher), "classification", uri, entry_meta)
    assert out["val_logits"].shape == (meta.rows["val"], 3)
    assert out["val_logits"].dtype == np.float16
    entry = teacher_cache.open_entry(uri)
    assert entry is not None and entry.matches(entry_meta)
    shard = entry.train_rows(0, rows)
    assert shard["train_values"].dtype == np.float16 and shard["train_values"].shape == (rows, 2)
    assert shard["train_indices"].dtype == np.int16
    model, _ = load_teacher(str(teacher), meta)
    values, indices = predict_logits(model, read_split(data, "train").x).half().float().topk(2)
    np.testing.assert_array_equal(shard["train_values"], values.half().numpy())
    np.testing.assert_array_equal(shard["train_indices"], indices.numpy())
    np.testing.assert_array_equal(entry.rows("val"), out["val_logits"])


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_cached_teachers_are_read_back_without_running_them(
    data_and_teacher, tmp_path, monkeypatch, mode
):
    data, meta, teacher = data_and_teacher
    root = str(tmp_path / "storage")
    entry_meta = _entry_meta(data, meta, teacher, top_k=0)
    uri = teacher_cache.entry_uri(root, entry_meta["dataset_key"], entry_meta["teacher_sha256"], 0)
    filled = _teacher_task(str(data), str(teacher), "classification", uri, entry_meta)

    def no_ray(**_: object) -> None:
        raise AssertionError("a cached teacher must not start Ray")

    monkeypatch.setattr(teachers, "ensure_ray", no_ray)
    cfg = DistillConfig(teacher_mode=mode)
    (out,) = teacher_outputs(str(data), [str(teacher)], meta, cfg, root, 0, Classification())
    assert out.cache_hit and out.seconds == 0.0
    np.testing.assert_array_equal(out.val_logits, filled["val_logits"])
    assert out.cache == (uri if mode == "offline" else None), "online runs read no cache rows"


def test_a_teacher_for_other_data_is_refused_with_both_shapes(data_and_teacher, tmp_path):
    _, meta, _ = data_and_teacher
    other = build_classifier("mlp:hidden=8", [4], 5, 4)
    save_model(other, tmp_path / "other", list("abcde"), meta.feature_columns)
    with pytest.raises(KdflowError, match="expects 4 features and 5 classes; the data has 4 "
                                          "and 3"):
        load_teacher(str(tmp_path / "other"), meta)


def test_a_folder_without_a_spec_is_not_a_teacher(tmp_path):
    with pytest.raises(ModelFormatError, match="no spec.json; a kdflow model is a folder"):
        teacher_spec(str(tmp_path))
