"""The distillation pipeline: validate → teachers (ParallelFor) → distill → evaluate → register.

`build_pipeline(image)` returns the `@dsl.pipeline` built on a component image. Every
parameter's default and description come from kdflow's config dataclasses, so the CLI, the
compiled YAML and the Kubeflow UI agree.
"""

from typing import List

from kfp import dsl

from components import distill, evaluate, register, skip_registration, train_teacher
from components import validate_data as validate
from kdflow.config import (
    DataConfig,
    DistillConfig,
    GateConfig,
    RegistryConfig,
    RunConfig,
    TeacherConfig,
    field_docs,
)
from pipelines.distillation.cluster import ClusterSettings, configure

PIPELINE_NAME = "kdflow-distillation"
DEFAULT_IMAGE = "ghcr.io/kdflow/kdflow:0.1.0"

# Pipeline parameter -> the config dataclass that owns its default and description.
PARAMETERS: dict[str, type] = {
    **{
        name: DataConfig
        for name in (
            "data",
            "test_data",
            "label_column",
            "input_shape",
            "contract",
            "validation",
            "test_fraction",
            "val_fraction",
        )
    },
    **{name: TeacherConfig for name in ("teachers", "teacher_epochs", "teacher_lr", "batch_size")},
    **{
        name: DistillConfig
        for name in (
            "student",
            "temperature",
            "alpha",
            "student_epochs",
            "student_lr",
            "student_batch_size",
            "workers",
            "max_failures",
            "ensemble",
            "teacher_mode",
            "augment_noise",
            "top_k",
            "storage_path",
            "ray_address",
            "teacher_weights",
            "multi_teacher",
            "feature_weight",
            "feature_layers",
            "attention_weight",
            "hint_teacher",
            "generations",
        )
    },
    **{
        name: GateConfig
        for name in (
            "min_retention",
            "min_gain_over_baseline",
            "min_compression",
            "min_speedup",
            "max_regression",
            "max_ece",
        )
    },
    **{name: RegistryConfig for name in ("tracking_uri", "model_name", "promotion")},
    "seed": RunConfig,
}

_DEFAULTS = {cls: cls() for cls in set(PARAMETERS.values()) if cls is not RunConfig}


def default(name: str):
    """A parameter's default as the pipeline takes it (None becomes "", lists stay lists)."""
    cls = PARAMETERS[name]
    value = getattr(_DEFAULTS[cls], name) if cls in _DEFAULTS else getattr(cls, name)
    if name == "input_shape":
        return ",".join(map(str, value)) if value else ""
    return "" if value is None else value


def _docstring() -> str:
    lines = [
        "Distil an ensemble of teachers into a small student and register it if it is",
        "good enough.",
        "",
        "Args:",
    ]
    for name, cls in PARAMETERS.items():
        doc = field_docs(cls)[name]
        if name == "tracking_uri":
            doc = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI in the step's container)."
        lines.append(f"    {name}: {doc}")
    return "\n".join(lines)


