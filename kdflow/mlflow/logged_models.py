"""The student's two MLflow logged models, uploaded and checked, and downloaded back.

The student is uploaded as two logged models of one MLflow run: a pyfunc ("models from
code", `kdflow/mlflow/serving.py`, loading the safetensors folder: no pickle) and an ONNX
model. Their files are listed back from the artifact store and checked (names and byte
sizes) before the registry creates a version from the pyfunc; an upload that breaks off or
arrives incomplete raises IncompleteUpload, which `call` retries as a new logged model.

The pyfunc's artifact is the student's saved folder as it is: for a zoo model
model.safetensors + spec.json; for a transformers classifier what `save_pretrained` writes
(config.json, model.safetensors, tokenizer.json, tokenizer_config.json) + spec.json. Its
input example is one row of the columns it reads: the training features' mean, a short
text in each text column, or one image file's bytes in an `image` column (a plain grey PNG
at the model's size). An image pyfunc's signature has two optional columns, `image`
(MLflow's `binary`: base64 in a served request's JSON) and `path` (`string`), as the
pyfunc reads either (`kdflow.mlflow.serving.image_column`). A causal LM's pyfunc reads a
`prompt` column and returns each prompt's greedy `completion`, `max_new_tokens` (64) as a
param; it carries no ONNX model.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kdflow
from kdflow.errors import RegistryError
from kdflow.mlflow.client import (
    IncompleteUpload,
    RetryPolicy,
    call,
    http_settings,
)

PYFUNC_NAME = "student"
ONNX_NAME = "student-onnx"
EXAMPLE_TEXT = "a short example text to classify"
"""The text of a text student's input example (one per text column)."""
PROMPT_COLUMN = "prompt"
"""The column a causal-LM pyfunc reads its prompts from."""
DEFAULT_NEW_TOKENS = 64
"""Tokens a causal-LM pyfunc generates per prompt unless `params` say otherwise."""
EXAMPLE_GREY = 128
"""The pixel value of an image student's input example: a plain mid-grey image."""


def download_model(
    tracking_uri: str, model_uri: str, dest: Path, policy: RetryPolicy | None = None
) -> Path:
    """Download a registered kdflow pyfunc and return its safetensors model folder."""
    return kdflow_folder(download_registered(tracking_uri, model_uri, dest, policy), model_uri)


def download_registered(
    tracking_uri: str, model_uri: str, dest: Path, policy: RetryPolicy | None = None
) -> Path:
    """Download a registered model's files (any flavour) into `dest`: the folder holding its
    MLmodel file."""
    import mlflow
    from mlflow.exceptions import MlflowException

    policy = policy or RetryPolicy()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        with http_settings.applied(policy):
            local = Path(
                call(
                    policy,
                    f"download {model_uri}",
                    mlflow.artifacts.download_artifacts,
                    artifact_uri=model_uri,
                    dst_path=str(dest),
                )
            )
    except MlflowException as exc:
        raise RegistryError(f"cannot download {model_uri} from {tracking_uri}: {exc}") from exc
    return local


def kdflow_folder(local: Path, model_uri: str) -> Path:
    """The saved kdflow model folder inside a downloaded kdflow pyfunc."""
    folder: Path | None = local / "artifacts" / PYFUNC_NAME
    if folder is None or not folder.is_dir():
        folder = _artifact_folder(local)
    if folder is None or not (folder / "spec.json").is_file():
        raise RegistryError(
            f"{model_uri} is not a kdflow model (no `{PYFUNC_NAME}` artifact with a spec.json)"
        )
    return folder


def flavors(local: Path) -> dict[str, Any]:
    """The flavours a downloaded model's MLmodel file lists ({} when it has none)."""
    import yaml

    try:
        mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    found = mlmodel.get("flavors") if isinstance(mlmodel, dict) else None
    return found if isinstance(found, dict) else {}


def _artifact_folder(local: Path) -> Path | None:
    """The `student` artifact's folder as the MLmodel file records it (older kdflow
    versions named it after the folder that was logged)."""
    try:
        path = flavors(local)["python_function"]["artifacts"][PYFUNC_NAME]["path"]
    except (KeyError, TypeError):
        return None
    return local / path


