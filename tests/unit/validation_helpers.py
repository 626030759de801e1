"""Small splits and a finding picker shared by the tests of `kdflow.validation`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kdflow.validation.findings import Finding

FEATURES = ["f0", "f1", "f2"]


def make_split(rows: int, seed: int, classes: tuple = (0, 1, 2)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, len(FEATURES))), columns=FEATURES)
    frame["label"] = [classes[i % len(classes)] for i in range(rows)]
    return frame


def only(findings: list[Finding], check: str) -> Finding:
    matching = [f for f in findings if f.check == check]
    assert len(matching) == 1, [(f.check, f.message) for f in findings]
    return matching[0]
