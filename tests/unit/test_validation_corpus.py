"""Validating a causal-lm corpus through the validate step: Parquet, CSV and JSON Lines,
plain text and prompt/completion pairs, seeded splits that are never empty, and each kind
of bad input refused with one line that names the option or the column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kdflow.config import DataConfig
from kdflow.data.prepared import read_meta
from kdflow.errors import ConfigError, DataError
from kdflow.steps import validate_data
from kdflow.validation.corpus import MAX_DOCUMENT_CHARS, split_documents, validate_corpus
from kdflow.validation.scan import ValidationSettings

WORDS = "the a cat dog sat on mat ran fast slow big small red blue green old new".split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) + f" s{seed}d{i}."
        for i in range(n)
    ]


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def run(tmp_path: Path, data: Path, **settings: Any) -> dict[str, Any]:
    settings.setdefault("text_column", None if "prompt_column" in settings else "text")
    cfg = DataConfig(task="causal-lm", data=str(data), **settings)
    return validate_data(cfg, 0, tmp_path / "dataset", tmp_path / "report.md",
                         tmp_path / "docs")


def refused(tmp_path: Path, data: Path, error: type[Exception] = DataError,
            **settings: Any) -> Exception:
    """The validate step's error on bad input: one line, the report written, nothing
    prepared."""
    with pytest.raises(error) as caught:
        run(tmp_path, data, **settings)
    assert "\n" not in str(caught.value), "one line"
    assert not (tmp_path / "dataset" / "meta.json").exists(), "nothing prepared"
    report = (tmp_path / "report.md").read_text()
    assert "# Data validation: FAILED" in report and str(caught.value) in report
    return caught.value


# ------------------------------------------------------------------------------ good input


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_a_text_corpus_is_split_and_prepared(tmp_path: Path, suffix: str) -> None:
    texts = sentences(60) + ["Grüße 🙂, 日本語"]
    data = write(pd.DataFrame({"text": texts, "id": range(61)}), tmp_path / f"c{suffix}")
    info = run(tmp_path, data)
    assert info["passed"] and info["kind"] == "corpus"
    assert info["validation"]["warnings"] == [] and info["validation"]["failures"] == []
    assert info["splits"] == {"train": 44, "val": 5, "test": 12} and info["rows"] == 61
    assert info["classes"] == [] and info["class_counts"] == {}
    assert info["input_shape"] == [512] and info["text_columns"] == ["text"]
    meta = read_meta(tmp_path / "dataset")
    assert meta.kind == "corpus" and meta.max_length == 512 and meta.sha256 == info["sha256"]
    prepared = {s: pd.read_parquet(tmp_path / "dataset" / f"{s}.parquet") for s in meta.rows}
    assert all(list(frame.columns) == ["text"] for frame in prepared.values())
    seen = [t for frame in prepared.values() for t in frame["text"]]
    assert sorted(seen) == sorted(texts), "every document in exactly one split"
    stats = info["validation"]["statistics"]
    assert stats["train"]["documents"] == 44
    assert stats["train"]["words"] == sum(len(t.split()) for t in prepared["train"]["text"])
    assert stats["test"]["characters"] == sum(len(t) for t in prepared["test"]["text"])
    assert stats["corpus"]["files"]["train"]["documents"] == 61
    assert stats["corpus"]["truncated"] == 0 and stats["corpus"]["dropped_blank"] == 0
    assert (tmp_path / "docs" / "index.html").is_file(), "GX Data Docs"
    assert "# Data validation: passed" in (tmp_path / "report.md").read_text()


def test_prompt_completion_pairs_from_json_lines(tmp_path: Path) -> None:
    prompts = [f"Q: {s}\nA:" for s in sentences(20, 1)]
    completions = [f" {s}" for s in sentences(20, 2)]
    frame = pd.DataFrame({"prompt": prompts, "completion": completions})
    frame.loc[3, "prompt"] = ""  # a blank prompt is kept: the completion is learnt alone
    frame.loc[4, "completion"] = "  "  # nothing to learn: dropped
    data = write(frame, tmp_path / "pairs.jsonl")
    info = run(tmp_path, data, prompt_column="prompt", completion_column="completion",
               max_length=64)
    assert info["passed"] and info["text_columns"] == ["prompt", "completion"]
    assert info["rows"] == 19 and info["input_shape"] == [64]
    (warning,) = info["validation"]["warnings"]
    assert warning["check"] == "corpus_dropped" and warning["column"] == "prompt + completion"
    assert warning["message"] == (
        "1 of 20 documents (5.00%) have no text and are dropped: 0 with a null, 1 with an "
        "empty or blank 'completion'"
    )
    prepared = pd.concat(pd.read_parquet(tmp_path / "dataset" / f"{s}.parquet")
                         for s in ("train", "val", "test"))
    assert "" in set(prepared["prompt"]) and prompts[4] not in set(prepared["prompt"])
    assert set(prepared["prompt"] + prepared["completion"]) == {
        p + c for i, (p, c) in enumerate(zip(frame["prompt"], frame["completion"],
                                             strict=True)) if i != 4
    }


def test_documents_without_text_are_dropped_and_long_ones_cut_with_warnings(
    tmp_path: Path,
) -> None:
    texts: list[Any] = sentences(30)
    texts += [None, "", " \t\n ", "x" * (MAX_DOCUMENT_CHARS + 10)]
    data = write(pd.DataFrame({"text": texts}), tmp_path / "c.parquet")
    info = run(tmp_path, data)
    assert info["passed"] and info["rows"] == 31
    warnings = {w["check"]: w for w in info["validation"]["warnings"]}
    assert set(warnings) == {"corpus_dropped", "corpus_truncated"}
    assert warnings["corpus_dropped"]["observed"] == {"nulls": 1, "blank": 2}
    assert [r["row"] for r in warnings["corpus_dropped"]["sample_rows"]] == [30, 31, 32]
    assert warnings["corpus_dropped"]["expectation"] == "expect_column_values_to_not_be_null"
    assert warnings["corpus_truncated"]["observed"] == 1
    assert warnings["corpus_truncated"]["expectation"] == (
        "expect_column_value_lengths_to_be_between"
    )
    corpus = info["validation"]["statistics"]["corpus"]
    assert corpus["truncated"] == 1 and corpus["dropped_blank"] == 3
    prepared = pd.concat(pd.read_parquet(tmp_path / "dataset" / f"{s}.parquet")
                         for s in ("train", "val", "test"))
    assert prepared["text"].str.len().max() == MAX_DOCUMENT_CHARS
    report = (tmp_path / "report.md").read_text()
    assert "[corpus_dropped] train · text: 3 of 34 documents" in report


def test_gx_sees_a_sample_plus_every_flagged_row(tmp_path: Path) -> None:
    texts: list[Any] = sentences(200)
    texts[150], texts[170] = None, "  "
    data = write(pd.DataFrame({"text": texts}), tmp_path / "c.parquet")
    cfg = DataConfig(task="causal-lm", data=str(data), text_column="text")
    result = validate_corpus(cfg, 0, settings=ValidationSettings(sample_rows=20))
    files = result.report.statistics["corpus"]["files"]
    assert 20 < files["train"]["gx_rows"] <= 22, "the sample and the two flagged rows"
    (dropped,) = result.report.warnings
    assert dropped.expectation == "expect_column_values_to_not_be_null", "GX saw the null"
    assert f"{files['train']['gx_rows']} train rows" in result.report.method


def test_a_test_file_is_the_test_split(tmp_path: Path) -> None:
    data = write(pd.DataFrame({"text": sentences(2)}), tmp_path / "train.csv")
    test = write(pd.DataFrame({"text": sentences(4, 9)}), tmp_path / "test.parquet")
    info = run(tmp_path, data, test_data=str(test))
    assert info["splits"] == {"train": 1, "val": 1, "test": 4}
    prepared = pd.read_parquet(tmp_path / "dataset" / "test.parquet")
    assert list(prepared["text"]) == sentences(4, 9), "kept whole, in file order"


def test_splits_are_seeded_and_never_empty() -> None:
    frame = pd.DataFrame({"text": sentences(50)})
    first = split_documents(frame, None, 0.2, 0.1, seed=0)
    assert first["test"].equals(split_documents(frame, None, 0.2, 0.1, seed=0)["test"])
    assert not first["test"].equals(split_documents(frame, None, 0.2, 0.1, seed=1)["test"])
    tiny = split_documents(frame.iloc[:3], None, 0.2, 0.1, seed=0)
    assert {name: len(f) for name, f in tiny.items()} == {"train": 1, "val": 1, "test": 1}
    few = split_documents(frame.iloc[:4], None, 0.9, 0.5, seed=0)
    assert min(len(f) for f in few.values()) == 1 and len(few["train"]) >= 1
    no_val = split_documents(frame.iloc[:2], None, 0.2, 0.0, seed=0)
    assert no_val["val"] is no_val["train"] and len(no_val["test"]) == 1


# ------------------------------------------------------------------------------ bad input


def test_a_missing_column_names_the_option_and_lists_the_columns(tmp_path: Path) -> None:
    data = write(pd.DataFrame({"body": sentences(10), "id": range(10)}), tmp_path / "c.csv")
    error = refused(tmp_path, data, ConfigError)
    assert str(error) == (
        f"{data}: --text-column 'text' is not a column of the data; the columns are body, id"
    )
    assert error.option == "--text-column"  # type: ignore[attr-defined]


def test_a_missing_completion_column_names_its_option(tmp_path: Path) -> None:
    frame = pd.DataFrame({"prompt": sentences(10), "answer": sentences(10, 1)})
    error = refused(tmp_path, write(frame, tmp_path / "c.jsonl"), ConfigError,
                    prompt_column="prompt", completion_column="completion")
    assert "--completion-column 'completion' is not a column" in str(error)
    assert error.option == "--completion-column"  # type: ignore[attr-defined]


def test_a_missing_column_of_the_test_file_names_that_file(tmp_path: Path) -> None:
    data = write(pd.DataFrame({"text": sentences(10)}), tmp_path / "train.parquet")
    test = write(pd.DataFrame({"body": sentences(3)}), tmp_path / "test.parquet")
    error = refused(tmp_path, data, ConfigError, test_data=str(test))
    assert str(error).startswith(f"{test}: --text-column 'text' is not a column")


@pytest.mark.parametrize(
    ("values", "kind"),
    [(list(range(10)), "numbers (int64)"), ([b"\x00\x01"] * 10, "bytes")],
    ids=["numbers", "bytes"],
)
def test_a_column_that_is_not_text_is_refused(tmp_path: Path, values: list[Any],
                                              kind: str) -> None:
    data = write(pd.DataFrame({"text": values}), tmp_path / "c.parquet")
    error = refused(tmp_path, data)
    assert str(error) == (
        f"{data}: column 'text' (--text-column) holds {kind}, not text; --text-column must "
        "name a column of text (strings)"
    )


def test_an_empty_corpus_is_refused(tmp_path: Path) -> None:
    data = write(pd.DataFrame({"text": pd.Series([], dtype=str)}), tmp_path / "c.parquet")
    assert str(refused(tmp_path, data)) == f"{data}: has no rows"


def test_a_corpus_of_blank_documents_is_refused(tmp_path: Path) -> None:
    data = write(pd.DataFrame({"text": ["", "  ", None, "\n"]}), tmp_path / "c.parquet")
    assert str(refused(tmp_path, data)) == (
        f"{data}: the corpus has no text: all 4 documents are null, empty or blank (1 with a "
        "null, 3 with no text in 'text'); --text-column must name a column that holds text"
    )


def test_too_few_documents_says_how_many_the_splits_need(tmp_path: Path) -> None:
    data = write(pd.DataFrame({"text": ["one doc", "two docs", "   "]}), tmp_path / "c.csv")
    assert str(refused(tmp_path, data)) == (
        f"{data}: 2 usable document(s) (1 without text dropped); a causal-lm corpus needs at "
        "least 3: one each for train, val and test"
    )
    assert "at least 2: one each for train and test" in str(
        refused(tmp_path, write(pd.DataFrame({"text": ["one"]}), tmp_path / "d.csv"),
                val_fraction=0.0)
    )


def test_malformed_json_lines_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "c.jsonl"
    data.write_text(json.dumps({"text": "fine"}) + "\n{not json\n")
    with pytest.raises(DataError, match="not well-formed JSON Lines") as caught:
        run(tmp_path, data)
    assert "\n" not in str(caught.value)
