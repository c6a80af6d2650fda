"""ltexp: a reproducible study of long-tailed image classification, tracked in MLflow.

The library is organised by concept: ``ltexp.data`` (datasets, the split protocol, the tensor
input pipeline), ``ltexp.losses`` and ``ltexp.models`` (registries with ``build_*`` factories),
``ltexp.training`` and ``ltexp.evaluation`` (plain PyTorch), ``ltexp.tracking`` (the one place that
knows the MLflow schema), ``ltexp.report`` (tables and figures) and ``ltexp.steps`` (the four MLflow
steps and the study that chains them).
"""

__version__ = "0.1.0"


def load_model(model_uri: str, device: str = "cpu"):
    """A registered ltexp version as a trainable ``torch.nn.Module``, with no pickle executed.

    See :func:`ltexp.tracking.registered_models.load_model`.
    """
    # imported on call: ``import ltexp`` (and so every ``ltexp`` command) stays 0.05 s instead
    # of the 3 s of torch and MLflow (python -X importtime)
    from ltexp.tracking.registered_models import load_model as _load_model

    return _load_model(model_uri, device)
