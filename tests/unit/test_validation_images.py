"""Image data held to its contract: real image files, real Pillow, real GX Core.

GX runs cost about a second each (after a ~5 s import), so each module-scoped fixture
validates one dataset once and several tests read its report; variants of one check call
the exact checks (`split_findings`, ...) directly."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from kdflow.data.image_facts import ImageSet, read_image_set, usable_rows
from kdflow.errors import ConfigError
from kdflow.validation.contract import DataContract, default_contract
from kdflow.validation.findings import Finding
from kdflow.validation.image_checks import cross_split_findings, split_findings, validate_images
from kdflow.validation.image_gx import gx_outcome_findings
from kdflow.validation.image_shapes import image_shape
from kdflow.validation.report import ValidationReport
from kdflow.validation.scan import ValidationSettings
from tests.unit.test_image_facts import image_folder, noise

IMAGES = default_contract(images=True)


def only(findings: list[Finding], check: str) -> Finding:
    matching = [f for f in findings if f.check == check]
    assert len(matching) == 1, [(f.check, f.message) for f in findings]
    return matching[0]


def checks(findings: list[Finding]) -> set[str]:
    return {f.check for f in findings}


# ------------------------------------------------------------------------ a good dataset


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("good")
    formats = ("PNG", "JPEG", "WEBP")
    train = read_image_set(
        str(image_folder(root / "train", dict.fromkeys("abc", 4), formats=formats))
    )
    test = read_image_set(str(image_folder(root / "test", dict.fromkeys("abc", 2))))
    report = validate_images(train, test, IMAGES, docs_dir=root / "docs")
    return SimpleNamespace(train=train, test=test, report=report, docs=root / "docs")


def test_a_good_image_folder_passes_with_its_profile(good: SimpleNamespace) -> None:
    report: ValidationReport = good.report
    assert report.passed and not report.failures and not report.warnings, report.to_markdown()
    assert report.rows == {"train": 12, "test": 6}
    train = report.statistics["train"]
    assert train["sizes"] == {"8x8": 12} and train["modes"] == {"RGB": 12}
    assert train["formats"] == {"PNG": 6, "JPEG": 3, "WEBP": 3}
    assert train["channels"] == {"3": 12} and train["classes"] == {"a": 4, "b": 4, "c": 4}
    sizes = good.train.facts["bytes"].astype(int)
    assert train["bytes"] == {"min": sizes.min(), "median": sizes.median(), "max": sizes.max()}
    assert train["gx_rows"] == 12 and train["gx_failed"] == []
    assert "decoded with Pillow" in report.method and "GX Core" in report.method
    json.dumps(report.to_dict())


def test_the_shape_and_the_usable_rows_of_a_good_folder(good: SimpleNamespace) -> None:
    assert image_shape(good.train, None, 0) == [3, 8, 8]
    assert image_shape(good.train, [4, 6], 1) == [1, 4, 6], "given settings win"
    assert usable_rows(good.train).tolist() == list(range(12))


def test_the_dataset_hash_covers_the_usable_images_and_labels(good: SimpleNamespace) -> None:
    digest = hashlib.sha256()
    for split, image_set in (("train", good.train), ("test", good.test)):
        digest.update(f"{split}\n".encode())
        for sha, label in zip(image_set.facts["sha256"], image_set.facts["label"], strict=True):
            digest.update(f"{sha}\t{label}\n".encode())
    assert good.report.dataset_hash == digest.hexdigest()


def test_gx_data_docs_show_the_suites_on_the_facts(good: SimpleNamespace) -> None:
    assert good.report.data_docs == good.docs / "index.html"
    assert good.report.data_docs.is_file()
    pages = " ".join(p.read_text() for p in good.docs.rglob("*.html"))
    assert "kdflow_images_train" in pages and "kdflow_images_test" in pages
    assert "decodes" in pages and "sha256" in pages


# -------------------------------------------------------------------- undecodable files


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("damaged")
    root = image_folder(base / "train", {"a": 4, "b": 4})
    whole = noise((32, 32))
    (root / "a" / "corrupt.png").write_bytes(np.random.default_rng(1).bytes(200))
    (root / "a" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (root / "b" / "empty.png").write_bytes(b"")
    (root / "b" / "notes.jpg").write_text("a text file, renamed\n")
    train = read_image_set(str(root))
    lenient = DataContract(images=True, max_unreadable_fraction=0.5)
    return SimpleNamespace(
        train=train,
        strict=validate_images(train, None, IMAGES, docs_dir=base / "docs"),
        lenient=validate_images(train, None, lenient),
    )


BAD = ["a/corrupt.png", "a/truncated.png", "b/empty.png", "b/notes.jpg"]


def test_undecodable_files_fail_by_default_each_listed_by_path(damaged: SimpleNamespace) -> None:
    assert not damaged.strict.passed
    finding = only(damaged.strict.failures, "unreadable_images")
    assert finding.message.startswith("4 of 12 train images (33.33%) cannot be decoded: ")
    for path in BAD:
        assert path in finding.message
    assert "b/empty.png (zero bytes)" in finding.message
    assert "a/corrupt.png (not an image (cannot identify image file))" in finding.message
    assert "a/truncated.png (truncated: " in finding.message
    assert "max_unreadable_fraction" in finding.message
    assert finding.expectation == "expect_column_values_to_be_in_set", "GX failed it too"
    assert finding.observed["reasons"] == {"not an image": 2, "truncated": 1, "zero bytes": 1}
    assert [r["path"] for r in finding.sample_rows] == BAD
    assert checks(damaged.strict.failures) == {"unreadable_images"}
    assert damaged.strict.data_docs is not None and damaged.strict.data_docs.is_file()


def test_within_the_allowance_they_warn_and_are_dropped(damaged: SimpleNamespace) -> None:
    report = damaged.lenient
    assert report.passed, report.to_markdown()
    finding = only(report.warnings, "unreadable_images")
    assert "4 of 12 train images (33.33%) cannot be decoded and are left out" in finding.message
    assert all(path in finding.message for path in BAD)
    kept = damaged.train.facts["path"].iloc[usable_rows(damaged.train)].tolist()
    assert len(kept) == 8 and not set(kept) & set(BAD)
    assert image_shape(damaged.train, None, 0) == [3, 8, 8]
    assert report.statistics["train"]["usable"] == 8
    assert report.statistics["train"]["gx_failed"] == [], "GX's `mostly` is the allowance"
    assert report.dataset_hash == damaged.strict.dataset_hash, "the hash covers what is kept"


# ------------------------------------------------------------------ a messy image folder


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Train: an empty class, a README, a repeated image and one under two classes, a
    grayscale and a larger image. Test: a copy of a training image, an unseen class."""
    root = tmp_path_factory.mktemp("messy")
    train = image_folder(root / "train", {"a": 4, "b": 4})
    (train / "empty").mkdir()
    (train / "a" / "README.txt").write_text("class a: cats")
    shutil.copy(train / "a" / "000.png", train / "a" / "900.png")
    shutil.copy(train / "a" / "001.png", train / "b" / "901.png")
    (train / "a" / "gray.png").write_bytes(noise(mode="L"))
    (train / "b" / "large.png").write_bytes(noise((16, 12)))
    test = image_folder(root / "test", {"a": 2, "z": 1})
    shutil.copy(train / "b" / "000.png", test / "a" / "leaked.png")
    sets = SimpleNamespace(train=read_image_set(str(train)), test=read_image_set(str(test)))
    sets.report = validate_images(sets.train, sets.test, IMAGES)
    return sets


