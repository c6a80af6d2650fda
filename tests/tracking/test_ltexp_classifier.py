"""The pyfunc answer shipped with each version (code/ltexp_classifier.py), on its own: what it
makes of logits, of a DataFrame's index, and of class names that do not fit the outputs."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from ltexp.tracking.ltexp_classifier import ClassifierPredictor

LOGITS = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]], np.float32)


class _Logits:
    """MLflow's PyTorch predictor, answering fixed logits."""

    def predict(self, data, params=None):
        assert params is None  # ltexp's own param is not passed on to the module
        return LOGITS if isinstance(data, np.ndarray) else pd.DataFrame(LOGITS, index=data.index)


def test_probabilities_and_classes_are_named_and_keep_a_frame_s_index() -> None:
    model = ClassifierPredictor(_Logits(), ["cat", "dog", "eel"])
    frame = pd.DataFrame(np.zeros((2, 4)), index=["a", "b"])
    classes = model.predict(frame, {"output": "classes"})
    assert list(classes.index) == ["a", "b"]
    assert classes["class_name"].tolist() == ["cat", "eel"]
    assert classes["class_index"].tolist() == [0, 2]
    e2 = np.exp(2.0)
    assert classes["probability"].tolist() == pytest.approx(
        [e2 / (e2 + 2), np.exp(5) / (np.exp(5) + 2)]
    )
    probabilities = model.predict(np.zeros((2, 4)), {"output": "probabilities"})
    assert list(probabilities.columns) == ["cat", "dog", "eel"]
    assert probabilities.sum(axis=1).tolist() == pytest.approx([1.0, 1.0])
    assert model.predict(np.zeros((2, 4))) is LOGITS  # the default is MLflow's own answer


@pytest.mark.parametrize(
    ("names", "message"),
    [(["cat", "dog"], "names 2 classes"), (["cat", "cat", "eel"], "repeats one")],
)
def test_class_names_that_do_not_fit_the_outputs_are_refused(names: list, message: str) -> None:
    model = ClassifierPredictor(_Logits(), names)
    with pytest.raises(mlflow.exceptions.MlflowException, match=message):
        model.predict(np.zeros((2, 4)), {"output": "classes"})
    assert model.predict(np.zeros((2, 4)), {"output": "logits"}) is LOGITS


def test_metadata_without_a_list_of_names_answers_class_indices() -> None:
    model = ClassifierPredictor(_Logits(), "cat,dog,eel")  # type: ignore[arg-type]
    assert model.predict(np.zeros((2, 4)), {"output": "classes"})["class_name"].tolist() == [
        "0",
        "2",
    ]
