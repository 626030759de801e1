"""`kdflow submit`, `kdflow schedule`, `kdflow runs` with the real distillation pipeline,
against the fake KFP v2beta1 API on 127.0.0.1."""

from __future__ import annotations

import json
import re

import pytest

from pipelines.cli import main
from tests.fakes.kfp_api import failed_task, serve_fake_kfp


def test_submit_sends_only_the_options_given_and_the_compiled_pipeline(kfp_api, capsys):
    code = main(["submit", "--host", kfp_api.url, "--experiment", "kd", "--temperature", "3",
                 "--teachers", "mlp:hidden=64", "cnn:channels=8", "--seed", "7"])
    assert code == 0
    (run,) = kfp_api.api.state.runs.values()
    assert run["runtime_config"]["parameters"] == {
        "temperature": 3.0, "teachers": ["mlp:hidden=64", "cnn:channels=8"], "seed": 7,
    }
    # With kfp-kubernetes settings the body carries the pipeline and its platform spec.
    body = run["pipeline_spec"]
    assert body["pipeline_spec"]["pipelineInfo"]["name"] == "kdflow-distillation"
    assert "kubernetes" in body["platform_spec"]["platforms"]
    assert kfp_api.api.violations == []
    assert "submitted run" in capsys.readouterr().out


def test_schedule_creates_a_nightly_recurring_run(kfp_api, capsys):
    code = main(["schedule", "--host", kfp_api.url, "--cron", "0 0 2 * * *", "--no-catchup",
                 "--max-concurrency", "1", "--job-name", "nightly", "--gpus", "0"])
    assert code == 0
    (job,) = kfp_api.api.state.recurring_runs.values()
    assert job["display_name"] == "nightly"
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *"
    assert job["no_catchup"] is True
    assert int(job["max_concurrency"]) == 1
    assert kfp_api.api.violations == []
    out = capsys.readouterr().out
    assert "scheduled nightly" in out
    assert main(["runs", "--host", kfp_api.url]) == 0
    assert "nightly" in capsys.readouterr().out


def test_schedule_with_a_five_field_cron_is_a_usage_error(kfp_api, capsys):
    code = main(["schedule", "--host", kfp_api.url, "--cron", "0 2 * * *"])
    assert code != 0
    err = capsys.readouterr().err
    assert "0 0 2 * * *" in err
    assert kfp_api.api.state.recurring_runs == {}