def test_an_empty_class_folder_fails_naming_it(messy: SimpleNamespace) -> None:
    finding = only(messy.report.failures, "empty_classes")
    assert finding.split == "train" and "1 class folder(s) hold no image files: empty" in (
        finding.message
    )


def test_a_readme_in_a_class_folder_warns(messy: SimpleNamespace) -> None:
    finding = only(messy.report.warnings, "other_files")
    assert "a/README.txt" in finding.message and "are ignored" in finding.message


def test_mixed_sizes_and_channels_fail_naming_the_options(messy: SimpleNamespace) -> None:
    sizes = only(messy.report.failures, "image_sizes")
    assert "2 different sizes (height×width): 8x8 (" in sizes.message
    assert "16x12 (1 image, e.g. train b/large.png)" in sizes.message
    assert "--image-size H,W" in sizes.message and "--image-size 8,8" in sizes.message
    mixed = only(messy.report.failures, "image_channels")
    assert "mix grayscale and colour" in mixed.message and "--channels 1" in mixed.message
    assert "1 channel (mode L) (1 image, e.g. train a/gray.png)" in mixed.message
    with pytest.raises(ConfigError, match="--channels") as err:
        image_shape(messy.train, None, 0)
    assert err.value.option == "--channels"
    with pytest.raises(
        ConfigError,
        match=r"--image-size H,W .*b/large\.png|b/large\.png.*"
        r"--image-size H,W",
    ) as err:
        image_shape(messy.train, None, 3)
    assert err.value.option == "--image-size"
    assert image_shape(messy.train, [8, 8], 3) == [3, 8, 8]


def test_duplicates_warn_with_the_conflicting_labels(messy: SimpleNamespace) -> None:
    finding = only(messy.report.warnings, "duplicate_images")
    assert finding.message.startswith("2 of 12 train images (16.67%) repeat the content of an ")
    assert "a/900.png = a/000.png" in finding.message
    assert (
        "1 image(s) appear under different classes (e.g. b/901.png in 'b' = a/001.png in 'a')"
        in finding.message
    )
    assert finding.observed == {"duplicates": 2, "share": 2 / 12, "conflicting_labels": 1}


