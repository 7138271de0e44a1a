"""What every rein-d2 command-line program does with an error the user can fix.

It prints one message (what, where, how to fix) instead of a traceback and exits with code 2;
a bug still shows its traceback. Set REIN_D2_TRACEBACK=1 to see the traceback of every error.
Programs started through Detectron2's `launch` print the message in the worker that failed;
the launching process then exits with the same code.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from ..errors import ReinD2Error

EXIT_USER_ERROR = 2
TRACEBACK_ENV = "REIN_D2_TRACEBACK"
R = TypeVar("R")


def traceback_requested() -> bool:
    return os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


def user_errors(func: Callable[..., R]) -> Callable[..., R]:
    """Decorate a program's main: a ReinD2Error becomes its message on stderr and exit code 2
    (SystemExit, so that it also ends a worker started by Detectron2's `launch`)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except ReinD2Error as err:
            if traceback_requested():
                raise
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper


class HideUserErrorTraceback(logging.Filter):
    """Drops a log record that carries a ReinD2Error's traceback (Detectron2's training loop logs
    "Exception during training:" with it before re-raising): `user_errors` shows its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return traceback_requested() or not isinstance(error, ReinD2Error)


def hide_user_error_tracebacks(logger_name: str = "detectron2.engine.train_loop") -> None:
    """Install HideUserErrorTraceback once on the logger that reports training exceptions."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, HideUserErrorTraceback) for f in logger.filters):
        logger.addFilter(HideUserErrorTraceback())


def exit_like_failed_worker(launch_call: Callable[[], R]) -> R:
    """Run Detectron2's `launch`; a worker that exited with the user-error code (its message
    already printed) makes this process exit with that code, without a second traceback."""
    from torch.multiprocessing import ProcessExitedException

    try:
        return launch_call()
    except ProcessExitedException as err:
        if err.exit_code == EXIT_USER_ERROR and not traceback_requested():
            raise SystemExit(EXIT_USER_ERROR) from None
        raise
