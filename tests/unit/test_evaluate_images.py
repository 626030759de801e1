"""The evaluate step on image data (`kdflow.evaluation.summary`): zoo teachers, student and
baseline scored on the test pixels (uint8, as the models take them), timed on them and from
the image files (decoding included), the student exported to ONNX with uint8 input and
checked on every test image, the student's mistakes recorded with their thumbnails, and a
champion compared only when it reads images of this size."""

from __future__ import annotations

import base64
import functools
import io
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kdflow.config import GateConfig
from kdflow.data.prepared import DatasetMeta
from tests.unit.image_helpers import prepared_images

SPECS = {"t0": "cnn:channels=4-8,hidden=16", "t1": "mlp:hidden=32", "student": "cnn",
         "baseline": "mlp:hidden=16"}


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A prepared dataset of digit PNGs (1 × 8 × 8, 3 classes) and four untrained zoo
    models saved for it: two teachers, the student and the baseline."""
    from kdflow.data.sources import open_source
    from kdflow.models.sources import build, source_for

    root = tmp_path_factory.mktemp("image-eval")
    data = open_source(str(prepared_images(root / "data")))
    stats = data.input_stats()
    folders = {}
    for i, (name, spec) in enumerate(SPECS.items()):
        torch.manual_seed(i)
        folders[name] = source_for(spec).save(build(spec, data.meta, stats), root / name,
                                              data.meta, {})
    return SimpleNamespace(root=root, data=data, meta=data.meta, folders=folders)


def quick_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Time with few repeats: these tests check what is measured, not the numbers."""
    from kdflow.evaluation import summary, timing

    monkeypatch.setattr(summary, "cpu_timings", functools.partial(
        timing.cpu_timings, repeats=5, warmup=1, batch_repeats=2))


def no_registry(monkeypatch: pytest.MonkeyPatch, champion: Path | None = None) -> None:
    """No tracking store: no champion, or `champion` as version 4 of the registered model."""
    from kdflow.evaluation import summary

    version = None if champion is None else SimpleNamespace(version="4", tags={})
    monkeypatch.setattr(summary, "champion_version", lambda uri, name: version)
    if champion is not None:
        source = champion
        monkeypatch.setattr(summary, "download_model", lambda uri, model_uri, dst: Path(
            shutil.copytree(source, dst / "champion")))


@pytest.fixture(scope="module")
def evaluated(image_run, tmp_path_factory) -> SimpleNamespace:
    """One evaluation of the image run, with teacher t0 as the registry's champion."""
    from kdflow.evaluation.summary import evaluate_models

    onnx_dir = tmp_path_factory.mktemp("onnx")
    with pytest.MonkeyPatch.context() as monkeypatch:
        quick_timings(monkeypatch)
        no_registry(monkeypatch, champion=image_run.folders["t0"])
        f = image_run.folders
        summary = evaluate_models(
            image_run.root / "data", [f["t0"], f["t1"]], f["student"], f["baseline"],
            GateConfig(), None, "digits", {"sha256": image_run.meta.sha256},
            onnx_dir=onnx_dir,
        )
    return SimpleNamespace(summary=summary, onnx=onnx_dir / "model.onnx")


def probabilities(folder: Path, x: np.ndarray) -> np.ndarray:
    from kdflow.models.inference import predict_logits
    from kdflow.models.sources import load_saved

    model, _ = load_saved(folder)
    return torch.softmax(predict_logits(model, x), -1).numpy()


def test_every_model_is_scored_on_the_test_pixels(image_run, evaluated):
    test = image_run.data.read("test")
    assert test.x.dtype == np.uint8
    probs = {name: probabilities(folder, test.x) for name, folder in image_run.folders.items()}
    summary = evaluated.summary
    entries = {"t0": summary["teachers"][0], "t1": summary["teachers"][1],
               "student": summary["student"], "baseline": summary["baseline"]}
    for name, entry in entries.items():
        assert entry["spec"] == SPECS[name]
        assert entry["accuracy"] == pytest.approx(float((probs[name].argmax(1) == test.y).mean()))
    ensemble = (probs["t0"] + probs["t1"]) / 2
    assert summary["ensemble"]["accuracy"] == pytest.approx(
        float((ensemble.argmax(1) == test.y).mean()))
    assert summary["student"]["agreement"] == pytest.approx(
        float((probs["student"].argmax(1) == ensemble.argmax(1)).mean()))
    # The champion (teacher t0's folder) is scored on the same pixels.
    assert summary["champion"]["version"] == 4
    assert summary["champion"]["accuracy"] == pytest.approx(entries["t0"]["accuracy"])
    assert "champion v4" in summary["gates"]["no_regression_vs_champion"]["detail"]


