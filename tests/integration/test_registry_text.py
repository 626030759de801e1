"""Text classifiers in a real MLflow tracking store (sqlite, artifacts on local disk): a
registered text student serves raw text from `models:/NAME@champion` and its files are
safetensors, config, tokenizer and spec.json, nothing pickled; a registered MLflow
`transformers` model is fetched as a teacher (`models:/NAME@champion`) into a kdflow hf
folder, through the `hf:` source's checks; a registered kdflow text student still is too."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from kdflow.errors import ConfigError
from kdflow.mlflow.client import RetryPolicy, ensure_experiment, mlflow_client
from kdflow.models.sources import PrepareContext, encoder_of, load_saved
from tests.unit.test_mlflow_text import STUDENT, text_frame

pytestmark = [pytest.mark.integration]

FAST = RetryPolicy(attempts=2, first_delay_s=0.1, lock_wait_s=10.0)
PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('text-store') / 'mlflow.db'}"
    ensure_experiment(uri)  # artifacts beside the database, never under the working directory
    return uri


@pytest.fixture(scope="module")
def text_data(tmp_path_factory) -> SimpleNamespace:
    from kdflow.data.prepared import write_prepared
    from kdflow.data.sources import open_source

    folder = tmp_path_factory.mktemp("text") / "dataset"
    splits = {"train": text_frame(40, 0), "val": text_frame(8, 1), "test": text_frame(8, 2)}
    write_prepared(folder, splits, "label", None, "b" * 64, "mem", text_columns=["text"],
                   max_length=32)
    return SimpleNamespace(folder=folder, source=open_source(str(folder)), splits=splits)


def context(text_data) -> PrepareContext:
    return PrepareContext(data=text_data.source, option="--teachers")


@pytest.fixture(scope="module")
def text_student(text_data, tmp_path_factory) -> Path:
    from kdflow.models.hf_source import FromConfig

    folder = tmp_path_factory.mktemp("student") / "student"
    FromConfig().prepare(STUDENT, PrepareContext(data=text_data.source), folder)
    return folder


def predicted(folder: Path, texts: list[str]) -> tuple[list[str], np.ndarray]:
    """The saved model's own labels and probabilities for `texts`."""
    model, spec = load_saved(folder)
    encoder = encoder_of(model)
    assert encoder is not None
    with torch.inference_mode():
        probs = torch.softmax(model(torch.from_numpy(encoder.encode([texts]))), -1).numpy()
    return [spec["class_names"][i] for i in probs.argmax(1)], probs.max(1)


def register_text_student(store: str, folder: Path) -> str:
    from kdflow.mlflow.registry import register_student

    name = f"text-{uuid.uuid4().hex[:8]}"
    summary = {
        "dataset": {"sha256": "b" * 64}, "student": {"accuracy": 0.75, "spec": STUDENT},
        "baseline": {}, "ensemble": {}, "teachers": [], "champion": None,
        "champion_seen": None, "gates": {}, "passed": True,
    }
    result = register_student(folder, summary, store, name, True,
                              {"kdflow.run_id": f"run-{name}"}, policy=FAST)
    assert result["aliases"] == ["challenger", "champion"]
    return name


def artifact_files(client, model_id: str, path: str | None = None) -> list[str]:
    """Every file of a logged model, listed recursively from the artifact store."""
    found = []
    for entry in client.list_logged_model_artifacts(model_id, path):
        found += artifact_files(client, model_id, entry.path) if entry.is_dir else [entry.path]
    return found


def test_a_registered_text_student_serves_raw_text_and_keeps_nothing_pickled(
    store, text_student, text_data
):
    import mlflow

    name = register_text_student(store, text_student)
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    texts = text_data.splits["test"]["text"].tolist()
    served = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    out = served.predict(pd.DataFrame({"text": texts}))
    labels, probs = predicted(text_student, texts)
    assert list(out["label"]) == labels
    np.testing.assert_allclose(out["probability"], probs, rtol=1e-5)
    with pytest.raises(Exception, match="text"):  # MLflow's schema check, or serving's own
        served.predict(pd.DataFrame({"review": texts}))

    client = mlflow_client(store)
    version = client.get_model_version_by_alias(name, "champion")
    files = artifact_files(client, version.source.removeprefix("models:/"))
    student = {Path(f).name for f in files if f.startswith("artifacts/student/")}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "spec.json"} <= student
    assert not [f for f in files if f.endswith(PICKLES)], files

    mlmodel = mlflow.models.get_model_info(f"models:/{name}@champion")
    inputs = mlmodel.signature.inputs.to_dict()
    assert inputs == [{"type": "string", "name": "text", "required": True}]
    example = json.loads((Path(mlflow.artifacts.download_artifacts(
        f"models:/{name}@champion")) / "input_example.json").read_text())
    assert example["columns"] == ["text"] and isinstance(example["data"][0][0], str)


