"""Progress of long loops (epochs, teacher inference, validation), as log lines.

Steps run in other processes (kfp.local subprocesses, pods on a cluster): the only channel
back to `kdflow run` is their log. Each report is one line, `kdflow-progress {json}`, that
the CLI turns into a progress bar and that stays readable in a pod's log.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

PREFIX = "kdflow-progress"
LINE = re.compile(PREFIX + r" (\{.*\})\s*$")

log = logging.getLogger("kdflow.progress")


@dataclass(frozen=True)
class Progress:
    """`done` of `total` units of the loop `loop`; `info` is shown next to the bar."""

    loop: str
    done: int
    total: int
    info: str = ""


def emit(loop: str, done: int, total: int, info: str = "") -> None:
    """Log one progress report of `loop` (the name is also the bar's label)."""
    log.info("%s %s", PREFIX, json.dumps({"loop": loop, "done": done, "total": total,
                                          "info": info}))


def parse(line: str) -> Progress | None:
    """The progress report in a log line, or None when the line holds none."""
    match = LINE.search(line)
    if not match:
        return None
    try:
        data: dict[str, Any] = json.loads(match.group(1))
        return Progress(str(data["loop"]), int(data["done"]), int(data["total"]),
                        str(data.get("info", "")))
    except (ValueError, KeyError, TypeError):
        return None
