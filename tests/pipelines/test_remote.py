"""kdflow submit / schedule / runs against a KFP v2beta1 API that checks every request.

The API is tests/fakes/kfp_api.py: a real HTTP server on 127.0.0.1 that validates bodies
against the vendored KFP swagger files, so these tests hold pipelines/remote.py (and the
kfp.Client under it) to the API's contract rather than to a mock of kfp's Python client.
"""

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kfp import compiler, dsl

from pipelines import remote, remote_wait
from pipelines.remote import RemoteError
from tests.fakes.kfp_api import PERMISSION_DENIED, FakeKfpServer, serve_fake_kfp

PIPELINE_NAME = "kdflow-remote-test"


@dsl.component(base_image="python:3.11-slim")
def scale(x: float, factor: int) -> float:
    return x * factor


@dsl.pipeline(name=PIPELINE_NAME)
def tiny_pipeline(x: float = 1.0, factor: int = 2, label: str = "nightly") -> None:
    scale(x=x, factor=factor)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("package") / "tiny_pipeline.yaml"
    compiler.Compiler().compile(tiny_pipeline, package_path=str(path))
    return path


@pytest.fixture
def client(kfp_api: FakeKfpServer):
    return remote.connect(kfp_api.url)


def _raw(server: FakeKfpServer, method: str, path: str, body: bytes, content_type: str):
    """Send one request by hand (no kfp), returning (status, parsed JSON body)."""
    request = urllib.request.Request(
        server.url + path, data=body, method=method, headers={"Content-Type": content_type}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def _post_json(server: FakeKfpServer, path: str, body: Any):
    return _raw(server, "POST", path, json.dumps(body).encode(), "application/json")


# --- submit ---------------------------------------------------------------------------------


def test_submit_creates_run_in_named_experiment_with_params_as_runtime_config(
    kfp_api, client, package, capsys
):
    info = remote.submit_run(client, package, {"x": 0.5, "factor": "3"}, "kd-nightly", "first")

    state = kfp_api.api.state
    (experiment,) = state.experiments.values()
    run = state.runs[info.id]
    assert experiment["display_name"] == "kd-nightly"
    assert run["experiment_id"] == experiment["experiment_id"]
    assert run["display_name"] == "first"
    assert run["runtime_config"]["parameters"] == {"x": 0.5, "factor": 3}
    assert run["pipeline_spec"]["pipelineInfo"]["name"] == PIPELINE_NAME
    assert info.name == "first" and info.state == "PENDING"
    assert info.url == f"{kfp_api.url}/#/runs/details/{info.id}"
    assert kfp_api.api.violations == []
    assert capsys.readouterr().out == "", "kfp's printed links must not reach the CLI's stdout"


def test_submit_creates_experiment_once_and_reuses_it(kfp_api, client, package):
    first = remote.submit_run(client, package, {}, "kd-nightly")
    second = remote.submit_run(client, package, {}, "kd-nightly")

    state = kfp_api.api.state
    assert len(state.experiments) == 1
    assert len(kfp_api.api.calls("ExperimentService_CreateExperiment")) == 1
    assert state.runs[first.id]["experiment_id"] == state.runs[second.id]["experiment_id"]
    assert first.name.startswith(f"{PIPELINE_NAME} ")


def test_submit_refuses_unknown_parameter_before_calling_the_api(kfp_api, client, package):
    with pytest.raises(RemoteError, match=r"no parameter 'epochs'; it takes: factor, label, x"):
        remote.submit_run(client, package, {"epochs": 3}, "kd-nightly")
    assert kfp_api.api.calls("RunService_CreateRun") == []


def test_submit_refuses_parameter_of_the_wrong_type(client, package):
    with pytest.raises(RemoteError, match=r"'factor' must be an integer, got 'three'"):
        remote.submit_run(client, package, {"factor": "three"}, "kd-nightly")


def test_submit_reports_a_missing_package(client, tmp_path):
    with pytest.raises(RemoteError, match=r"missing\.yaml does not exist: compile it first"):
        remote.submit_run(client, tmp_path / "missing.yaml", {}, "kd-nightly")


def test_submit_refuses_a_file_that_is_not_a_compiled_pipeline(kfp_api, client, tmp_path):
    not_compiled = tmp_path / "pipeline.yaml"
    not_compiled.write_text("pipelineInfo: {name: x}\nroot: {dag: {tasks: 3}}\n")

    with pytest.raises(RemoteError, match=r"pipeline\.yaml is not a valid KFP pipeline spec"):
        remote.submit_run(client, not_compiled, {}, "kd-nightly")
    assert kfp_api.api.calls("RunService_CreateRun") == []


# --- schedule -------------------------------------------------------------------------------


def test_schedule_creates_recurring_run_with_six_field_cron_and_limits(kfp_api, client, package):
    info = remote.schedule_run(
        client,
        package,
        {"label": "nightly"},
        "kd-nightly",
        "0 0 2 * * *",
        "kd nightly",
        max_concurrency=2,
    )

    state = kfp_api.api.state
    recurring_run = state.recurring_runs[info.id]
    (pipeline,) = state.pipelines.values()
    (version,) = state.versions.values()
    assert recurring_run["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert recurring_run["max_concurrency"] == "2"
    assert recurring_run["no_catchup"] is True
    assert recurring_run["mode"] == "ENABLE"
    assert recurring_run["runtime_config"]["parameters"] == {"label": "nightly"}
    assert recurring_run["pipeline_version_reference"] == {
        "pipeline_id": pipeline["pipeline_id"],
        "pipeline_version_id": version["pipeline_version_id"],
    }
    assert pipeline["display_name"] == PIPELINE_NAME
    assert info.cron == "0 0 2 * * *" and info.status == "ENABLED" and info.name == "kd nightly"
    assert info.url == f"{kfp_api.url}/#/recurringrun/details/{info.id}"
    assert kfp_api.api.violations == []


def test_schedule_can_catch_up_and_start_paused(kfp_api, client, package):
    info = remote.schedule_run(
        client,
        package,
        {},
        "kd-nightly",
        "0 30 1 * * MON-FRI",
        "weekdays",
        catchup=True,
        enabled=False,
    )

    recurring_run = kfp_api.api.state.recurring_runs[info.id]
    assert recurring_run["no_catchup"] is False
    assert recurring_run["mode"] == "DISABLE"
    assert info.status == "DISABLED"


def test_rescheduling_uploads_a_new_pipeline_version(kfp_api, client, package):
    first = remote.schedule_run(client, package, {}, "kd-nightly", "0 0 2 * * *", "v1")
    second = remote.schedule_run(client, package, {}, "kd-nightly", "0 0 3 * * *", "v2")

    state = kfp_api.api.state
    assert len(state.pipelines) == 1
    assert len(state.versions) == 2
    assert len(kfp_api.api.calls("UploadPipelineVersion")) == 1
    first_ref = state.recurring_runs[first.id]["pipeline_version_reference"]
    second_ref = state.recurring_runs[second.id]["pipeline_version_reference"]
    assert first_ref["pipeline_id"] == second_ref["pipeline_id"]
    assert first_ref["pipeline_version_id"] != second_ref["pipeline_version_id"]
    assert kfp_api.api.violations == []


def test_five_field_cron_is_refused_with_the_six_field_form(kfp_api, client, package):
    with pytest.raises(RemoteError, match=r"5 fields.*Did you mean '0 0 2 \* \* \*'\?"):
        remote.schedule_run(client, package, {}, "kd-nightly", "0 2 * * *", "nightly")
    assert kfp_api.api.calls("UploadPipeline") == []
    assert kfp_api.api.state.recurring_runs == {}


@pytest.mark.parametrize(
    "cron", ["0 0 2 * * *", "0 */15 8-18 * * MON-FRI", "0 0 0 1 JAN,JUL ?", "@daily", "@every 6h"]
)
def test_cron_in_kfp_form_is_accepted(cron):
    assert remote.validate_cron(f"  {cron} ") == cron


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("* * * *", "has 4 fields; KFP needs 6"),
        ("0 0 25 * * *", "'25' is not a hour in 0-23"),
        ("0 0 2 * * * 2030", "has 7 fields"),
        ("@sometimes", "Unknown cron descriptor"),
    ],
)
def test_cron_kfp_would_misread_is_refused(cron, message):
    with pytest.raises(RemoteError, match=message):
        remote.validate_cron(cron)


