"""Progress bars that redraw in a terminal and write sparse plain lines to a log file or pipe."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

INTERVAL_ENV = "BRAIN_TUMOUR_PROGRESS_INTERVAL"  # seconds between plain lines; overrides the default below
DEFAULT_INTERVAL = 30.0


class PlainProgress(tqdm):
    """A tqdm that prints whole lines (no carriage returns), at most one per ``interval`` seconds.

    Nothing is printed before ``interval`` has passed, so short loops stay silent; a loop that
    printed anything (or has ``leave=True``) ends with one line for its final state."""

    _last_line = float("inf")  # when the last line was written; none until __init__ has finished

    def __init__(self, *args: Any, interval: float, **kwargs: Any) -> None:
        self.interval = interval
        self._printed = False
        self._line_n = 0.0  # the count shown by the last line
        super().__init__(*args, mininterval=interval, maxinterval=max(interval, 1.0), ascii=True, **kwargs)
        self._last_line = getattr(self, "start_t", 0.0)  # a disabled bar has no clock

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Write the current state as one line when ``interval`` has passed since the last one."""
        if msg is not None or self._time() - self._last_line < self.interval:
            return False
        self._write_line()
        return True

    def close(self) -> None:
        """Write the final state unless the last line showed it (short loops: only with ``leave``)."""
        if self.disable:
            return
        if (self._printed and self.n != self._line_n) or (self.leave and not self._printed):
            self._write_line()
        self.leave = False  # the final line, if any, is written; there is no bar to keep or clear
        super().close()

    def _write_line(self) -> None:
        self.fp.write(self.format_meter(**self.format_dict).strip() + "\n")
        self.fp.flush()
        self._last_line, self._line_n, self._printed = self._time(), self.n, True


def progress_interval() -> float:
    """Seconds between plain progress lines: ``$BRAIN_TUMOUR_PROGRESS_INTERVAL`` or 30."""
    value = os.environ.get(INTERVAL_ENV)
    return float(value) if value else DEFAULT_INTERVAL


def progress(iterable: Iterable[T] | None = None, desc: str = "", total: float | None = None,
             leave: bool = False, interval: float | None = None, **tqdm_kwargs: Any) -> tqdm:
    """Wrap ``iterable`` in a redrawing tqdm bar when the stream (``file``, default stderr) is a terminal,
    else in a :class:`PlainProgress` writing at most one line per ``interval`` seconds (default
    :func:`progress_interval`); ``leave=True`` also gives a short loop (an epoch) its final line there.
    Other keywords (``disable``, ``unit``, ``postfix``...) go to tqdm; redraw rates apply to terminals only."""
    stream = tqdm_kwargs.pop("file", None) or sys.stderr
    if _is_terminal(stream):
        return tqdm(iterable, desc=desc, total=total, leave=leave, file=stream, **tqdm_kwargs)
    for ignored in ("mininterval", "maxinterval", "ascii"):  # redraw settings; plain lines follow `interval`
        tqdm_kwargs.pop(ignored, None)
    return PlainProgress(iterable, desc=desc, total=total, leave=leave, file=stream,
                         interval=progress_interval() if interval is None else interval, **tqdm_kwargs)


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
