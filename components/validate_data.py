"""validate_data: hold the data to its contract, write the prepared dataset, plan the teachers."""

from typing import List

from kfp import dsl


def validate_data(
    data_config: str,
    teacher_config: str,
    seed: int,
    tracking_uri: str,
    run_id: str,
    dataset: dsl.Output[dsl.Dataset],
    report: dsl.Output[dsl.Markdown],
    data_docs: dsl.Output[dsl.HTML],
    profile: dsl.Output[dsl.HTML],
    metrics: dsl.Output[dsl.Metrics],
    info: dsl.OutputPath(str),
    passed: dsl.OutputPath(bool),
) -> List[dict]:
    import json
    from pathlib import Path

    from kdflow.config import DataConfig, TeacherConfig
    from kdflow.report.pages import profile_page
    from kdflow.steps import plan_teachers, validate_data

    docs = Path(data_docs.path).parent / "gx-data-docs"
    try:
        result = validate_data(DataConfig(**json.loads(data_config)), seed, Path(dataset.path),
                               Path(report.path), docs, tracking_uri=tracking_uri or None,
                               run_id=run_id)
    finally:
        # The GX Data Docs page, for the Kubeflow UI, also when the data failed.
        index = docs / "index.html"
        Path(data_docs.path).write_text(index.read_text() if index.exists() else
                                        "<p>No Data Docs: the data could not be read.</p>")
    dataset.metadata.update({"sha256": result["sha256"], "rows": result["rows"]})
    Path(profile.path).write_text(profile_page(result))
    for name in ("rows", "features"):
        metrics.log_metric(name, result[name])
    metrics.log_metric("classes", len(result["classes"]))
    for kind in ("failures", "warnings"):
        metrics.log_metric(f"validation_{kind}", len(result["validation"][kind]))
    Path(info).write_text(json.dumps(result))
    # False only when --validation warn let failed data through.
    Path(passed).write_text(json.dumps(bool(result["passed"])))
    members = plan_teachers(Path(dataset.path), TeacherConfig(**json.loads(teacher_config)), seed)
    # The teacher plan is the single output: kfp.local 2.17 loops only over an `Output`. Each
    # member carries the teacher settings, as kfp.local hands a loop body the loop item in
    # place of any other step's output parameter.
    return [{**member, "teacher_config": teacher_config} for member in members]


def make(image: str):
    return dsl.component(base_image=image, install_kfp_package=False)(validate_data)
