"""`kdflow submit`, `kdflow schedule`, `kdflow runs` with the real distillation pipeline,
against the fake KFP v2beta1 API on 127.0.0.1."""

from __future__ import annotations

from pipelines.cli import main


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