def test_submit_to_an_unreachable_host_is_one_clear_line(kfp_env, capsys):
    code = main(["submit", "--host", "http://127.0.0.1:9", "--alpha", "0.5"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "127.0.0.1:9" in err[0]


# --- submit --wait ------------------------------------------------------------------------------

FAILED_POD = "kdflow-distillation-x7k2p-system-container-impl-2141"


@pytest.fixture
def quick_polls(monkeypatch):
    """Poll every 10 ms instead of every 5-30 s."""
    from pipelines import remote_wait

    monkeypatch.setattr(remote_wait, "FIRST_POLL_S", 0.01)
    monkeypatch.setattr(remote_wait, "MAX_POLL_S", 0.02)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> str:
    """The real pipeline, compiled once for the tests that only need a package to send."""
    path = tmp_path_factory.mktemp("compiled") / "distillation.yaml"
    assert main(["compile", "-o", str(path), "--gpus", "0"]) == 0
    return str(path)


def _failing_run_tasks() -> tuple[dict, ...]:
    """What KFP 2.x reports for a run whose distill step failed inside the root DAG."""
    root = failed_task("kdflow-distillation-x7k2p", "")
    distill = failed_task(
        "distill", "Error (exit code 1): RuntimeError: CUDA out of memory", pod=FAILED_POD
    )
    distill["parent_task_id"] = root["task_id"]
    validate = failed_task("validate-data", "", pod="validate-pod", state="SUCCEEDED")
    return (root, validate, distill)


def test_submit_wait_exits_0_when_the_run_succeeds(kfp_api, quick_polls, compiled, capsys):
    kfp_api.api.script_runs("PENDING", "RUNNING", "RUNNING", "SUCCEEDED")

    code = main(["submit", "--host", kfp_api.url, "--package", compiled, "--wait"])

    out = capsys.readouterr().out
    assert code == 0
    states = re.findall(r"^kdflow: run ([A-Z]+) \(\d+ s\)$", out, flags=re.MULTILINE)
    assert states == ["PENDING", "RUNNING", "SUCCEEDED"], out  # each change once, in order
    assert re.search(r"^kdflow: run kdflow-distillation .* SUCCEEDED after 0 s$", out, re.M)
    assert len(kfp_api.api.calls("RunService_GetRun")) == 4
    assert kfp_api.api.violations == []


def test_submit_wait_on_a_failed_run_names_the_task_its_error_and_log_tail(
    kfp_api, quick_polls, compiled, capsys
):
    kfp_api.api.script_runs("RUNNING", "FAILED", tasks=_failing_run_tasks())
    log = [f"epoch {i}: loss 0.{i}" for i in range(40)] + ["RuntimeError: CUDA out of memory"]
    kfp_api.api.pod_logs[FAILED_POD] = "\n".join(log) + "\n"

    code = main(["submit", "--host", kfp_api.url, "--package", compiled, "--wait"])

    err = capsys.readouterr().err
    assert code == 1
    assert "ended FAILED after" in err
    assert "  task distill failed: Error (exit code 1): RuntimeError: CUDA out of memory" in err
    assert f"the last 20 lines of its log (pod {FAILED_POD}):" in err
    assert "    | RuntimeError: CUDA out of memory" in err and "    | epoch 21:" in err
    assert "epoch 20:" not in err  # the tail only
    # Neither the task that succeeded nor the DAG holding the failed task is named as failed.
    assert "validate-data" not in err and "task kdflow-distillation" not in err
    (logs,) = [r for r in kfp_api.api.requests if r.path == "/k8s/pod/logs"]
    assert logs.query["podname"] == [FAILED_POD]


def test_submit_wait_says_where_the_log_is_when_the_ui_server_has_none(
    kfp_api, quick_polls, compiled, capsys
):
    kfp_api.api.script_runs("FAILED", tasks=_failing_run_tasks())

    code = main(["submit", "--host", kfp_api.url, "--package", compiled, "--wait"])

    err = capsys.readouterr().err
    (run,) = kfp_api.api.state.runs
    assert code == 1
    assert "task distill failed: Error (exit code 1)" in err
    assert f"its log: the task's Logs tab at {kfp_api.url}/#/runs/details/{run}" in err
    assert f"`kubectl logs -n kubeflow {FAILED_POD} -c main`" in err


def test_submit_wait_on_a_canceled_run_exits_1_with_the_run_error(
    kfp_api, quick_polls, compiled, capsys
):
    kfp_api.api.script_runs("RUNNING", "CANCELING", "CANCELED", error="Run was canceled by alice")

    code = main(["submit", "--host", kfp_api.url, "--package", compiled, "--wait"])

    err = capsys.readouterr().err
    assert code == 1
    assert "ended CANCELED" in err and "  Run was canceled by alice" in err
    assert "  see http://" in err


def test_submit_wait_gives_up_after_timeout_with_124(kfp_api, quick_polls, compiled, capsys):
    # Unscripted runs stay PENDING.
    code = main(["submit", "--host", kfp_api.url, "--package", compiled, "--wait",
                 "--timeout-s", "0.3"])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 124
    assert len(err) == 1 and "is still PENDING after 0 s (--timeout-s 0.3)" in err[0]
    assert "it goes on in the cluster: http://" in err[0]
    assert len(kfp_api.api.calls("RunService_GetRun")) >= 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout-s", "60"], "--timeout-s bounds --wait: add --wait"),
        (["--wait", "--timeout-s", "0"], "--timeout-s must be a positive number"),
    ],
)
def test_bad_wait_options_are_usage_errors(kfp_api, compiled, capsys, args, message):
    code = main(["submit", "--host", kfp_api.url, "--package", compiled, *args])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert kfp_api.api.requests == []


