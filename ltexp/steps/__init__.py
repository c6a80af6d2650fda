"""The steps of the study, each one MLflow run: prepare_data, train, decouple, evaluate,
aggregate, and the study (main) that chains them. Entry points and the CLI call these and nothing
else."""
