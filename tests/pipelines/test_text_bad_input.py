"""Bad text runs through `kdflow run` (in-process `main()`): settings, folders and specs
stop in preflight as one line naming the option or the column, exit 2, no traceback,
nothing started; bad text content stops at validate-data with a readable error, exit 1,
and nothing registered."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.cli import main
from tests.unit.text_helpers import text_frame, tiny_bert

ROOT = Path(__file__).parents[2]
TEACHER = tiny_bert(1)
STUDENT = "hf-from-teacher:num_hidden_layers=1"


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "reviews.csv"
    text_frame(120, 0).to_csv(path, index=False)
    return path


def kdflow_run(tmp_path: Path, data: Path, *args: str) -> list[str]:
    """`kdflow run` on text; the options given replace the defaults of the same name."""
    given = dict.fromkeys(a for a in args if a.startswith("--"))
    defaults = {
        "--text-column": ["text"], "--teachers": [TEACHER], "--student": [STUDENT],
        "--teacher-epochs": ["1"], "--student-epochs": ["1"], "--max-length": ["16"],
    }
    argv = ["run", "--data", str(data), "--output", str(tmp_path / "out"), "--quiet",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    for option, values in defaults.items():
        if option not in given:
            argv += [option, *values]
    return [*argv, *args]


def assert_one_line_naming(
    capsys: pytest.CaptureFixture[str], code: int, name: str, text: str, tmp_path: Path
) -> str:
    out, err = capsys.readouterr()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kdflow run: error: ")
    assert name in lines[0] and text in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "out").exists(), "nothing may start on a bad input"
    assert not (tmp_path / "mlflow.db").exists(), "nothing may be recorded on a bad input"
    return lines[0]


# ------------------------------------------------------------------ caught in preflight


def test_a_text_column_that_is_not_there(texts, tmp_path, capsys) -> None:
    code = main(kdflow_run(tmp_path, texts, "--text-column", "review"))
    line = assert_one_line_naming(capsys, code, "--text-column", "'review' is not a column",
                                  tmp_path)
    assert "(columns: text, label)" in line


def test_a_text_pair_column_that_is_not_there(texts, tmp_path, capsys) -> None:
    code = main(kdflow_run(tmp_path, texts, "--text-pair-column", "answer"))
    assert_one_line_naming(capsys, code, "--text-pair-column", "'answer' is not a column",
                           tmp_path)


def test_an_hf_folder_that_does_not_exist(texts, tmp_path, capsys) -> None:
    code = main(kdflow_run(tmp_path, texts, "--teachers", f"hf:{tmp_path / 'nowhere'}"))
    assert_one_line_naming(capsys, code, "--teachers", "no such folder", tmp_path)


def test_an_hf_folder_without_config_json(texts, tmp_path, capsys) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    code = main(kdflow_run(tmp_path, texts, "--teachers", f"hf:{folder}"))
    assert_one_line_naming(capsys, code, "--teachers", "no config.json", tmp_path)


def test_an_hf_folder_with_only_pickled_weights(texts, tmp_path, capsys) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    code = main(kdflow_run(tmp_path, texts, "--teachers", f"hf:{folder}"))
    line = assert_one_line_naming(capsys, code, "--teachers", "no safetensors weights", tmp_path)
    assert "pytorch_model.bin" in line and "never loaded" in line


def test_an_hf_folder_of_a_causal_language_model(texts, tmp_path, capsys) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    config = GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=64, n_positions=32,
                        bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    capsys.readouterr()  # save_pretrained's progress bar
    code = main(kdflow_run(tmp_path, texts, "--student", f"hf:{folder}"))
    line = assert_one_line_naming(capsys, code, "--student", "is a generative model", tmp_path)
    assert "GPT2LMHeadModel" in line


def test_an_hf_config_of_an_unknown_model_type(texts, tmp_path, capsys) -> None:
    code = main(kdflow_run(tmp_path, texts, "--teachers", "hf-config:bertt:hidden_size=32"))
    assert_one_line_naming(capsys, code, "--teachers", "unknown model type 'bertt'", tmp_path)


def test_an_hf_config_with_an_unknown_key(texts, tmp_path, capsys) -> None:
    code = main(kdflow_run(tmp_path, texts, "--teachers", tiny_bert(1, hiden_size=32)))
    assert_one_line_naming(capsys, code, "--teachers", "bert configs have no hiden_size",
                           tmp_path)


def test_an_hf_config_without_key_value_pairs(texts, tmp_path, capsys) -> None:
    code = main(kdflow_run(tmp_path, texts, "--student", "hf-config:bert:hidden_size"))
    assert_one_line_naming(capsys, code, "--student", "expected key=value", tmp_path)


def test_a_python_module_that_does_not_import(texts, tmp_path, capsys) -> None:
    code = main(kdflow_run(tmp_path, texts, "--student", "python:no_such_package.models:f"))
    assert_one_line_naming(capsys, code, "--student", "cannot import no_such_package.models",
                           tmp_path)


def test_a_python_factory_for_text(texts, tmp_path, capsys) -> None:
    # Whatever the factory returns, a python: model reads numeric columns, not text.
    spec = "python:tests.fixtures.user_models:not_a_module"
    code = main(kdflow_run(tmp_path, texts, "--student", spec))
    assert_one_line_naming(capsys, code, "--student", "reads numeric columns", tmp_path)


@pytest.mark.parametrize(
    ("factory", "text"),
    [
        ("not_a_module", "returned a str; it must return an nn.Module"),
        ("fails_forward", "module failed on a 2 × [4] float batch"),
    ],
)
def test_a_python_factory_that_gives_no_working_module(factory, text, tmp_path, capsys) -> None:
    # On numeric columns, where python: models belong: the factory is called in preflight.
    frame = pd.DataFrame({"a": range(40), "b": range(40), "c": range(40), "d": range(40)})
    frame["label"] = [i % 2 for i in range(40)]
    frame.to_csv(tmp_path / "numbers.csv", index=False)
    argv = ["run", "--data", str(tmp_path / "numbers.csv"), "--teachers", "mlp:hidden=8",
            "--student", f"python:tests.fixtures.user_models:{factory}",
            "--output", str(tmp_path / "out"), "--quiet",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert_one_line_naming(capsys, main(argv), "--student", text, tmp_path)


def test_hf_from_teacher_after_a_zoo_teacher(texts, tmp_path, capsys) -> None:
    code = main(kdflow_run(tmp_path, texts, "--teachers", "mlp:hidden=16"))
    assert_one_line_naming(capsys, code, "--teachers", "mlp:hidden=16 reads numeric columns",
                           tmp_path)


def test_hf_from_teacher_as_a_teacher(texts, tmp_path, capsys) -> None:
    code = main(kdflow_run(tmp_path, texts, "--teachers", STUDENT))
    assert_one_line_naming(capsys, code, "--teachers", "makes a student from the first teacher",
                           tmp_path)


def test_a_negative_max_length(texts, tmp_path, capsys) -> None:
    code = main(kdflow_run(tmp_path, texts, "--max-length", "-1"))
    assert_one_line_naming(capsys, code, "--max-length", "must be at least 1 token", tmp_path)


def test_a_fresh_teacher_without_epochs(texts, tmp_path, capsys) -> None:
    code = main(kdflow_run(tmp_path, texts, "--teacher-epochs", "0"))
    assert_one_line_naming(capsys, code, "--teacher-epochs", "built fresh and must train",
                           tmp_path)


# -------------------------------------------------------- caught by the validate step


@pytest.fixture
def steps_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """kfp.local runs each step in a subprocess of this environment."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "false")