def test_api_rejection_reaches_the_user_with_its_message(kfp_api, client, package):
    with pytest.raises(RemoteError) as raised:
        remote.schedule_run(
            client, package, {}, "kd-nightly", "0 0 2 * * *", "too-many", max_concurrency=11
        )

    message = str(raised.value)
    assert f"The KFP API at {kfp_api.url} refused to create recurring run 'too-many'" in message
    assert "(HTTP 400)" in message
    assert "The max concurrency of the recurring run is out of range. Support 1-10." in message


def test_permission_denied_names_the_host_and_what_to_check(kfp_api, client, package):
    denial = "User 'alice' is not allowed to create runs in namespace 'team-a'"
    kfp_api.api.fail_next("RunService_CreateRun", PERMISSION_DENIED, denial)

    with pytest.raises(RemoteError) as raised:
        remote.submit_run(client, package, {}, "kd-nightly", "denied")

    message = str(raised.value)
    assert kfp_api.url in message and "(HTTP 403)" in message and denial in message
    assert "--namespace" in message


# --- runs -----------------------------------------------------------------------------------


def test_list_runs_returns_the_created_runs_newest_first(kfp_api, client, package):
    # The API's timestamps have one-second resolution; the fake breaks ties by creation order.
    for name, experiment in [("a1", "kd-a"), ("b1", "kd-b"), ("a2", "kd-a")]:
        remote.submit_run(client, package, {}, experiment, name)

    in_a = remote.list_runs(client, "kd-a")
    everything = remote.list_runs(client)

    assert [r.name for r in in_a] == ["a2", "a1"]
    assert [r.name for r in everything] == ["a2", "b1", "a1"]
    assert all(r.state == "PENDING" and r.created_at is not None for r in everything)
    assert all(
        c.query["sort_by"] == ["created_at desc"] for c in kfp_api.api.calls("RunService_ListRuns")
    )
    assert kfp_api.api.violations == []


