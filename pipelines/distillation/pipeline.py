"""The distillation pipeline: settings → validate → teachers (ParallelFor) → distill → evaluate
→ register.

`build_pipeline(image)` returns the `@dsl.pipeline` built on a component image. Its parameters
are the fields of kdflow's settings dataclasses (components.parameters) and the run's seed,
each with the field's default and docstring, so the CLI, the compiled YAML and the Kubeflow UI
agree and a field is written once.
"""

import inspect

from kfp import dsl

from components import (
    distill,
    evaluate,
    register,
    settings,
    skip_registration,
    train_teacher,
    validate_data,
)
from components.parameters import GROUPS, defaults, hints, pipeline_type
from kdflow.config import RunConfig, field_docs
from pipelines.distillation.cluster import ClusterSettings, configure

PIPELINE_NAME = "kdflow-distillation"
DEFAULT_IMAGE = "ghcr.io/kdflow/kdflow:0.1.0"
DESCRIPTION = ("Distil an ensemble of teachers into a small student and register it if it is "
               "good enough.")

# Pipeline parameter -> the config dataclass that owns its default and description.
PARAMETERS: dict[str, type] = {
    **{name: cls for cls in GROUPS.values() for name in hints(cls)},
    "seed": RunConfig,
}
# Where the pipeline's description differs from the CLI's: a step runs in its own container.
DESCRIPTIONS = {
    "tracking_uri": "MLflow tracking URI (default: $MLFLOW_TRACKING_URI in the step's container).",
}


def _signature() -> inspect.Signature:
    """The pipeline function's parameters, which kfp reads with inspect.signature."""
    values = defaults()
    params = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          default=values[name], annotation=pipeline_type(hint))
        for cls in GROUPS.values() for name, hint in hints(cls).items()
    ]
    params.append(inspect.Parameter("seed", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                    default=RunConfig.seed, annotation=int))
    return inspect.Signature(params, return_annotation=str)


def _docstring() -> str:
    """The description of each parameter, as kfp reads it from the docstring's Args."""
    lines = [DESCRIPTION, "", "Args:"]
    for name, cls in PARAMETERS.items():
        lines.append(f"    {name}: {DESCRIPTIONS.get(name) or field_docs(cls)[name]}")
    return "\n".join(lines)


SIGNATURE = _signature()


def build_pipeline(image: str = DEFAULT_IMAGE, cluster: ClusterSettings | None = None):
    """The pipeline on `image`; `cluster` sets pods' resources, GPUs, Secrets and retries."""
    cluster = cluster or ClusterSettings()
    settings_op, validate_op = settings.make(image), validate_data.make(image)
    teacher_op, distill_op = train_teacher.make(image), distill.make(image)
    evaluate_op, register_op = evaluate.make(image), register.make(image)
    skip_op = skip_registration.make(image)

    def distillation(*values) -> str:
        # kfp calls the function with one channel per parameter, positionally, in the
        # signature's order (kfp.dsl.graph_component.GraphComponent.__init__).
        p = dict(zip(SIGNATURE.parameters, values, strict=True))
        configs = settings_op(**{name: p[name] for name in PARAMETERS if name != "seed"})
        configs.set_display_name("check settings")
        configure(configs, "settings", cluster)
        checked = validate_op(
            data_config=configs.outputs["data_config"],
            teacher_config=configs.outputs["teacher_config"],
            seed=p["seed"],
            # The result and the dataset hash go to the pipeline run's MLflow run.
            tracking_uri=p["tracking_uri"],
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        ).set_display_name("validate data")
        configure(checked, "validate", cluster)
        # One iteration per ensemble member, each with its own spec, seed and position.
        with dsl.ParallelFor(checked.outputs["Output"], name="teachers") as member:
            teacher = teacher_op(
                dataset=checked.outputs["dataset"],
                spec=member.spec,
                seed=member.seed,
                index=member.index,
                teacher_config=member.teacher_config,
                tracking_uri=p["tracking_uri"],
            ).set_display_name("train teacher")
            configure(teacher, "teacher", cluster)
        distilled = distill_op(
            dataset=checked.outputs["dataset"],
            teachers=dsl.Collected(teacher.outputs["model"]),
            distill_config=configs.outputs["distill_config"],
            seed=p["seed"],
            # Ray Train resumes a run of the same name: a KFP retry continues, a new run starts.
            run_name=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            tracking_uri=p["tracking_uri"],
        ).set_display_name("distill (Ray Train)")
        configure(distilled, "distill", cluster)
        evaluated = evaluate_op(
            dataset=checked.outputs["dataset"],
            teachers=dsl.Collected(teacher.outputs["model"]),
            student_model=distilled.outputs["student_model"],
            baseline_model=distilled.outputs["baseline_model"],
            seed_models=distilled.outputs["seed_models"],
            dataset_info=checked.outputs["info"],
            gate_config=configs.outputs["gate_config"],
            registry_config=configs.outputs["registry_config"],
        ).set_display_name("evaluate and gate")
        evaluated.set_caching_options(False)  # the champion it compares with can change
        configure(evaluated, "evaluate", cluster)
        with dsl.If(evaluated.outputs["passed"] == True, name="gates-passed"):  # noqa: E712
            registered = register_op(
                student_model=distilled.outputs["student_model"],
                onnx_model=evaluated.outputs["onnx_model"],
                summary=evaluated.outputs["summary"],
                registry_config=configs.outputs["registry_config"],
                distill_config=configs.outputs["distill_config"],
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
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

    distillation.__signature__ = SIGNATURE
    distillation.__doc__ = _docstring()
    return dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)(distillation)