def test_a_registered_kdflow_text_student_is_still_fetched_as_a_teacher(
    store, text_student, text_data, tmp_path
):
    from kdflow.models.sources import source_for

    name = register_text_student(store, text_student)
    spec = f"models:/{name}@champion"
    folder = source_for(spec).fetch(spec, tmp_path / "teacher", store, context(text_data))
    assert json.loads((folder / "spec.json").read_text())["source"] == STUDENT
    texts = text_data.splits["test"]["text"].tolist()
    assert predicted(folder, texts)[0] == predicted(text_student, texts)[0]


def log_transformers_model(store: str, text_data, labels: list[str]) -> tuple[str, object]:
    """A tiny BERT classifier logged with mlflow.transformers.log_model and registered,
    `champion` on its version; the registered name and the model."""
    import mlflow
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from kdflow.models.hf import train_wordpiece

    texts = text_data.splits["train"]["text"].tolist()
    tokenizer = train_wordpiece(iter(texts), 200)
    config = AutoConfig.for_model(
        "bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, vocab_size=len(tokenizer), num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={c: i for i, c in enumerate(labels)},
    )
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    name = f"hf-{uuid.uuid4().hex[:8]}"
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    with mlflow.start_run(experiment_id=ensure_experiment(store)):
        mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer}, name="classifier",
            task="text-classification", registered_model_name=name,
            # Explicit: MLflow's default requirements import every torch extra it knows of.
            pip_requirements=["transformers", "torch"],
        )
    client = mlflow_client(store)
    client.set_registered_model_alias(name, "champion", "1")
    return name, (model, tokenizer)


@pytest.fixture
def offline(monkeypatch):
    """No hub: the model card MLflow looks for must not reach the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return os.environ["HF_HUB_OFFLINE"]


def test_a_registered_transformers_model_is_fetched_as_a_kdflow_hf_teacher(
    store, text_data, tmp_path, offline
):
    import mlflow

    from kdflow.models.sources import source_for

    name, (model, tokenizer) = log_transformers_model(store, text_data, ["neg", "pos"])
    spec = f"models:/{name}@champion"
    local = Path(mlflow.artifacts.download_artifacts(spec, dst_path=str(tmp_path / "raw")))
    layout = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert {"MLmodel", "model/config.json", "model/model.safetensors",
            "components/tokenizer/tokenizer.json"} <= set(layout), layout

    folder = source_for(spec).fetch(spec, tmp_path / "teacher", store, context(text_data))
    saved = json.loads((folder / "spec.json").read_text())
    assert (saved["kind"], saved["source"], saved["class_names"]) == ("hf", spec,
                                                                       ["neg", "pos"])
    assert saved["registered"]["flavor"] == "transformers" and not saved["new_head"]
    assert saved["text_columns"] == ["text"] and saved["max_length"] == 32
    assert {"config.json", "model.safetensors", "tokenizer.json", "spec.json"} <= {
        p.name for p in folder.iterdir()}
    assert not [p for p in folder.rglob("*") if p.name.endswith(PICKLES)]

    texts = text_data.splits["test"]["text"].tolist()
    enc = tokenizer(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = torch.softmax(model(**enc).logits, -1).numpy()
    labels, probs = predicted(folder, texts)
    assert labels == [["neg", "pos"][i] for i in expected.argmax(1)]
    np.testing.assert_allclose(probs, expected.max(1), rtol=1e-4, atol=1e-6)


def test_a_registered_transformers_model_of_other_labels_is_refused_by_name(
    store, text_data, tmp_path, offline
):
    from kdflow.models.sources import source_for

    name, _ = log_transformers_model(store, text_data, ["joy", "anger", "fear"])
    spec = f"models:/{name}@champion"
    with pytest.raises(ConfigError) as err:
        source_for(spec).fetch(spec, tmp_path / "teacher", store, context(text_data))
    message = str(err.value)
    assert message.startswith(f"--teachers: {spec} predicts ['joy', 'anger', 'fear'] but the "
                              "data's classes are ['neg', 'pos']"), message
    assert "/tmp" not in message and "\n" not in message
    assert not (tmp_path / "teacher").exists()