def test_list_recurring_runs_returns_the_schedules(kfp_api, client, package):
    remote.schedule_run(client, package, {}, "kd-a", "0 0 2 * * *", "nightly")
    remote.schedule_run(client, package, {}, "kd-b", "@weekly", "weekly")

    assert [(r.name, r.cron) for r in remote.list_recurring_runs(client, "kd-a")] == [
        ("nightly", "0 0 2 * * *")
    ]
    assert {r.name for r in remote.list_recurring_runs(client)} == {"nightly", "weekly"}


def test_list_runs_of_an_unknown_experiment_says_so(kfp_api, client):
    with pytest.raises(RemoteError, match=r"has no experiment named 'nope'"):
        remote.list_runs(client, "nope")


def test_list_runs_is_empty_on_a_fresh_api(client):
    assert remote.list_runs(client) == []
    assert remote.list_recurring_runs(client) == []


# --- connecting -----------------------------------------------------------------------------


def test_unreachable_host_fails_fast_with_what_to_check(kfp_env):
    with socket.socket() as probe:  # a port nothing listens on once the socket closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host = f"http://127.0.0.1:{port}"

    started = time.monotonic()
    with pytest.raises(RemoteError, match=rf"Cannot reach the KFP API at {host}.*--host"):
        remote.connect(host)
    assert time.monotonic() - started < 5


def test_host_without_scheme_is_refused_with_an_example(kfp_env):
    with pytest.raises(RemoteError, match=r"needs a scheme.*http://localhost:8080"):
        remote.connect("localhost:8080")


def test_token_is_sent_as_bearer_and_a_wrong_one_is_reported(kfp_env, monkeypatch, package):
    with serve_fake_kfp(token="s3cret") as server:
        with pytest.raises(RemoteError, match=r"refused the credentials \(HTTP 401.*--token"):
            remote.connect(server.url, token="wrong")
        monkeypatch.setenv("KFP_TOKEN", "s3cret")
        client = remote.connect(server.url)
        info = remote.submit_run(client, package, {}, "kd-nightly")
    assert info.id in server.api.state.runs
    assert server.api.fake_errors == []


