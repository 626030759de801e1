"""Class labels across splits and files: which label values are one class.

A label column holds numbers (integers, integral floats such as 1.0, booleans) or text.
Within one kind a class is its value, integral floats read as integers: 1 and 1.0 are the
class "1", "cat" is "cat". When one file's labels are numbers and another's are text (a
Parquet test file with "1", "2" against a training file of 1, 2), text that reads as an
integer is that integer, so 1, 1.0 and "1" are one class; text that does not ("a" against
1) cannot be matched, and `LabelTypeError` names the column, both kinds and examples.
Both files text: each string is its own class ("1" and "1.0" differ), as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np

from kdflow.errors import DataError

NUMBERS, TEXT = "numbers", "text"


class LabelTypeError(DataError):
    """Two splits' labels are of kinds that cannot be matched as classes ("a" against 1)."""


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating | np.bool_)


def class_key(value: Any) -> Any:
    """A label as its class: integral numbers as int (1.0 -> 1), booleans, other numbers
    and text as they are."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and math.isfinite(value) and value == int(value):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def text_as_integer(text: Any) -> int | None:
    """"1", " 2 " and "3.0" as integers; None for text that is no integral number."""
    try:
        number = float(str(text).strip())
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None


def label_kind(values: Collection[Any]) -> str:
    """NUMBERS when every label present is a number (or boolean), else TEXT."""
    present = [v for v in values if not _is_missing(v)]
    return NUMBERS if all(_is_number(v) for v in present) else TEXT


def _examples(values: Collection[Any], limit: int = 3) -> str:
    shown = sorted({repr(class_key(v)) for v in values if not _is_missing(v)})
    return ", ".join(shown[:limit]) + (", ..." if len(shown) > limit else "")


def class_keys(labels: Mapping[str, Collection[Any]], column: str) -> Callable[[Any], Any]:
    """The function that maps a label of any of the splits to its class, given each
    split's distinct labels by a name for it (a file, or `train`/`test`), the names that
    `LabelTypeError` uses. Raises it when a split of text labels meets one of numbers and
    some text is not an integer."""
    kinds = {name: label_kind(values) for name, values in labels.items()}
    if len(set(kinds.values())) < 2:
        return class_key
    numeric = next(name for name, kind in kinds.items() if kind == NUMBERS)
    for name, values in labels.items():
        if kinds[name] != TEXT:
            continue
        bad = [v for v in values if not _is_missing(v) and text_as_integer(v) is None]
        if bad:
            raise LabelTypeError(
                f"label column {column!r} holds text in {name} ({_examples(bad)}) but numbers "
                f"in {numeric} ({_examples(labels[numeric])}); they cannot be matched as "
                "classes: give both files labels of one type"
            )

    def key(value: Any) -> Any:
        return text_as_integer(value) if isinstance(value, str) else class_key(value)

    return key


def single_row_classes(counts: Mapping[Any, int]) -> list[Any]:
    """The classes with a single row, in class order, as their class keys."""
    singles = [class_key(c) for c, n in counts.items() if n == 1]
    return sorted(singles, key=lambda c: (0, c, "") if isinstance(c, int) else (1, 0, str(c)))


def single_row_message(classes: list[Any], column: str, source: str) -> str:
    """What a stratified train/test split says of `classes` with one row each in `source`."""
    shown = ", ".join(repr(c) for c in classes[:10]) + (" ..." if len(classes) > 10 else "")
    which = f"class {shown} has" if len(classes) == 1 else f"classes {shown} have"
    return (
        f"{which} a single row in {source} (label column {column!r}); the stratified "
        "train/test split needs at least 2 rows of every class: add rows, drop the class, or "
        "give --test-data"
    )
