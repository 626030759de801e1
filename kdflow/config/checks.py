"""The checks the settings dataclasses share: each raises ConfigError naming the CLI option."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence
from typing import Any

from kdflow.errors import ConfigError

AUGMENTATIONS = ("crop", "flip", "rotate", "color", "mixup")
"""The names --augment takes (`kdflow.data.augment` implements each)."""


def option_name(field_name: str) -> str:
    """The CLI spelling of a field: `teacher_epochs` -> `--teacher-epochs`."""
    return "--" + field_name.replace("_", "-")


def check_finite(config: Any) -> None:
    """Every number setting is finite: `inf` and `nan` parse as floats, and pass a `>= 0`
    check (inf) or slip through every comparison as False (nan) far from the option."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                require(False, f.name, f"must be a finite number, got {v}")


def check_tracking_uri(uri: str, option: str) -> str:
    """`uri` when it names its scheme (`sqlite:///…`, `http(s)://…`, `file:///…`,
    `postgresql://…`, `databricks`), else a ConfigError naming `option`."""
    if re.match(r"^[A-Za-z][\w.-]*:\d+(/|$)", uri.strip()):
        raise ConfigError(f"{option}: {uri!r} is a host and port, not a URI; give "
                          f"http://{uri.strip()} (or https://)", option=option)
    if uri == "databricks" or re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", uri.strip()):
        return uri
    raise ConfigError(
        f"{option}: {uri!r} has no scheme; give sqlite:///PATH/mlflow.db, "
        "http(s)://HOST:PORT for a tracking server, or file:///PATH for a file store",
        option=option,
    )


def require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{option_name(field_name)}: {message}", option=option_name(field_name))


def check_image_size(image_size: Sequence[int] | None) -> None:
    """ConfigError (--image-size) unless `image_size` is None or two positive integers H,W."""
    if image_size is not None:
        require(
            len(image_size) == 2 and all(int(d) > 0 for d in image_size),
            "image_size",
            "give the height and width in pixels, both at least 1, such as 32,32; got "
            + ",".join(map(str, image_size)),
        )


def check_augment(names: list[str], field_name: str) -> None:
    """Known augmentation names, each at most once."""
    unknown = [a for a in names if a not in AUGMENTATIONS]
    require(
        not unknown,
        field_name,
        f"unknown augmentation {', '.join(unknown)}; known: {', '.join(AUGMENTATIONS)}",
    )
    require(len(set(names)) == len(names), field_name, "names an augmentation twice")


CONFIG_MAP = "kdflow-config"
"""The cluster's ConfigMap every step reads MLFLOW_TRACKING_URI and KDFLOW_STORAGE_PATH from."""
POD_ENV = "KFP_POD_NAME"
"""Set by Kubeflow Pipelines' backend in every step's pod (not by kfp.local)."""


def in_a_pipeline_pod() -> bool:
    """Whether this process is a Kubeflow Pipelines step in a pod (`kdflow run`'s steps,
    under kfp.local, and the CLI in a notebook pod are not)."""
    return bool(os.environ.get(POD_ENV))