def log_models(
    client: Any,
    policy: RetryPolicy,
    experiment_id: str,
    run_id: str,
    student_dir: Path,
    onnx_path: Path | None,
    tags: dict[str, str],
) -> tuple[str, str | None]:
    """Upload both models of run `run_id`, each checked on arrival: their logged model ids
    (the ONNX one None without `onnx_path`).

    An upload that breaks off or arrives incomplete is retried as a new logged model; the
    broken one is never registered.
    """
    with tempfile.TemporaryDirectory() as tmp:
        # MLflow names a pyfunc artifact folder after the local folder: stage it as `student`.
        staged = Path(tmp) / PYFUNC_NAME
        shutil.copytree(student_dir, staged)
        expected: dict[str, int | None] = {"MLmodel": None}
        for path in sorted(p for p in staged.rglob("*") if p.is_file()):
            name = path.relative_to(staged).as_posix()
            expected[f"artifacts/{PYFUNC_NAME}/{name}"] = path.stat().st_size
        pyfunc_id = call(policy, "upload the pyfunc model", _upload_checked, _log_pyfunc,
                         expected, client, experiment_id, run_id, staged, tags)
    onnx_id = None
    if onnx_path is not None:
        expected = {"MLmodel": None, "model.onnx": onnx_path.stat().st_size}
        onnx_id = call(policy, "upload the ONNX model", _upload_checked, _log_onnx, expected,
                       client, experiment_id, run_id, onnx_path, student_dir, tags)
    return pyfunc_id, onnx_id


def _upload_checked(
    log_model: Callable[..., str], expected: dict[str, int | None], client: Any, *args: Any
) -> str:
    model_id = log_model(client, *args)
    _check_uploaded(client, model_id, expected)
    return model_id


def _input_example(student_dir: Path) -> Any:
    """One row of what the pyfunc reads: a short text in each text column for a text
    student; else the training features' mean, a realistic example for the signature."""
    import numpy as np
    import pandas as pd
    from safetensors.numpy import load_file

    from kdflow.models.artifacts import read_spec

    spec = read_spec(student_dir)
    if spec.get("task") == "causal-lm":
        return pd.DataFrame({PROMPT_COLUMN: [EXAMPLE_TEXT]})
    if _reads_images(spec):
        return pd.DataFrame({"image": [example_image(spec)]})
    text_columns = _text_columns(spec)
    if text_columns:
        return pd.DataFrame({column: [EXAMPLE_TEXT] for column in text_columns})
    features = list(spec["feature_names"])
    tensors = load_file(str(student_dir / "model.safetensors"))
    mean = tensors.get("mean")
    if mean is None or mean.size != len(features):  # a model that keeps no input statistics
        mean = np.zeros(len(features), np.float32)
    return pd.DataFrame([mean.astype("float32").reshape(-1)], columns=features)


def _text_columns(spec: dict[str, Any]) -> list[str]:
    return [str(c) for c in spec.get("text_columns") or []]


def _reads_images(spec: dict[str, Any]) -> bool:
    return spec.get("inputs") == "image"


