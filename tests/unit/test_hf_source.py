"""The Hugging Face model sources (`hf-config:`, `hf-from-teacher:`, `hf:`) with tiny real
BERTs and WordPiece tokenizers trained on the data: what `prepare` writes, building from
the template, saving and loading, layers taken from a teacher, pretrained folders (local
and on S3 served by moto), labels that differ, the hub offline, and remote code."""

from __future__ import annotations

import json
import logging
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from kdflow.data import storage
from kdflow.data.sources import DataSource, open_source
from kdflow.errors import ConfigError, ModelFormatError
from kdflow.models.hf import HfClassifier, load_hf, train_wordpiece
from kdflow.models.hf_source import FromConfig, FromTeacher, Pretrained
from kdflow.models.sources import PrepareContext, build, load_saved, source_for
from tests.unit.text_helpers import TEST_ONLY, text_dataset, tiny_bert

SPEC = tiny_bert(2)
TEACHER_SPEC = tiny_bert(4)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> DataSource:
    return open_source(str(text_dataset(tmp_path_factory.mktemp("text") / "dataset")))


def prepared(spec: str, data: DataSource, folder: Path, **context: Any) -> Path:
    source = source_for(spec)
    source.check(spec, context.get("option", "--student"))
    assert source.prepare(spec, PrepareContext(data=data, **context), folder) is True
    return folder


