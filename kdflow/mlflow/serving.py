"""The registered student as an MLflow pyfunc, logged as "models from code".

MLflow runs this file to build the model, so nothing is pickled: `load_context` rebuilds
the network from the safetensors artifact with `kdflow.models.artifacts.load_model`.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel


class StudentModel(PythonModel):
    """Predicts the class name and its probability for each row of feature columns."""

    def load_context(self, context: Any) -> None:
        from kdflow.models.artifacts import load_model

        self.model, self.spec = load_model(context.artifacts["student"])

    # MLflow reads this type hint: a DataFrame hint means "no schema from the hint" (the
    # logged signature describes the input), where `Any` or no hint would draw a warning.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: Any = None
    ) -> pd.DataFrame:
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
            probs = torch.softmax(self.model(torch.from_numpy(x)), -1).numpy()
        names = np.asarray(self.spec["class_names"])
        return pd.DataFrame(
            {"label": names[probs.argmax(1)], "probability": probs.max(1).astype(np.float64)}
        )


mlflow.models.set_model(StudentModel())
