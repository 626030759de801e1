"""`kdflow run --seeds` end to end under kfp.local: one distillation per seed in the distill
step, beats_baseline decided on both, the best seed on validation registered with every
seed's record on the version and the MLflow run."""

from __future__ import annotations

import json

import pytest

from tests.pipelines.test_local_run import FAST, LENIENT, kdflow, registry_versions

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.e2e]


def test_seeds_register_the_best_on_validation_with_every_seed_recorded(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = kdflow("run", *FAST, *LENIENT, "--seeds", "0", "1", "--workers", "0",
                  "--tracking-uri", uri, "--model-name", "digits",
                  "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    seeds = summary["seeds"]
    assert seeds["seeds"] == [0, 1] and len(seeds["runs"]) == 2
    best = max(seeds["runs"], key=lambda r: r["val_accuracy"])
    assert seeds["chosen"] == best["seed"]
    chosen = next(r for r in seeds["runs"] if r["chosen"])
    assert chosen["student"] == pytest.approx(summary["student"]["accuracy"])
    assert "over 2 seeds" in summary["gates"]["beats_baseline"]["detail"]
    assert "seeds 0 1: student accuracy" in proc.stdout
    (version,) = registry_versions(uri, "digits")
    record = json.loads(version.tags["kdflow.seeds"])
    assert record["chosen"] == seeds["chosen"] and len(record["runs"]) == 2
    run = MlflowClient(tracking_uri=uri).get_run(summary["registered"]["run_id"])
    assert {"seed0_student", "seed1_student", "seed1_gain"} <= set(run.data.metrics)
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Seeds" in report
