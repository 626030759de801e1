"""A Kubeflow Pipelines v2beta1 REST API on 127.0.0.1 that holds its clients to the contract.

`FakeKfpServer` is a real HTTP server (stdlib `ThreadingHTTPServer`) with in-memory state. It
serves the operations kdflow's `pipelines.remote` reaches through `kfp.Client`: healthz,
pipeline upload (new pipeline and new version), pipelines and versions (list, get),
experiments (create, list, get), runs (create, list, get), recurring runs (create, list,
get). Everything it knows about the API comes from the swagger files vendored in
`kfp_v2beta1_schemas/` (see the README there for their source):

- the method and path must be an operation of those files (404 or 405 otherwise);
- every query parameter must be declared by that operation, with its type;
- a JSON body must validate against the operation's `in: body` schema, read as the API server
  reads it: grpc-gateway parses protobuf's JSON mapping, so unknown fields are rejected, a
  field may be spelled with its proto name or its lowerCamelCase JSON name, 64-bit integers may
  be strings or numbers, enums names or numbers, and null means unset;
- an upload must be multipart/form-data with the declared form fields, and the file must be
  a KFP pipeline IR YAML that parses into kfp's own `PipelineSpec` proto.

A request that breaks these rules is answered 400 with the API's error body (`code` 3,
InvalidArgument) and recorded in `violations`. After the schema, the fake applies the
server-side checks kdflow meets, with the API server's wording where it is known (required
names, one pipeline source per run, `max_concurrency` in 1-10, a cron that robfig/cron v1
parses, unique pipeline and version names).

Each response is validated against the operation's response schema with the exact field names
the swagger declares (what `kfp_server_api` deserializes, e.g. `recurringRuns`); a response
that fails is a bug in the fake: it is recorded in `fake_errors` and answered 500.

A run stays PENDING unless `script_runs` says how the runs created after it go: each GetRun
moves such a run one state on, and a run that ends FAILED carries the failed task's detail
(`failed_task`) in `run_details.task_details`. Beside the API, the fake serves what the KFP
UI server serves on the same host, `/k8s/pod/logs` (the logs set in `pod_logs`). It can
also sit behind a path prefix (the Kubernetes API server's service proxy) and serve HTTPS
(`tls`). Every request's headers are recorded (`Recorded.headers`).
"""

from __future__ import annotations

import copy
import email.parser
import email.policy
import itertools
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml
from jsonschema import Draft4Validator, FormatChecker, ValidationError
from jsonschema.exceptions import best_match

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).with_name("kfp_v2beta1_schemas")
SCHEMA_FILES = ("healthz", "experiment", "pipeline", "pipeline.upload", "run", "recurring_run")

# google.rpc.Code values the fake answers with, and the HTTP status grpc-gateway maps each to.
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED = 3, 5, 6, 7
UNIMPLEMENTED, INTERNAL, UNAUTHENTICATED = 12, 13, 16
_HTTP_STATUS = {3: 400, 5: 404, 6: 409, 7: 403, 12: 501, 13: 500, 16: 401}

# filter.proto's Predicate.Op, which kfp.Client sends as numbers.
_FILTER_OPS = {1: "EQUALS", 2: "NOT_EQUALS", 9: "IS_SUBSTRING"}

# protoc-gen-openapiv2 renders map<string, google.protobuf.Value> values as {"type": "object"},
# but a Value is any JSON value (kfp sends pipeline parameters as plain numbers and strings).
_VALUE_MAPS = {"v2beta1RuntimeConfig": "parameters"}

_INT_STRING = r"^-?[0-9]+$"
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_FORMATS = FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=ValueError)
def _is_rfc3339(value: object) -> bool:
    if isinstance(value, str) and not _RFC3339.match(value):
        raise ValueError(f"{value!r} is not an RFC 3339 timestamp")
    return True