def build_pipeline(image: str = DEFAULT_IMAGE, cluster: ClusterSettings | None = None):
    """The pipeline on `image`; `cluster` sets pods' resources, GPUs, Secrets and retries."""
    cluster = cluster or ClusterSettings()
    validate_op = validate.make(image)
    teacher_op = train_teacher.make(image)
    distill_op = distill.make(image)
    evaluate_op = evaluate.make(image)
    register_op = register.make(image)
    skip_op = skip_registration.make(image)

    def distillation(
        data: str = default("data"),
        test_data: str = default("test_data"),
        label_column: str = default("label_column"),
        input_shape: str = default("input_shape"),
        contract: str = default("contract"),
        validation: str = default("validation"),
        test_fraction: float = default("test_fraction"),
        val_fraction: float = default("val_fraction"),
        teachers: List[str] = default("teachers"),
        teacher_epochs: int = default("teacher_epochs"),
        teacher_lr: float = default("teacher_lr"),
        batch_size: int = default("batch_size"),
        student: str = default("student"),
        temperature: float = default("temperature"),
        alpha: float = default("alpha"),
        student_epochs: int = default("student_epochs"),
        student_lr: float = default("student_lr"),
        student_batch_size: int = default("student_batch_size"),
        workers: int = default("workers"),
        max_failures: int = default("max_failures"),
        ensemble: str = default("ensemble"),
        teacher_mode: str = default("teacher_mode"),
        augment_noise: float = default("augment_noise"),
        top_k: int = default("top_k"),
        storage_path: str = default("storage_path"),
        ray_address: str = default("ray_address"),
        teacher_weights: List[float] = default("teacher_weights"),
        multi_teacher: str = default("multi_teacher"),
        feature_weight: float = default("feature_weight"),
        feature_layers: List[str] = default("feature_layers"),
        attention_weight: float = default("attention_weight"),
        hint_teacher: int = default("hint_teacher"),
        generations: int = default("generations"),
        min_retention: float = default("min_retention"),
        min_gain_over_baseline: float = default("min_gain_over_baseline"),
        min_compression: float = default("min_compression"),
        min_speedup: float = default("min_speedup"),
        max_regression: float = default("max_regression"),
        max_ece: float = default("max_ece"),
        tracking_uri: str = default("tracking_uri"),
        model_name: str = default("model_name"),
        promotion: str = default("promotion"),
        seed: int = default("seed"),
    ) -> str:
        checked = validate_op(
            data=data,
            test_data=test_data,
            label_column=label_column,
            input_shape=input_shape,
            contract=contract,
            validation=validation,
            test_fraction=test_fraction,
            val_fraction=val_fraction,
            seed=seed,
            # The result and the dataset hash go to the pipeline run's MLflow run.
            tracking_uri=tracking_uri,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        ).set_display_name("validate data")
        configure(checked, "validate", cluster)
        with dsl.ParallelFor(teachers, name="teachers") as spec:
            teacher = teacher_op(
                dataset=checked.outputs["dataset"],
                spec=spec,
                epochs=teacher_epochs,
                lr=teacher_lr,
                batch_size=batch_size,
                seed=seed,
                tracking_uri=tracking_uri,
            ).set_display_name("train teacher")
            configure(teacher, "teacher", cluster)
        distilled = distill_op(
            dataset=checked.outputs["dataset"],
            teachers=dsl.Collected(teacher.outputs["model"]),
            student=student,
            temperature=temperature,
            alpha=alpha,
            epochs=student_epochs,
            lr=student_lr,
            batch_size=student_batch_size,
            workers=workers,
            max_failures=max_failures,
            ensemble=ensemble,
            teacher_mode=teacher_mode,
            augment_noise=augment_noise,
            top_k=top_k,
            storage_path=storage_path,
            ray_address=ray_address,
            teacher_weights=teacher_weights,
            multi_teacher=multi_teacher,
            feature_weight=feature_weight,
            feature_layers=feature_layers,
            attention_weight=attention_weight,
            hint_teacher=hint_teacher,
            generations=generations,
            seed=seed,
            # Ray Train resumes a run of the same name: a KFP retry continues, a new run starts.
            run_name=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            tracking_uri=tracking_uri,
        ).set_display_name("distill (Ray Train)")
        configure(distilled, "distill", cluster)
        evaluated = evaluate_op(
            dataset=checked.outputs["dataset"],
            teachers=dsl.Collected(teacher.outputs["model"]),
            student_model=distilled.outputs["student_model"],
            baseline_model=distilled.outputs["baseline_model"],
            dataset_info=checked.outputs["info"],
            min_retention=min_retention,
            min_gain_over_baseline=min_gain_over_baseline,
            min_compression=min_compression,
            min_speedup=min_speedup,
            max_regression=max_regression,
            max_ece=max_ece,
            tracking_uri=tracking_uri,
            model_name=model_name,
        ).set_display_name("evaluate and gate")
        evaluated.set_caching_options(False)  # the champion it compares with can change
        configure(evaluated, "evaluate", cluster)
        with dsl.If(evaluated.outputs["passed"] == True, name="gates-passed"):  # noqa: E712
            registered = register_op(
                student_model=distilled.outputs["student_model"],
                onnx_model=evaluated.outputs["onnx_model"],
                summary=evaluated.outputs["summary"],
                tracking_uri=tracking_uri,
                model_name=model_name,
                promotion=promotion,
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                kd_settings=distilled.outputs["settings"],
            ).set_display_name("register in MLflow")
            registered.set_caching_options(False)
            configure(registered, "register", cluster)
        with dsl.Else(name="gates-failed"):
            skipped = skip_op(summary=evaluated.outputs["summary"]).set_display_name(
                "not registered"
            )
            configure(skipped, "skip", cluster)
        # "Output" is the summary each branch returns (both also have a report and metrics).
        return dsl.OneOf(registered.outputs["Output"], skipped.outputs["Output"])

    distillation.__doc__ = _docstring()
    return dsl.pipeline(
        name=PIPELINE_NAME,
        description=_docstring().splitlines()[0] + " " + _docstring().splitlines()[1],
    )(distillation)
