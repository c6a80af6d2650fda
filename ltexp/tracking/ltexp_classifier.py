"""How a registered ltexp classifier answers through pyfunc and ``mlflow models serve``.

Each registered version ships this file in its ``code/`` folder and names it as its pyfunc
loader, so it imports nothing of ltexp: a serving environment needs only torch, numpy, pandas
and mlflow, as for any MLflow PyTorch model. The TorchScript program is loaded by MLflow's own
PyTorch loader; this adds what a client needs besides logits, chosen by the ``output`` param:

- ``logits`` (default): the (N, K) array that ``mlflow.pytorch.load_model`` returns, so a
  client of the plain PyTorch flavor sees the same numbers;
- ``probabilities``: softmax over each row, one column per class name;
- ``classes``: the predicted class per row: ``class_index``, ``class_name``, ``probability``.

Served: ``{"inputs": [...], "params": {"output": "classes"}}``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pytorch import _load_pyfunc as load_pytorch

OUTPUT_PARAM = "output"
OUTPUTS = ("logits", "probabilities", "classes")
# the MLmodel metadata key that lists the classes, in output order
CLASS_NAMES_KEY = "class_names"
# the largest input value answered: normalised pixels are a few units (|(1 − 0) / 0.2| = 5);
# far beyond, the logits overflow and the answer would be NaN
MAX_INPUT = 1e4


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> ClassifierPredictor:
    """pyfunc's entry point: ``data_path`` is the model's ``data/`` folder."""
    metadata = Model.load(Path(data_path).parent).metadata or {}
    with warnings.catch_warnings():
        # MLflow reads TorchScript through torch.load, and torch says that it dispatches to
        # torch.jit.load and that TorchScript is deprecated: nothing a model client can act on
        warnings.filterwarnings("ignore", message=".*TorchScript archive.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=FutureWarning)
        predictor = load_pytorch(data_path, model_config=model_config)
    return ClassifierPredictor(predictor, metadata.get(CLASS_NAMES_KEY, []))


class ClassifierPredictor:
    """MLflow's PyTorch predictor, answering logits, probabilities or named classes."""

    def __init__(self, logits_predictor: Any, class_names: list[str]) -> None:
        self._logits = logits_predictor
        self.class_names = [str(c) for c in class_names] if isinstance(class_names, list) else []

    def get_raw_model(self) -> Any:
        """The scripted module, as for MLflow's own PyTorch pyfunc."""
        return self._logits.get_raw_model()

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """Logits (ndarray), or a DataFrame of probabilities or of predicted classes."""
        params = dict(params or {})
        output = params.pop(OUTPUT_PARAM, None) or OUTPUTS[0]
        if output not in OUTPUTS:
            raise _invalid(
                f"output={output!r} is not an answer of this model; use one of {', '.join(OUTPUTS)}"
            )
        _refuse_non_finite(data, "the inputs hold", MAX_INPUT)
        logits = self._logits.predict(data, params or None)
        _refuse_non_finite(logits, "for these inputs the model's logits are")
        if output == "logits":
            return logits
        index = data.index if isinstance(data, pd.DataFrame) else None
        scores = np.asarray(logits, dtype=np.float64)
        scores = np.exp(scores - scores.max(axis=1, keepdims=True))
        probabilities = scores / scores.sum(axis=1, keepdims=True)
        names = self.class_names or [str(i) for i in range(probabilities.shape[1])]
        if len(names) != probabilities.shape[1] or len(set(names)) != len(names):
            raise _invalid(
                f"the model's metadata names {len(names)} classes (or repeats one) for "
                f"{probabilities.shape[1]} outputs: ask for output=logits"
            )
        if output == "probabilities":
            return pd.DataFrame(probabilities, columns=names, index=index)
        best = probabilities.argmax(axis=1)
        return pd.DataFrame(
            {
                "class_index": best,
                "class_name": [names[i] for i in best],
                "probability": probabilities[np.arange(len(best)), best],
            },
            index=index,
        )


def _refuse_non_finite(values: Any, what: str, bound: float = np.inf) -> None:
    """A NaN or an infinity is not JSON, and a NaN pixel gives no class: refuse it as a bad
    request (HTTP 400 when served) instead of answering ``"probability": NaN``; so is a value
    beyond ``bound`` (a 1e38 pixel overflows the logits)."""
    if isinstance(values, dict):
        arrays = list(values.values())
    elif isinstance(values, pd.DataFrame):
        arrays = [values.select_dtypes("number").to_numpy()]
    else:
        arrays = [values]
    for array in arrays:
        try:
            numbers = np.asarray(array, dtype=np.float64)
        except (TypeError, ValueError):
            continue  # not numbers: the model's own input check answers
        if numbers.size and not (np.abs(numbers) <= bound).all():  # NaN fails it too
            limit = f" or beyond ±{bound:,.0f}" if np.isfinite(bound) else ""
            raise _invalid(
                f"{what} not finite (NaN or infinity){limit}; send pixels normalised as the "
                f"model's description says (values of a few units)"
            )


def _invalid(message: str) -> Exception:

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)