def test_leakage_and_unseen_test_classes_fail(messy: SimpleNamespace) -> None:
    leak = only(messy.report.failures, "leakage")
    assert leak.split == "test"
    assert leak.message.startswith("1 of 4 test images (25.00%) are byte-for-byte copies")
    assert "test a/leaked.png = train b/000.png" in leak.message
    unseen = only(messy.report.failures, "test_classes")
    assert "1 class(es) the training split lacks: 'z' (1 image)" in unseen.message
    assert unseen.expectation == "expect_column_values_to_be_in_set"


def test_only_the_expected_failures(messy: SimpleNamespace) -> None:
    assert checks(messy.report.failures) == {
        "empty_classes",
        "image_sizes",
        "image_channels",
        "leakage",
        "test_classes",
    }
    assert checks(messy.report.warnings) == {"other_files", "duplicate_images"}
    assert messy.report.statistics["train"]["modes"] == {"RGB": 11, "L": 1}
    assert messy.report.statistics["train"]["sizes"] == {"8x8": 11, "16x12": 1}


def test_mixed_images_pass_with_image_size_and_channels(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "data", {"a": 3, "b": 3})
    (root / "a" / "gray.png").write_bytes(noise(mode="L"))
    (root / "b" / "large.webp").write_bytes(noise((16, 12), fmt="WEBP"))
    (root / "b" / "alpha.png").write_bytes(noise(mode="RGBA"))
    train = read_image_set(str(root))
    report = validate_images(train, None, IMAGES, image_size=[8, 8], channels=3)
    assert report.passed, report.to_markdown()
    assert report.statistics["train"]["channels"] == {"3": 8, "1": 1}
    assert image_shape(train, [8, 8], 3) == [3, 8, 8]


def test_duplicates_beyond_the_contract_fail_as_repeated_rows_do(messy: SimpleNamespace) -> None:
    strict = DataContract(images=True, max_duplicate_fraction=0.1)
    finding = only(
        split_findings(messy.train, "train", strict, ValidationSettings()), "duplicate_images"
    )
    assert finding.severity == "failure" and "the contract allows 10.00%" in finding.message


def test_leakage_is_not_checked_when_the_contract_says_so(messy: SimpleNamespace) -> None:
    contract = DataContract(images=True, check_leakage=False)
    found = cross_split_findings(messy.train, messy.test, contract, ValidationSettings())
    assert checks(found) == {"test_classes"}


# ------------------------------------------------------------------ classes and tables


def test_a_folder_with_one_class_fails(tmp_path: Path) -> None:
    train = read_image_set(str(image_folder(tmp_path / "one", {"cats": 3})))
    report = validate_images(train, None, IMAGES)
    finding = only(report.failures, "single_class")
    assert "1 class only ('cats' (3 images)); distillation needs at least 2" in finding.message
    assert finding.expectation == "expect_column_unique_value_count_to_be_between"


def test_the_contract_class_rules_apply_to_images(tmp_path: Path) -> None:
    train = read_image_set(str(image_folder(tmp_path / "d", {"a": 1, "b": 3, "c": 2})))
    contract = DataContract(
        images=True, min_rows_per_class=2, max_class_imbalance=2, classes=["a", "b"]
    )
    found = split_findings(train, "train", contract, ValidationSettings())
    assert "'a' (1 image)" in only(found, "rows_per_class").message
    assert "'b' (3 images) is 3.0× the smallest 'a'" in only(found, "class_imbalance").message
    assert "not in the contract: 'c' (2 images)" in only(found, "unknown_classes").message


def test_no_images_at_all_fails(tmp_path: Path) -> None:
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "b").mkdir()
    train = read_image_set(str(tmp_path / "d"))
    found = split_findings(train, "train", IMAGES, ValidationSettings())
    assert checks(found) == {"no_images", "empty_classes"}
    assert "the class folders hold no image files" in only(found, "no_images").message
    with pytest.raises(ConfigError, match="no training image decodes"):
        image_shape(train, None, 3)


