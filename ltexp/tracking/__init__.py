"""MLflow tracking: runs (``runs``), claims between processes, inputs, prepared data, the Model
Registry, and the study's questions to the store (``questions``). The names are ltexp.schema's."""
