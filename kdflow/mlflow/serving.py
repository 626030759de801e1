"""The registered student as an MLflow pyfunc, logged as "models from code".

MLflow runs this file to build the model, so nothing is pickled: `load_context` rebuilds
the network from the safetensors artifact folder through the source that saved it
(`kdflow.models.sources.load_saved`: a zoo model, a transformers classifier, a user's own).

A model of numeric columns reads the spec's `feature_names`; a text classifier reads the
spec's `text_columns` as raw text and tokenizes them with the tokenizer saved beside its
weights (`kdflow.models.sources.encoder_of`); an image classifier (spec `inputs: image`)
reads image files, as bytes in an `image` column or as paths in a `path` (or `image`)
column, and decodes them with `kdflow.data.images.decode_image` at the spec's `image_size`
and `channels`: the very preprocessing its training data went through. A causal LM
(spec `task: causal-lm`) reads a `prompt` column and returns each prompt's greedy
`completion` (`params={"max_new_tokens": N}`, 64 by default).
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel

TEXT_BATCH = 64
"""Rows of text per forward pass (attention's memory grows with batch × length²)."""
IMAGE_BATCH = 64
"""Images per forward pass (a large model's activations at 224 × 224 add up)."""
IMAGE_COLUMNS = ("image", "path")
"""The columns an image model reads, in order of preference: `image` (the file's bytes,
or its path as a string), `path` (its path)."""
SHOWN_ROWS = 10
"""Rows an error names at most."""


class StudentModel(PythonModel):
    """Predicts the class name and its probability for each row of feature or text columns."""

    def load_context(self, context: Any) -> None:
        from kdflow.models.sources import encoder_of, load_saved

        self.model, self.spec = load_saved(context.artifacts["student"])
        self.encoder = encoder_of(self.model)

    # MLflow reads this type hint: a DataFrame hint means "no schema from the hint" (the
    # logged signature describes the input), where `Any` or no hint would draw a warning.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: Any = None
    ) -> pd.DataFrame:
        if self.spec.get("task") == "causal-lm":
            return self._completions(model_input, params or {})
        if self.spec.get("inputs") == "image":
            probs = self._image_probs(model_input)
        elif self.encoder is not None:
            probs = self._text_probs(model_input)
        else:
            probs = self._column_probs(model_input)
        names = np.asarray(self.spec["class_names"])
        return pd.DataFrame(
            {"label": names[probs.argmax(1)], "probability": probs.max(1).astype(np.float64)}
        )

    def _completions(self, model_input: Any, params: dict[str, Any]) -> pd.DataFrame:
        """Each prompt's greedy continuation (a causal LM), `max_new_tokens` per prompt."""
        from kdflow.mlflow.logged_models import DEFAULT_NEW_TOKENS, PROMPT_COLUMN

        frame = _as_frame(model_input, [PROMPT_COLUMN])
        if PROMPT_COLUMN not in frame.columns:
            got = ", ".join(map(str, frame.columns[:10])) or "none"
            raise ValueError(f"missing the `{PROMPT_COLUMN}` column; the input's columns: {got}")
        new_tokens = int(params.get("max_new_tokens", DEFAULT_NEW_TOKENS))
        if new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {new_tokens}")
        generate: Any = self.model.generate
        with torch.inference_mode():
            completions = [
                generate(str(p), new_tokens)[0]
                for p in frame[PROMPT_COLUMN].fillna("").astype(str)
            ]
        return pd.DataFrame({"completion": completions})

    def _column_probs(self, model_input: Any) -> np.ndarray:
        if isinstance(model_input, pd.DataFrame):
            features = self.spec["feature_names"]
            missing = [c for c in features if c not in model_input.columns]
            if missing:
                raise ValueError(f"missing feature columns: {', '.join(missing[:10])}")
            x = model_input[features].to_numpy(np.float32)
        else:
            x = np.asarray(model_input, dtype=np.float32)
        # A frame's array can be read-only; torch wants memory it may write.
        x = np.require(x, np.float32, ["C", "W"])
        with torch.inference_mode():
            return torch.softmax(self.model(torch.from_numpy(x)), -1).numpy()

    def _text_probs(self, model_input: Any) -> np.ndarray:
        assert self.encoder is not None
        columns = list(self.spec.get("text_columns") or [])
        frame = _as_frame(model_input, columns)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(
                f"missing text columns: {', '.join(missing)} (this model reads "
                f"{', '.join(columns)}; got {', '.join(map(str, frame.columns[:10])) or 'none'})"
            )
        texts = [frame[c].fillna("").astype(str).tolist() for c in columns]
        x = self.encoder.encode(texts)
        out = np.zeros((len(frame), int(self.spec["n_classes"])), np.float32)
        with torch.inference_mode():
            for start in range(0, len(frame), TEXT_BATCH):
                batch = torch.from_numpy(x[start : start + TEXT_BATCH])
                out[start : start + TEXT_BATCH] = torch.softmax(self.model(batch), -1).numpy()
        return out

    def _image_probs(self, model_input: Any) -> np.ndarray:
        pixels = decode_rows(
            image_column(model_input),
            [int(v) for v in self.spec["image_size"]],
            int(self.spec["channels"]),
        )
        out = np.zeros((len(pixels), int(self.spec["n_classes"])), np.float32)
        with torch.inference_mode():
            for start in range(0, len(pixels), IMAGE_BATCH):
                batch = torch.from_numpy(pixels[start : start + IMAGE_BATCH])
                out[start : start + IMAGE_BATCH] = torch.softmax(self.model(batch), -1).numpy()
        return out


