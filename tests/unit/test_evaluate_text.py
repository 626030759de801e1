"""The evaluate step on text data (`kdflow.evaluation.summary`): transformers teachers, student
and baseline read the test split through their own tokenizers, are timed on their encoded
inputs and from the raw text, and the student is exported to ONNX (int64 packed inputs) and
checked on every test row; a student that does not export is recorded, not fatal."""

from __future__ import annotations

import dataclasses
import functools
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from kdflow.config import GateConfig, TeacherConfig
from kdflow.data.prepared import DatasetMeta, write_prepared
from kdflow.errors import ModelFormatError

TEACHER = ("hf-config:bert:hidden_size=32,num_hidden_layers=2,num_attention_heads=2,"
           "intermediate_size=64")
STUDENT = ("hf-config:bert:hidden_size=16,num_hidden_layers=1,num_attention_heads=2,"
           "intermediate_size=32")
POSITIVE = ["good", "great", "fine", "lovely", "happy"]
NEGATIVE = ["bad", "awful", "poor", "sad", "ugly"]
FILLER = ["the", "a", "movie", "was", "very", "plot", "and", "it", "acting", "music"]


def reviews(rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """Short texts of 3 to 12 words whose one sentiment word gives the label."""
    out = []
    for _ in range(rows):
        positive = bool(rng.integers(2))
        words = list(rng.choice(FILLER, int(rng.integers(2, 12))))
        words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(
            POSITIVE if positive else NEGATIVE)))
        out.append({"text": " ".join(words), "label": "pos" if positive else "neg"})
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A prepared text dataset and four hf folders trained one epoch each: two teachers, the
    student and the baseline."""
    from kdflow.distill.driver import train_teacher

    root = tmp_path_factory.mktemp("text-eval")
    rng = np.random.default_rng(0)
    splits = {"train": reviews(160, rng), "val": reviews(32, rng), "test": reviews(48, rng)}
    data = root / "data"
    meta = write_prepared(data, splits, "label", None, "b" * 64, "mem", text_columns=["text"],
                          max_length=32)
    cfg = TeacherConfig(teacher_epochs=1, batch_size=32)
    folders = {}
    for name, spec, seed in (("t0", TEACHER, 0), ("t1", TEACHER, 1), ("student", STUDENT, 0),
                             ("baseline", STUDENT, 1)):
        train_teacher(str(data), spec, cfg, seed, root / name)
        folders[name] = root / name
    return SimpleNamespace(root=root, data=data, meta=meta, folders=folders,
                           texts=list(splits["test"]["text"]))


def quick_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Time with few repeats: these tests check the summary's shape, not the numbers."""
    from kdflow.evaluation import summary, timing

    monkeypatch.setattr(summary, "cpu_timings", functools.partial(
        timing.cpu_timings, repeats=5, warmup=1, batch_repeats=2))


def evaluate(run: SimpleNamespace, tmp_path: Path, onnx_dir: Path | None = None) -> dict:
    from kdflow.evaluation.summary import evaluate_models

    f = run.folders
    return evaluate_models(
        run.data, [f["t0"], f["t1"]], f["student"], f["baseline"], GateConfig(),
        f"sqlite:///{tmp_path / 'mlflow.db'}", "reviews", {"sha256": run.meta.sha256},
        onnx_dir=onnx_dir,
    )