# --- enterprise access: cookies, CA bundle, proxy, kube context --------------------------------

SESSION = "MTcwMDAwMDAwMHxzM2NyM3Qtc2Vzc2lvbnw"  # a session value, never to be printed


def test_cookies_reach_every_request_and_are_never_printed(kfp_api, compiled, capsys, caplog):
    cookies = f"authservice_session={SESSION}; oidc_state=abc"

    assert main(["submit", "--host", kfp_api.url, "--package", compiled,
                 "--cookies", cookies]) == 0
    assert main(["runs", "--host", kfp_api.url, "--cookies", f"Cookie: {cookies}"]) == 0

    sent = [r.header("Cookie") for r in kfp_api.api.requests]
    operations = {r.operation_id for r in kfp_api.api.requests}
    assert {"HealthzService_GetHealthz", "RunService_CreateRun", "RunService_ListRuns"} <= (
        operations
    )
    assert sent and set(sent) == {cookies}, sent  # kdflow's health check and kfp.Client's calls
    shown = capsys.readouterr()
    assert SESSION not in shown.out + shown.err + caplog.text


def test_cookies_come_from_kfp_cookies_by_default(kfp_api, compiled, monkeypatch):
    monkeypatch.setenv("KFP_COOKIES", f"authservice_session={SESSION}")

    assert main(["submit", "--host", kfp_api.url, "--package", compiled]) == 0

    assert {r.header("Cookie") for r in kfp_api.api.requests} == {
        f"authservice_session={SESSION}"
    }


@pytest.mark.parametrize(
    ("cookies", "message"),
    [
        (SESSION, "--cookies must be name=value pairs separated by ';'"),
        (f"authservice_session={SESSION}; {SESSION}", "part 2 of 2 is not one"),
        (f"authservice_session=a {SESSION}", "the value of authservice_session holds a space"),
        (" ; ", "--cookies is empty"),
    ],
)
def test_malformed_cookies_are_one_line_without_the_value(kfp_api, capsys, cookies, message):
    code = main(["runs", "--host", kfp_api.url, "--cookies", cookies])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert SESSION not in err[0]
    assert kfp_api.api.requests == []


def test_a_refused_session_cookie_says_so_without_showing_it(kfp_env, capsys):
    with serve_fake_kfp(token="the-real-token") as server:
        code = main(["runs", "--host", server.url, "--cookies", f"authservice_session={SESSION}",
                     "--token", "wrong-token-value"])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "the session cookie given with --cookies was refused" in err[0]
    assert SESSION not in err[0] and "wrong-token-value" not in err[0]


def test_a_missing_ca_bundle_is_one_line_and_exit_2(kfp_api, tmp_path, capsys):
    missing = tmp_path / "company-ca.pem"

    code = main(["runs", "--host", kfp_api.url, "--ca-cert", str(missing)])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"kdflow runs: error: --ca-cert {missing} does not exist"]
    assert kfp_api.api.requests == []


def test_a_ca_bundle_without_certificates_is_refused(kfp_api, tmp_path, capsys):
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("this is not a certificate\n")

    code = main(["runs", "--host", kfp_api.url, "--ca-cert", str(not_pem)])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "holds no PEM certificate" in err[0]


def test_the_ca_bundle_is_trusted_by_the_health_check_and_kfp_client(kfp_env, tmp_path, capsys):
    from tests.fakes.tls import make_certificates

    certs = make_certificates(tmp_path)
    with serve_fake_kfp(tls=(certs.cert, certs.key)) as server:
        untrusted = main(["runs", "--host", server.url])
        untrusted_err = capsys.readouterr().err
        trusted = main(["submit", "--host", server.url, "--gpus", "0",
                        "--ca-cert", str(certs.ca)])

    assert server.url.startswith("https://")
    assert untrusted == 1
    assert "is not trusted" in untrusted_err and "--ca-cert" in untrusted_err
    assert trusted == 0
    assert len(server.api.state.runs) == 1  # kfp.Client's upload went over the same TLS
    assert server.api.violations == []


