"""Checks on image data: the per-image facts of each split (`kdflow.data.image_facts`) held
to the contract, exactly, and as a GX Core suite whose results the Data Docs show.

Reading the data decoded every file once with Pillow, so the facts are exact for the whole
split, and every check here is computed from them: files that do not decode (corrupt,
truncated, zero bytes, not an image, missing from a table; a failure beyond the contract's
`max_unreadable_fraction`, else a warning and the files are left out: `usable_rows`),
empty class folders, files that are not images, null labels, the classes (at least two,
the contract's per-class minimum, imbalance and class list; test classes ⊆ train classes),
images of more than one size or channel count when `--image-size` / `--channels` do not
say what to make of them (`image_shape`), duplicate images by SHA-256 within a split (a
warning; a failure beyond `max_duplicate_fraction`, as for rows), and test images that are
byte-for-byte copies of training images (a failure under `check_leakage`, as for rows).

GX Core runs a suite on each split's facts table (every row: a table of ten small columns):
the columns exist, `decodes` is True and `sha256` set (`mostly` = 1 − the allowance),
width and height are 1 to `MAX_SIDE`, the label is set and a known class, the mode one of
train's. Each expectation names the exact check it mirrors; the exact check makes the
verdict and the message, and a failed expectation no exact check explains becomes a
finding of its own.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdflow.config import check_image_size
from kdflow.data.image_facts import IMAGE_EXTENSIONS, MAX_SIDE, ImageSet, usable_facts, usable_rows
from kdflow.data.images import channels_of_mode
from kdflow.errors import ConfigError
from kdflow.validation.contract import DataContract
from kdflow.validation.findings import Finding, listing
from kdflow.validation.gx_suite import import_gx_in_background
from kdflow.validation.image_gx import (
    _gx_statistics,
    gx_outcome_findings,
    run_gx_on_facts,
)
from kdflow.validation.image_shapes import (
    _size_key,
    shape_findings,
)
from kdflow.validation.report import ValidationReport
from kdflow.validation.scan import ValidationSettings

log = logging.getLogger(__name__)


def validate_images(
    train: ImageSet,
    test: ImageSet | None,
    contract: DataContract,
    docs_dir: Path | None = None,
    settings: ValidationSettings | None = None,
    image_size: Sequence[int] | None = None,
    channels: int = 0,
) -> ValidationReport:
    """Hold image sets to `contract`: the exact checks on their facts, and GX on them.

    Raises ConfigError for settings that cannot apply (a contract of columns, a bad
    `image_size` or `channels`); every problem with the images is a finding of the report.
    """
    settings = settings or ValidationSettings()
    _check_arguments(contract, image_size, channels)
    import_gx_in_background()
    sets = {"train": train} | ({"test": test} if test is not None else {})
    findings: list[Finding] = []
    for split, image_set in sets.items():
        findings += split_findings(image_set, split, contract, settings)
    findings += shape_findings(sets, image_size, channels)
    if test is not None:
        findings += cross_split_findings(train, test, contract, settings)
    outcomes, data_docs, gx_version = run_gx_on_facts(sets, contract, docs_dir, settings)
    findings += gx_outcome_findings(outcomes, findings)
    statistics = {
        split: image_statistics(s) | _gx_statistics(outcomes[split]) for split, s in sets.items()
    }
    report = _report(sets, findings, statistics, data_docs, gx_version)
    log.info(report.summary_line())
    return report


def _check_arguments(
    contract: DataContract, image_size: Sequence[int] | None, channels: int
) -> None:
    """ConfigError for a contract of columns or text, a bad image size or channel count."""
    if contract.is_text or contract.features is not None or contract.input_shape is not None:
        raise ConfigError(
            "the contract describes feature or text columns (features, text_columns or "
            "input_shape), but the data is image files; use a contract with images: true",
            option="--contract",
        )
    check_image_size(image_size)
    if channels not in (0, 1, 3):
        raise ConfigError(f"--channels must be 1 or 3, got {channels}", option="--channels")


# --------------------------------------------------------------------------- one split


def split_findings(
    image_set: ImageSet, split: str, contract: DataContract, settings: ValidationSettings
) -> list[Finding]:
    """The exact checks of one split's facts."""
    found = [
        _no_images(image_set),
        _unreadable(image_set, split, contract, settings),
        _empty_classes(image_set),
        _other_files(image_set),
        _null_labels(image_set, split, settings),
        _too_large(image_set, split, settings),
        _duplicates(image_set, split, contract, settings),
        _unknown_classes(image_set, split, contract),
    ]
    if split == "train":
        found += _class_findings(image_set, contract)
    findings = [f for f in found if f is not None]
    for finding in findings:
        finding.split = split
    return findings