def image_column(model_input: Any) -> list[Any]:
    """The images of the input: its `image` column (bytes, or paths as strings), else its
    `path` column; a bare list or Series is the images themselves. ValueError naming the
    accepted columns when there is neither."""
    if isinstance(model_input, dict):
        model_input = pd.DataFrame(model_input)
    if isinstance(model_input, pd.DataFrame):
        for column in IMAGE_COLUMNS:
            if column in model_input.columns:
                return list(model_input[column])
        got = ", ".join(map(str, model_input.columns[:10])) or "none"
        raise ValueError(
            "missing an image column: give `image` (each image file's bytes, or its path) "
            f"or `path` (each image file's path); the input's columns: {got}"
        )
    if isinstance(model_input, list | tuple | np.ndarray | pd.Series):
        return list(np.asarray(model_input, dtype=object).ravel())
    raise ValueError(
        "expected a DataFrame with an `image` column (image files' bytes or paths) or a "
        f"`path` column, got {type(model_input).__name__}"
    )


def decode_rows(values: list[Any], size: list[int], channels: int) -> np.ndarray:
    """uint8 N × C × H × W pixels of image files given as bytes or paths, through
    `decode_image`; ValueError naming every row that is not a readable image (and why),
    rather than Pillow's traceback from deep inside the first."""
    from PIL.Image import DecompressionBombError

    from kdflow.data.images import decode_image

    out = np.empty((len(values), channels, *size), np.uint8)
    bad: list[str] = []
    for i, value in enumerate(values):
        try:
            out[i] = decode_image(_file_bytes(value), size, channels)
        except (OSError, ValueError, TypeError, DecompressionBombError) as exc:
            bad.append(f"row {i}: {_why(exc)}")
    if bad:
        shown = "; ".join(bad[:SHOWN_ROWS]) + (f"; and {len(bad) - SHOWN_ROWS} more"
                                                if len(bad) > SHOWN_ROWS else "")
        raise ValueError(f"{len(bad)} of {len(values)} rows are not readable images: {shown}")
    return out


def _file_bytes(value: Any) -> bytes:
    """An image file's bytes from a cell: bytes as they are, a string as a path to read."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        from pathlib import Path

        return Path(value).read_bytes()
    raise TypeError(f"expected the file's bytes or its path, got {type(value).__name__}")


def _why(exc: BaseException) -> str:
    """One short line of why a row did not decode."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, FileNotFoundError):
        return f"no such file {exc.filename}"
    if isinstance(exc, UnidentifiedImageError):  # its message names a BytesIO's address
        return "not an image file Pillow can read"
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text[:150]


def _as_frame(model_input: Any, columns: list[str]) -> pd.DataFrame:
    """A DataFrame of the input; a bare list or Series of strings is the one text column."""
    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, dict):
        return pd.DataFrame(model_input)
    if len(columns) == 1 and isinstance(model_input, list | tuple | np.ndarray | pd.Series):
        return pd.DataFrame({columns[0]: list(np.asarray(model_input, dtype=object).ravel())})
    raise ValueError(
        f"expected a DataFrame with the text columns {', '.join(columns)}, "
        f"got {type(model_input).__name__}"
    )


mlflow.models.set_model(StudentModel())
