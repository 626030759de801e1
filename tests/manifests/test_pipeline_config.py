"""The kdflow-config ConfigMap the pipeline's steps read (not optional; manifests/pipeline):
rendered into the pipeline's namespace, with the keys the compiled pipeline asks for, the
tracking server the manifests deploy (never a store inside the pod) and shared storage for
checkpoints."""

from __future__ import annotations

from manifest_files import MANIFESTS

from kdflow.config.checks import CONFIG_MAP
from pipelines.distillation.cluster import CONFIG_KEYS


def test_the_steps_config_map_names_the_deployed_server_and_shared_storage(render, overlay):
    config = render("pipeline").one("ConfigMap", CONFIG_MAP)
    params = dict(line.split("=", 1) for line in
                  (MANIFESTS / "base" / "params.env").read_text().split() if "=" in line)
    assert config["metadata"]["namespace"] == params["pipelineNamespace"]
    assert set(config["data"]) == set(CONFIG_KEYS)
    mlflow = overlay.one("Service", "mlflow")
    namespace, port = mlflow["metadata"]["namespace"], mlflow["spec"]["ports"][0]["port"]
    assert config["data"]["MLFLOW_TRACKING_URI"] == (
        f"http://mlflow.{namespace}.svc.cluster.local:{port}")
    bucket = overlay.one("ConfigMap", next(
        c["metadata"]["name"] for c in overlay.of_kind("ConfigMap")
        if "MLFLOW_ARTIFACTS_DESTINATION" in c.get("data", {})))["data"]
    assert config["data"]["KDFLOW_STORAGE_PATH"].startswith("s3://")
    assert (config["data"]["KDFLOW_STORAGE_PATH"].split("/")[2]
            == bucket["MLFLOW_ARTIFACTS_DESTINATION"].split("/")[2])  # the same bucket


def test_the_config_map_holds_no_credentials(render) -> None:
    data = render("pipeline").one("ConfigMap", CONFIG_MAP)["data"]
    assert not any(word in key for key in data for word in ("PASSWORD", "SECRET", "TOKEN"))
    assert all("@" not in value for value in data.values())  # no user:password@host