def test_multi_user_api_needs_a_namespace(kfp_env, package):
    with serve_fake_kfp(multi_user=True) as server:
        with pytest.raises(RemoteError, match=r"is multi-user: pass --namespace"):
            remote.connect(server.url)
        client = remote.connect(server.url, namespace="team-a")
        info = remote.submit_run(client, package, {}, "kd-nightly")
        runs = remote.list_runs(client)
    (experiment,) = server.api.state.experiments.values()
    assert experiment["namespace"] == "team-a"
    assert [r.id for r in runs] == [info.id]
    assert server.api.violations == [] and server.api.fake_errors == []


def test_unanswered_request_times_out_and_says_it_may_have_happened(kfp_api, package):
    client = remote.connect(kfp_api.url, read_timeout_s=0.5)
    kfp_api.api.delay_next("RunService_CreateRun", 3)

    started = time.monotonic()
    with pytest.raises(RemoteError, match=r"may still have been done: check with `kdflow runs`"):
        remote.submit_run(client, package, {}, "kd-nightly", "slow")
    assert time.monotonic() - started < 2.5


# --- the fake API holds requests to the contract ----------------------------------------------


def test_fake_api_rejects_a_body_that_breaks_the_schema(kfp_api):
    status, body = _post_json(
        kfp_api, "/apis/v2beta1/runs", {"display_name": 5, "pipeline_spec": {}, "bogus": True}
    )

    assert status == 400
    assert body["code"] == 3 and body["error"] == body["message"]
    assert "'bogus' was unexpected" in body["message"]
    assert "display_name: 5 is not of type 'string'" in body["message"]
    assert kfp_api.api.violations and kfp_api.api.state.runs == {}


def test_fake_api_reads_bodies_as_protobuf_json(kfp_api):
    status, body = _post_json(
        kfp_api, "/apis/v2beta1/experiments", {"displayName": "camel", "namespace": None}
    )

    assert status == 200
    assert body["display_name"] == "camel" and body["storage_state"] == "AVAILABLE"
    assert kfp_api.api.violations == []


def test_fake_api_rejects_an_upload_that_is_not_a_pipeline(kfp_api):
    boundary = "kdflow-test-boundary"
    form = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="uploadfile"; filename="p.yaml"\r\n'
        "Content-Type: application/x-yaml\r\n\r\n"
        "hello: world\r\n"
        f"--{boundary}--\r\n"
    ).encode()

    status, body = _raw(
        kfp_api,
        "POST",
        "/apis/v2beta1/pipelines/upload?name=junk",
        form,
        f"multipart/form-data; boundary={boundary}",
    )

    assert status == 400
    assert "lacks pipelineInfo, root, deploymentSpec, schemaVersion" in body["message"]
    assert kfp_api.api.state.pipelines == {}


def test_fake_api_rejects_an_undeclared_query_parameter(kfp_api):
    status, body = _raw(kfp_api, "GET", "/apis/v2beta1/runs?bogus=1", b"", "application/json")

    assert status == 400
    assert "unknown query parameter 'bogus'" in body["message"]


# --- following a run (submit --wait) ----------------------------------------------------------


