"""The exceptions that end a command with a message rather than a traceback."""

from __future__ import annotations


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message already tells the user what was wrong and what to do."""
    from moco_core.config import ConfigError
    from moco_core.data import DataError
    from moco_core.downstream import EvaluationError
    from moco_core.engine import NonFiniteLossError

    from .cli import CliError
    from .jobs import JobsError
    from .registry import EncoderError
    from .storage import StorageError
    from .tracking import TrackingError
    from .train import PretrainError
    from .tune import SweepError

    return (ConfigError, DataError, NonFiniteLossError, CliError, EncoderError, TrackingError, PretrainError,
            JobsError, StorageError, EvaluationError, SweepError, FileNotFoundError, FileExistsError)