class ApiError(Exception):
    """An error the fake API answers with: a google.rpc.Code and the message the client sees."""

    def __init__(self, code: int, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status or _HTTP_STATUS[code]


@dataclass(frozen=True)
class Operation:
    """One operation of the vendored swagger files."""

    operation_id: str
    method: str
    template: str
    pattern: re.Pattern[str]
    parameters: tuple[dict[str, Any], ...]
    responses: dict[str, Any]
    consumes: tuple[str, ...]
    source: str

    def params(self, where: str) -> dict[str, dict[str, Any]]:
        """The declared parameters found `in` query, path, body or formData, by name."""
        return {p["name"]: p for p in self.parameters if p["in"] == where}


@dataclass(frozen=True)
class Recorded:
    """One request the fake answered."""

    method: str
    path: str
    operation_id: str | None
    query: dict[str, list[str]]
    body: Any
    status: int
    headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """A request header by its case-insensitive name (kfp_server_api sends lowercase
        `authorization`)."""
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


def _lower_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _path_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    # Custom verbs (`/runs/{run_id}:archive`) follow a colon, so a path parameter stops at one.
    rx = "".join(
        f"(?P<{part[1:-1].replace('.', '__')}>[^/:]+)" if part.startswith("{") else re.escape(part)
        for part in parts
    )
    return re.compile(f"^{rx}$")


def _to_json_schema(node: dict[str, Any], request: bool) -> dict[str, Any]:
    """A swagger 2.0 schema as a draft-4 JSON Schema, read with protobuf's JSON mapping.

    `request` reads it as the server parses input (lenient spellings, see the module
    docstring); otherwise as grpc-gateway writes output (proto names, enum names, int64 as
    strings), which is what kfp_server_api expects.
    """
    if "$ref" in node:
        return {"$ref": node["$ref"]}  # siblings of $ref are documentation only
    if not node:
        return {}
    kind, fmt = node.get("type"), node.get("format")
    if "enum" in node:
        names: dict[str, Any] = {"enum": list(node["enum"])}
        return {"anyOf": [names, {"type": "integer", "minimum": 0}]} if request else names
    if kind == "string" and fmt in ("int64", "uint64"):
        as_string = {"type": "string", "pattern": _INT_STRING}
        return {"anyOf": [as_string, {"type": "integer"}]} if request else as_string
    if kind == "integer":
        number = {"type": "integer"}
        return (
            {"anyOf": [number, {"type": "string", "pattern": _INT_STRING}]} if request else number
        )
    if kind == "number":
        return {"type": ["number", "string"]} if request else {"type": "number"}
    if kind == "string":
        return (
            {"type": "string", "format": "date-time"} if fmt == "date-time" else {"type": "string"}
        )
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "array":
        return {"type": "array", "items": _to_json_schema(node["items"], request)}
    out: dict[str, Any] = {"type": "object"}
    if "properties" in node:
        props = {}
        for name, prop in node["properties"].items():
            schema = _to_json_schema(prop, request)
            if request:
                schema = {"anyOf": [schema, {"type": "null"}]}
                props[_lower_camel(name)] = schema
            props[name] = schema
        out["properties"] = props
        out["additionalProperties"] = False
    elif "additionalProperties" in node:
        out["additionalProperties"] = _to_json_schema(node["additionalProperties"], request)
    # else a bare {"type": "object"}: google.protobuf.Struct, any JSON object.
    return out


def _describe(error: ValidationError) -> str:
    """Where and what: for "any of" failures, the alternative that matters, not the null that
    every request field allows."""
    while error.context:
        alternatives = [c for c in error.context if c.schema != {"type": "null"}]
        if not alternatives:
            break
        error = best_match(alternatives)
    return f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"


class Contract:
    """The operations of the vendored swagger files, and validators for their messages."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR) -> None:
        self.operations: list[Operation] = []
        self._definitions: dict[str, dict[str, Any]] = {}
        self._validators: dict[tuple[str, str, bool], Draft4Validator] = {}
        for source in SCHEMA_FILES:
            doc = json.loads((schema_dir / f"{source}.swagger.json").read_text())
            self._definitions[source] = doc["definitions"]
            for template, item in doc["paths"].items():
                for method, op in item.items():
                    self.operations.append(
                        Operation(
                            operation_id=op["operationId"],
                            method=method.upper(),
                            template=template,
                            pattern=_path_regex(template),
                            parameters=tuple(op.get("parameters", ())),
                            responses=op["responses"],
                            consumes=tuple(op.get("consumes", doc.get("consumes", ()))),
                            source=source,
                        )
                    )
        # Literal paths first: /pipelines/upload is not /pipelines/{pipeline_id}.
        self.operations.sort(key=lambda op: op.template.count("{"))

    def match(self, method: str, path: str) -> tuple[Operation, dict[str, str]]:
        """The operation serving `method path`, and its path parameters."""
        allowed = []
        for op in self.operations:
            found = op.pattern.match(path)
            if found and op.method == method:
                return op, {k: unquote(v) for k, v in found.groupdict().items()}
            if found:
                allowed.append(op.method)
        if allowed:
            raise ApiError(UNIMPLEMENTED, f"Method Not Allowed: {method} {path}", 405)
        raise ApiError(NOT_FOUND, f"Not Found: no v2beta1 operation serves {method} {path}")

    def _validator(self, source: str, schema: dict[str, Any], request: bool) -> Draft4Validator:
        key = (source, json.dumps(schema, sort_keys=True), request)
        if key not in self._validators:
            raw = copy.deepcopy(self._definitions[source])
            for name, prop in _VALUE_MAPS.items():
                if name in raw:
                    raw[name]["properties"][prop]["additionalProperties"] = {}
            definitions = {name: _to_json_schema(d, request) for name, d in raw.items()}
            root = {"definitions": definitions, **_to_json_schema(schema, request)}
            self._validators[key] = Draft4Validator(root, format_checker=_FORMATS)
        return self._validators[key]

    def body_errors(self, op: Operation, body: Any) -> list[str]:
        """What is wrong with a request body, read as the API server reads it."""
        params = op.params("body")
        if not params:
            return []
        return self._errors(op.source, params["body"]["schema"], body, request=True)

    def response_errors(self, op: Operation, status: int, body: Any) -> list[str]:
        """What is wrong with a response the fake built, against the declared schema."""
        declared = op.responses.get(str(status)) or op.responses["default"]
        return self._errors(op.source, declared["schema"], body, request=False)

    def error_schema(self, op: Operation) -> dict[str, Any]:
        """The schema of `op`'s error responses (runtimeError, or googlerpcStatus for uploads)."""
        return op.responses["default"]["schema"]

    def _errors(self, source: str, schema: dict[str, Any], value: Any, request: bool) -> list[str]:
        validator = self._validator(source, schema, request)
        errors = sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.path)))
        return [_describe(e) for e in errors]

    def query_errors(self, op: Operation, query: dict[str, list[str]]) -> list[str]:
        """Query parameters `op` does not declare, or whose value is not of the declared type."""
        declared = op.params("query")
        errors = []
        for name, values in query.items():
            param = declared.get(name)
            if param is None:
                errors.append(f"unknown query parameter {name!r} for {op.operation_id}")
            elif param.get("type") == "integer" and not all(
                re.match(_INT_STRING, v) for v in values
            ):
                errors.append(f"query parameter {name!r} must be an integer, got {values}")
        return errors

    def canonical(self, source: str, schema: dict[str, Any], value: Any) -> Any:
        """A parsed request value as grpc-gateway would write it back: proto field names,
        enum names, 64-bit integers as strings, unset (null) fields dropped."""
        definitions = self._definitions[source]
        while "$ref" in schema:
            schema = definitions[schema["$ref"].rsplit("/", 1)[1]]
        if value is None:
            return None
        if "enum" in schema:
            return schema["enum"][value] if isinstance(value, int) else value
        kind, fmt = schema.get("type"), schema.get("format")
        if kind == "string" and fmt in ("int64", "uint64"):
            return str(value)
        if kind == "integer":
            return int(value)
        if kind == "array":
            return [self.canonical(source, schema["items"], v) for v in value]
        if "properties" in schema:
            props = schema["properties"]
            names = {_lower_camel(k): k for k in props} | {k: k for k in props}
            return {
                names[k]: self.canonical(source, props[names[k]], v)
                for k, v in value.items()
                if v is not None
            }
        return value


