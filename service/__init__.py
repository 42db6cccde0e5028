"""service: Ray Train / Ray Tune runners, MLflow tracking and the encoder registry, and the ``moco`` CLI."""