def assert_failed_at_validation(
    capsys: pytest.CaptureFixture[str], code: int, column: str, text: str, tmp_path: Path
) -> str:
    out, err = capsys.readouterr()
    assert code == 1, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("kdflow: error: validate-data failed: data validation FAILED")
    assert lines[-1] == "kdflow: nothing was registered"
    failed = [line for line in lines if line.startswith("- [")]
    assert failed and all(f" {column}: " in line for line in failed), err
    assert any(text in line for line in failed), err
    assert "Traceback" not in err and out == ""
    out_dir = tmp_path / "out"
    assert not list((out_dir / "pipeline").glob("*/*/train-teacher*"))
    assert not (out_dir / "summary.json").exists()
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert not client.search_registered_models()
    assert not client.search_model_versions()
    return err


def test_a_numeric_text_column(tmp_path, capsys, steps_env) -> None:
    frame = text_frame(120, 0)
    frame["stars"] = range(len(frame))
    frame.to_csv(tmp_path / "reviews.csv", index=False)
    code = main(kdflow_run(tmp_path, tmp_path / "reviews.csv", "--text-column", "stars"))
    assert_failed_at_validation(capsys, code, "stars", "is numeric", tmp_path)


def test_an_all_empty_text_column(tmp_path, capsys, steps_env) -> None:
    frame = text_frame(120, 0)
    frame["text"] = ""
    frame.to_parquet(tmp_path / "reviews.parquet")  # empty strings, not nulls
    code = main(kdflow_run(tmp_path, tmp_path / "reviews.parquet"))
    assert_failed_at_validation(capsys, code, "text", "holds no text", tmp_path)


def test_a_mostly_null_text_column(tmp_path, capsys, steps_env) -> None:
    frame = text_frame(120, 0)
    frame["text"] = frame["text"].astype(object)
    frame.loc[frame.index[:90], "text"] = None
    assert frame["text"].isna().mean() == 0.75
    frame.to_parquet(tmp_path / "reviews.parquet")
    code = main(kdflow_run(tmp_path, tmp_path / "reviews.parquet"))
    assert_failed_at_validation(capsys, code, "text", "mostly null: 90 of 120 rows", tmp_path)