def _no_images(image_set: ImageSet) -> Finding | None:
    if len(image_set.facts):
        return None
    where = "class folders" if image_set.layout == "folder" else "table"
    message = f"{image_set.name}: the {where} hold no image files ({', '.join(IMAGE_EXTENSIONS)})"
    return Finding("no_images", None, message, 0)


def _unreadable(
    image_set: ImageSet, split: str, contract: DataContract, settings: ValidationSettings
) -> Finding | None:
    """Files that do not decode: a failure beyond the allowance, else a warning."""
    facts = image_set.facts
    bad = facts[~facts["decodes"].to_numpy(dtype=bool)]
    if bad.empty:
        return None
    share = len(bad) / len(facts)
    allowed = contract.max_unreadable_fraction
    shown = listing(f"{p} ({e})" for p, e in zip(bad["path"], bad["error"], strict=True))
    counted = f"{len(bad):,} of {len(facts):,} {split} images ({share:.2%}) cannot be decoded"
    if share > allowed:
        severity = "failure"
        message = (
            f"{counted}: {shown}; fix or remove them, or allow a share of unreadable files "
            f"with max_unreadable_fraction in the contract (now {allowed:.2%})"
        )
    else:
        severity = "warning"
        message = f"{counted} and are left out (the contract allows {allowed:.2%}): {shown}"
    observed = {"unreadable": len(bad), "share": share, "reasons": _reasons(bad["error"])}
    rows = [{"path": p, "error": e} for p, e in zip(bad["path"], bad["error"], strict=True)]
    return Finding(
        "unreadable_images",
        "path",
        message,
        observed,
        rows[: settings.example_rows],
        severity=severity,
    )


def _reasons(errors: pd.Series) -> dict[str, int]:
    """Undecodable files per kind of reason (`truncated`, `zero bytes`, ...)."""
    kinds = (str(e).split(":")[0].split(" (")[0] for e in errors)
    return dict(Counter(kinds).most_common())


def _empty_classes(image_set: ImageSet) -> Finding | None:
    empty = image_set.empty_classes
    if not empty:
        return None
    message = (
        f"{len(empty)} class folder(s) hold no image files: {listing(empty)}; add images "
        f"({', '.join(IMAGE_EXTENSIONS)}) or remove the folders"
    )
    return Finding("empty_classes", "label", message, list(empty))


def _other_files(image_set: ImageSet) -> Finding | None:
    other = image_set.other_files
    if not other:
        return None
    message = (
        f"{len(other)} file(s) are ignored: not images by extension "
        f"({', '.join(IMAGE_EXTENSIONS)}), or outside the class folders: {listing(other)}"
    )
    return Finding("other_files", None, message, list(other), severity="warning")


def _null_labels(image_set: ImageSet, split: str, settings: ValidationSettings) -> Finding | None:
    facts = image_set.facts
    nulls = facts[facts["label"].isna()]
    if nulls.empty:
        return None
    message = (
        f"the label is null for {len(nulls):,} of {len(facts):,} {split} images "
        f"({listing(nulls['path'])}); every image needs a class"
    )
    rows = [{"path": p} for p in nulls["path"][: settings.example_rows]]
    return Finding("label_nulls", "label", message, len(nulls), rows)


