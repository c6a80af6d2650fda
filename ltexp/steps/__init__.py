"""The steps of the study, each one MLflow run: prepare_data, train, decouple, ensemble,
evaluate, aggregate. A step imports no other step; :mod:`ltexp.study` chains them."""
