"""Bad input that used to hang, crash in a step or train the wrong thing: more Ray workers
than the machine can place, model sizes of zero or less, test labels of another kind than
the training labels, a class with a single row, a contract feature the data lacks. Each is
one line naming the option or column, exit code 2, no traceback, nothing started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.pipelines.test_cli_errors import run_cli


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli-data")
    rows = ["a,b,c,target"] + [f"{i},{i * 2},{i % 3},{i % 2}" for i in range(20)]
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    (folder / "single.csv").write_text("\n".join([*rows, "99,1,1,7"]) + "\n")
    text = ["a,b,c,target"] + [f"{i + 50},{i},{i % 3},{'xy'[i % 2]}" for i in range(8)]
    (folder / "test_text.csv").write_text("\n".join(text) + "\n")
    (folder / "contract.yaml").write_text(
        "label_column: target\nfeatures:\n  a: {}\n  id: {}\n"
    )
    return folder / "data.csv"


def _one_line(args: list[str], data_csv: Path) -> str:
    base = ["run", "--data", str(data_csv), "--label-column", "target"]
    proc = run_cli(*base, *args, cwd=data_csv.parent)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert not (data_csv.parent / "outputs").exists(), "nothing may start on bad input"
    return lines[0].removeprefix("kdflow run: error: ")


def test_more_workers_than_the_machine_can_place_is_refused(data_csv) -> None:
    # More than this machine's CPUs (and GPUs, where it has some): a local Ray would wait.
    workers = len(os.sched_getaffinity(0)) + 8
    line = _one_line(["--workers", str(workers)], data_csv)
    assert line.startswith(f"--workers: {workers} Ray Train workers need {workers} ")
    assert "this machine has " in line and "or --ray-address for a cluster)" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--student", "mlp:hidden=0"],
         "--student: mlp:hidden=0: hidden must be whole numbers >= 1, one per layer, got 0"),
        (["--teachers", "mlp:hidden=8", "mlp:hidden=-4"],
         "--teachers: mlp:hidden=-4: hidden must be whole numbers >= 1, one per layer, got -4"),
        (["--student", "cnn:channels=0-8", "--input-shape", "1,1,3"],
         "--student: cnn:channels=0-8: channels must be whole numbers >= 1, one per layer, "
         "got 0-8"),
        (["--student", "transformer:dim=-4,heads=2"],
         "--student: transformer:dim=-4,heads=2: dim must be a whole number >= 1, got -4"),
        (["--student", "mlp:dropout=1.5"],
         "--student: mlp:dropout=1.5: dropout must be a number in [0, 1), got 1.5"),
        (["--student", "hf-config:gpt2:n_layer=0"],
         "--student: 'hf-config:gpt2:n_layer=0': n_layer must be >= 1, got 0"),
        (["--teachers", "hf-config:bert:num_hidden_layers=0", "--text-column", "a"],
         "--teachers: 'hf-config:bert:num_hidden_layers=0': num_hidden_layers must be >= 1, "
         "got 0"),
    ],
)
def test_a_model_size_below_one_names_the_option_and_field(args, message, data_csv) -> None:
    assert _one_line(args, data_csv) == message


def test_text_test_labels_against_numeric_training_labels(data_csv) -> None:
    test = data_csv.parent / "test_text.csv"
    line = _one_line(["--test-data", str(test)], data_csv)
    assert line == (
        f"--test-data: label column 'target' holds text in {test} ('x', 'y') but numbers in "
        f"{data_csv} (0, 1); they cannot be matched as classes: give both files labels of one "
        "type"
    )


def test_a_class_with_a_single_row_names_the_class(data_csv) -> None:
    single = data_csv.parent / "single.csv"
    proc = run_cli("run", "--data", str(single), "--label-column", "target", cwd=single.parent)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line == (
        f"kdflow run: error: --label-column: class 7 has a single row in {single} (label "
        "column 'target'); the stratified train/test split needs at least 2 rows of every "
        "class: add rows, drop the class, or give --test-data"
    )
    assert not (single.parent / "outputs").exists()


def test_a_contract_feature_the_data_lacks(data_csv) -> None:
    line = _one_line(["--contract", str(data_csv.parent / "contract.yaml")], data_csv)
    assert line.startswith(f"--contract: 'id' is not a column of {data_csv} (columns: a, b, c")
