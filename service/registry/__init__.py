"""Encoders out of training and into users' hands: the package format, registration in MLflow with
the champion rule, references and downloads, and the consumer API.

One module per concept: :mod:`.package` (the format), :mod:`.champion` (the rule), :mod:`.models`
(registration, listing), :mod:`.refs` (references, downloads, ``pull``), :mod:`.load`
(``load_encoder``), :mod:`.publish` (a finished run's checkpoint -> package -> registry) and
:mod:`.init` (``model.init`` resolved to a state_dict file before training). Every
function that talks to MLflow takes the tracking URI (``uri=None``: ``MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db`` here) and uses a client of that store; none reads or sets MLflow's global state.
"""

from .champion import CHAMPION, champion_should_move
from .init import resolve_init
from .load import Preprocess, load_encoder
from .models import list_encoders, register_encoder
from .package import (
    ENCODER_JSON,
    WEIGHTS,
    EncoderError,
    read_encoder_meta,
    read_encoder_package,
    write_encoder_package,
)
from .refs import is_local_ref, pull, resolve_ref

__all__ = [
    "EncoderError",
    "ENCODER_JSON",
    "WEIGHTS",
    "CHAMPION",
    "write_encoder_package",
    "read_encoder_package",
    "read_encoder_meta",
    "champion_should_move",
    "register_encoder",
    "list_encoders",
    "resolve_ref",
    "is_local_ref",
    "pull",
    "resolve_init",
    "load_encoder",
    "Preprocess",
]
