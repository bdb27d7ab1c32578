"""How every command-line entry point ends on an expected error: one line on stderr naming the input and the
problem, exit code 2, no traceback. ``--debug`` (or ``BRAIN_TUMOUR_DEBUG=1``) shows the traceback instead;
unexpected exceptions always keep theirs."""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from experiment.config import rename_legacy_overrides
from experiment.errors import UserError

DEBUG_ENV = "BRAIN_TUMOUR_DEBUG"
DEBUG_FLAG = "--debug"
EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., Any])


def strip_debug_flag(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--debug``; when it was there, turn debugging on for this process."""
    if DEBUG_FLAG in argv:
        os.environ[DEBUG_ENV] = "1"
    return [arg for arg in argv if arg != DEBUG_FLAG]


def hydra_argv(argv: Sequence[str]) -> list[str]:
    """``sys.argv`` for a Hydra app: ``--debug`` handled, old config names renamed (warned once)."""
    return [argv[0], *rename_legacy_overrides(strip_debug_flag(argv[1:]))]


def reports_user_errors(function: F) -> F:
    """Wrap an entry point so a :class:`UserError` ends the process with one line and exit code 2."""
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except UserError as error:
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            print(f"{Path(sys.argv[0]).name}: error: {one_line(error)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
    return wrapper  # type: ignore[return-value]


def one_line(error: BaseException) -> str:
    """The error's message on one line (line breaks become ``; ``)."""
    return "; ".join(part.strip() for part in str(error).splitlines() if part.strip()) or type(error).__name__