def _too_large(image_set: ImageSet, split: str, settings: ValidationSettings) -> Finding | None:
    facts = usable_facts(image_set)
    large = facts[(facts["width"] > MAX_SIDE) | (facts["height"] > MAX_SIDE)]
    if large.empty:
        return None
    shown = listing(
        f"{p} ({h}×{w})"
        for p, h, w in zip(large["path"], large["height"], large["width"], strict=True)
    )
    message = (
        f"{len(large):,} {split} images are wider or taller than {MAX_SIDE:,} pixels: {shown}; "
        "shrink them before training"
    )
    rows = [{"path": p} for p in large["path"][: settings.example_rows]]
    return Finding("image_dimensions", "width", message, len(large), rows)


def _duplicates(
    image_set: ImageSet, split: str, contract: DataContract, settings: ValidationSettings
) -> Finding | None:
    """Images with the content of an earlier one (same SHA-256): a warning, a failure
    beyond the contract's `max_duplicate_fraction` (as repeated rows are)."""
    facts = usable_facts(image_set)
    first = facts.groupby("sha256", sort=False).head(1).set_index("sha256")
    repeats = facts[facts["sha256"].duplicated()]
    if repeats.empty:
        return None
    labels = facts.groupby("sha256")["label"].nunique()
    conflicting = int((labels > 1).sum())
    pairs = [
        {
            "path": p,
            "label": lab,
            "same_as": first.at[h, "path"],
            "label_of_first": first.at[h, "label"],
        }
        for p, lab, h in zip(repeats["path"], repeats["label"], repeats["sha256"], strict=True)
    ]
    share = len(repeats) / len(facts)
    return Finding(
        "duplicate_images",
        "sha256",
        _duplicate_message(split, len(repeats), len(facts), conflicting, pairs, contract),
        {"duplicates": len(repeats), "share": share, "conflicting_labels": conflicting},
        pairs[: settings.example_rows],
        severity="failure" if share > contract.max_duplicate_fraction else "warning",
    )


def _duplicate_message(
    split: str,
    count: int,
    total: int,
    conflicting: int,
    pairs: list[dict[str, Any]],
    contract: DataContract,
) -> str:
    examples = listing((f"{p['path']} = {p['same_as']}" for p in pairs), limit=3)
    message = (
        f"{count:,} of {total:,} {split} images ({count / total:.2%}) repeat the content of an "
        f"earlier image (same SHA-256), e.g. {examples}"
    )
    if conflicting:
        clash = next(p for p in pairs if p["label"] != p["label_of_first"])
        message += (
            f"; {conflicting:,} image(s) appear under different classes (e.g. {clash['path']} "
            f"in {clash['label']!r} = {clash['same_as']} in {clash['label_of_first']!r}): fix "
            "or drop the mislabelled copies"
        )
    if count / total > contract.max_duplicate_fraction:
        return message + f"; the contract allows {contract.max_duplicate_fraction:.2%}"
    return message + "; deduplicate them (each copy weighs one more image in training)"


def _unknown_classes(image_set: ImageSet, split: str, contract: DataContract) -> Finding | None:
    """Labels not in the contract's `classes`, when it lists them."""
    if contract.classes is None:
        return None
    allowed = {str(c) for c in contract.classes}
    counts = _class_counts(image_set)
    unknown = {c: n for c, n in counts.items() if c not in allowed}
    if not unknown:
        return None
    message = (
        f"the {split} images have {len(unknown)} class(es) not in the contract: "
        f"{_counted(unknown)}; the contract allows {listing(contract.classes)}"
    )
    return Finding("unknown_classes", "label", message, unknown)