def test_requests_go_through_the_proxy(kfp_env, compiled, capsys):
    # The fake answers as an HTTP proxy would forward: the host below does not resolve
    # (.invalid), so only a request sent through --proxy can reach it.
    with serve_fake_kfp() as proxy:
        code = main(["submit", "--host", "http://kfp.invalid:8080", "--package", compiled,
                     "--proxy", proxy.url])
        out = capsys.readouterr().out

    assert code == 0, out
    hosts = {r.header("Host") for r in proxy.api.requests}
    operations = {r.operation_id for r in proxy.api.requests}
    assert hosts == {"kfp.invalid:8080"}
    assert {"HealthzService_GetHealthz", "RunService_CreateRun"} <= operations
    assert "http://kfp.invalid:8080/#/runs/details/" in out


@pytest.mark.parametrize(
    ("proxy", "message"),
    [
        ("socks5://proxy.corp:1080", "--proxy must be http://HOST:PORT or https://HOST:PORT"),
        ("proxy.corp:3128", "--proxy must be http://HOST:PORT"),
        ("http://alice:pa55word@proxy.corp:3128", "--proxy holds credentials"),
    ],
)
def test_bad_proxy_is_one_line_and_exit_2(kfp_api, capsys, proxy, message):
    code = main(["runs", "--host", kfp_api.url, "--proxy", proxy])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert "pa55word" not in err[0]


KUBE_PROXY = "/api/v1/namespaces/kubeflow/services/ml-pipeline:http/proxy"


@pytest.fixture
def kubeconfig(tmp_path, monkeypatch):
    """A kubeconfig whose context `kind-kdflow` has a token user; ($KUBECONFIG is read by the
    kubernetes package once, at import: point its default location at this file.)"""
    from kubernetes.config import kube_config

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    path = tmp_path / "kubeconfig"

    def write(server: str) -> None:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "other",
            "clusters": [{"name": "kind", "cluster": {"server": server}}],
            "users": [{"name": "dev", "user": {"token": "kube-token-123"}}],
            "contexts": [
                {"name": "kind-kdflow", "context": {"cluster": "kind", "user": "dev"}},
                {"name": "other", "context": {"cluster": "kind", "user": "dev"}},
            ],
        }))

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    return write


def test_kube_context_reaches_kfp_through_the_api_server_with_its_token(
    kfp_env, kubeconfig, compiled, capsys
):
    with serve_fake_kfp(token="kube-token-123", prefix=KUBE_PROXY) as server:
        kubeconfig(server.origin)
        code = main(["submit", "--kube-context", "kind-kdflow", "--package", compiled])

    assert code == 0, capsys.readouterr().err
    operations = {r.operation_id for r in server.api.requests}
    assert {"HealthzService_GetHealthz", "RunService_CreateRun"} <= operations
    assert {r.header("Authorization") for r in server.api.requests} == {
        "Bearer kube-token-123"
    }
    assert server.api.violations == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kube-context", "kind-nope"],
         "--kube-context kind-nope is not a context of your kubeconfig ($KUBECONFIG or "
         "~/.kube/config); it has: kind-kdflow, other"),
        (["--kube-context", "kind-kdflow", "--host", "http://127.0.0.1:1"],
         "--host and --kube-context: kfp.Client ignores the kube context when given a host"),
        (["--kube-context", "kind-kdflow", "--token", "t0ken"],
         "--token and --kube-context: the kube context brings its own credentials"),
        ([], "give --host (the KFP API's URL) or --kube-context"),
    ],
)
def test_kube_context_mistakes_are_usage_errors(kfp_env, kubeconfig, capsys, args, message):
    kubeconfig("http://127.0.0.1:1")

    code = main(["runs", *args])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert "t0ken" not in err[0]
