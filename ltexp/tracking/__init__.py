"""MLflow tracking: the schema (``schema``) and run handling (``runs``)."""