class _Clock:
    """time.monotonic and time.sleep for wait_for_run, without waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_polls_at_a_growing_bounded_interval_and_reports_each_state_once(
    kfp_api, client, package
):
    kfp_api.api.script_runs(*["RUNNING"] * 8, "SUCCEEDED")
    run = remote.submit_run(client, package, {}, "kd-nightly", "waited")
    clock, seen = _Clock(), []

    end = remote_wait.wait_for_run(
        client, run, on_state=lambda s, t: seen.append((s, t)), sleep=clock.sleep, clock=clock
    )

    assert end.ended and end.run.state == "SUCCEEDED" and end.failed_tasks == ()
    assert [s for s, _ in seen] == ["RUNNING", "SUCCEEDED"]
    assert clock.sleeps[:3] == [5.0, 7.5, 11.25]
    assert max(clock.sleeps) == remote_wait.MAX_POLL_S and len(clock.sleeps) == 8
    assert len(kfp_api.api.calls("RunService_GetRun")) == 9


def test_wait_stops_at_the_timeout_with_the_last_state(kfp_api, client, package):
    run = remote.submit_run(client, package, {}, "kd-nightly", "stuck")  # stays PENDING
    clock = _Clock()

    end = remote_wait.wait_for_run(client, run, timeout_s=20, sleep=clock.sleep, clock=clock)

    assert not end.ended and end.run.state == "PENDING"
    assert end.elapsed_s == 20 and sum(clock.sleeps) == 20  # the last sleep ends at the bound


def test_wait_rides_out_an_unanswered_poll_but_not_a_refusal(kfp_api, client, package):
    from tests.fakes.kfp_api import INTERNAL, NOT_FOUND

    kfp_api.api.script_runs("SUCCEEDED")
    run = remote.submit_run(client, package, {}, "kd-nightly", "flaky")
    clock = _Clock()
    kfp_api.api.fail_next("RunService_GetRun", INTERNAL, "database is restarting")

    end = remote_wait.wait_for_run(client, run, sleep=clock.sleep, clock=clock)
    assert end.run.state == "SUCCEEDED" and clock.sleeps == [5.0]

    kfp_api.api.fail_next("RunService_GetRun", NOT_FOUND, f"Run {run.id} not found")
    with pytest.raises(RemoteError, match=r"refused to get run .*\(HTTP 404\)"):
        remote_wait.wait_for_run(client, run, sleep=clock.sleep, clock=clock)


def test_a_failed_run_names_the_innermost_failed_task_with_its_pod(kfp_api, client, package):
    from tests.fakes.kfp_api import failed_task

    loop = failed_task("for-loop-2", "")
    teacher = failed_task("train-teacher", "exit code 137: OOMKilled", pod="p-impl-7")
    teacher["parent_task_id"] = loop["task_id"]
    kfp_api.api.script_runs("FAILED", tasks=(loop, teacher), error="1 task failed")
    run = remote.submit_run(client, package, {}, "kd-nightly", "broken")

    end = remote_wait.wait_for_run(client, run, sleep=lambda s: None)

    assert end.run.state == "FAILED" and end.error == "1 task failed"
    assert end.failed_tasks == (
        remote_wait.FailedTask("train-teacher", "exit code 137: OOMKilled", "p-impl-7", ()),
    )


# --- access options and what the connection keeps -----------------------------------------------


def test_cookie_strings_are_normalised():
    assert remote.access_options(cookies="Cookie: a=1;b=\"2\" ;").cookies == 'a=1; b="2"'


def test_the_connection_shows_no_token_or_cookie(kfp_env):
    secret = "s3cret-session-value"
    with serve_fake_kfp(token="tok-123") as server:
        access = remote.access_options(cookies=f"authservice_session={secret}")
        conn = remote.connect(server.url, token="tok-123", access=access)
    assert secret not in repr(conn) + repr(access) and "tok-123" not in repr(conn)


def test_ui_links_follow_kf_pipelines_ui_endpoint(kfp_env, monkeypatch, package):
    monkeypatch.setenv("KF_PIPELINES_UI_ENDPOINT", "kubeflow.example.com/pipeline/")
    with serve_fake_kfp() as server:
        conn = remote.connect(server.url)
        info = remote.submit_run(conn, package, {}, "kd-nightly")
    assert conn.host == server.url
    assert info.url == f"http://kubeflow.example.com/pipeline/#/runs/details/{info.id}"


def test_the_remote_modules_read_no_private_attribute():
    """kfp.Client's private state (`_existing_config`, `_get_url_prefix`, `_healthz_api`) is
    not read: a name with one leading underscore after a dot is someone's private."""
    import ast

    for name in ("remote", "remote_client", "remote_wait"):
        path = Path(remote.__file__).with_name(f"{name}.py")
        private = [
            f"{path.name}:{node.lineno} .{node.attr}"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ]
        assert private == []
