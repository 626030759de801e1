"""A text student as MLflow serves it, and a registered transformers model's files as a
teacher, without a tracking store: the pyfunc (`kdflow.mlflow.serving`) tokenizes raw text
with the tokenizer saved beside the weights; the input example is a row of text; the
transformers flavour's `model/` and `components/tokenizer/` become one hf folder, through
the `hf:` source's checks. Registration and fetching against a real store:
tests/integration/test_registry_text.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from kdflow.errors import ConfigError
from kdflow.models.sources import PrepareContext, encoder_of, load_saved

STUDENT = ("hf-config:bert:hidden_size=32,num_hidden_layers=2,num_attention_heads=2,"
           "intermediate_size=64,vocab_size=200")
WORDS = {"pos": ["good", "great", "fun", "lovely", "bright"],
         "neg": ["bad", "awful", "boring", "dull", "grim"]}


def text_frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.choice(["neg", "pos"], rows)
    texts = [" ".join(rng.choice(WORDS[label], 4)) + " movie" for label in labels]
    return pd.DataFrame({"text": texts, "label": labels})


@pytest.fixture(scope="module")
def text_data(tmp_path_factory) -> SimpleNamespace:
    from kdflow.data.prepared import write_prepared
    from kdflow.data.sources import open_source

    folder = tmp_path_factory.mktemp("text") / "dataset"
    splits = {"train": text_frame(40, 0), "val": text_frame(8, 1), "test": text_frame(8, 2)}
    write_prepared(folder, splits, "label", None, "b" * 64, "mem", text_columns=["text"],
                   max_length=32)
    return SimpleNamespace(folder=folder, source=open_source(str(folder)), splits=splits)


@pytest.fixture(scope="module")
def text_student(text_data, tmp_path_factory) -> Path:
    from kdflow.models.hf_source import FromConfig

    folder = tmp_path_factory.mktemp("student") / "student"
    FromConfig().prepare(STUDENT, PrepareContext(data=text_data.source), folder)
    return folder


def served(folder: Path):
    from kdflow.mlflow.serving import StudentModel

    model = StudentModel()
    model.load_context(SimpleNamespace(artifacts={"student": str(folder)}))
    return model


def test_the_pyfunc_tokenizes_raw_text_and_predicts_like_the_model(text_student, text_data):
    texts = text_data.splits["test"]["text"].tolist()
    out = served(text_student).predict(None, pd.DataFrame({"text": texts, "extra": 1}))
    model, spec = load_saved(text_student)
    encoder = encoder_of(model)
    assert encoder is not None
    with torch.inference_mode():
        probs = torch.softmax(model(torch.from_numpy(encoder.encode([texts]))), -1).numpy()
    assert list(out.columns) == ["label", "probability"]
    assert list(out["label"]) == [spec["class_names"][i] for i in probs.argmax(1)]
    np.testing.assert_allclose(out["probability"], probs.max(1), rtol=1e-5)
    # A missing value is an empty text; a bare list is the one text column.
    assert len(served(text_student).predict(None, pd.DataFrame({"text": [None, "good"]}))) == 2
    assert list(served(text_student).predict(None, texts)["label"]) == list(out["label"])


def test_a_missing_text_column_is_a_clear_value_error(text_student):
    with pytest.raises(ValueError, match=r"^missing text columns: text \(this model reads "
                                         r"text; got review\)$"):
        served(text_student).predict(None, pd.DataFrame({"review": ["good movie"]}))


def test_a_text_students_input_example_is_a_row_of_text(text_student):
    from kdflow.mlflow.logged_models import EXAMPLE_TEXT, _input_example, _onnx_example

    example = _input_example(text_student)
    assert list(example.columns) == ["text"] and example["text"].tolist() == [EXAMPLE_TEXT]
    spec = json.loads((text_student / "spec.json").read_text())
    packed = _onnx_example(text_student, spec)
    assert packed.dtype == np.int64 and packed.shape == (1, 3, 32)
    assert packed[0, 1].sum() > 2  # [CLS] ... [SEP] and some words


def fake_flavour(root: Path, weights: str = "model.safetensors", tokenizer: bool = True) -> dict:
    """What a downloaded transformers model looks like on disk, with placeholder files."""
    (root / "model").mkdir(parents=True)
    (root / "model" / "config.json").write_text(json.dumps({"architectures": ["BertFor"
                                                            "SequenceClassification"]}))
    (root / "model" / weights).write_bytes(b"\0")
    if tokenizer:
        (root / "components" / "tokenizer").mkdir(parents=True)
        (root / "components" / "tokenizer" / "tokenizer.json").write_text("{}")
    return {"model_binary": "model", "components": ["tokenizer"] if tokenizer else [],
            "task": "text-classification"}


def test_the_flavours_model_and_tokenizer_folders_become_one_save_pretrained_folder(tmp_path):
    from kdflow.mlflow.source import stage_transformers

    flavour = fake_flavour(tmp_path / "download")
    staged = stage_transformers(tmp_path / "download", flavour, "models:/t@champion",
                                "--teachers", tmp_path / "hf")
    assert sorted(p.name for p in staged.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json"]


@pytest.mark.parametrize("change, message", [
    ({"components": []}, r"has no tokenizer \(components: none\)"),
    ({"model_binary": None, "source_model_name": "org/bert"},
     r"was logged without its weights \(save_pretrained=False\) \(it points at 'org/bert': "
     r"give hf:org/bert instead\)"),
    ({"peft_adaptor": "peft"}, "is a PEFT adapter"),
])
def test_a_flavour_kdflow_cannot_import_is_refused_by_name(tmp_path, change, message):
    from kdflow.mlflow.source import stage_transformers

    flavour = fake_flavour(tmp_path / "download") | change
    with pytest.raises(ConfigError, match=f"^--teachers: models:/t@champion {message}"):
        stage_transformers(tmp_path / "download", flavour, "models:/t@champion", "--teachers",
                           tmp_path / "hf")


def test_pickled_weights_are_refused_naming_the_registered_model(tmp_path, text_data):
    from kdflow.mlflow.source import from_transformers_flavor

    flavour = fake_flavour(tmp_path / "download", weights="pytorch_model.bin")
    context = PrepareContext(data=text_data.source, option="--teachers")
    with pytest.raises(ConfigError) as err:
        from_transformers_flavor(tmp_path / "download", flavour, "models:/t@champion",
                                 tmp_path / "teacher", context, tmp_path / "hf")
    assert str(err.value).startswith("--teachers: models:/t@champion: no safetensors weights")
    assert "pytorch_model.bin: pickled weights are never loaded" in str(err.value)
    assert str(tmp_path / "hf") not in str(err.value)
    assert not (tmp_path / "teacher").exists()