def _class_findings(image_set: ImageSet, contract: DataContract) -> list[Finding]:
    """At least two classes, the contract's per-class minimum and class imbalance, over
    the training images that decode."""
    counts = _class_counts(image_set)
    if not counts:
        return []
    found = []
    if len(counts) < 2:
        message = (
            f"the training images have {len(counts)} class only ({_counted(counts)}); "
            "distillation needs at least 2 classes: one sub-folder (or label) per class"
        )
        found.append(Finding("single_class", "label", message, len(counts)))
    small = {c: n for c, n in counts.items() if n < contract.min_rows_per_class}
    if small:
        message = (
            f"{len(small)} class(es) have fewer than {contract.min_rows_per_class:,} training "
            f"images that decode: {_counted(small)}"
        )
        found.append(Finding("rows_per_class", "label", message, small))
    imbalance = _imbalance(counts, contract)
    return found + ([imbalance] if imbalance else [])


def _imbalance(counts: dict[str, int], contract: DataContract) -> Finding | None:
    present = {c: n for c, n in counts.items() if n}
    if len(present) < 2:
        return None
    big, tiny = max(present, key=present.__getitem__), min(present, key=present.__getitem__)
    ratio = present[big] / present[tiny]
    if ratio <= contract.max_class_imbalance:
        return None
    message = (
        f"the largest class {big!r} ({present[big]:,} images) is {ratio:.1f}× the smallest "
        f"{tiny!r} ({present[tiny]:,} images); the contract allows "
        f"{contract.max_class_imbalance:g}×"
    )
    return Finding("class_imbalance", "label", message, ratio)


def _class_counts(image_set: ImageSet) -> dict[str, int]:
    """Images that decode per class, for every class with an image (0 when none decodes)."""
    facts = image_set.facts
    labels = facts["label"].dropna()
    usable = facts["label"].iloc[usable_rows(image_set)]
    counts = usable.value_counts()
    return {str(c): int(counts.get(c, 0)) for c in sorted(labels.unique())}


def _counted(counts: dict[str, int], limit: int = 10) -> str:
    """'cat' (12 images), 'dog' (1 image) …"""
    items = list(counts.items())
    shown = ", ".join(f"{c!r} ({n:,} image{'s' if n != 1 else ''})" for c, n in items[:limit])
    return shown + (f" … ({len(items) - limit} more)" if len(items) > limit else "")


# --------------------------------------------------------------------- shapes (splits)


# ------------------------------------------------------------------------- two splits


def cross_split_findings(
    train: ImageSet, test: ImageSet, contract: DataContract, settings: ValidationSettings
) -> list[Finding]:
    """Test classes ⊆ train classes, no test image copied from train, test modes."""
    found = [
        _test_classes(train, test),
        _leakage(train, test, contract, settings),
        _test_modes(train, test),
    ]
    findings = [f for f in found if f is not None]
    for finding in findings:
        finding.split = "test"
    return findings


def _test_classes(train: ImageSet, test: ImageSet) -> Finding | None:
    known = {c for c, n in _class_counts(train).items() if n}
    unseen = {c: n for c, n in _class_counts(test).items() if c not in known}
    if not unseen:
        return None
    message = (
        f"the test split has {len(unseen)} class(es) the training split lacks: {_counted(unseen)}"
    )
    return Finding("test_classes", "label", message, unseen)


def _leakage(
    train: ImageSet, test: ImageSet, contract: DataContract, settings: ValidationSettings
) -> Finding | None:
    """Test images whose bytes equal a training image's: a failure under check_leakage."""
    if not contract.check_leakage:
        return None
    train_facts, test_facts = usable_facts(train), usable_facts(test)
    first = train_facts.drop_duplicates("sha256").set_index("sha256")["path"]
    leaked = test_facts[test_facts["sha256"].isin(first.index)]
    if leaked.empty:
        return None
    rows = [
        {"test": p, "train": first[h]}
        for p, h in zip(leaked["path"], leaked["sha256"], strict=True)
    ]
    examples = listing((f"test {r['test']} = train {r['train']}" for r in rows), limit=3)
    message = (
        f"{len(leaked):,} of {len(test_facts):,} test images "
        f"({len(leaked) / max(len(test_facts), 1):.2%}) are byte-for-byte copies of training "
        f"images (same SHA-256), e.g. {examples}, so the test score would be inflated; "
        "remove them from the test set"
    )
    return Finding("leakage", "sha256", message, len(leaked), rows[: settings.example_rows])


