"""Bad image runs through `kdflow run` (in-process `main()`).

Settings that cannot apply to images (or to the data given) stop in preflight as one line
naming the option, exit 2, no traceback, nothing started or recorded. Bad image files stop
at validate-data: exit 1, the failed checks listed with every file by path and the count,
nothing registered, no teacher trained (through `kdflow run` for an empty folder and for
files that do not decode; the other bad contents through the validate step in this
process, which is what the component runs, at a second each instead of a pipeline run).
A contract that allows unreadable files, and `--image-size` for mixed sizes, let the run
past validation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.cli import main
from tests.pipelines.test_text_bad_input import (  # noqa: F401 - steps_env is a fixture
    assert_failed_at_validation,
    assert_one_line_naming,
    steps_env,
)
from tests.unit.image_helpers import image_folder

TEACHER = "cnn"
STUDENT = "mlp:hidden=16"
ABSENT_TEACHER = "models:/absent@champion"
"""A registry teacher that is not there: with `--teacher-epochs 0` preflight lets it through
(it is fetched, not built), so the run validates the data and then stops cleanly in the
first teacher step. The tests that must get past validation stop there, in seconds."""
DAMAGED = {
    "0/random.png": "0/random.png (not an image",
    "1/truncated.png": "1/truncated.png (truncated",
    "2/zero.png": "2/zero.png (zero bytes)",
    "2/notes.jpg": "2/notes.jpg (not an image",
}
"""The damaged files of the `damaged` folder, and how the report names each."""


# -------------------------------------------------------------------------- the data


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good folder: 3 classes of 10 digit PNGs (8×8, grayscale)."""
    return image_folder(tmp_path_factory.mktemp("digits") / "images", per_class=10, classes=3)


