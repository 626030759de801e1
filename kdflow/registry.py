"""The MLflow model registry: register the student with lineage, aliases, and the champion.

MLflow 3 uses aliases, not stages: every registered version gets `challenger`; `champion`
moves only when every gate passed and the promotion policy is `auto`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import kdflow
from kdflow.errors import RegistryError

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
EXPERIMENT = "kdflow"
LOCAL_STORE = ".kdflow"


def resolve_tracking_uri(uri: str | None) -> str:
    """The given URI, else $MLFLOW_TRACKING_URI, else a sqlite store under ./.kdflow/."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(LOCAL_STORE).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def ensure_experiment(tracking_uri: str, name: str = EXPERIMENT) -> str:
    """The experiment's id; a local sqlite store keeps its artifacts beside the database."""
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if tracking_uri.startswith("sqlite:///"):
        location = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return str(client.create_experiment(name, artifact_location=location))


def champion_version(tracking_uri: str, model_name: str) -> Any | None:
    """The ModelVersion holding the `champion` alias, or None when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return _client(tracking_uri).get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            return None
        raise RegistryError(
            f"cannot read {model_name}@{CHAMPION} from {tracking_uri}: {exc}"
        ) from exc


def download_model(tracking_uri: str, model_uri: str, dest: Path) -> Path:
    """Download a registered kdflow pyfunc and return its safetensors model folder."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest))
        )
    except MlflowException as exc:
        raise RegistryError(f"cannot download {model_uri} from {tracking_uri}: {exc}") from exc
    folder = local / "artifacts" / "student"
    if not folder.is_dir():
        raise RegistryError(f"{model_uri} is not a kdflow model (no artifacts/student folder)")
    return folder


def register_student(
    student_dir: Path,
    summary: dict[str, Any],
    tracking_uri: str,
    model_name: str,
    promote: bool,
    tags: dict[str, str],
) -> dict[str, Any]:
    """Log the student as a pyfunc in a run, register it, tag lineage, set aliases."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    from kdflow.artifacts import read_spec

    spec = read_spec(student_dir)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri)
    example = pd.DataFrame([[0.0] * len(spec["feature_names"])], columns=spec["feature_names"])
    signature = infer_signature(
        example.astype("float32"), pd.DataFrame({"label": ["a"], "probability": [0.5]})
    )
    metrics = {
        "student_accuracy": summary["student"]["accuracy"],
        "baseline_accuracy": summary["baseline"]["accuracy"],
        "ensemble_accuracy": summary["ensemble"]["accuracy"],
        "student_params": summary["student"]["params"],
        "student_latency_ms": summary["student"]["latency_ms"],
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=tags.get("kdflow.run_id")) as run:
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tags)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "summary.json").write_text(json.dumps(summary, indent=2))
            mlflow.log_artifact(str(Path(tmp) / "summary.json"))
        info = mlflow.pyfunc.log_model(
            name="student",
            python_model=str(Path(__file__).with_name("serving.py")),
            artifacts={"student": str(student_dir)},
            code_paths=[str(Path(kdflow.__file__).parent)],
            signature=signature,
            pip_requirements=["torch", "safetensors", "numpy", "pandas", "mlflow"],
        )
        version = mlflow.register_model(info.model_uri, model_name, tags=tags)
    client = _client(tracking_uri)
    client.set_registered_model_alias(model_name, CHALLENGER, version.version)
    aliases = [CHALLENGER]
    if promote:
        previous = champion_version(tracking_uri, model_name)
        if previous is not None:
            client.set_model_version_tag(
                model_name, version.version, "kdflow.previous_champion", previous.version
            )
        client.set_registered_model_alias(model_name, CHAMPION, version.version)
        aliases.append(CHAMPION)
    log.info(
        "registered %s version %s with aliases %s (run %s)",
        model_name,
        version.version,
        aliases,
        run.info.run_id,
    )
    return {
        "name": model_name,
        "version": int(version.version),
        "aliases": aliases,
        "run_id": run.info.run_id,
        "tracking_uri": tracking_uri,
    }