def test_image_models_are_timed_on_pixels_and_from_the_files(image_run, evaluated):
    from kdflow.models.sources import load_saved
    from kdflow.models.zoo import profile

    summary = evaluated.summary
    for role in ("student", "ensemble"):
        assert summary[role]["latency_image_ms"] > 0, role
        assert summary[role]["throughput_image_per_s"] > 0, role
    for entry in (summary["baseline"], *summary["teachers"]):
        assert "latency_image_ms" not in entry
        assert entry["latency_ms"] > 0 and entry["latency_text_ms"] is None
    student, _ = load_saved(image_run.folders["student"])
    assert summary["student"]["flops"] == profile(student)["flops"] > 0


def test_the_onnx_student_takes_uint8_pixels_and_matches_on_every_test_image(
    image_run, evaluated
):
    from kdflow.models.onnx import onnx_session

    onnx = evaluated.summary["student"]["onnx"]
    assert onnx["exported"] is True and onnx["latency_ms"] > 0
    assert onnx["parity"]["rows"] == image_run.meta.rows["test"]
    assert onnx["parity"]["predictions_match"] and onnx["parity"]["logits_close"]
    (features,) = onnx_session(evaluated.onnx).get_inputs()
    assert (features.type, features.shape) == ("tensor(uint8)", ["batch", 1, 8, 8])


def test_the_students_mistakes_are_recorded_most_confident_first(image_run, evaluated):
    test = image_run.data.read("test")
    student = probabilities(image_run.folders["student"], test.x)
    wrong = evaluated.summary["misclassified"]
    assert wrong["rows"] == len(test.y)
    assert wrong["count"] == int((student.argmax(1) != test.y).sum()) > 0
    shown = wrong["shown"]
    assert len(shown) == min(16, wrong["count"])
    confidence = [m["student_probability"] for m in shown]
    assert confidence == sorted(confidence, reverse=True)
    classes = image_run.meta.classes
    for m in shown:
        assert m["true"] == classes[test.y[m["row"]]] != m["student"]
        assert m["student"] == classes[student[m["row"]].argmax()]
        assert m["student_probability"] == pytest.approx(float(student[m["row"]].max()))
    from PIL import Image

    strip = Image.open(io.BytesIO(base64.b64decode(wrong["thumbnails"]["png"])))
    assert (strip.mode, strip.size) == ("L", (8 * len(shown), 8))
    assert wrong["thumbnails"]["size"] == [8, 8] and wrong["thumbnails"]["channels"] == 1
    first = np.asarray(strip)[:, :8]
    assert np.array_equal(first, test.x[shown[0]["row"], 0])  # 8 × 8 stays as it is


def test_the_report_shows_the_image_latency_and_the_mistakes(evaluated):
    from kdflow.report.markdown import report_markdown

    report = report_markdown(evaluated.summary)
    assert "From the image files, decoding and resizing included" in report
    assert "## Misclassified test images" in report
    first = evaluated.summary["misclassified"]["shown"][0]
    assert f"| {first['row']} | {first['true']} | {first['student']} (" in report


def test_a_student_that_gets_every_image_right_has_nothing_to_show(image_run):
    from kdflow.data.sources import open_source
    from kdflow.evaluation.summary import TestRows, misclassified_images

    rows = TestRows(open_source(str(image_run.root / "data")))
    perfect = torch.nn.functional.one_hot(torch.from_numpy(rows.y), 3).float()
    found = misclassified_images(rows, perfect, perfect, image_run.meta)
    assert found == {"count": 0, "rows": len(rows.y), "shown": []}


def test_large_images_are_shrunk_to_thumbnails_keeping_their_aspect():
    from kdflow.evaluation.summary import thumbnail_strip

    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 64, 128), dtype=np.uint8)
    strip = thumbnail_strip(pixels)
    assert strip["size"] == [16, 32] and strip["channels"] == 3
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(strip["png"])))
    assert (image.mode, image.size) == ("RGB", (3 * 32, 16))


def image_meta(channels: int = 1, size: tuple[int, int] = (8, 8)) -> DatasetMeta:
    return DatasetMeta("label", [], ["0", "1", "2"], [channels, *size], "s", {}, "mem",
                       kind="image")


