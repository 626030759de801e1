"""validate_data: hold the data to its contract and write the prepared dataset."""

from typing import NamedTuple

from kfp import dsl


def validate_data(
    data: str,
    test_data: str,
    label_column: str,
    input_shape: str,
    contract: str,
    validation: str,
    test_fraction: float,
    val_fraction: float,
    seed: int,
    tracking_uri: str,
    run_id: str,
    dataset: dsl.Output[dsl.Dataset],
    report: dsl.Output[dsl.Markdown],
    data_docs: dsl.Output[dsl.HTML],
    profile: dsl.Output[dsl.HTML],
    metrics: dsl.Output[dsl.Metrics],
) -> NamedTuple("Outputs", info=str, passed=bool):
    import json
    from collections import namedtuple
    from pathlib import Path

    from kdflow.config import DataConfig, parse_input_shape
    from kdflow.report.pages import profile_page
    from kdflow.steps import validate_data

    cfg = DataConfig(
        data=data,
        test_data=test_data or None,
        label_column=label_column,
        input_shape=parse_input_shape(input_shape) if input_shape else None,
        contract=contract or None,
        validation=validation,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
    )
    docs = Path(data_docs.path).parent / "gx-data-docs"
    try:
        info = validate_data(cfg, seed, Path(dataset.path), Path(report.path), docs,
                             tracking_uri=tracking_uri or None, run_id=run_id)
    finally:
        # The GX Data Docs page, for the Kubeflow UI, also when the data failed.
        index = docs / "index.html"
        Path(data_docs.path).write_text(index.read_text() if index.exists() else
                                        "<p>No Data Docs: the data could not be read.</p>")
    dataset.metadata.update({"sha256": info["sha256"], "rows": info["rows"]})
    Path(profile.path).write_text(profile_page(info))
    for name in ("rows", "features"):
        metrics.log_metric(name, info[name])
    metrics.log_metric("classes", len(info["classes"]))
    for kind in ("failures", "warnings"):
        metrics.log_metric(f"validation_{kind}", len(info["validation"][kind]))
    # `passed` is False only when --validation warn let failed data through.
    outputs = namedtuple("Outputs", ["info", "passed"])
    return outputs(json.dumps(info), bool(info["passed"]))


def make(image: str):
    return dsl.component(base_image=image, install_kfp_package=False)(validate_data)