@pytest.fixture(scope="module")
def numbers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A numeric CSV of two feature columns and a label."""
    path = tmp_path_factory.mktemp("numbers") / "numbers.csv"
    frame = pd.DataFrame({"a": range(40), "b": range(40), "label": [i % 2 for i in range(40)]})
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The good folder plus four files that do not decode (4 of 34 images): random bytes
    named .png, the first half of a real PNG, a zero-byte file, a text file named .jpg."""
    folder = image_folder(tmp_path_factory.mktemp("damaged") / "images", per_class=10, classes=3)
    (folder / "0" / "random.png").write_bytes(np.random.default_rng(0).bytes(300))
    real = (folder / "1" / "0010.png").read_bytes()
    (folder / "1" / "truncated.png").write_bytes(real[: len(real) // 2])
    (folder / "2" / "zero.png").write_bytes(b"")
    (folder / "2" / "notes.jpg").write_text("not an image, whatever its name says\n")
    return folder


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The good folder with three of class 1's images enlarged to 16×16."""
    folder = image_folder(tmp_path_factory.mktemp("sizes") / "images", per_class=10, classes=3)
    for path in sorted((folder / "1").glob("*.png"))[:3]:
        Image.open(path).resize((16, 16)).save(path)
    return folder


def kdflow_run(tmp_path: Path, data: Path, *args: str) -> list[str]:
    """`kdflow run` on `data`; the options given replace the defaults of the same name."""
    given = dict.fromkeys(a for a in args if a.startswith("--"))
    defaults = {
        "--teachers": [TEACHER],
        "--student": [STUDENT],
        "--teacher-epochs": ["1"],
        "--student-epochs": ["1"],
        "--workers": ["0"],
    }
    argv = [
        "run",
        "--data",
        str(data),
        "--output",
        str(tmp_path / "out"),
        "--quiet",
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    for option, values in defaults.items():
        if option not in given:
            argv += [option, *values]
    return [*argv, *args]


def registered_nothing(tmp_path: Path) -> None:
    """No registered model and no model version in the run's MLflow store."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert not client.search_registered_models()
    assert not client.search_model_versions()


def assert_stopped_in_step(
    capsys: pytest.CaptureFixture[str], code: int, step: str, text: str, tmp_path: Path
) -> str:
    """The run failed in `step` with the one-line reason `text` (no validation report:
    the input is no image set at all, or the step after validation failed), exit 1, no
    traceback, nothing registered."""
    out, err = capsys.readouterr()
    assert code == 1, err
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"kdflow: error: {step} failed: "), err
    assert text in lines[0], lines[0]
    assert lines[-1] == "kdflow: nothing was registered", err
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "out" / "summary.json").exists()
    registered_nothing(tmp_path)
    return lines[0]


def validate_outputs(tmp_path: Path) -> Path:
    """The validate-data step's output folder of the one run under tmp_path."""
    (folder,) = (tmp_path / "out" / "pipeline").glob("*/validate-data")
    return folder


def validate_step(tmp_path: Path, data: Path, **settings: object) -> str:
    """The validate step in this process (what the validate-data component runs) on bad
    data: the DataValidationError's message, with the report written and no prepared
    dataset. The CLI's handling of that error (exit 1, the failures listed, nothing
    registered) is the same for every finding: `test_files_that_do_not_decode` and
    `test_an_empty_folder` check it through `kdflow run`."""
    from kdflow.config import DataConfig
    from kdflow.errors import DataError
    from kdflow.steps import validate_data

    cfg = DataConfig(data=str(data), **settings)  # type: ignore[arg-type]
    with pytest.raises(DataError) as failed:
        validate_data(cfg, 0, tmp_path / "dataset", tmp_path / "report.md")
    assert not (tmp_path / "dataset" / "meta.json").exists(), "nothing prepared"
    return str(failed.value)


def validate_passes(tmp_path: Path, data: Path, **settings: object) -> Path:
    """The validate step in this process on data that must pass: the prepared dataset."""
    from kdflow.config import DataConfig
    from kdflow.steps import validate_data

    cfg = DataConfig(data=str(data), **settings)  # type: ignore[arg-type]
    info = validate_data(cfg, 0, tmp_path / "dataset", tmp_path / "report.md")
    assert info["passed"], info
    return tmp_path / "dataset"


# ------------------------------------------------------------------ caught in preflight


@pytest.mark.parametrize(
    ("args", "option", "text"),
    [
        (["--image-size", "0,0"], "--image-size", "dimensions must be positive, got '0,0'"),
        (["--image-size", "32"], "--image-size", "give the height and width in pixels"),
        (["--channels", "2"], "--channels", "must be 1 or 3, got 2"),
    ],
    ids=["image-size-0,0", "image-size-32", "channels-2"],
)
def test_a_bad_image_size_or_channel_count(
    args: list[str],
    option: str,
    text: str,
    digits: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An image size that is not two positive integers, or a channel count other than 1
    or 3, is refused before anything starts, naming the option and the value."""
    code = main(kdflow_run(tmp_path, digits, *args))
    assert_one_line_naming(capsys, code, option, text, tmp_path)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--input-shape", "1,8,8"], "--input-shape"),
        (["--augment-noise", "0.1", "--teacher-mode", "online"], "--augment-noise"),
        (["--text-column", "x"], "--text-column"),
    ],
    ids=["input-shape", "augment-noise", "text-column"],
)
def test_a_setting_of_columns_or_text_with_a_folder(
    args: list[str], option: str, digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Options for numeric columns or text are refused on a folder of images, by name."""
    code = main(kdflow_run(tmp_path, digits, *args))
    assert_one_line_naming(capsys, code, option, "does not apply to image data", tmp_path)


def test_augment_noise_with_a_folder_says_what_it_is_for(
    digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--augment-noise` alone (the default offline teachers) on a folder: the settings check
    runs before the data is looked at, so its first error says both what the option is for
    (numeric columns; images take --augment) and what it needs, not only the latter."""
    code = main(kdflow_run(tmp_path, digits, "--augment-noise", "0.1"))
    line = assert_one_line_naming(
        capsys, code, "--augment-noise", "adds noise to numeric columns", tmp_path
    )
    assert "images take --augment" in line and "--teacher-mode online" in line


def test_augment_on_a_numeric_csv(
    numbers: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An image augmentation on numeric columns is refused, pointing to --augment-noise."""
    code = main(
        kdflow_run(
            tmp_path,
            numbers,
            "--augment",
            "flip",
            "--teacher-mode",
            "online",
            "--teachers",
            "mlp:hidden=8",
        )
    )
    line = assert_one_line_naming(capsys, code, "--augment", "apply to image data", tmp_path)
    assert "--augment-noise" in line


def test_teacher_augment_on_a_numeric_csv(
    numbers: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--teacher-augment` on numeric columns stops in preflight, naming the option."""
    code = main(kdflow_run(tmp_path, numbers, "--teacher-augment", "crop", "--teachers",
                           "mlp:hidden=8"))
    assert_one_line_naming(capsys, code, "--teacher-augment", "apply to image data", tmp_path)


def test_augment_on_a_numeric_csv_with_offline_teachers(
    numbers: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--augment flip` as the issue writes it (default offline teachers) on a numeric CSV:
    the first error says augmentations are for images, and that they need online teachers."""
    code = main(kdflow_run(tmp_path, numbers, "--augment", "flip", "--teachers", "mlp:hidden=8"))
    line = assert_one_line_naming(capsys, code, "--augment", "augments image data", tmp_path)
    assert "--augment-noise" in line and "--teacher-mode online" in line


def test_an_unknown_augmentation(
    digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--augment spin` is refused, listing the augmentations there are."""
    code = main(kdflow_run(tmp_path, digits, "--augment", "spin"))
    assert_one_line_naming(
        capsys,
        code,
        "--augment",
        "unknown augmentation spin; known: crop, flip, rotate, color, mixup",
        tmp_path,
    )


def test_an_augmentation_with_offline_teachers(
    digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--augment crop` with the default `--teacher-mode offline` is refused, saying it
    needs online teachers and why: cached logits are of the images, not their views."""
    code = main(kdflow_run(tmp_path, digits, "--augment", "crop"))
    line = assert_one_line_naming(
        capsys, code, "--augment", "needs --teacher-mode online", tmp_path
    )
    assert "cached teacher logits belong to the images as they are" in line
    assert "augmented views" in line


def test_an_image_column_that_is_not_there(
    digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--image-column` naming no column of the table is refused, listing the columns."""
    table = tmp_path / "images.parquet"
    pd.DataFrame({"path": ["0/0000.png", "1/0010.png"], "label": [0, 1]}).to_parquet(table)
    code = main(kdflow_run(tmp_path, table, "--image-column", "picture"))
    line = assert_one_line_naming(
        capsys, code, "--image-column", "'picture' is not a column", tmp_path
    )
    assert "(columns: path, label)" in line


def test_a_contract_that_does_not_exist(
    digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `--contract` file that is not there stops in preflight for images as it does for
    tables, naming the option."""
    code = main(kdflow_run(tmp_path, digits, "--contract", str(tmp_path / "nowhere.yaml")))
    assert_one_line_naming(capsys, code, "--contract", "no such file", tmp_path)


# -------------------------------------------------------- caught by the validate step


@pytest.mark.slow
@pytest.mark.usefixtures("steps_env")
def test_an_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder with nothing in it: the validate step names it and the layout it expects."""
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(kdflow_run(tmp_path, empty))
    line = assert_stopped_in_step(capsys, code, "validate-data", "no class folders", tmp_path)
    assert str(empty) in line and "one sub-folder per class" in line
    assert not list((tmp_path / "out" / "pipeline").glob("*/*/train-teacher*"))


def test_a_folder_with_one_class(tmp_path: Path) -> None:
    """One class folder: validation fails saying distillation needs two."""
    folder = image_folder(tmp_path / "images", per_class=10, classes=1)
    message = validate_step(tmp_path, folder)
    assert "[single_class]" in message and "needs at least 2 classes" in message


def test_a_class_folder_without_images(tmp_path: Path) -> None:
    """An empty class folder beside good ones fails validation, named."""
    folder = image_folder(tmp_path / "images", per_class=10, classes=3)
    (folder / "7").mkdir()
    message = validate_step(tmp_path, folder)
    assert "[empty_classes]" in message and "1 class folder(s) hold no image files: 7" in message


@pytest.mark.slow
@pytest.mark.usefixtures("steps_env")
def test_files_that_do_not_decode(
    damaged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Random bytes, a truncated PNG, a zero-byte file and a text file named .jpg fail
    validation under the default contract: every one listed by path with its reason, and
    the count."""
    code = main(kdflow_run(tmp_path, damaged))
    err = assert_failed_at_validation(
        capsys, code, "path", "4 of 34 train images (11.76%) cannot be decoded", tmp_path
    )
    (line,) = [line for line in err.splitlines() if line.startswith("- [unreadable_images]")]
    for shown in DAMAGED.values():
        assert shown in line, line
    assert "max_unreadable_fraction" in line


@pytest.mark.slow
@pytest.mark.usefixtures("steps_env")
def test_a_contract_that_allows_files_that_do_not_decode(
    damaged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With `max_unreadable_fraction: 0.2` the same folder passes validation: the damaged
    files are warnings, left out of the prepared dataset, and the run goes on (here to its
    first teacher step, which stops on a registry teacher that is not there)."""
    contract = tmp_path / "contract.yaml"
    contract.write_text("images: true\nmax_unreadable_fraction: 0.2\n")
    code = main(
        kdflow_run(
            tmp_path,
            damaged,
            "--contract",
            str(contract),
            "--teachers",
            ABSENT_TEACHER,
            "--teacher-epochs",
            "0",
        )
    )
    assert_stopped_in_step(
        capsys, code, "train-teacher", f"cannot download {ABSENT_TEACHER}", tmp_path
    )
    step = validate_outputs(tmp_path)
    report = (step / "report").read_text()
    assert report.startswith("# Data validation: passed")
    assert "## Failed checks" not in report
    warnings = report.split("## Warnings", 1)[1]
    (line,) = [line for line in warnings.splitlines() if line.startswith("- [unreadable_images]")]
    assert "4 of 34 train images (11.76%) cannot be decoded and are left out" in line
    assert "the contract allows 20.00%" in line
    for shown in DAMAGED.values():
        assert shown in line, line
    meta = json.loads((step / "dataset" / "meta.json").read_text())
    assert sum(meta["rows"].values()) == 30 and meta["input_shape"] == [1, 8, 8]
    paths = pd.concat(
        pd.read_parquet(step / "dataset" / f"{s}.parquet", columns=["path"])
        for s in ("train", "val", "test")
    )["path"]
    assert not set(DAMAGED) & set(paths)


def test_mixed_sizes_without_image_size(mixed_sizes: Path, tmp_path: Path) -> None:
    """Images of two sizes fail validation, asking for --image-size with the sizes seen."""
    message = validate_step(tmp_path, mixed_sizes)
    assert "give --image-size H,W" in message
    assert "8x8 (27 images" in message and "16x16 (3 images" in message
    assert "--image-size 8,8, the most common" in message


def test_mixed_sizes_with_image_size(mixed_sizes: Path, tmp_path: Path) -> None:
    """With `--image-size 8,8` the same folder passes validation, every image resized to
    8×8 in the prepared dataset."""
    from safetensors.numpy import load_file

    dataset = validate_passes(tmp_path, mixed_sizes, image_size=[8, 8])
    assert "image_sizes" not in (tmp_path / "report.md").read_text()
    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["input_shape"] == [1, 8, 8] and sum(meta["rows"].values()) == 30
    pixels = load_file(str(dataset / "pixels" / "train.safetensors"))["pixels"]
    assert pixels.shape == (meta["rows"]["train"], 1, 8, 8)


def test_grayscale_and_rgb_without_channels(tmp_path: Path) -> None:
    """Grayscale and RGB images together fail validation, asking for --channels; with
    `--channels 3` they pass, as RGB."""
    folder = image_folder(tmp_path / "images", per_class=10, classes=3)
    for path in sorted((folder / "2").glob("*.png"))[:3]:
        Image.open(path).convert("RGB").save(path)
    message = validate_step(tmp_path / "without", folder)
    assert "give --channels 1 (grayscale)" in message and "mix grayscale and colour" in message
    assert "1 channel (mode L) (27 images" in message
    assert "3 channels (mode RGB) (3 images" in message
    dataset = validate_passes(tmp_path / "with", folder, channels=3)
    assert json.loads((dataset / "meta.json").read_text())["input_shape"] == [3, 8, 8]


def test_a_table_of_paths_that_do_not_exist(tmp_path: Path) -> None:
    """A Parquet table whose `--image-column path` lists files that are not there fails
    validation, every missing path listed, with the count."""
    folder = image_folder(tmp_path / "images", per_class=10, classes=3)
    rows = [(str(p.relative_to(folder)), p.parent.name) for p in sorted(folder.rglob("*.png"))]
    rows += [("0/gone.png", "0"), ("nowhere/lost.png", "1")]
    table = folder / "images.parquet"
    pd.DataFrame(rows, columns=["path", "label"]).to_parquet(table)
    message = validate_step(tmp_path, table, image_column="path")
    assert "2 of 32 train images (6.25%) cannot be decoded" in message
    assert "0/gone.png (missing file)" in message and "nowhere/lost.png (missing file)" in message


def test_an_image_column_of_floats(tmp_path: Path) -> None:
    """`--image-column` naming a float column: the validate step says it must hold paths
    or bytes, naming the table, the column and its type."""
    table = tmp_path / "images.parquet"
    pd.DataFrame(
        {"path": ["0/0000.png"] * 4, "score": [0.5, 0.1, 0.2, 0.9], "label": [0, 1, 0, 1]}
    ).to_parquet(table)
    message = validate_step(tmp_path, table, image_column="score")
    assert "--image-column 'score' holds double values" in message and str(table) in message
    assert "paths (strings) or the image files' bytes (binary)" in message
