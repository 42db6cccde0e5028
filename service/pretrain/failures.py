"""Which failed fits are retried: a fault of the world is, a fault of the run is not.

A worker that dies (SIGKILL, a lost node, a collective that broke with it) is a fault of the world:
the fit is started again from the last checkpoint, up to ``run.max_failures`` times. A
:class:`~moco_core.errors.UserError` raised in a worker (a non-finite loss, an unreadable image) is a
fault of the run itself: it fails the same way every time, so the run ends at once with its message.
Ray Train's own retries are off (``FailureConfig(max_failures=0)``) so that this is the one place
that decides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moco_core.errors import UserError


def worker_errors(error: BaseException) -> list[BaseException]:
    """The exceptions the workers raised, unwrapped (Ray Train wraps each with its traceback text)."""
    failures = getattr(error, "worker_failures", None) or {}
    return [getattr(e, "_base_exc", e) for e in failures.values()]


def fault_of_the_run(error: BaseException) -> UserError | None:
    """The ``UserError`` a worker raised, when one did (other ranks then fail on the broken
    collective: any one is enough), else ``None``."""
    return next((e for e in worker_errors(error) if isinstance(e, UserError)), None)


def fit_with_retries(make_trainer: Callable[[], Any], max_failures: int, say: Callable[[str], None]) -> Any:
    """``make_trainer().fit()``, started again (a new trainer, the same run: it continues from the last
    checkpoint) after each fault of the world, at most ``max_failures`` times. Raises the last error."""
    from ray.train import TrainingFailedError

    failures = 0
    while True:
        try:
            return make_trainer().fit()
        except TrainingFailedError as e:
            if fault_of_the_run(e) is not None or failures >= max_failures:
                raise
            failures += 1
            reason = str(e).strip().splitlines()[-1][:160] if str(e).strip() else type(e).__name__
            say(
                f"a worker failed ({reason}); starting again from the last checkpoint "
                f"(retry {failures} of run.max_failures={max_failures})"
            )


__all__ = ["fault_of_the_run", "fit_with_retries", "worker_errors"]
