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
    dataset: dsl.Output[dsl.Dataset],
    report: dsl.Output[dsl.Markdown],
    data_docs: dsl.Output[dsl.HTML],
) -> NamedTuple("Outputs", info=str):
    import json
    from collections import namedtuple
    from pathlib import Path

    from kdflow.config import DataConfig, parse_input_shape
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
        info = validate_data(cfg, seed, Path(dataset.path), Path(report.path), docs)
    finally:
        # The GX Data Docs page, for the Kubeflow UI, also when the data failed.
        index = docs / "index.html"
        Path(data_docs.path).write_text(index.read_text() if index.exists() else
                                        "<p>No Data Docs: the data could not be read.</p>")
    dataset.metadata.update({"sha256": info["sha256"], "rows": info["rows"]})
    outputs = namedtuple("Outputs", ["info"])
    return outputs(json.dumps(info))


def make(image: str):
    return dsl.component(base_image=image, install_kfp_package=False)(validate_data)