def pipeline_spec_errors(spec: Any) -> list[str]:
    """What keeps `spec` (a parsed document) from being a KFP pipeline IR the server accepts."""
    if isinstance(spec, dict) and set(spec) == {"pipeline_spec", "platform_spec"}:
        spec = spec["pipeline_spec"]  # kfp.Client's form when the package has a platform spec
    if not isinstance(spec, dict):
        return [f"pipeline spec must be a mapping, got {type(spec).__name__}"]
    missing = [
        k for k in ("pipelineInfo", "root", "deploymentSpec", "schemaVersion") if k not in spec
    ]
    if missing:
        return [f"pipeline spec lacks {', '.join(missing)}"]
    if not (spec["pipelineInfo"] or {}).get("name"):
        return ["pipeline spec lacks pipelineInfo.name"]
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    try:
        json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    except json_format.ParseError as exc:
        return [f"pipeline spec is not a PipelineSpec: {exc}"]
    return []


def package_errors(data: bytes) -> tuple[dict[str, Any] | None, list[str]]:
    """The pipeline spec in an uploaded YAML package, and what is wrong with it."""
    try:
        docs = [d for d in yaml.safe_load_all(data) if d is not None]
    except yaml.YAMLError as exc:
        return None, [f"uploadfile is not YAML: {exc}"]
    if not docs:
        return None, ["uploadfile is empty"]
    errors = pipeline_spec_errors(docs[0])
    return (None, errors) if errors else (docs[0], [])


def robfig_cron_error(spec: str) -> str | None:
    """Why robfig/cron v1's `cron.Parse` (what the API server calls) would refuse `spec`.

    v1 takes 6 fields with seconds first, or 5 with the day of week left out: "0 2 * * *"
    parses, as "second 0 of minute 2 of every hour". Field values are checked loosely.
    """
    spec = spec.strip()
    if spec.startswith("@"):
        ok = spec in {
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
        }
        ok = ok or bool(re.fullmatch(r"@every (\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+", spec))
        return None if ok else f"Unrecognized descriptor: {spec}"
    fields = spec.split()
    if len(fields) not in (5, 6):
        return f"Expected 5 to 6 fields, found {len(fields)}: {spec}"
    for item in fields:
        if not re.fullmatch(r"[0-9A-Za-z*?/,\-]+", item):
            return f"Failed to parse int from {item}"
    return None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class KfpState:
    """What the fake API holds. Values are stored as the API returns them."""

    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    recurring_runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def experiment_named(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.experiments.values() if e["display_name"] == name), None)

    def versions_of(self, pipeline_id: str) -> list[dict[str, Any]]:
        return [v for v in self.versions.values() if v["pipeline_id"] == pipeline_id]


@dataclass(frozen=True)
class RunScript:
    """How scripted runs go (`FakeKfpApi.script_runs`)."""

    states: tuple[str, ...]
    tasks: tuple[dict[str, Any], ...] = ()
    error: str | None = None