def test_a_table_with_missing_paths_and_a_null_label(tmp_path: Path) -> None:
    image_folder(tmp_path / "imgs", {"a": 2, "b": 2})
    table = tmp_path / "train.parquet"
    pd.DataFrame(
        {
            "image": [
                "imgs/a/000.png",
                "imgs/a/001.png",
                "imgs/b/000.png",
                "imgs/b/001.png",
                "imgs/a/gone.png",
                "imgs/b/gone.png",
            ],
            "label": ["a", "a", "b", None, "a", "b"],
        }
    ).to_parquet(table)
    train = read_image_set(str(table), image_column="image")
    report = validate_images(train, None, IMAGES)
    unreadable = only(report.failures, "unreadable_images")
    assert unreadable.message.startswith("2 of 6 train images (33.33%) cannot be decoded: ")
    assert "imgs/a/gone.png (missing file), imgs/b/gone.png (missing file)" in unreadable.message
    assert train.missing == ["imgs/a/gone.png", "imgs/b/gone.png"]
    nulls = only(report.failures, "label_nulls")
    assert "null for 1 of 6 train images (imgs/b/001.png)" in nulls.message
    assert nulls.expectation == "expect_column_values_to_not_be_null"
    assert usable_rows(train).tolist() == [0, 1, 2], "no undecodable file, no null label"


# -------------------------------------------------------------------- settings, GX, contract


def test_settings_that_cannot_apply_raise_config_error(good: SimpleNamespace) -> None:
    with pytest.raises(ConfigError, match="--channels must be 1 or 3, got 2"):
        validate_images(good.train, None, IMAGES, channels=2)
    with pytest.raises(ConfigError, match="--image-size: give the height and width"):
        validate_images(good.train, None, IMAGES, image_size=[0, 8])
    with pytest.raises(ConfigError, match="the data is image files"):
        validate_images(good.train, None, default_contract(text_columns=["text"]))


def test_a_gx_failure_no_exact_check_explains_is_a_finding() -> None:
    def outcome(check: str | None, raised: bool = False) -> SimpleNamespace:
        config = SimpleNamespace(
            type="expect_table_columns_to_match_set",
            kwargs={},
            meta={"kdflow_check": check},
            severity=SimpleNamespace(value="critical"),
        )
        return SimpleNamespace(
            success=False,
            expectation_config=config,
            result={"unexpected_count": 3},
            exception_info={"raised_exception": raised, "exception_message": "boom"},
        )

    exact = Finding("no_images", None, "none", split="train")
    found = gx_outcome_findings(
        {"train": [outcome("no_images"), outcome("facts_columns"), outcome(None, raised=True)]},
        [exact],
    )
    assert exact.expectation == "expect_table_columns_to_match_set"
    assert [f.check for f in found] == ["gx_facts", "gx_error"]
    assert "failed on the facts table of the per-image facts (3 unexpected" in found[0].message
    assert found[1].message.endswith(": boom") and all(f.split == "train" for f in found)


def test_image_contract_fields_round_trip_and_are_checked(tmp_path: Path) -> None:
    contract = DataContract(images=True, max_unreadable_fraction=0.05, classes=["a", "b"])
    assert DataContract.from_yaml(contract.to_yaml(tmp_path / "c.yaml")) == contract
    text = default_contract(images=True).to_yaml(tmp_path / "d.yaml").read_text()
    assert "images: true" in text and "max_unreadable_fraction: 0.0" in text
    assert "# Fraction of a split's image files that may fail to decode" in text
    assert default_contract("y", input_shape=[1, 8, 8], images=True) == DataContract(
        label_column="y", images=True
    )
    assert not default_contract().images and default_contract().max_unreadable_fraction == 0
    with pytest.raises(ConfigError, match="max_unreadable_fraction must be a fraction"):
        DataContract(images=True, max_unreadable_fraction=1.5)
    with pytest.raises(ConfigError, match="images cannot be combined with input_shape"):
        DataContract(images=True, input_shape=[1, 8, 8])
    (tmp_path / "bad.yaml").write_text("images: yes please\n")
    with pytest.raises(ConfigError, match="images must be true or false"):
        DataContract.from_yaml(tmp_path / "bad.yaml")


def test_image_sets_can_be_built_from_facts_directly(good: SimpleNamespace) -> None:
    """The integrator's prepared dataset keeps `usable_rows` and loads their bytes."""
    subset = ImageSet(
        "x",
        "folder",
        good.train.facts.iloc[:2].reset_index(drop=True),
        sources=good.train.sources[:2],
        files=good.train.files,
    )
    assert subset.load(usable_rows(subset)) == good.train.load([0, 1])


def test_a_split_where_nothing_decodes_fails_without_gx_noise(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for name in ("a/1.png", "a/2.jpg", "b/1.webp"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"\x89PNG\r\n\x1a\n" if name.endswith("png") else b"junk")
    test = image_folder(tmp_path / "t", {"a": 1})
    train_set = read_image_set(str(root))
    report = validate_images(train_set, read_image_set(str(test)), IMAGES)
    assert checks(report.failures) == {"unreadable_images", "rows_per_class", "test_classes"}
    assert "'a' (0 images), 'b' (0 images)" in only(report.failures, "rows_per_class").message
    assert "3 of 3 train images (100.00%)" in only(report.failures, "unreadable_images").message
    with pytest.raises(ConfigError, match="no training image decodes, so --channels"):
        image_shape(train_set, None, 0)