def _test_modes(train: ImageSet, test: ImageSet) -> Finding | None:
    """Test images in a Pillow mode no training image has (a warning: converted anyway)."""
    seen = set(usable_facts(train)["mode"])
    modes = usable_facts(test)["mode"]
    other = modes[~modes.isin(seen)].value_counts()
    if other.empty or not seen:
        return None
    message = (
        f"test images have modes the training images lack: "
        f"{', '.join(f'{m} ({n:,} images)' for m, n in other.items())}; training has "
        f"{listing(sorted(seen))}, and both are converted to the dataset's channels"
    )
    return Finding(
        "test_modes",
        "mode",
        message,
        {str(m): int(n) for m, n in other.items()},
        severity="warning",
    )


# ------------------------------------------------------------------------------- GX


# ----------------------------------------------------------------- report, statistics


def image_statistics(image_set: ImageSet) -> dict[str, Any]:
    """Counts per class, size (height x width), mode, format and channel count of the
    images that decode; their bytes' min/median/max; what could not be decoded."""
    facts = image_set.facts
    usable = usable_facts(image_set)
    sizes = _size_key(usable)
    channels = usable["mode"].map(lambda m: channels_of_mode(str(m)))
    bad = facts[~facts["decodes"].to_numpy(dtype=bool)]
    return {
        "layout": image_set.layout,
        "images": len(facts),
        "usable": len(usable),
        "unreadable": len(bad),
        "unreadable_reasons": _reasons(bad["error"]),
        "missing_files": len(image_set.missing),
        "classes": _class_counts(image_set),
        "empty_classes": list(image_set.empty_classes),
        "other_files": len(image_set.other_files),
        "sizes": _counts(sizes),
        "modes": _counts(usable["mode"]),
        "formats": _counts(usable["format"]),
        "channels": _counts(channels),
        "bytes": _spread(usable["bytes"]),
        "duplicate_images": int(usable["sha256"].duplicated().sum()),
        "gx_rows": len(facts),
    }


def _counts(values: pd.Series) -> dict[str, int]:
    return {str(k): int(n) for k, n in values.value_counts().items()}


def _spread(values: pd.Series) -> dict[str, int | float | None]:
    if values.empty:
        return {"min": None, "median": None, "max": None}
    array = values.to_numpy(dtype=np.int64)
    return {"min": int(array.min()), "median": float(np.median(array)), "max": int(array.max())}


def dataset_hash(sets: dict[str, ImageSet]) -> str:
    """SHA-256 over each split's usable images' (sha256, label), in order, train first."""
    digest = hashlib.sha256()
    for split, image_set in sets.items():
        digest.update(f"{split}\n".encode())
        facts = usable_facts(image_set)
        for sha, label in zip(facts["sha256"], facts["label"], strict=True):
            digest.update(f"{sha}\t{label}\n".encode())
    return digest.hexdigest()


def _report(
    sets: dict[str, ImageSet],
    findings: list[Finding],
    statistics: dict[str, Any],
    data_docs: Path | None,
    gx_version: str,
) -> ValidationReport:
    from PIL import __version__ as pillow_version

    failures = [f for f in findings if f.severity == "failure"]
    warnings = [f for f in findings if f.severity == "warning"]
    counts = ", ".join(f"{len(s.facts):,} {split}" for split, s in sets.items())
    method = (
        f"every image file read and fully decoded with Pillow {pillow_version} ({counts} "
        "images: size, mode, format, SHA-256 of the bytes); exact checks on those per-image "
        "facts (undecodable files, classes, sizes and channels, duplicates and train/test "
        f"leakage by content hash); and GX Core {gx_version} on the per-image facts table of "
        "each split, every row"
    )
    return ValidationReport(
        passed=not failures,
        failures=failures,
        warnings=warnings,
        rows={split: len(s.facts) for split, s in sets.items()},
        statistics=statistics,
        data_docs=data_docs,
        dataset_hash=dataset_hash(sets),
        method=method,
    )
