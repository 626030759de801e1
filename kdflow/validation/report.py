"""The outcome of a validation run: `ValidationReport`, as JSON, Markdown and one error."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdflow.errors import DataValidationError
from kdflow.validation.findings import Finding


@dataclass
class ValidationReport:
    """The outcome of validating a dataset against its contract."""

    passed: bool
    failures: list[Finding]
    warnings: list[Finding]
    rows: dict[str, int]
    statistics: dict[str, Any]
    data_docs: Path | None = None
    dataset_hash: str = ""
    method: str = ""

    def summary_line(self) -> str:
        rows = ", ".join(f"{split} {n:,} rows" for split, n in self.rows.items())
        verdict = "passed" if self.passed else f"FAILED ({len(self.failures)} failed checks)"
        warned = f", {len(self.warnings)} warnings" if self.warnings else ""
        return f"data validation {verdict}{warned}: {rows}"

    def failure_lines(self) -> list[str]:
        """Each failure as one plain line: split, column, message."""
        return [_finding_line(f) for f in self.failures]

    def raise_for_failures(self) -> None:
        """Raise DataValidationError listing every failed check, unless the data passed."""
        if not self.passed:
            lines = "\n".join(f"  - {line}" for line in self.failure_lines())
            raise DataValidationError(f"{self.summary_line()}\n{lines}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: NaN and ±inf become strings, numpy scalars plain numbers."""
        data = asdict(self)
        data["data_docs"] = str(self.data_docs) if self.data_docs else None
        return _jsonable(data)

    def to_json(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def to_markdown(self) -> str:
        """A summary for people: each failed check, column, observed value and example rows."""
        out = [
            f"# Data validation: {'passed' if self.passed else 'FAILED'}",
            "",
            self.summary_line() + ".",
            "",
            f"Method: {self.method}",
        ]
        if self.dataset_hash:
            out += ["", f"Dataset hash: `{self.dataset_hash}`"]
        for title, findings in (("Failed checks", self.failures), ("Warnings", self.warnings)):
            if not findings:
                continue
            out += ["", f"## {title} ({len(findings)})"]
            for finding in findings:
                out += ["", f"- {_finding_line(finding)}"]
                if finding.observed is not None:
                    out.append(f"  - observed: `{_short(finding.observed)}`")
                if finding.sample_rows:
                    out += ["", *("  " + line for line in _markdown_table(finding.sample_rows))]
        if self.passed and not self.warnings:
            out += ["", "Every check passed."]
        return "\n".join(out) + "\n"


def _finding_line(finding: Finding) -> str:
    where = " · ".join(p for p in (finding.split, finding.column) if p)
    return f"[{finding.check}] {where + ': ' if where else ''}{finding.message}"


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(_jsonable(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    rows = [r for r in rows if r]
    if not rows:
        return []
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return lines


def _cell(value: Any) -> str:
    return str(_jsonable(value)).replace("|", "\\|")


def _jsonable(value: Any) -> Any:
    """Plain JSON data: NaN/±inf as strings, numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    if value is pd.NA or value is pd.NaT:
        return None
    return value
