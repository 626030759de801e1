"""The kdflow command line: run the pipeline locally, compile it for a cluster.

Heavy libraries (torch, ray, mlflow, great_expectations, kfp) are imported inside the
commands that need them, so `kdflow --help` and bad options answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
import typing
from pathlib import Path
from typing import Any

from kdflow.config import SECTIONS, RunConfig, build_config, field_docs, load_config, option_name
from kdflow.errors import ConfigError, KdflowError
from pipelines.cli_models import add_model_commands
from pipelines.terminal import PlainView, RichView, RunLog, View

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class KdflowParser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line and exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# ------------------------------------------------------------------------------------ run


def _add_config_options(parser: argparse.ArgumentParser, local: bool = True) -> None:
    """One option per config field; help text is the field's docstring."""
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(section)
        docs = field_docs(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kwargs: dict[str, Any] = {
                "dest": f"{section}.{f.name}",
                # argparse formats help with %: a docstring's "60-100%" must stay text.
                "help": docs.get(f.name, "").replace("%", "%%"),
                "default": argparse.SUPPRESS,
            }
            hint = hints[f.name]
            args = typing.get_args(hint)
            kwargs["metavar"] = f.name.upper()
            if hint is bool:
                # A flag: present means true (`--trust-remote-code`).
                kwargs |= {"action": "store_const", "const": True}
                del kwargs["metavar"]
            elif f.name in SHAPE_METAVARS:
                kwargs["metavar"] = SHAPE_METAVARS[f.name]
            elif typing.get_origin(hint) is list:
                kwargs["nargs"] = "+"
                kwargs["metavar"] = LIST_METAVARS.get(f.name, "SPEC")
            elif hint in (int, float):
                kwargs["type"] = hint
            elif args and float in args:
                kwargs["type"] = float
            group.add_argument(option_name(f.name), **kwargs)
    parser.add_argument(
        "--seed", type=int, default=argparse.SUPPRESS, help=field_docs(RunConfig)["seed"]
    )
    parser.add_argument(
        "--output", "-o", default=argparse.SUPPRESS, help=field_docs(RunConfig)["output"]
    )
    parser.add_argument(
        "--config",
        help="YAML file with the same settings, by section "
        "(data, teachers, distill, gates, registry); options override it.",
    )


LIST_METAVARS = {
    "teacher_weights": "WEIGHT",
    "feature_layers": "TEACHER_LAYER=STUDENT_LAYER",
    "augment": "NAME",
    "seeds": "SEED",
}
SHAPE_METAVARS = {"input_shape": "C,H,W", "image_size": "H,W"}
"""Optional integer lists, written with commas on the command line."""


def config_from_args(ns: argparse.Namespace) -> RunConfig:
    """Defaults, then --config, then the options given on the command line."""
    from kdflow.config import parse_input_shape

    base = load_config(ns.config).to_dict() if ns.config else RunConfig().to_dict()
    for key, value in vars(ns).items():
        if "." in key:
            section, name = key.split(".", 1)
            if name in SHAPE_METAVARS:
                value = parse_input_shape(value, option_name(name))
            base[section][name] = value
        elif key in ("seed", "output"):
            base[key] = value
    return build_config(base, where="options")


def pipeline_arguments(cfg: RunConfig, tracking_uri: str) -> dict[str, Any]:
    from components.parameters import pipeline_values

    values: dict[str, Any] = {"seed": cfg.seed}
    for section in SECTIONS:
        values.update(pipeline_values(getattr(cfg, section)))
    values["tracking_uri"] = tracking_uri
    values["data"] = _absolute(cfg.data.data)
    values["test_data"] = _absolute(cfg.data.test_data or "")
    values["contract"] = _absolute(cfg.data.contract or "")
    return values


def _absolute(uri: str) -> str:
    """Steps run in other processes: hand them absolute paths."""
    if not uri or ":" in uri.split("/")[0]:
        return uri
    return str(Path(uri).resolve())


def run_locally(
    cfg: RunConfig, view: View, verbose: bool = False
) -> tuple[dict[str, Any] | None, RunLog, Path, Path | None]:
    """Run the pipeline with kfp.local's SubprocessRunner in this Python environment.

    Returns the summary (None when a step failed), the run's log, the output folder, and
    the folder kfp.local wrote this run's step outputs to.
    """
    import warnings

    from kfp import local

    from kdflow.mlflow.client import resolve_tracking_uri
    from pipelines.distillation.pipeline import build_pipeline

    out = Path(cfg.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    root = out / "pipeline"
    tracking_uri = resolve_tracking_uri(cfg.registry.tracking_uri)
    # Running the steps in this environment instead of the component image is the point of
    # the local mode; display names only matter in the Kubeflow UI.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*")
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    from pipelines.distillation.cluster import LOCAL

    pipeline = build_pipeline(cluster=LOCAL)
    terminal = sys.stdout
    before = set(root.glob("*")) if root.exists() else set()
    # kfp.local indents its steps' output by swapping builtins.print per task; parallel
    # tasks (the teachers) can leave the swapped one behind. Put the real one back after.
    import builtins

    real_print = builtins.print
    with (out / "run.log").open("w") as log:
        tee = RunLog(log, view, echo=terminal if verbose else None)
        sys.stdout = tee  # type: ignore[assignment]
        # Every log line of the run goes to run.log (and the terminal only with --verbose).
        root_logger = logging.getLogger()
        saved = root_logger.handlers[:]
        root_logger.handlers = [logging.StreamHandler(tee)]
        view.start()
        try:
            task = pipeline(**pipeline_arguments(cfg, tracking_uri))
            summary = json.loads(task.output)
        except RuntimeError:
            summary = None
        finally:
            view.stop()
            sys.stdout = terminal
            root_logger.handlers = saved
            builtins.print = real_print
    new = sorted(set(root.glob("*")) - before) if root.exists() else []
    return summary, tee, out, new[-1] if new else None


def _view(ns: argparse.Namespace, cfg: RunConfig) -> View:
    if ns.quiet or ns.json or ns.verbose:
        return View()
    if sys.stdout.isatty():
        # settings, validate, N teachers, distill, evaluate, then register or its else branch.
        return RichView(sys.stdout, steps=len(cfg.teachers.teachers) + 5)
    return PlainView(sys.stdout)


def cmd_run(ns: argparse.Namespace) -> int:
    from kdflow.preflight import check_run

    cfg = config_from_args(ns)
    check_run(cfg)
    quiet = ns.quiet or ns.json
    if not quiet:
        print(f"kdflow: running the pipeline on {cfg.data.data} (log: {cfg.output}/run.log)")
    started = time.monotonic()
    summary, tee, out, run_root = run_locally(cfg, _view(ns, cfg), ns.verbose)
    if summary is None:
        failed = ", ".join(dict.fromkeys(tee.failed)) or "a step"
        reason = tee.errors[-1][1] if tee.errors else f"see {out / 'run.log'}"
        print(f"kdflow: error: {failed} failed: {reason}", file=sys.stderr)
        if tee.errors and tee.errors[-1][0] == "DataValidationError":
            for report in sorted((out / "pipeline").glob("*/validate-data/report"))[-1:]:
                # The failures, not the warnings: the full report stays in the file.
                print(report.read_text().split("\n## Warnings")[0].rstrip(), file=sys.stderr)
                print(f"\nfull report: {report}", file=sys.stderr)
        print("kdflow: nothing was registered", file=sys.stderr)
        return EXIT_FAILED
    summary["config"] = cfg.to_dict()
    summary["duration_s"] = round(time.monotonic() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    finish_run(out, run_root, summary, quiet=quiet)
    if ns.json:
        print(json.dumps(summary, indent=2))
    return EXIT_OK


def finish_run(out: Path, run_root: Path | None, summary: dict[str, Any], quiet: bool) -> None:
    """The pictures and the report page, in the output folder and on the run's MLflow run;
    then (unless quiet) the result tables, the MLflow run's URL and every artifact's path."""
    from kdflow.report.pages import log_to_mlflow, mlflow_run_url, write_report
    from pipelines.terminal import artifact_paths, print_result

    tracking_uri, run_id = mlflow_run_of(summary)
    url = mlflow_run_url(tracking_uri, run_id) if tracking_uri and run_id else None
    artifacts = artifact_paths(out, run_root)
    write_report(out, artifacts=artifacts, mlflow_url=url)
    # The register step put them on its MLflow run; a run that registered nothing gets them
    # on the run validate-data opened.
    if tracking_uri and run_id and not summary.get("registered"):
        log_to_mlflow(tracking_uri, run_id, out)
    if quiet:
        return
    from rich.console import Console

    print_result(Console(), summary, artifacts, url)  # the report's path is among them


def mlflow_run_of(summary: dict[str, Any]) -> tuple[str | None, str | None]:
    """(tracking URI, MLflow run id) of the run's record, when it has one."""
    registered = summary.get("registered") or {}
    if registered.get("run_id"):
        return registered.get("tracking_uri"), registered["run_id"]
    config = (summary.get("config") or {}).get("registry") or {}
    run_id = (summary.get("dataset") or {}).get("mlflow_run_id")
    if not run_id:
        return None, None
    from kdflow.mlflow.client import resolve_tracking_uri

    return resolve_tracking_uri(config.get("tracking_uri")), run_id


def cmd_report(ns: argparse.Namespace) -> int:
    from kdflow.report.pages import load_summary, mlflow_run_url, write_report
    from pipelines.terminal import artifact_paths

    run_dir = Path(ns.run_dir)
    summary = load_summary(run_dir)
    runs = sorted((run_dir / "pipeline").glob("*/")) if (run_dir / "pipeline").is_dir() else []
    tracking_uri, run_id = mlflow_run_of(summary)
    output = write_report(
        run_dir,
        Path(ns.output) if ns.output else None,
        artifacts=artifact_paths(run_dir, runs[-1] if runs else None),
        mlflow_url=mlflow_run_url(tracking_uri, run_id) if tracking_uri and run_id else None,
    )
    print(f"kdflow: wrote {output}")
    return EXIT_OK


# -------------------------------------------------------------------------------- compile


def _cluster(ns: argparse.Namespace) -> Any:
    from pipelines.distillation.cluster import ClusterSettings

    if ns.gpus < 0:
        raise ConfigError(f"--gpus: must be >= 0, got {ns.gpus}", option="--gpus")
    return ClusterSettings(gpus=ns.gpus)


def cmd_compile(ns: argparse.Namespace) -> int:
    from kfp import compiler

    from pipelines.distillation.pipeline import build_pipeline

    output = Path(ns.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(ns.image, _cluster(ns)), str(output))
    print(f"kdflow: wrote {output} (image {ns.image}, {ns.gpus} GPU(s) per training step)")
    return EXIT_OK


# ------------------------------------------------------------------- submit / schedule


def given_parameters(ns: argparse.Namespace) -> dict[str, Any]:
    """Pipeline parameters for the options given on the command line (or in --config).

    Options not given are left out, so the cluster run takes the compiled defaults.
    """
    cfg = config_from_args(ns)
    given = {key.split(".", 1)[1] for key in vars(ns) if "." in key}
    if ns.config:
        given |= _keys_in_config(ns.config)
    if "seed" in vars(ns):
        given.add("seed")
    everything = pipeline_arguments(cfg, cfg.registry.tracking_uri or "")
    return {name: value for name, value in everything.items() if name in given}


def _keys_in_config(path: str) -> set[str]:
    import yaml

    values = yaml.safe_load(Path(path).read_text()) or {}
    keys = {k for section in values.values() if isinstance(section, dict) for k in section}
    return keys | {k for k in values if k == "seed"}


def _package(ns: argparse.Namespace, tmp: Path) -> Path:
    if ns.package:
        return Path(ns.package)
    from kfp import compiler

    from pipelines.distillation.pipeline import build_pipeline

    path = tmp / "distillation.yaml"
    compiler.Compiler().compile(build_pipeline(ns.image, _cluster(ns)), str(path))
    return path


def _connect(ns: argparse.Namespace) -> Any:
    """A checked `remote.Connection` from the remote options (`_add_remote_options`)."""
    import os

    from pipelines import remote

    cookies = ns.cookies if ns.cookies is not None else os.environ.get("KFP_COOKIES") or None
    access = remote.access_options(
        ca_cert=ns.ca_cert, proxy=ns.proxy, cookies=cookies, kube_context=ns.kube_context
    )
    return remote.connect(ns.host, namespace=ns.namespace, token=ns.token, access=access)


def _check_wait_options(ns: argparse.Namespace) -> None:
    if ns.timeout_s is not None and not ns.wait:
        raise ConfigError("--timeout-s bounds --wait: add --wait", option="--timeout-s")
    if ns.timeout_s is not None and not ns.timeout_s > 0:
        raise ConfigError(
            f"--timeout-s must be a positive number of seconds, got {ns.timeout_s:g}",
            option="--timeout-s",
        )


def cmd_submit(ns: argparse.Namespace) -> int:
    import tempfile

    from pipelines import remote

    _check_wait_options(ns)
    params = given_parameters(ns)
    conn = _connect(ns)
    with tempfile.TemporaryDirectory() as tmp:
        run = remote.submit_run(
            conn, _package(ns, Path(tmp)), params, ns.experiment, run_name=ns.run_name
        )
    print(f"kdflow: submitted run {run.name} ({run.id}) in experiment {ns.experiment}")
    print(f"  {run.url}", flush=True)
    if not ns.wait:
        return EXIT_OK
    from pipelines import remote_wait

    return remote_wait.follow(conn, run, ns.timeout_s, command=ns.command)


def cmd_schedule(ns: argparse.Namespace) -> int:
    import tempfile

    from pipelines import remote

    cron = remote.validate_cron(ns.cron)
    params = given_parameters(ns)
    conn = _connect(ns)
    with tempfile.TemporaryDirectory() as tmp:
        job = remote.schedule_run(
            conn,
            _package(ns, Path(tmp)),
            params,
            ns.experiment,
            cron=cron,
            job_name=ns.job_name,
            max_concurrency=ns.max_concurrency,
            catchup=ns.catchup,
        )
    print(f"kdflow: scheduled {job.name} ({job.id}) on '{job.cron}', status {job.status}")
    print(f"  {job.url}")
    return EXIT_OK


def cmd_runs(ns: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pipelines import remote

    conn = _connect(ns)
    runs = remote.list_runs(conn, ns.experiment, page_size=ns.limit)
    table = Table(title=f"runs on {conn.host}")
    for column in ("id", "name", "state", "created"):
        table.add_column(column)
    for run in runs:
        created = run.created_at.strftime("%Y-%m-%d %H:%M") if run.created_at else ""
        table.add_row(run.id, run.name, run.state, created)
    console = Console()
    console.print(table)
    jobs = remote.list_recurring_runs(conn, ns.experiment, page_size=ns.limit)
    if jobs:
        sched = Table(title="recurring runs")
        for column in ("id", "name", "cron", "status"):
            sched.add_column(column)
        for job in jobs:
            sched.add_row(job.id, job.name, job.cron, job.status)
        console.print(sched)
    return EXIT_OK


def _add_remote_options(parser: argparse.ArgumentParser, experiment: bool = True) -> None:
    parser.add_argument(
        "--host",
        help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline (or --kube-context).",
    )
    parser.add_argument(
        "--namespace",
        help="Kubeflow profile namespace (multi-user KFP); with --kube-context, the namespace "
        "KFP is deployed in (default kubeflow).",
    )
    parser.add_argument(
        "--token",
        help="Bearer token (default: $KFP_TOKEN, or the file in $KF_PIPELINES_SA_TOKEN_PATH).",
    )
    access = parser.add_argument_group("enterprise access")
    access.add_argument(
        "--ca-cert", metavar="PATH",
        help="PEM CA bundle to trust for --host (a company or cluster CA) instead of certifi's.",
    )
    access.add_argument(
        "--proxy", metavar="URL",
        help="HTTP(S) proxy to reach --host through, http://HOST:PORT ($HTTPS_PROXY is not "
        "read).",
    )
    access.add_argument(
        "--cookies", metavar="'NAME=VALUE; ...'",
        help="Session cookies for the Kubeflow gateway (Dex/OIDC), e.g. "
        "'authservice_session=...' from the browser (default: $KFP_COOKIES). Never printed.",
    )
    access.add_argument(
        "--kube-context", metavar="NAME",
        help="Reach KFP through this kubeconfig context's Kubernetes API server, with its "
        "credentials, instead of --host (kfp.Client's kube_context).",
    )
    if experiment:
        parser.add_argument("--experiment", default="kdflow", help="KFP experiment name.")


def _add_wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait", action="store_true",
        help="Follow the run until it ends: exit 0 when it succeeds, 1 when it fails or is "
        "canceled (naming the failed task), 124 after --timeout-s.",
    )
    parser.add_argument(
        "--timeout-s", type=float, metavar="SECONDS",
        help="With --wait, stop waiting after this long (the run goes on in the cluster).",
    )


def _add_package_options(parser: argparse.ArgumentParser, default_image: str) -> None:
    parser.add_argument(
        "--package",
        help="Compiled pipeline YAML to send (default: compile the pipeline now with --image).",
    )
    parser.add_argument(
        "--image", default=default_image, help="Component image, when compiling now."
    )
    parser.add_argument("--gpus", type=int, default=1,
                        help="GPUs per teacher/distill pod, when compiling now (0: CPU only).")


# ------------------------------------------------------------------------------- contract


def cmd_contract_profile(ns: argparse.Namespace) -> int:
    from kdflow.config import parse_input_shape
    from kdflow.validation.profile import profile_dataset

    shape = parse_input_shape(ns.input_shape) if ns.input_shape else None
    contract = profile_dataset(ns.data, label_column=ns.label_column, input_shape=shape)
    contract.to_yaml(Path(ns.output), header=f"profiled from {ns.data} by kdflow contract profile")
    print(f"kdflow: wrote {ns.output}: hold later runs to it with --contract {ns.output}")
    return EXIT_OK


# ----------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    from pipelines.distillation.pipeline import DEFAULT_IMAGE

    parser = KdflowParser(
        prog="kdflow",
        description="Knowledge distillation from data to "
        "the MLflow model registry, as a Kubeflow pipeline.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=KdflowParser)
    run = sub.add_parser(
        "run", help="Run the whole pipeline locally (kfp.local, local Ray and MLflow)."
    )
    _add_config_options(run)
    shown = run.add_mutually_exclusive_group()
    shown.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="Stream every step's log to the terminal (always in run.log).",
    )
    shown.add_argument(
        "--quiet", "-q", action="store_true",
        help="Print nothing but errors (the log still goes to run.log).",
    )
    shown.add_argument(
        "--json", action="store_true",
        help="Print only the run's summary, as JSON on stdout (errors on stderr).",
    )
    run.set_defaults(func=cmd_run)

    report = sub.add_parser(
        "report",
        help="Render a run's self-contained HTML report (summary, gates, every picture).",
    )
    report.add_argument("run_dir", metavar="RUN_DIR",
                        help="The output folder of a `kdflow run` (holds summary.json).")
    report.add_argument("--output", "-o",
                        help="Where to write the page (default: RUN_DIR/report.html).")
    report.set_defaults(func=cmd_report)
    comp = sub.add_parser("compile", help="Write the compiled pipeline YAML for a cluster.")
    comp.add_argument("--output", "-o", default="pipelines/distillation.yaml")
    comp.add_argument(
        "--image", default=DEFAULT_IMAGE, help="Component image the steps run in on the cluster."
    )
    comp.add_argument("--gpus", type=int, default=1,
                      help="GPUs per teacher-training and distill pod (0: a CPU-only cluster).")
    comp.set_defaults(func=cmd_compile)

    submit = sub.add_parser(
        "submit",
        help="Create a run on a Kubeflow Pipelines cluster; pipeline options as for `run`.",
    )
    _add_remote_options(submit)
    _add_package_options(submit, DEFAULT_IMAGE)
    submit.add_argument("--run-name", help="Display name of the run.")
    _add_wait_options(submit)
    _add_config_options(submit, local=False)
    submit.set_defaults(func=cmd_submit)

    schedule = sub.add_parser("schedule", help="Create a recurring run (e.g. nightly).")
    _add_remote_options(schedule)
    _add_package_options(schedule, DEFAULT_IMAGE)
    schedule.add_argument(
        "--cron",
        required=True,
        help='6-field cron with seconds, e.g. "0 0 2 * * *" for 02:00 daily.',
    )
    schedule.add_argument("--job-name", default="kdflow-nightly", help="Name of the recurring run.")
    schedule.add_argument(
        "--max-concurrency", type=int, default=1, help="Runs of this schedule allowed at once."
    )
    schedule.add_argument(
        "--catchup",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Backfill runs missed while paused (--no-catchup: skip them).",
    )
    _add_config_options(schedule, local=False)
    schedule.set_defaults(func=cmd_schedule)

    contract = sub.add_parser("contract", help="Data contracts: profile one from trusted data.")
    contract_sub = contract.add_subparsers(dest="contract_command", required=True,
                                           parser_class=KdflowParser)
    profile = contract_sub.add_parser("profile", help="Write a contract profiled from DATA.")
    profile.add_argument("data", help="Trusted reference data (Parquet or CSV).")
    profile.add_argument("--output", "-o", default="contract.yaml")
    profile.add_argument("--label-column", default="label")
    profile.add_argument("--input-shape", help="Sample shape, e.g. 1,28,28.")
    profile.set_defaults(func=cmd_contract_profile)

    runs = sub.add_parser("runs", help="List runs and recurring runs on a cluster.")
    _add_remote_options(runs)
    runs.add_argument("--limit", type=int, default=20, help="How many to list.")
    runs.set_defaults(func=cmd_runs)

    add_model_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    quiet = getattr(ns, "quiet", False) or getattr(ns, "json", False)
    # --quiet and --json: errors only. Library warnings go through logging, so they obey it.
    logging.captureWarnings(quiet)
    logging.basicConfig(level=logging.ERROR if quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(ns.func(ns))
    except ConfigError as exc:
        print(f"kdflow {ns.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KdflowError as exc:
        print(f"kdflow {ns.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("kdflow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
