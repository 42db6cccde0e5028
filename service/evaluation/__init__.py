"""``moco evaluate``: :mod:`.run` (``evaluate``), :mod:`.choices` (what the command offers; read by
``moco evaluate --help``, so it imports nothing heavy), :mod:`.report` (JSON and table),
:mod:`.mlflow_run` (the MLflow run) and :mod:`.plots`. Import from the module you need: this package
itself loads nothing, so that the command line stays fast."""
