"""Bad causal-lm runs through `kdflow run` (in-process `main()`): settings and specs stop in
preflight as one line naming the option or the column (exit 2, nothing started); a corpus
that holds no text stops at validate-data; models that cannot distil token by token
(another tokenizer, a top-k past the vocabulary) stop at the distill step. Never a
traceback, never a registered model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.cli import main
from tests.pipelines.test_text_bad_input import assert_one_line_naming
from tests.unit.lm_helpers import corpus_frame, tiny_gpt2

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.parquet"
    corpus_frame(60).to_parquet(path)
    return path


def lm_run(tmp_path: Path, data: Path, *args: str) -> list[str]:
    """`kdflow run --task causal-lm`; the options given replace the defaults."""
    given = dict.fromkeys(a for a in args if a.startswith("--"))
    defaults = {
        "--text-column": ["text"], "--teachers": [tiny_gpt2(2)], "--student": [tiny_gpt2(1)],
        "--teacher-epochs": ["1"], "--student-epochs": ["1"], "--max-length": ["32"],
        "--workers": ["0"],
    }
    argv = ["run", "--task", "causal-lm", "--data", str(data), "--output",
            str(tmp_path / "out"), "--quiet", "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}"]
    for option, values in defaults.items():
        if option not in given:
            argv += [option, *values]
    return [*argv, *args]


# ------------------------------------------------------------------ caught in preflight


@pytest.mark.parametrize("args, option, text", [
    (["--prompt-column", "text", "--text-column", ""], "--prompt-column",
     "needs --completion-column"),
    (["--text-column", "body"], "--text-column", "'body' is not a column"),
    (["--student", "mlp:hidden=12"], "--student", "is not a language model"),
    (["--teachers", "hf-config:vit:hidden_size=32"], "--teachers",
     "vit is not a causal language model"),
    (["--teachers", "hf-config:gpt2:n_embd=32,n_head=12"], "--teachers",
     "must be divisible by num_heads"),
    (["--max-length", "128"], "--max-length", "128 tokens per sequence, but"),
    (["--feature-weight", "1", "--teacher-mode", "online"], "--feature-weight",
     "not available for --task causal-lm"),
    (["--image-size", "8,8"], "--image-size", "does not apply to --task causal-lm"),
    (["--kd-loss", "kl"], "--kd-loss", "unknown loss 'kl'"),
])
def test_a_bad_setting_is_one_line(args: list[str], option: str, text: str, corpus: Path,
                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(lm_run(tmp_path, corpus, *args))
    assert_one_line_naming(capsys, code, option, text, tmp_path)


def test_a_classifier_folder_as_a_causal_lm_teacher(corpus: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path / "bert"
    BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64)
                                  ).save_pretrained(folder)
    capsys.readouterr()  # save_pretrained's own progress bar
    code = main(lm_run(tmp_path, corpus, "--teachers", f"hf:{folder}", "--teacher-epochs", "0"))
    assert_one_line_naming(capsys, code, "--teachers", "is not a causal language model "
                           "(BertForSequenceClassification)", tmp_path)


# ------------------------------------------------------------ caught by a pipeline step


@pytest.fixture
def steps_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "false")


def assert_failed_at(capsys: pytest.CaptureFixture[str], code: int, step: str, text: str,
                     tmp_path: Path) -> str:
    out, err = capsys.readouterr()
    assert code == 1, err
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"kdflow: error: {step} failed"), err
    assert any(text in line for line in lines), err
    assert lines[-1] == "kdflow: nothing was registered"
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "out" / "summary.json").exists()
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert not MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions()
    return err


def test_a_corpus_without_rows_stops_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Preflight reads the Parquet footer (it used to be the validate step's finding)."""
    pd.DataFrame({"text": pd.Series([], dtype=str)}).to_parquet(tmp_path / "corpus.parquet")
    code = main(lm_run(tmp_path, tmp_path / "corpus.parquet"))
    assert_one_line_naming(capsys, code, "--data", "corpus.parquet: has no rows", tmp_path)


@pytest.mark.parametrize("frame, text", [
    (pd.DataFrame({"text": ["   ", "\n\t", ""] * 20}), "blank"),
    (pd.DataFrame({"text": list(range(60))}), "not text"),
])
def test_a_corpus_without_text_stops_at_validation(
    frame: pd.DataFrame, text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    steps_env: None,
) -> None:
    frame.to_parquet(tmp_path / "corpus.parquet")
    code = main(lm_run(tmp_path, tmp_path / "corpus.parquet"))
    assert_failed_at(capsys, code, "validate-data", text, tmp_path)


@pytest.mark.slow
def test_a_student_with_another_tokenizer_stops_at_distill(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], steps_env: None
) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from kdflow.models.lm_tokenizer import train_bpe

    folder = tmp_path / "other"
    tokenizer = train_bpe(corpus_frame(30, seed=5)["text"], 300)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64,
                               vocab_size=len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    capsys.readouterr()
    code = main(lm_run(tmp_path, corpus, "--student", f"hf:{folder}"))
    assert_failed_at(capsys, code, "distill", "use different tokenizers", tmp_path)


@pytest.mark.slow
def test_a_top_k_past_the_vocabulary_stops_at_distill(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], steps_env: None
) -> None:
    code = main(lm_run(tmp_path, corpus, "--top-k", "100000"))
    assert_failed_at(capsys, code, "distill", "--top-k: 100000 logits per token", tmp_path)