def test_same_schema_compares_image_size_channels_and_classes():
    from kdflow.evaluation.summary import same_schema, schema_difference

    spec = {"class_names": ["0", "1", "2"], "feature_names": [], "inputs": "image",
            "image_size": [8, 8], "channels": 1}
    assert same_schema(spec, image_meta())
    assert not same_schema(spec, image_meta(size=(16, 16)))
    assert schema_difference(spec, image_meta(3)) == (
        "it reads 1 × 8 × 8 images; this data is 3 × 8 × 8 (channels × height × width)")
    assert not same_schema({**spec, "class_names": ["0", "1"]}, image_meta())
    # Fail closed: a spec without the image keys, or an image model on numeric columns.
    assert schema_difference({k: v for k, v in spec.items() if k != "channels"},
                             image_meta()) == "its spec.json records no image size and channels"
    assert not same_schema({"class_names": ["0", "1", "2"], "feature_names": []}, image_meta())
    numeric = DatasetMeta("label", [], ["0", "1", "2"], [0], "s", {}, "mem")
    assert not same_schema(spec, numeric)


def test_a_champion_of_another_image_size_is_not_compared_and_the_gate_says_why(
    image_run, tmp_path, monkeypatch
):
    import dataclasses

    from kdflow.evaluation.summary import TestRows, champion_comparison

    no_registry(monkeypatch, champion=image_run.folders["t0"])
    bigger = dataclasses.replace(image_run.meta, input_shape=[1, 16, 16])
    rows = TestRows(image_run.data)
    champion, reason = champion_comparison(None, "digits", bigger, rows)
    assert champion is None
    assert reason == ("champion v4 not compared: it reads 1 × 8 × 8 images; this data is "
                      "1 × 16 × 16 (channels × height × width)")
    # The same champion on its own size is compared, from pixels given as a Split too.
    found, reason = champion_comparison(None, "digits", image_run.meta,
                                        image_run.data.read("test"))
    assert reason is None and found is not None and found["version"] == 4


def test_the_gate_names_a_champion_it_could_not_compare_and_a_refused_export_is_recorded(
    image_run, tmp_path, monkeypatch
):
    from kdflow.data.prepared import write_prepared
    from kdflow.evaluation import summary
    from kdflow.models.onnx import NotExportable
    from kdflow.models.sources import build, source_for

    numeric = write_prepared(tmp_path / "numeric", {"train": _frame(), "test": _frame()},
                             "label", None, "c" * 64, "mem")
    champion = source_for("mlp").save(build("mlp:hidden=4", numeric, None), tmp_path / "c",
                                      numeric, {})
    quick_timings(monkeypatch)
    no_registry(monkeypatch, champion=champion)

    def refuse(*args, **kwargs):
        raise NotExportable("cannot export the model to ONNX: RuntimeError: no")

    monkeypatch.setattr(summary, "export_with_parity", refuse)
    f = image_run.folders
    result = summary.evaluate_models(
        image_run.root / "data", [f["t1"]], f["student"], f["baseline"], GateConfig(), None,
        "digits", {"sha256": image_run.meta.sha256},
    )
    assert result["student"]["onnx"] == {
        "exported": False, "reason": "cannot export the model to ONNX: RuntimeError: no"}
    assert result["student"]["latency_image_ms"] > 0
    assert result["champion"] is None and result["champion_seen"] == 4
    gate = result["gates"]["no_regression_vs_champion"]
    assert not gate["passed"] and gate["detail"].startswith(
        "champion v4 not compared: it does not read images; this data is 1 × 8 × 8 images; "
        "a model that reads other data replaces the champion only by hand")
    assert result["passed"] is False, "a champion that cannot be scored fails closed"


def _frame():
    import pandas as pd

    return pd.DataFrame({"a": [0.0, 1.0, 2.0], "label": ["0", "1", "2"]})


def test_the_report_page_shows_the_grid_and_the_latency_from_files(evaluated, tmp_path):
    import json

    from kdflow.report.pages import SUMMARY, write_report

    (tmp_path / SUMMARY).write_text(json.dumps(evaluated.summary))
    page = write_report(tmp_path).read_text()
    assert '<figure id="misclassified">' in page and "Misclassified test images." in page
    assert "From the image files, decoding and resizing included" in page
    assert (tmp_path / "plots" / "misclassified.png").stat().st_size > 1000
