"""How the pipeline's pods run on a cluster: resources, GPUs, Secrets, retries, timeouts.

These are compile-time choices (`kdflow compile --gpus 0` for a CPU-only cluster). The local
runner ignores them; the compiled YAML carries them as kfp-kubernetes platform config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kfp import dsl, kubernetes

from kdflow.config.checks import CONFIG_MAP

# Created by the cluster admin in the pipeline namespace (infra/README.md); never in code.
S3_SECRET = "kdflow-s3"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
           "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
MLFLOW_SECRET = "kdflow-mlflow"
MLFLOW_KEYS = {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
               "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"}
RAY_SECRET = "kdflow-ray"
RAY_KEYS = {"auth_token": "RAY_AUTH_TOKEN"}
"""The Ray cluster's token (key `auth_token`, KubeRay's name), for distill's --ray-address."""
RUN_AS_USER = 10001  # the component image's user (infra/Dockerfile)
# The manifests' ConfigMap (manifests/base): where MLflow and the shared storage are.
CONFIG_KEYS = {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
               "KDFLOW_STORAGE_PATH": "KDFLOW_STORAGE_PATH"}
NO_SERVICES = ("settings", "skip")
"""Steps that read no data and talk to neither MLflow nor S3."""


@dataclass(frozen=True)
class StepResources:
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    timeout_s: int
    retries: int = 0
    gpu: bool = False


@dataclass(frozen=True)
class ClusterSettings:
    gpus: int = 1
    """GPUs per teacher-training and distill pod (0 compiles a CPU-only pipeline)."""
    gpu_type: str = "nvidia.com/gpu"
    """Extended resource name of the GPU."""
    gpu_node_label: tuple[str, str] = ("nvidia.com/gpu.present", "true")
    """Node selector that puts GPU steps on GPU nodes (set by NVIDIA's GPU feature discovery)."""
    shm_size: str = "4Gi"
    """Size of the memory-backed /dev/shm of GPU steps (PyTorch data loaders use it)."""
    retries: bool = True
    """Retry steps that can fail for reasons outside the data (node loss, server restarts).
    Off for local runs: kfp.local honours retries, and a local failure is not transient."""
    steps: dict[str, StepResources] = field(
        default_factory=lambda: {
            # No retries: a bad setting or a contract that fails once fails again.
            "settings": StepResources("100m", "500m", "256Mi", "1Gi", timeout_s=600),
            "validate": StepResources("1", "2", "2Gi", "8Gi", timeout_s=3600),
            "teacher": StepResources("2", "8", "4Gi", "16Gi", timeout_s=6 * 3600, retries=2,
                                     gpu=True),
            "distill": StepResources("2", "8", "8Gi", "32Gi", timeout_s=12 * 3600, retries=2,
                                     gpu=True),
            "evaluate": StepResources("2", "4", "4Gi", "8Gi", timeout_s=3600, retries=1),
            "register": StepResources("500m", "1", "1Gi", "2Gi", timeout_s=1800, retries=3),
            "skip": StepResources("100m", "500m", "256Mi", "512Mi", timeout_s=600),
        }
    )
    """Requests, limits, timeout and retries of each step."""


def configure(task: dsl.PipelineTask, step: str, settings: ClusterSettings) -> dsl.PipelineTask:
    """Apply a step's cluster settings to its task."""
    res = settings.steps[step]
    task.set_cpu_request(res.cpu_request).set_cpu_limit(res.cpu_limit)
    task.set_memory_request(res.memory_request).set_memory_limit(res.memory_limit)
    if res.retries and settings.retries:
        # Exponential backoff: a flaky node or an MLflow restart gets time to recover.
        task.set_retry(res.retries, backoff_duration="30s", backoff_factor=2.0,
                       backoff_max_duration="3600s")
    kubernetes.set_timeout(task, res.timeout_s)
    kubernetes.set_security_context(task, run_as_user=RUN_AS_USER, run_as_non_root=True)
    if step not in NO_SERVICES:
        # Not optional: a missing or misnamed ConfigMap or Secret fails the pod at start,
        # naming it, rather than a step that falls back to a store inside the pod.
        kubernetes.use_config_map_as_env(task, CONFIG_MAP, CONFIG_KEYS, optional=False)
        kubernetes.use_secret_as_env(task, S3_SECRET, S3_KEYS, optional=False)
        kubernetes.use_secret_as_env(task, MLFLOW_SECRET, MLFLOW_KEYS, optional=False)
    if step == "distill":
        kubernetes.use_secret_as_env(task, RAY_SECRET, RAY_KEYS, optional=False)
    if res.gpu and settings.gpus > 0:
        task.set_accelerator_type(settings.gpu_type).set_accelerator_limit(settings.gpus)
        kubernetes.add_node_selector(task, *settings.gpu_node_label)
        kubernetes.add_toleration(task, key=settings.gpu_type, operator="Exists",
                                  effect="NoSchedule")
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm",
                                   medium="Memory", size_limit=settings.shm_size)
    return task


LOCAL = ClusterSettings(gpus=0, retries=False)
"""What `kdflow run` compiles for kfp.local: no GPU requests, no retries."""