@pytest.mark.slow
def test_evaluate_measures_text_models_through_their_tokenizers(text_run, tmp_path):
    from kdflow.models.hf import HfClassifier
    from kdflow.models.sources import load_saved
    from kdflow.report.markdown import report_markdown

    summary = evaluate(text_run, tmp_path, onnx_dir=tmp_path / "onnx")
    student = summary["student"]
    assert student["spec"] == STUDENT
    assert [t["spec"] for t in summary["teachers"]] == [TEACHER, TEACHER]
    rows = text_run.meta.rows["test"]
    for name, entry in [("student", student), ("baseline", summary["baseline"]),
                        *(("t", t) for t in summary["teachers"])]:
        for key in ("accuracy", "macro_f1", "ece", "nll", "agreement", "latency_ms",
                    "latency_p95_ms", "throughput_per_s", "latency_text_ms",
                    "throughput_text_per_s", "params", "file_bytes", "flops"):
            assert entry[key] is not None and entry[key] >= 0, (name, key)
        assert entry["latency_ms"] > 0 and entry["latency_text_ms"] > 0, name
    folder = text_run.folders["student"]
    model, _ = load_saved(folder)
    assert isinstance(model, HfClassifier)
    assert student["flops"] == model.flops()
    assert student["file_bytes"] == sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert student["params"] < summary["teachers"][0]["params"]
    assert np.array(student["confusion_matrix"]).sum() == rows
    assert list(student["per_class_accuracy"]) == ["neg", "pos"]
    onnx = student["onnx"]
    assert onnx["exported"] is True
    assert onnx["parity"]["rows"] == rows and onnx["parity"]["predictions_match"]
    assert onnx["file_bytes"] == (tmp_path / "onnx" / "model.onnx").stat().st_size
    assert onnx["latency_ms"] > 0 and onnx["speedup_vs_pytorch"] > 0
    assert (summary["champion"], summary["champion_seen"]) == (None, None)
    assert set(summary["gates"]) == {"retention", "beats_baseline", "compression", "speedup",
                                     "calibration", "no_regression_vs_champion",
                                     "max_class_regression", "min_agreement"}
    assert summary["gates"]["compression"]["value"] > 1
    assert "| retention | " in report_markdown(summary)


@pytest.mark.slow
def test_the_test_split_is_tokenized_once_per_tokenizer(text_run, tmp_path, monkeypatch):
    """Rows are encoded once per tokenizer fingerprint (WordPiece trained on the same data
    may give the four models one tokenizer, or more), and the labels are the same rows."""
    from kdflow.data.text import TextSource
    from kdflow.evaluation.summary import TestRows
    from kdflow.models.sources import encoder_of, load_saved

    reads: list[str] = []
    read = TextSource.read

    def counted(self, split, start=0, stop=None, encoder=None):
        reads.append(encoder.fingerprint)
        return read(self, split, start, stop, encoder)

    monkeypatch.setattr(TextSource, "read", counted)
    from kdflow.data.sources import open_source

    rows = TestRows(open_source(str(text_run.data)))
    models = [load_saved(f)[0] for f in text_run.folders.values()]
    for model in models * 2:
        split = rows.of(model)
        assert split.x.dtype == np.int64 and split.x.shape[1:] == (3, 32)
        np.testing.assert_array_equal(split.y, rows.y)
    fingerprints = {encoder_of(m).fingerprint for m in models}
    assert sorted(reads) == sorted(fingerprints)


@pytest.mark.slow
def test_a_student_that_does_not_export_is_recorded_not_fatal(text_run, tmp_path, monkeypatch):
    quick_timings(monkeypatch)

    def refuses(*args, **kwargs):
        raise RuntimeError("Unsupported: data-dependent control flow\nmore detail")

    monkeypatch.setattr(torch.onnx, "export", refuses)
    summary = evaluate(text_run, tmp_path, onnx_dir=tmp_path / "onnx")
    onnx = summary["student"]["onnx"]
    assert onnx == {"exported": False, "reason": "cannot export the model to ONNX: "
                    "RuntimeError: Unsupported: data-dependent control flow"}
    assert not (tmp_path / "onnx" / "model.onnx").exists()
    assert summary["student"]["latency_ms"] > 0
    assert "speedup" in summary["gates"]


@pytest.mark.slow
def test_an_export_that_predicts_otherwise_still_fails(text_run, monkeypatch):
    from kdflow.data.sources import open_source
    from kdflow.evaluation import summary
    from kdflow.models.sources import load_saved

    quick_timings(monkeypatch)
    data = open_source(str(text_run.data))
    rows = summary.TestRows(data)
    student, _ = load_saved(text_run.folders["student"])
    wrong = -summary.logits_on(student, rows.of(student))  # what PyTorch "said": the opposite
    with pytest.raises(ModelFormatError, match="the student's ONNX export disagrees"):
        summary._timed_with_onnx({"student": student}, wrong, rows, data.meta, None)


