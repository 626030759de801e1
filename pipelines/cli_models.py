"""Registry commands of the CLI: `models list`, `promote`, `rollback`, `compare`.

They talk to the MLflow tracking server (or local store) directly, not to Kubeflow. MLflow
is imported inside each command, so `kdflow --help` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any

TRACKING_HELP = (
    "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///.kdflow/mlflow.db)."
)
# Metrics shown first by `compare`, in this order; the rest follow alphabetically.
HEADLINE = (
    "student_accuracy",
    "student_macro_f1",
    "student_ece",
    "student_nll",
    "student_agreement",
    "student_latency_ms",
    "student_latency_p95_ms",
    "student_throughput_per_s",
    "onnx_latency_ms",
    "onnx_throughput_per_s",
    "student_params",
    "student_file_bytes",
    "student_flops",
)


def add_model_commands(subparsers: Any) -> None:
    """Add `models list`, `promote`, `rollback` and `compare` to the kdflow CLI.

    `subparsers` is build_parser's `add_subparsers(...)` result; the nested `models`
    subcommands inherit its parser class (KdflowParser: one-line errors, exit code 2).
    """
    models = subparsers.add_parser("models", help="Registered students in MLflow.")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    listing = models_sub.add_parser(
        "list", help="Every version of a registered model with its aliases and metrics."
    )
    listing.add_argument("name", help="Registered model name, e.g. kdflow-student.")
    _tracking(listing)
    listing.set_defaults(func=cmd_list)

    promote = subparsers.add_parser(
        "promote", help="Point `champion` at a version (the old one is kept for rollback)."
    )
    promote.add_argument("name", help="Registered model name.")
    promote.add_argument("version", type=int, help="Version number to make champion.")
    _tracking(promote)
    promote.set_defaults(func=cmd_promote)

    rollback = subparsers.add_parser(
        "rollback", help="Point `champion` back at the previous champion."
    )
    rollback.add_argument("name", help="Registered model name.")
    _tracking(rollback)
    rollback.set_defaults(func=cmd_rollback)

    compare = subparsers.add_parser(
        "compare", help="Two versions' metrics side by side, and the lineage that differs."
    )
    compare.add_argument("name", help="Registered model name.")
    compare.add_argument("first", type=int, metavar="V1", help="A version number.")
    compare.add_argument("second", type=int, metavar="V2", help="Another version number.")
    _tracking(compare)
    compare.set_defaults(func=cmd_compare)


def _tracking(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help=TRACKING_HELP)


def _uri(ns: argparse.Namespace) -> str:
    from kdflow.mlflow.client import resolve_tracking_uri

    return resolve_tracking_uri(ns.tracking_uri)


def _console() -> Any:
    """Rich wraps at 80 columns when not on a terminal; a pipe or a log gets whole rows."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=120)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def cmd_list(ns: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    from kdflow.mlflow.client import INTERACTIVE
    from kdflow.mlflow.versions import list_versions

    uri = _uri(ns)
    rows = list_versions(uri, ns.name, INTERACTIVE)
    table = Table(title=f"{ns.name} ({uri})", box=box.SIMPLE_HEAD)
    table.add_column("version", justify="right")
    table.add_column("aliases", min_width=20)
    table.add_column("created (UTC)", no_wrap=True)
    for column in ("accuracy", "ECE", "latency ms", "ONNX ms", "test data"):
        table.add_column(column, justify="right")
    for row in rows:
        m = row["metrics"]
        marks = row["aliases"] + (["rolled back"] if row["rolled_back"] else [])
        table.add_row(
            str(row["version"]),
            ", ".join(marks),
            row["created"].strftime("%Y-%m-%d %H:%M"),
            _fmt(m.get("accuracy")),
            _fmt(m.get("ece")),
            _fmt(m.get("latency_ms"), 3),
            _fmt(m.get("onnx_latency_ms"), 3),
            (row["dataset_sha256"] or "")[:8],
            style="bold" if "champion" in row["aliases"] else "",
        )
    _console().print(table)
    if not rows:
        print(f"kdflow: {ns.name} has no versions yet")
    return 0


def cmd_promote(ns: argparse.Namespace) -> int:
    from kdflow.mlflow.client import INTERACTIVE
    from kdflow.mlflow.promotion import promote

    result = promote(_uri(ns), ns.name, ns.version, INTERACTIVE)
    if not result["changed"]:
        print(f"kdflow: {ns.name} version {ns.version} is already champion")
    else:
        was = f" (was version {result['previous']})" if result["previous"] else ""
        print(f"kdflow: {ns.name}@champion -> version {result['champion']}{was}")
    return 0


def cmd_rollback(ns: argparse.Namespace) -> int:
    from kdflow.mlflow.client import INTERACTIVE
    from kdflow.mlflow.promotion import rollback

    result = rollback(_uri(ns), ns.name, INTERACTIVE)
    print(
        f"kdflow: {ns.name}@champion rolled back to version {result['champion']} "
        f"(version {result['previous']} is tagged kdflow.rolled_back)"
    )
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from rich.table import Table

    from kdflow.mlflow.client import INTERACTIVE
    from kdflow.mlflow.versions import compare_versions

    result = compare_versions(_uri(ns), ns.name, ns.first, ns.second, INTERACTIVE)
    first, second = result["versions"]
    console = _console()
    table = Table(title=f"{ns.name}: version {first} vs {second}")
    for column in ("metric", f"v{first}", f"v{second}", f"v{second} − v{first}"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    metrics = result["metrics"]
    order = [k for k in HEADLINE if k in metrics] + sorted(k for k in metrics if k not in HEADLINE)
    for key in order:
        a, b = metrics[key]
        delta = b - a if a is not None and b is not None else None
        table.add_row(key, _fmt(a), _fmt(b), "" if delta is None else f"{delta:+.4g}")
    console.print(table)
    if result["tags"]:
        tags = Table(title="lineage that differs")
        for column in ("tag", f"v{first}", f"v{second}"):
            tags.add_column(column, overflow="fold")
        for key, (a, b) in result["tags"].items():
            tags.add_row(key, a or "–", b or "–")
        console.print(tags)
    if not result["same_test_data"]:
        console.print(
            "[yellow]the two versions were tested on different data: their accuracies are "
            "not directly comparable[/]"
        )
    return 0