def example_image(spec: dict[str, Any]) -> bytes:
    """A PNG file of a plain mid-grey image at an image model's `image_size` and
    `channels`: an input example of a few hundred bytes that decodes to the model's size."""
    import io

    import numpy as np
    from PIL import Image

    height, width = (int(v) for v in spec["image_size"])
    shape = (height, width) if int(spec["channels"]) == 1 else (height, width, 3)
    buffer = io.BytesIO()
    Image.fromarray(np.full(shape, EXAMPLE_GREY, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def pyfunc_signature(student_dir: Path) -> tuple[Any, Any]:
    """The pyfunc's signature and input example. An image model's inputs are two optional
    columns, `image` (binary) and `path` (string), since it reads either; inferring them
    from the example would make `image` required and `path` unknown."""
    import pandas as pd
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, DataType, Schema

    from kdflow.models.artifacts import read_spec

    example = _input_example(student_dir)
    if read_spec(student_dir).get("task") == "causal-lm":
        return infer_signature(
            example, pd.DataFrame({"completion": ["text"]}),
            params={"max_new_tokens": DEFAULT_NEW_TOKENS},
        ), example
    signature = infer_signature(example, pd.DataFrame({"label": ["0"], "probability": [0.5]}))
    if _reads_images(read_spec(student_dir)):
        inputs = Schema([ColSpec(DataType.binary, "image", required=False),
                         ColSpec(DataType.string, "path", required=False)])
        signature = ModelSignature(inputs=inputs, outputs=signature.outputs)
    return signature, example


def pyfunc_arguments(student_dir: Path) -> dict[str, Any]:
    """What `mlflow.pyfunc.log_model` (or `save_model`) takes to write the kdflow pyfunc
    of the saved model in `student_dir` (a folder named PYFUNC_NAME): the code, the model's
    folder as its artifact, the signature, the input example and the pinned packages."""
    from kdflow.models.artifacts import read_spec

    spec = read_spec(student_dir)
    packages = ["torch", "safetensors", "numpy", "pandas", "mlflow"]
    if _text_columns(spec):
        packages += ["transformers", "tokenizers"]
    if _reads_images(spec):
        packages += ["pillow"]
    signature, example = pyfunc_signature(student_dir)
    return {
        "python_model": str(Path(__file__).with_name("serving.py")),
        "artifacts": {PYFUNC_NAME: str(student_dir)},
        "code_paths": [str(Path(kdflow.__file__).parent)],
        "signature": signature,
        "input_example": example,
        "pip_requirements": _pinned(*packages),
    }


def _onnx_example(student_dir: Path, spec: dict[str, Any]) -> Any:
    """The ONNX model's input for the pyfunc's example row: the features, or a text
    student's packed token ids (int64 B × K × L) from the tokenizer saved with it."""
    import numpy as np

    if _reads_images(spec):
        from kdflow.data.images import decode_image

        size = [int(v) for v in spec["image_size"]]
        return decode_image(example_image(spec), size, int(spec["channels"]))[None]
    text_columns = _text_columns(spec)
    if not text_columns:
        return _input_example(student_dir).to_numpy(np.float32)
    from transformers import AutoTokenizer

    from kdflow.models.hf import TextEncoder

    tokenizer = AutoTokenizer.from_pretrained(
        student_dir, trust_remote_code=bool(spec.get("trust_remote_code", False))
    )
    encoder = TextEncoder(tokenizer, int(spec["max_length"]))
    return encoder.encode([[EXAMPLE_TEXT] for _ in text_columns])


def _pinned(*packages: str) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in packages:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def _log_pyfunc(
    client: Any, experiment_id: str, run_id: str, student_dir: Path, tags: dict[str, str]
) -> str:
    import mlflow
    from mlflow.entities import LoggedModelOutput

    model = client.create_logged_model(
        experiment_id, name=PYFUNC_NAME, source_run_id=run_id, tags=tags, model_type="kdflow"
    )
    mlflow.pyfunc.log_model(
        name=PYFUNC_NAME, model_id=model.model_id, **pyfunc_arguments(student_dir)
    )
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    return str(model.model_id)


def _log_onnx(
    client: Any,
    experiment_id: str,
    run_id: str,
    onnx_path: Path,
    student_dir: Path,
    tags: dict[str, str],
) -> str:
    import mlflow.onnx
    import numpy as np
    import onnx
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import infer_signature

    from kdflow.models.artifacts import read_spec
    from kdflow.models.onnx import INPUT_NAME, OUTPUT_NAME

    spec = read_spec(student_dir)
    example = _onnx_example(student_dir, spec)
    signature = infer_signature(
        {INPUT_NAME: example},
        {OUTPUT_NAME: np.zeros((len(example), int(spec["n_classes"])), np.float32)},
    )
    model = client.create_logged_model(
        experiment_id, name=ONNX_NAME, source_run_id=run_id, tags=tags, model_type="kdflow-onnx"
    )
    mlflow.onnx.log_model(
        onnx.load(str(onnx_path)),
        name=ONNX_NAME,
        model_id=model.model_id,
        signature=signature,
        input_example={INPUT_NAME: example},
        save_as_external_data=False,
        # The student is built for CPU serving; a GPU build of onnxruntime can override it.
        onnx_execution_providers=["CPUExecutionProvider"],
        pip_requirements=_pinned("onnx", "onnxruntime", "numpy", "mlflow"),
    )
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    return str(model.model_id)


def _check_uploaded(client: Any, model_id: str, expected: dict[str, int | None]) -> None:
    """Every expected file is in the artifact store (with its byte size, when given)."""
    folders: dict[str, dict[str, int | None]] = {}
    for path in expected:
        parent = str(Path(path).parent)
        if parent not in folders:
            listing = client.list_logged_model_artifacts(
                model_id, None if parent == "." else parent
            )
            folders[parent] = {str(Path(f.path).name): f.file_size for f in listing}
    for path, size in expected.items():
        found = folders[str(Path(path).parent)]
        name = Path(path).name
        if name not in found:
            raise IncompleteUpload(f"uploaded model {model_id} lacks {path}")
        uploaded = found[name]
        if size is not None and uploaded is not None and int(uploaded) != size:
            raise IncompleteUpload(
                f"uploaded {path} of model {model_id} has {uploaded} bytes, expected {size}"
            )