@pytest.mark.slow
def test_export_checked_exports_a_saved_text_model_checked_on_tokenized_probes(
    text_run, tmp_path
):
    from kdflow.data.sources import open_source
    from kdflow.models.onnx import check_parity, export_checked, onnx_session, run_onnx
    from kdflow.models.sources import encoder_of, load_saved

    path = export_checked(text_run.folders["student"], tmp_path)
    assert path == tmp_path / "model.onnx"
    session = onnx_session(path)
    (features,) = session.get_inputs()
    assert (features.name, features.shape, features.type) == (
        "features", ["batch", 3, 32], "tensor(int64)"
    )
    model, _ = load_saved(text_run.folders["student"])
    test = open_source(str(text_run.data)).read("test", encoder=encoder_of(model))
    with torch.inference_mode():
        expected = model(torch.from_numpy(test.x)).numpy()  # trimmed to the longest text
    parity = check_parity(expected, run_onnx(session, test.x))  # the graph: all 32 tokens
    assert parity.predictions_match and parity.logits_close


def test_export_checked_gives_none_for_a_model_that_does_not_export(tmp_path, monkeypatch):
    from kdflow.models.artifacts import save_model
    from kdflow.models.onnx import export_checked
    from kdflow.models.zoo import build_classifier

    save_model(build_classifier("mlp:hidden=4", [4], 2, 4), tmp_path / "m", ["a", "b"],
               ["f0", "f1", "f2", "f3"])
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: None)
    assert export_checked(tmp_path / "m", tmp_path / "out") is None


@pytest.mark.slow
def test_the_champion_is_compared_on_its_own_tokenization(text_run, monkeypatch):
    from kdflow.data.sources import open_source
    from kdflow.evaluation import summary
    from kdflow.evaluation.metrics import accuracy_of_logits
    from kdflow.models.sources import load_saved

    def download(uri, model_uri, dst):
        assert model_uri == "models:/reviews/3"
        return Path(shutil.copytree(text_run.folders["t1"], dst / "champion"))

    monkeypatch.setattr(summary, "download_model", download)
    data = open_source(str(text_run.data))
    rows = summary.TestRows(data)
    version = SimpleNamespace(version="3", tags={"kdflow.dataset_sha256": "b" * 64})
    champion = summary.champion_on_test(None, "reviews", data.meta, rows, seen=version)
    model, _ = load_saved(text_run.folders["t1"])
    assert champion is not None and champion["version"] == 3
    assert champion["accuracy"] == pytest.approx(
        accuracy_of_logits(summary.logits_on(model, rows.of(model)), rows.y))
    # A DataSource works as well as its TestRows; a numeric Split cannot serve a text model.
    assert summary.champion_on_test(None, "reviews", data.meta, data, seen=version) == champion
    assert summary.champion_on_test(None, "reviews", data.meta, rows.of(model),
                                    seen=version) is None
    other = dataclasses.replace(data.meta, text_columns=["review"])
    assert summary.champion_on_test(None, "reviews", other, rows, seen=version) is None


def test_same_schema_reads_text_columns_for_text_and_features_for_numbers():
    from kdflow.evaluation.summary import same_schema

    text = DatasetMeta("label", [], ["neg", "pos"], [32], "s", {}, "mem", kind="text",
                       text_columns=["text"], max_length=32)
    numeric = DatasetMeta("label", ["a", "b"], ["neg", "pos"], [2], "s", {}, "mem")
    hf = {"class_names": ["neg", "pos"], "feature_names": [], "text_columns": ["text"]}
    zoo = {"class_names": ["neg", "pos"], "feature_names": ["a", "b"]}
    assert same_schema(hf, text) and same_schema(zoo, numeric)
    assert not same_schema(hf, numeric) and not same_schema(zoo, text)
    assert not same_schema({**hf, "class_names": ["pos", "neg"]}, text)
    assert not same_schema({**hf, "text_columns": ["text", "text_b"]}, text)
