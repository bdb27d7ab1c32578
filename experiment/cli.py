"""How every command-line entry point ends on an expected error: one line on stderr naming the input and the
problem, exit code 2, no traceback. ``--debug`` (or ``BRAIN_TUMOUR_DEBUG=1``) shows the traceback instead;
unexpected exceptions always keep theirs. Hydra apps start through :func:`run_hydra_app`, which does the same
for Hydra's override and composition errors."""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, TypeVar

from hydra.errors import HydraException, OverrideParseException
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from experiment.config import rename_legacy_overrides
from experiment.errors import UserError

DEBUG_ENV = "BRAIN_TUMOUR_DEBUG"
DEBUG_FLAG = "--debug"
HYDRA_FULL_ERROR = "HYDRA_FULL_ERROR"
EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., Any])


def strip_debug_flag(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--debug``; when it was there, turn debugging on for this process."""
    if DEBUG_FLAG in argv:
        os.environ[DEBUG_ENV] = "1"
    return [arg for arg in argv if arg != DEBUG_FLAG]


def reports_user_errors(function: F) -> F:
    """Wrap an entry point so a :class:`UserError` ends the process with one line and exit code 2."""
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except UserError as error:
            if _debugging():
                raise
            _exit_user_error(one_line(error))
    return wrapper  # type: ignore[return-value]


def run_hydra_app(main: Callable[[], Any], argv: Sequence[str] | None = None) -> None:
    """Run the ``@hydra.main`` function ``main`` on ``argv`` (default ``sys.argv``), ending a bad override, a
    config that does not compose, or a :class:`UserError` with one line and exit code 2; Hydra's own flags
    (``--help``, ``--cfg``, ``-m``) work as usual, and bugs in the app keep their traceback."""
    argv = sys.argv if argv is None else argv
    sys.argv = [argv[0], *rename_legacy_overrides(strip_debug_flag(argv[1:]))]  # old config names: warned once
    full_error = os.environ.get(HYDRA_FULL_ERROR)
    os.environ[HYDRA_FULL_ERROR] = "1"  # Hydra re-raises instead of printing its multi-line report
    try:
        main()
    except Exception as error:
        message = _hydra_user_message(error, getattr(main, "__wrapped__", main))
        if message is None or _debugging():
            raise
        _exit_user_error(message)
    finally:
        if full_error is None:
            os.environ.pop(HYDRA_FULL_ERROR, None)
        else:
            os.environ[HYDRA_FULL_ERROR] = full_error


def _hydra_user_message(error: BaseException, task: Callable[..., Any]) -> str | None:
    """The one line for ``error`` if a user caused it: a :class:`UserError` (also one raised by a resolver), or
    a Hydra/OmegaConf error raised outside the app's ``task`` function (an override or config that does not
    compose); ``None`` for anything else."""
    chain = _chain(error)
    for link in chain:
        if isinstance(link, UserError):
            return one_line(link)
        if isinstance(link, InterpolationResolutionError):  # OmegaConf keeps only the name of a resolver's error
            return _joined([link]) if str(link).startswith(_user_error_names()) else None
    if _raised_in(error.__traceback__, task) or not isinstance(error, (HydraException, OmegaConfBaseException)):
        return None
    where = [f"override {error.override!r}"] if isinstance(error, OverrideParseException) else []
    return _joined(chain, *where)


def _debugging() -> bool:
    """Whether ``--debug`` or ``BRAIN_TUMOUR_DEBUG`` asks for tracebacks of expected errors."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _exit_user_error(message: str) -> NoReturn:
    """End the process with ``prog: error: message`` on stderr and exit code 2."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def one_line(error: BaseException) -> str:
    """The error's message on one line (line breaks become ``; ``)."""
    return "; ".join(part.strip() for part in str(error).splitlines() if part.strip()) or type(error).__name__


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised ``from`` (not those it interrupted: a bug in an error handler is
    still a bug)."""
    chain: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__
    return chain


def _joined(chain: list[BaseException], *first: str) -> str:
    """``first`` and the messages of ``chain`` on one line, each line once, without OmegaConf's ``object_type=``."""
    lines = [*first, *(line.strip().rstrip(".") for link in chain for line in str(link).splitlines())]
    return "; ".join(dict.fromkeys(line for line in lines if line and not line.startswith("object_type=")))


def _user_error_names() -> tuple[str, ...]:
    """``"<Name> raised"`` for every :class:`UserError` class: how OmegaConf words one that a resolver raised."""
    classes, pending = set(), [UserError]
    while pending:
        cls = pending.pop()
        classes.add(cls)
        pending += cls.__subclasses__()
    return tuple(f"{cls.__name__} raised" for cls in classes)


def _raised_in(traceback: TracebackType | None, function: Callable[..., Any]) -> bool:
    """Whether ``function``'s code is on ``traceback``."""
    code = getattr(function, "__code__", None)
    while traceback is not None:
        if traceback.tb_frame.f_code is code:
            return True
        traceback = traceback.tb_next
    return False