def failed_task(
    name: str, message: str, pod: str = "", state: str = "FAILED"
) -> dict[str, Any]:
    """A `v2beta1PipelineTaskDetail` as KFP 2.x reports a container task that ended: its
    executor pod under `child_tasks` (next to the driver's), the error, the end time."""
    now = _now()
    task: dict[str, Any] = {
        "task_id": str(uuid.uuid4()),
        "display_name": name,
        "create_time": now,
        "start_time": now,
        "end_time": now,
        "state": state,
        "execution_id": str(next(_EXECUTIONS)),
        "child_tasks": [{"pod_name": f"{pod or name}-driver"}],
    }
    if pod:
        task["child_tasks"].append({"pod_name": pod})
    if message:
        task["error"] = {"code": 2, "message": message}
    return task


_EXECUTIONS = itertools.count(1)


Handler = Callable[[dict[str, str], dict[str, list[str]], Any], dict[str, Any]]


class FakeKfpApi:
    """The request handling of the fake, without the HTTP server (see `FakeKfpServer`)."""

    def __init__(self, multi_user: bool = False, token: str | None = None) -> None:
        self.contract = Contract()
        self.state = KfpState()
        self.multi_user = multi_user
        self.token = token
        self.requests: list[Recorded] = []
        self.violations: list[str] = []
        self.fake_errors: list[str] = []
        self.pod_logs: dict[str, str] = {}
        self._script: RunScript | None = None
        self._faults: dict[str, ApiError] = {}
        self._delays: dict[str, float] = {}
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._handlers: dict[str, Handler] = {
            "HealthzService_GetHealthz": self._healthz,
            "ExperimentService_CreateExperiment": self._create_experiment,
            "ExperimentService_ListExperiments": self._list_experiments,
            "ExperimentService_GetExperiment": self._get_experiment,
            "UploadPipeline": self._upload_pipeline,
            "UploadPipelineVersion": self._upload_pipeline_version,
            "PipelineService_ListPipelines": self._list_pipelines,
            "PipelineService_GetPipeline": self._get_pipeline,
            "PipelineService_ListPipelineVersions": self._list_pipeline_versions,
            "PipelineService_GetPipelineVersion": self._get_pipeline_version,
            "RunService_CreateRun": self._create_run,
            "RunService_ListRuns": self._list_runs,
            "RunService_GetRun": self._get_run,
            "RecurringRunService_CreateRecurringRun": self._create_recurring_run,
            "RecurringRunService_ListRecurringRuns": self._list_recurring_runs,
            "RecurringRunService_GetRecurringRun": self._get_recurring_run,
        }

    def fail_next(self, operation_id: str, code: int, message: str) -> None:
        """Answer the next valid request for `operation_id` with this error instead."""
        self._faults[operation_id] = ApiError(code, message)

    def delay_next(self, operation_id: str, seconds: float) -> None:
        """Hold the next request for `operation_id` this long before handling it."""
        self._delays[operation_id] = seconds

    def script_runs(
        self,
        *states: str,
        tasks: tuple[dict[str, Any], ...] = (),
        error: str | None = None,
    ) -> None:
        """Runs created from now on go through `states` (after PENDING), one per GetRun; when
        the last is reached they carry `tasks` as `run_details.task_details` and, given, the
        run `error` message."""
        self._script = RunScript(tuple(states), tuple(tasks), error)

    def calls(self, operation_id: str) -> list[Recorded]:
        """The answered requests for one operation, oldest first."""
        return [r for r in self.requests if r.operation_id == operation_id]

    # --- dispatch -------------------------------------------------------------------------

    def handle(
        self, method: str, target: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, Any]]:
        """Answer one HTTP request: (status, JSON body)."""
        url = urlsplit(target)
        with self._lock:
            try:
                delay = self._delays.pop(self.contract.match(method, url.path)[0].operation_id, 0)
            except ApiError:
                delay = 0
        time.sleep(delay)  # outside the lock: other requests go on meanwhile
        with self._lock:
            query = parse_qs(url.query, keep_blank_values=True)
            op: Operation | None = None
            body: Any = None
            try:
                op, path_params = self.contract.match(method, url.path)
                body = self._read_body(op, headers, raw, query)
                self._authorize(headers)
                if op.operation_id in self._faults:
                    raise self._faults.pop(op.operation_id)
                handler = self._handlers.get(op.operation_id)
                if handler is None:
                    self.fake_errors.append(
                        f"{op.operation_id} is in the contract, not in the fake"
                    )
                    raise ApiError(UNIMPLEMENTED, f"{op.operation_id} is not served by the fake")
                status, payload = 200, handler(path_params, query, body)
            except ApiError as err:
                if err.code in (NOT_FOUND, UNIMPLEMENTED) and op is None:
                    self.violations.append(err.message)
                status, payload = err.http_status, self._error_body(op, err)
            if op is not None:
                problems = self.contract.response_errors(op, status, payload)
                if problems:
                    self.fake_errors.append(f"{op.operation_id} response {status}: {problems}")
                    status = 500
            self.requests.append(
                Recorded(method, url.path, op and op.operation_id, query, body, status, headers)
            )
            return status, payload

    def handle_pod_logs(self, target: str, headers: dict[str, str]) -> tuple[int, str]:
        """The KFP UI server's `GET /k8s/pod/logs?podname=&podnamespace=`: (status, text)."""
        query = parse_qs(urlsplit(target).query)
        pod = (query.get("podname") or [""])[0]
        namespace = (query.get("podnamespace") or [""])[0]
        with self._lock:
            try:
                self._authorize(headers)
                status = 200 if pod in self.pod_logs else 404
            except ApiError as err:
                status = err.http_status
            self.requests.append(
                Recorded("GET", "/k8s/pod/logs", None, query, None, status, headers)
            )
        if status == 200:
            return status, self.pod_logs[pod]
        if status == 404:
            return status, f"Could not get main container logs: pod {pod} in {namespace!r}"
        return status, "Unauthenticated"

    def _error_body(self, op: Operation | None, err: ApiError) -> dict[str, Any]:
        body: dict[str, Any] = {"code": err.code, "message": err.message, "details": []}
        schema = self.contract.error_schema(op) if op else {"$ref": "#/definitions/runtimeError"}
        if schema["$ref"].endswith("/runtimeError"):
            body["error"] = err.message
        return body

    def _reject(self, op: Operation, problems: list[str]) -> ApiError:
        message = f"Invalid input error: {op.operation_id}: " + "; ".join(problems)
        self.violations.append(message)
        return ApiError(INVALID_ARGUMENT, message)

    def _read_body(
        self, op: Operation, headers: dict[str, str], raw: bytes, query: dict[str, list[str]]
    ) -> Any:
        problems = self.contract.query_errors(op, query)
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        body: Any = None
        if "multipart/form-data" in op.consumes:
            body, form_problems = self._read_form(op, content_type, raw)
            problems += form_problems
        elif op.params("body"):
            try:
                body = json.loads(raw or b"null")
            except ValueError as exc:
                problems.append(f"body is not JSON: {exc}")
            else:
                problems += self.contract.body_errors(op, body)
                if body is None:
                    problems.append("a body is required")
        if problems:
            raise self._reject(op, problems)
        if op.params("body"):
            body = self.contract.canonical(op.source, op.params("body")["body"]["schema"], body)
        return body

    def _read_form(
        self, op: Operation, content_type: str, raw: bytes
    ) -> tuple[dict[str, tuple[str | None, bytes]], list[str]]:
        if not content_type.startswith("multipart/form-data"):
            return {}, [f"{op.operation_id} takes multipart/form-data, got {content_type!r}"]
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
        )
        form: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():  # type: ignore[attr-defined]
            name = part.get_param("name", header="content-disposition")
            form[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
        declared = op.params("formData")
        problems = [f"unknown form field {n!r}" for n in form if n not in declared]
        problems += [
            f"form field {n!r} is required"
            for n, p in declared.items()
            if p.get("required") and n not in form
        ]
        return form, problems

    def _authorize(self, headers: dict[str, str]) -> None:
        if self.token is None:
            return
        sent = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        if sent != f"Bearer {self.token}":
            raise ApiError(
                UNAUTHENTICATED,
                "Failed to authorize with API: Unauthenticated: Request header error: "
                "there is no user identity header.",
            )

    # --- listing --------------------------------------------------------------------------

    def _page(
        self, items: list[dict[str, Any]], query: dict[str, list[str]], key: str
    ) -> dict[str, Any]:
        items = self._filtered(items, query)
        sort_by = (query.get("sort_by") or [""])[0].split()
        if sort_by:
            field_name = {"name": "display_name"}.get(sort_by[0], sort_by[0])
            descending = len(sort_by) > 1 and sort_by[1].lower() == "desc"
            items = sorted(
                items, key=lambda i: (i.get(field_name, ""), i["_order"]), reverse=descending
            )
        start = int((query.get("page_token") or ["0"])[0] or 0)
        size = int((query.get("page_size") or ["0"])[0] or 0) or 20
        page = items[start : start + size]
        out: dict[str, Any] = {"total_size": len(items)}
        if page:  # grpc-gateway leaves empty repeated fields out
            out[key] = [self._public(i) for i in page]
        if start + size < len(items):
            out["next_page_token"] = str(start + size)
        return out

    def _filtered(
        self, items: list[dict[str, Any]], query: dict[str, list[str]]
    ) -> list[dict[str, Any]]:
        raw = (query.get("filter") or [""])[0]
        if not raw:
            return items
        try:
            predicates = json.loads(raw).get("predicates", [])
        except (ValueError, AttributeError) as exc:
            raise ApiError(INVALID_ARGUMENT, f"Invalid input error: invalid filter: {exc}") from exc
        for pred in predicates:
            op = pred.get("operation", pred.get("op"))
            op = _FILTER_OPS.get(op, op) if isinstance(op, int) else op
            key = {"name": "display_name"}.get(pred.get("key"), pred.get("key"))
            value = next(
                (pred[k] for k in ("string_value", "stringValue") if k in pred),
                None,
            )
            if op not in _FILTER_OPS.values() or value is None:
                self.fake_errors.append(f"the fake cannot filter with {pred}")
                raise ApiError(UNIMPLEMENTED, f"filter {pred} is not served by the fake")
            tests = {
                "EQUALS": lambda v, want=value: v == want,
                "NOT_EQUALS": lambda v, want=value: v != want,
                "IS_SUBSTRING": lambda v, want=value: want in (v or ""),
            }
            items = [i for i in items if tests[op](i.get(key))]
        return items

    @staticmethod
    def _public(item: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in item.items() if not k.startswith("_")}

    def _store(self, table: dict[str, dict[str, Any]], key: str, item: dict[str, Any]) -> dict:
        item["_order"] = next(self._order)
        table[item[key]] = item
        return self._public(item)

    @staticmethod
    def _get(table: dict[str, dict[str, Any]], kind: str, ident: str) -> dict[str, Any]:
        if ident not in table:
            raise ApiError(NOT_FOUND, f"{kind} {ident} not found: ResourceNotFoundError")
        return FakeKfpApi._public(table[ident])

    # --- operations -----------------------------------------------------------------------

    def _healthz(self, path: dict[str, str], query: dict[str, list[str]], body: Any) -> dict:
        return {"multi_user": self.multi_user, "pipeline_store": "database"}

    def _create_experiment(self, path: dict[str, str], query: dict[str, list[str]], body: Any):
        name = body.get("display_name", "").strip()
        if not name:
            raise ApiError(
                INVALID_ARGUMENT,
                "Failed to create a new experiment: Invalid input error: "
                "Experiment name is empty. Please specify a valid experiment name",
            )
        namespace = body.get("namespace", "")
        if any(
            e["display_name"] == name and e["namespace"] == namespace
            for e in self.state.experiments.values()
        ):
            raise ApiError(
                ALREADY_EXISTS,
                f"Failed to create a new experiment: Already exist error: "
                f"Experiment with name {name} already exists",
            )
        experiment = {
            "experiment_id": str(uuid.uuid4()),
            "display_name": name,
            "created_at": _now(),
            "namespace": namespace,
            "storage_state": "AVAILABLE",
        }
        if body.get("description"):
            experiment["description"] = body["description"]
        return self._store(self.state.experiments, "experiment_id", experiment)

    def _list_experiments(self, path: dict[str, str], query: dict[str, list[str]], body: Any):
        namespace = (query.get("namespace") or [""])[0]
        items = [
            e
            for e in self.state.experiments.values()
            if not namespace or e["namespace"] == namespace
        ]
        return self._page(items, query, "experiments")

    def _get_experiment(self, path: dict[str, str], query: dict[str, list[str]], body: Any):
        return self._get(self.state.experiments, "Experiment", path["experiment_id"])

    def _upload_pipeline(self, path: dict[str, str], query: dict[str, list[str]], body: Any):
        filename, data = body["uploadfile"]
        spec, problems = package_errors(data)
        if problems:
            raise self._reject_upload(problems)
        name = (query.get("name") or [""])[0] or Path(filename or "pipeline").stem
        namespace = (query.get("namespace") or [""])[0]
        if any(p["display_name"] == name for p in self.state.pipelines.values()):
            raise ApiError(
                ALREADY_EXISTS,
                f"Failed to create a pipeline and a pipeline version: Already exist error: "
                f"Failed to create a new pipeline. The name {name} already exists. "
                f"Please specify a new name",
            )
        pipeline = {
            "pipeline_id": str(uuid.uuid4()),
            "display_name": name,
            "created_at": _now(),
            "namespace": namespace,
        }
        if query.get("description"):
            pipeline["description"] = query["description"][0]
        self._new_version(pipeline["pipeline_id"], name, spec)
        return self._store(self.state.pipelines, "pipeline_id", pipeline)

    def _upload_pipeline_version(
        self, path: dict[str, str], query: dict[str, list[str]], body: Any
    ):
        filename, data = body["uploadfile"]
        pipeline_id = (query.get("pipelineid") or [""])[0]
        if not pipeline_id:
            raise ApiError(
                INVALID_ARGUMENT,
                "Failed to create a pipeline version: Invalid input error: "
                "Failed to create a pipeline version due to missing pipeline id",
            )
        self._get(self.state.pipelines, "Pipeline", pipeline_id)
        spec, problems = package_errors(data)
        if problems:
            raise self._reject_upload(problems)
        name = (query.get("name") or [""])[0] or Path(filename or "pipeline").stem
        if any(v["display_name"] == name for v in self.state.versions_of(pipeline_id)):
            raise ApiError(
                ALREADY_EXISTS,
                f"Failed to create a pipeline version: Already exist error: "
                f"The name {name} already exist. Please specify a new name",
            )
        version = self._new_version(pipeline_id, name, spec)
        if query.get("description"):
            version["description"] = query["description"][0]
        return self._public(version)

    def _reject_upload(self, problems: list[str]) -> ApiError:
        message = "Failed to upload a pipeline: Invalid input error: " + "; ".join(problems)
        self.violations.append(message)
        return ApiError(INVALID_ARGUMENT, message)

    def _new_version(self, pipeline_id: str, name: str, spec: Any) -> dict[str, Any]:
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": str(uuid.uuid4()),
            "display_name": name,
            "created_at": _now(),
            "pipeline_spec": spec,
        }
        self._store(self.state.versions, "pipeline_version_id", version)
        return version

    def _list_pipelines(self, path: dict[str, str], query: dict[str, list[str]], body: Any):
        return self._page(list(self.state.pipelines.values()), query, "pipelines")

    def _get_pipeline(self, path: dict[str, str], query: dict[str, list[str]], body: Any):
        return self._get(self.state.pipelines, "Pipeline", path["pipeline_id"])

    def _list_pipeline_versions(self, path: dict[str, str], query: dict[str, list[str]], body):
        self._get(self.state.pipelines, "Pipeline", path["pipeline_id"])
        return self._page(self.state.versions_of(path["pipeline_id"]), query, "pipeline_versions")

    def _get_pipeline_version(self, path: dict[str, str], query: dict[str, list[str]], body):
        version = self._get(self.state.versions, "PipelineVersion", path["pipeline_version_id"])
        if version["pipeline_id"] != path["pipeline_id"]:
            raise ApiError(NOT_FOUND, f"PipelineVersion {path['pipeline_version_id']} not found")
        return version

    def _pipeline_source(self, body: dict[str, Any], what: str) -> dict[str, Any]:
        """The run's pipeline: an inline spec or a reference to an uploaded version."""
        spec, ref = body.get("pipeline_spec"), body.get("pipeline_version_reference")
        if (spec is None) == (ref is None):
            raise ApiError(
                INVALID_ARGUMENT,
                f"Failed to create a {what}: Invalid input error: Please specify a pipeline by "
                f"providing a (packaged) pipeline spec or referring to an existing pipeline "
                f"version",
            )
        if spec is not None:
            problems = pipeline_spec_errors(spec)
            if problems:
                message = f"Failed to create a {what}: Invalid input error: " + "; ".join(problems)
                self.violations.append(message)
                raise ApiError(INVALID_ARGUMENT, message)
            return {"pipeline_spec": spec}
        version = self.state.versions.get(ref.get("pipeline_version_id", ""))
        if version is None or version["pipeline_id"] != ref.get("pipeline_id"):
            raise ApiError(
                NOT_FOUND,
                f"Failed to create a {what}: ResourceNotFoundError: PipelineVersion "
                f"{ref.get('pipeline_version_id')} of pipeline {ref.get('pipeline_id')} not found",
            )
        return {"pipeline_version_reference": ref}

    def _experiment_for(self, experiment_id: str, what: str) -> dict[str, Any]:
        if not experiment_id:
            default = self.state.experiment_named("Default")
            if default is None:
                default = self._create_experiment({}, {}, {"display_name": "Default"})
            return default
        if experiment_id not in self.state.experiments:
            raise ApiError(
                NOT_FOUND,
                f"Failed to create a {what}: ResourceNotFoundError: "
                f"Experiment {experiment_id} not found",
            )
        return self.state.experiments[experiment_id]

    def _create_run(self, path: dict[str, str], query: dict[str, list[str]], body: Any):
        if not body.get("display_name", "").strip():
            raise ApiError(
                INVALID_ARGUMENT,
                "Failed to create a run: Invalid input error: The run name is empty. "
                "Please specify a valid name",
            )
        experiment_id = body.get("experiment_id") or (query.get("experiment_id") or [""])[0]
        experiment = self._experiment_for(experiment_id, "run")
        now = _now()
        run = {
            "run_id": str(uuid.uuid4()),
            "experiment_id": experiment["experiment_id"],
            "display_name": body["display_name"],
            **self._pipeline_source(body, "run"),
            "runtime_config": body.get("runtime_config", {}),
            "service_account": body.get("service_account", ""),
            "storage_state": "AVAILABLE",
            "created_at": now,
            "scheduled_at": now,
            "state": "PENDING",
            "state_history": [{"update_time": now, "state": "PENDING"}],
        }
        if body.get("description"):
            run["description"] = body["description"]
        if self._script is not None:
            run["_script"], run["_step"] = self._script, 0
        experiment["last_run_created_at"] = now
        return self._store(self.state.runs, "run_id", run)

    def _list_runs(self, path: dict[str, str], query: dict[str, list[str]], body: Any):
        return self._page(self._in_scope(self.state.runs, query), query, "runs")

    def _in_scope(
        self, table: dict[str, dict[str, Any]], query: dict[str, list[str]]
    ) -> list[dict[str, Any]]:
        experiment_id = (query.get("experiment_id") or [""])[0]
        namespace = (query.get("namespace") or [""])[0]
        items = list(table.values())
        if experiment_id:
            items = [i for i in items if i["experiment_id"] == experiment_id]
        if namespace:
            items = [
                i
                for i in items
                if self.state.experiments[i["experiment_id"]]["namespace"] == namespace
            ]
        return items

    def _get_run(self, path: dict[str, str], query: dict[str, list[str]], body: Any):
        run = self.state.runs.get(path["run_id"])
        script: RunScript | None = run.get("_script") if run else None
        if run is not None and script is not None and run["_step"] < len(script.states):
            state = script.states[run["_step"]]
            run["_step"] += 1
            now = _now()
            run["state"] = state
            run["state_history"].append({"update_time": now, "state": state})
            if run["_step"] == len(script.states):
                run["finished_at"] = now
                tasks = [{"run_id": run["run_id"], **t} for t in script.tasks]
                if tasks:
                    run["run_details"] = {"task_details": tasks}
                if script.error:
                    run["error"] = {"code": 2, "message": script.error}
        return self._get(self.state.runs, "Run", path["run_id"])

    def _create_recurring_run(self, path: dict[str, str], query: dict[str, list[str]], body):
        def invalid(detail: str) -> ApiError:
            message = f"Failed to create a recurring run: Invalid input error: {detail}"
            return ApiError(INVALID_ARGUMENT, message)

        if not body.get("display_name", "").strip():
            raise invalid("The recurring run name is empty. Please specify a valid name")
        experiment = self._experiment_for(body.get("experiment_id", ""), "recurring run")
        source = self._pipeline_source(body, "recurring run")
        max_concurrency = int(body.get("max_concurrency", "0"))
        if not 1 <= max_concurrency <= 10:
            raise invalid(
                "The max concurrency of the recurring run is out of range. Support 1-10. "
                f"Received {max_concurrency}."
            )
        trigger = body.get("trigger") or {}
        cron = (trigger.get("cron_schedule") or {}).get("cron")
        periodic = trigger.get("periodic_schedule")
        if (cron is None) == (periodic is None):
            raise invalid("A recurring run needs either a cron or a periodic schedule")
        if cron is not None and (reason := robfig_cron_error(cron)):
            raise invalid(
                "Schedule cron is not a supported format(https://godoc.org/github.com/robfig/cron)."
                f" Error: {reason}"
            )
        if periodic is not None and int(periodic.get("interval_second", "0")) < 1:
            raise invalid(
                "Found invalid period schedule interval. Set at interval to least 1 second"
            )
        mode = body.get("mode", "MODE_UNSPECIFIED")
        if mode == "MODE_UNSPECIFIED":
            raise invalid("Recurring run mode must be ENABLE or DISABLE")
        now = _now()
        recurring_run = {
            "recurring_run_id": str(uuid.uuid4()),
            "display_name": body["display_name"],
            **source,
            "runtime_config": body.get("runtime_config", {}),
            "service_account": body.get("service_account", ""),
            "max_concurrency": str(max_concurrency),
            "trigger": trigger,
            "mode": mode,
            "created_at": now,
            "updated_at": now,
            "status": "ENABLED" if mode == "ENABLE" else "DISABLED",
            "no_catchup": body.get("no_catchup", False),
            "namespace": experiment["namespace"],
            "experiment_id": experiment["experiment_id"],
        }
        if body.get("description"):
            recurring_run["description"] = body["description"]
        return self._store(self.state.recurring_runs, "recurring_run_id", recurring_run)

    def _list_recurring_runs(self, path: dict[str, str], query: dict[str, list[str]], body):
        items = self._in_scope(self.state.recurring_runs, query)
        return self._page(items, query, "recurringRuns")

    def _get_recurring_run(self, path: dict[str, str], query: dict[str, list[str]], body):
        return self._get(self.state.recurring_runs, "RecurringRun", path["recurring_run_id"])


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        target = self._target()
        if urlsplit(target).path == "/k8s/pod/logs" and self.command == "GET":
            status, text = self.server.api.handle_pod_logs(target, dict(self.headers))
            self._answer(status, text.encode(), "text/plain; charset=utf-8")
            return
        status, payload = self.server.api.handle(self.command, target, dict(self.headers), raw)
        self._answer(status, json.dumps(payload).encode(), "application/json")

    def _target(self) -> str:
        """The request's path and query: from an absolute URL too (a request sent to this
        server as an HTTP proxy), under `prefix` (a service proxy's path, whose `//` after it
        is the API path's leading slash)."""
        parts = urlsplit(self.path)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        prefix = self.server.prefix
        if prefix:
            if not target.startswith(prefix):
                return "/not-under-the-prefix" + target
            target = "/" + target[len(prefix) :].lstrip("/")
        return target

    def _answer(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's name)
        log.debug("fake KFP API: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api: FakeKfpApi, prefix: str = "") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.api = api
        self.prefix = prefix.rstrip("/")

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up on a delayed answer closed its socket: not the fake's fault.
        log.debug("fake KFP API: request from %s failed", client_address, exc_info=True)


class FakeKfpServer:
    """`FakeKfpApi` served over HTTP on 127.0.0.1 and a free port, in a background thread.

    `prefix` serves it under a path (the API server's service proxy path); `tls` (a PEM
    certificate file and its key file) serves HTTPS.
    """

    def __init__(
        self,
        multi_user: bool = False,
        token: str | None = None,
        prefix: str = "",
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.api = FakeKfpApi(multi_user=multi_user, token=token)
        self._server = _Server(self.api, prefix)
        self._tls = tls
        if tls is not None:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{'https' if self._tls else 'http'}://{host}:{port}{self._server.prefix}"

    @property
    def origin(self) -> str:
        """The scheme, host and port, without `prefix`."""
        host, port = self._server.server_address[:2]
        return f"{'https' if self._tls else 'http'}://{host}:{port}"

    def start(self) -> FakeKfpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def serve_fake_kfp(
    multi_user: bool = False,
    token: str | None = None,
    prefix: str = "",
    tls: tuple[Path, Path] | None = None,
) -> Iterator[FakeKfpServer]:
    """A started `FakeKfpServer`, stopped on exit."""
    server = FakeKfpServer(multi_user=multi_user, token=token, prefix=prefix, tls=tls).start()
    try:
        yield server
    finally:
        server.stop()
