"""moco_core: Momentum Contrast (MoCo v1/v2) in plain PyTorch.

This package never imports ray or mlflow; the `service` package wraps it.
"""

__version__ = "0.1.0"