@pytest.fixture(scope="module")
def template(data: DataSource, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared(SPEC, data, tmp_path_factory.mktemp("template") / "model", seed=3)


@pytest.fixture(scope="module")
def teacher_folder(data: DataSource, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared(TEACHER_SPEC, data, tmp_path_factory.mktemp("teacher") / "model",
                    option="--teachers")


def logits(model: HfClassifier, data: DataSource, split: str = "test") -> torch.Tensor:
    model.eval()
    x = torch.from_numpy(data.read(split, encoder=model.encoder).x)
    with torch.no_grad():
        return model(x)


def pretrained_folder(model: HfClassifier, folder: Path, labels: list[str]) -> Path:
    """What a user's `save_pretrained` writes: model and tokenizer, no kdflow spec.json."""
    model.hf.config.id2label = dict(enumerate(labels))
    model.hf.config.label2id = {name: i for i, name in enumerate(labels)}
    model.hf.save_pretrained(folder)
    model.encoder.tokenizer.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------ hf-config:


def test_hf_config_prepare_writes_a_model_folder_with_a_tokenizer_of_the_training_split(
    template: Path, data: DataSource
) -> None:
    names = {p.name for p in template.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "spec.json"} <= names
    assert not list(template.glob("*.bin"))
    spec = json.loads((template / "spec.json").read_text())
    assert spec["kind"] == "hf" and spec["task"] == "text"
    assert spec["source"] == SPEC
    assert spec["class_names"] == ["neg", "pos"] and spec["n_classes"] == 2
    assert spec["text_columns"] == ["text"] and spec["max_length"] == 16
    assert spec["input_shape"] == [3, 16]
    assert spec["model"] == {"arch": "bert", "layers": 2, "hidden": 32}
    config = json.loads((template / "config.json").read_text())
    assert config["hidden_size"] == 32 and config["num_hidden_layers"] == 2
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    vocab = json.loads((template / "tokenizer.json").read_text())["model"]["vocab"]
    assert config["vocab_size"] == len(vocab)
    assert {"good", "awful", "cat", "[PAD]", "[CLS]", "[SEP]"} <= set(vocab)
    # Trained on the training split alone: the test split's own word is not a token.
    assert TEST_ONLY not in vocab
    assert any(TEST_ONLY in t for t in data.texts("test")[0])
    assert not any(TEST_ONLY in t for t in data.texts("train")[0])


def test_hf_config_vocab_size_caps_the_trained_vocabulary(
    template: Path, data: DataSource, tmp_path: Path
) -> None:
    def vocab(folder: Path) -> dict[str, int]:
        return json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]

    # WordPiece keeps every character of the alphabet: the cap must leave room for them.
    folder = prepared(tiny_bert(1, vocab_size=60), data, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    assert config["vocab_size"] == len(vocab(folder)) <= 60 < len(vocab(template))


def test_building_from_the_template_gives_the_same_weights_every_time(
    template: Path, data: DataSource
) -> None:
    first = build(SPEC, data.meta, template=template)
    second = build(SPEC, data.meta, template=template)
    assert isinstance(first, HfClassifier) and first.training
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(logits(first, data), logits(second, data))


def test_the_seed_decides_the_initial_weights(
    template: Path, data: DataSource, tmp_path: Path
) -> None:
    same = load_file(str(prepared(SPEC, data, tmp_path / "same", seed=3) / "model.safetensors"))
    other = load_file(str(prepared(SPEC, data, tmp_path / "other", seed=4) / "model.safetensors"))
    first = load_file(str(template / "model.safetensors"))
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(first[name], same[name])
    assert not torch.equal(first[name], other[name])


def test_a_saved_model_loads_back_with_identical_logits(
    template: Path, data: DataSource, tmp_path: Path
) -> None:
    source = source_for(SPEC)
    model = build(SPEC, data.meta, template=template)
    with torch.no_grad():  # not the template's weights any more
        model.head().weight.add_(0.5)
    before = logits(model, data)
    folder = source.save(model, tmp_path / "saved", data.meta, {"role": "student"})
    loaded, spec = source.load(folder)
    assert not loaded.training
    assert spec["role"] == "student" and spec["kind"] == "hf"
    assert torch.equal(logits(loaded, data), before)
    again, _ = load_saved(folder)  # through spec.json's kind
    assert torch.equal(logits(again, data), before)  # type: ignore[arg-type]
    assert not list(folder.glob("pytorch_model*.bin"))


def test_loading_refuses_weights_that_do_not_match_the_spec(
    template: Path, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(template, tmp_path / "tampered"))
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["classifier.bias"] = tensors["classifier.bias"] + 1
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelFormatError, match="SHA-256"):
        load_hf(folder)


# ------------------------------------------------------------------------ hf-from-teacher:


def test_hf_from_teacher_takes_evenly_spaced_layers_and_the_teachers_tokenizer(
    teacher_folder: Path, data: DataSource, tmp_path: Path
) -> None:
    spec = "hf-from-teacher:num_hidden_layers=2"
    folder = prepared(spec, data, tmp_path / "student", teacher=str(teacher_folder))
    saved = json.loads((folder / "spec.json").read_text())
    assert saved["from_teacher"]["layers"] == [0, 2]
    assert saved["from_teacher"]["copied"] > 0
    config = json.loads((folder / "config.json").read_text())
    teacher_config = json.loads((teacher_folder / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and teacher_config["num_hidden_layers"] == 4
    assert config["hidden_size"] == teacher_config["hidden_size"] == 32
    student = load_file(str(folder / "model.safetensors"))
    teacher = load_file(str(teacher_folder / "model.safetensors"))
    assert set(student) < set(teacher)
    for j, i in ((0, 0), (1, 2)):
        for part in ("attention.self.query.weight", "intermediate.dense.weight",
                     "output.dense.bias"):
            mine, theirs = f"bert.encoder.layer.{j}.{part}", f"bert.encoder.layer.{i}.{part}"
            assert torch.equal(student[mine], teacher[theirs]), mine
    assert not torch.equal(student["bert.encoder.layer.1.attention.self.query.weight"],
                           teacher["bert.encoder.layer.1.attention.self.query.weight"])
    name = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(student[name], teacher[name])
    # The student reads the text as the teacher does.
    built = build(spec, data.meta, template=folder)
    teacher_model, _ = load_hf(teacher_folder)
    assert built.encoder.fingerprint == teacher_model.encoder.fingerprint  # type: ignore[union-attr]


def test_hf_from_teacher_needs_a_teacher(data: DataSource, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a teacher") as caught:
        FromTeacher().prepare("hf-from-teacher:num_hidden_layers=1",
                              PrepareContext(data=data), tmp_path / "s")
    assert caught.value.option == "--student"


def test_hf_from_teacher_with_an_unknown_key_is_a_config_error(
    teacher_folder: Path, data: DataSource, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="no num_hiden_layers"):
        FromTeacher().prepare("hf-from-teacher:num_hiden_layers=1",
                              PrepareContext(data=data, teacher=str(teacher_folder)),
                              tmp_path / "s")


# ------------------------------------------------------------------------------------ hf:


@pytest.fixture(scope="module")
def pretrained(
    template: Path, data: DataSource, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, torch.Tensor]:
    """A model that is no longer its template, saved with save_pretrained under the data's
    labels, and its test-split logits before saving."""
    model, _ = load_hf(template, train=True)
    train = data.read("train", encoder=model.encoder)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):  # the user's own fine-tuning, in short
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    before = logits(model, data)
    folder = pretrained_folder(model, tmp_path_factory.mktemp("user") / "model", ["neg", "pos"])
    assert not (folder / "spec.json").exists()
    return folder, before


def test_an_hf_folder_used_as_it_is_predicts_as_before_saving(
    pretrained: tuple[Path, torch.Tensor], data: DataSource, tmp_path: Path
) -> None:
    folder, before = pretrained
    spec = f"hf:{folder}"
    Pretrained().check(spec, "--teachers")
    out = Pretrained().fetch(spec, tmp_path / "fetched", None,
                             PrepareContext(data=data, option="--teachers"))
    model, saved = load_hf(out)
    assert saved["new_head"] is False and saved["trust_remote_code"] is False
    assert saved["source"] == spec and saved["class_names"] == ["neg", "pos"]
    after = logits(model, data)
    assert torch.allclose(after, before, atol=1e-6)
    assert torch.equal(after.argmax(1), before.argmax(1))
    assert len(set(before.argmax(1).tolist())) == 2, "a test that cannot tell models apart"


def test_an_hf_folder_with_other_labels_is_refused_unless_fine_tuned(
    template: Path, data: DataSource, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, _ = load_hf(template)
    folder = pretrained_folder(model, tmp_path / "sentiment", ["negative", "positive"])
    spec = f"hf:{folder}"
    context = PrepareContext(data=data, option="--teachers")
    with pytest.raises(ConfigError, match="fine-tune it") as caught:
        Pretrained().fetch(spec, tmp_path / "fetched", None, context)
    assert caught.value.option == "--teachers"
    assert "['negative', 'positive']" in str(caught.value) and "['neg', 'pos']" in str(
        caught.value
    )
    with caplog.at_level(logging.WARNING, logger="kdflow.models.hf_source"):
        assert Pretrained().prepare(spec, context, tmp_path / "tuned")
    assert "a new classification head is trained" in caplog.text
    saved = json.loads((tmp_path / "tuned" / "spec.json").read_text())
    assert saved["new_head"] is True
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}


def test_an_hf_folder_with_more_classes_gets_a_head_of_the_datas_classes(
    data: DataSource, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import AutoModelForSequenceClassification, BertConfig

    three = prepared(tiny_bert(1), data, tmp_path / "base")
    config = BertConfig.from_pretrained(three)
    config.num_labels = 3
    hf = AutoModelForSequenceClassification.from_config(config)
    user = tmp_path / "three"
    hf.save_pretrained(user)
    train_wordpiece(iter(["some text"]), 50).save_pretrained(user)
    context = PrepareContext(data=data, option="--teachers")
    with pytest.raises(ConfigError, match="fine-tune it"):
        Pretrained().fetch(f"hf:{user}", tmp_path / "fetched", None, context)
    with caplog.at_level(logging.WARNING, logger="kdflow.models.hf_source"):
        Pretrained().prepare(f"hf:{user}", context, tmp_path / "tuned")
    assert "new classification head" in caplog.text
    model, _ = load_hf(tmp_path / "tuned")
    assert model.n_classes == 2 and model.head().out_features == 2
    assert logits(model, data).shape == (data.rows("test"), 2)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
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
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket="models")
    return "models"


def test_an_hf_model_on_s3_is_fetched_through_the_s3_endpoint(
    pretrained: tuple[Path, torch.Tensor], data: DataSource, tmp_path: Path, s3_bucket: str
) -> None:
    folder, before = pretrained
    uri = f"s3://{s3_bucket}/users/sentiment"
    storage.upload_dir(folder, uri)
    spec = f"hf:{uri}"
    Pretrained().check(spec, "--teachers")
    out = Pretrained().fetch(spec, tmp_path / "fetched", None,
                             PrepareContext(data=data, option="--teachers"))
    model, saved = load_hf(out)
    assert saved["source"] == spec
    assert torch.allclose(logits(model, data), before, atol=1e-6)


def test_an_hf_prefix_missing_on_s3_is_a_config_error(
    data: DataSource, tmp_path: Path, s3_bucket: str
) -> None:
    spec = f"hf:s3://{s3_bucket}/nothing/here"
    with pytest.raises(ConfigError, match="no such folder") as caught:
        Pretrained().fetch(spec, tmp_path / "fetched", None,
                           PrepareContext(data=data, option="--teachers"))
    assert caught.value.option == "--teachers"
    assert str(caught.value).startswith("--teachers: ")


def test_a_hub_id_not_in_the_cache_with_the_hub_offline_is_a_config_error(
    data: DataSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = "hf:kdflow-tests/no-such-model-3f9a"
    Pretrained().check(spec, "--teachers")  # a hub id: nothing to check without the hub
    with pytest.raises(ConfigError) as caught:
        Pretrained().fetch(spec, tmp_path / "fetched", None,
                           PrepareContext(data=data, option="--teachers"))
    message = str(caught.value)
    assert caught.value.option == "--teachers" and message.startswith("--teachers: ")
    assert "kdflow-tests/no-such-model-3f9a" in message and "HF_HUB_OFFLINE" in message
    assert "\n" not in message
    assert not (tmp_path / "fetched").exists()


class Spy:
    """Records the keyword arguments of every `from_pretrained` call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.calls: list[tuple[str, dict[str, Any]]] = []
        for cls in (AutoModelForSequenceClassification, AutoTokenizer):
            monkeypatch.setattr(cls, "from_pretrained", self._wrap(cls.__name__,
                                                                   cls.from_pretrained))

    def _wrap(self, name: str, real: Any) -> Any:
        def spy(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            return real(*args, **kwargs)

        return spy

    def remote(self) -> list[Any]:
        return [kwargs.get("trust_remote_code", "absent") for _, kwargs in self.calls]


def test_remote_code_stays_off_unless_the_run_allows_it(
    pretrained: tuple[Path, torch.Tensor], data: DataSource, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder, _ = pretrained
    spy = Spy(monkeypatch)
    off = Pretrained().fetch(f"hf:{folder}", tmp_path / "off", None,
                             PrepareContext(data=data, option="--teachers"))
    assert spy.remote() == [False, False]
    assert all(kwargs.get("use_safetensors") for name, kwargs in spy.calls
               if name == "AutoModelForSequenceClassification")
    assert json.loads((off / "spec.json").read_text())["trust_remote_code"] is False
    spy.calls.clear()
    load_hf(off)
    assert spy.remote() == [False, False]

    spy.calls.clear()
    on = Pretrained().fetch(
        f"hf:{folder}", tmp_path / "on", None,
        PrepareContext(data=data, option="--teachers", trust_remote_code=True),
    )
    assert spy.remote() == [True, True]
    assert json.loads((on / "spec.json").read_text())["trust_remote_code"] is True
    spy.calls.clear()
    load_hf(on)
    assert spy.remote() == [True, True]


def test_fresh_models_are_not_fetched(data: DataSource, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not fetched"):
        FromConfig().fetch(SPEC, tmp_path / "x", None, PrepareContext(data=data))
