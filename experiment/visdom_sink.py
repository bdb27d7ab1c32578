"""Live visdom mirror of monitor records, sent off the training thread.

Training calls :meth:`VisdomSink.send`, which only puts the record on a bounded queue (the
oldest record is dropped, and counted, when it is full). A daemon worker thread turns records
into visdom windows: one line plot per scalar name (one trace per phase), one image window per
image name, one heatmap per confusion-matrix name, all in one environment per run. Every HTTP
request has a timeout. An unreachable or dying server is reported once with ``logging.warning``;
records are then dropped cheaply and the server is tried again every ``retry_s`` seconds.
The sink never blocks training, never raises and never starts a server: ``metrics.jsonl`` is the
record, and ``python -m experiment.replay RUN_DIR`` restores any plot missed here.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_RETRY_S = 30.0
DEFAULT_CLOSE_TIMEOUT_S = 10.0
IMAGE_WINDOW_PX = 360  # longer side of an image window showing a grid smaller than this
IMAGE_TITLE_PX = 40
_STOP = object()


class _DropClientChatter(logging.Filter):
    """Drops the start-up warnings visdom's client logs for every connection made without the
    incoming websocket, which this module never needs."""

    MESSAGES = ("Setting up a new session", "Without the incoming socket")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.MESSAGES)


def connect(server: str, port: int, env: str, timeout_s: float) -> Any:
    """A visdom client for ``env`` whose requests time out after ``timeout_s`` seconds and raise
    ``ConnectionError`` instead of printing; raises ``ConnectionError`` when the server is down."""
    from visdom import Visdom

    client_log = logging.getLogger("visdom")
    if not any(isinstance(f, _DropClientChatter) for f in client_log.filters):
        client_log.addFilter(_DropClientChatter())

    class _TimeoutVisdom(Visdom):
        """visdom's documented extension point: ``_handle_post`` is meant to be overridden."""

        def _handle_post(self, url: str, data: Any = None) -> str:
            return self.session.post(url, data=data if data is not None else {}, timeout=timeout_s).text

    return _TimeoutVisdom(server=server, port=port, env=env, raise_exceptions=True,
                          use_incoming_socket=False)


class RecordPlotter:
    """Draws monitor records (``kind`` scalars / image / confusion) into one visdom environment."""

    def __init__(self, viz: Any, env: str) -> None:
        self.viz = viz
        self.env = env
        self._draw: dict[str, Callable[[dict[str, Any]], None]] = {
            "scalars": self._scalars, "image": self._image, "confusion": self._confusion}

    def draw(self, record: dict[str, Any]) -> None:
        """Draw one record; kinds other than the three above are ignored (debug-logged)."""
        draw = self._draw.get(record.get("kind", ""))
        if draw is None:
            log.debug("visdom: no window for record kind %r", record.get("kind"))
            return
        draw(record)

    def line(self, name: str, phase: str, steps: Sequence[float], values: Sequence[float]) -> None:
        """Append points to the ``phase`` trace of the window of scalar ``name`` (x axis: global step).

        ``update="append"`` makes visdom create the window, or the trace, when it is missing."""
        self.viz.line(X=np.asarray(steps, dtype=float), Y=np.asarray(values, dtype=float), win=f"scalar:{name}",
                      env=self.env, name=phase, update="append",
                      opts={"title": name, "xlabel": "step", "ylabel": name, "showlegend": True})

    def _scalars(self, record: dict[str, Any]) -> None:
        for name, value in record["values"].items():
            self.line(name, record["phase"], [record["step"]], [value])

    def _image(self, record: dict[str, Any]) -> None:
        from PIL import Image

        path = Path(record["run"]) / record["path"]
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
        height, width = pixels.shape[1:]
        scale = max(1.0, IMAGE_WINDOW_PX / max(height, width))  # small grids are shown enlarged
        self.viz.image(pixels, win=f"image:{record['name']}", env=self.env,
                       opts={"title": f"{record['name']} ({record['phase']}, epoch {record['epoch']})",
                             "width": round(width * scale), "height": round(height * scale) + IMAGE_TITLE_PX})

    def _confusion(self, record: dict[str, Any]) -> None:
        names = list(record["class_names"])
        self.viz.heatmap(X=np.asarray(record["matrix"], dtype=float), win=f"confusion:{record['name']}",
                         env=self.env,
                         opts={"title": f"{record['name']} ({record['phase']}, epoch {record['epoch']})",
                               "columnnames": names, "rownames": names,
                               "xlabel": "predicted", "ylabel": "true", "colormap": "Viridis"})


class VisdomSink:
    """A :class:`experiment.monitor.Sink` that mirrors records to a visdom server.

    Args:
        server: server URL without port, e.g. ``http://127.0.0.1``.
        port: server port.
        env: visdom environment (one per run).
        queue_size: records held while the worker is busy; beyond it the oldest is dropped.
        timeout_s: timeout of every HTTP request.
        retry_s: after a failure, records are dropped for this long before the server is tried again.
        close_timeout_s: the longest :meth:`close` waits for queued records to be sent.
    """

    def __init__(self, *, server: str, port: int, env: str, queue_size: int = 256, timeout_s: float = 2.0,
                 retry_s: float = DEFAULT_RETRY_S, close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.server = server
        self.port = port
        self.env = env
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.close_timeout_s = close_timeout_s
        self.sent = 0
        self.dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._plotter: RecordPlotter | None = None
        self._down_until = 0.0  # monotonic time before which records are dropped unsent
        self._warned = False
        self._closed = False
        self._worker = threading.Thread(target=self._run, name=f"visdom-sink-{env}", daemon=True)
        self._worker.start()

    @property
    def url(self) -> str:
        """The page showing this run's environment."""
        return f"{self.server}:{self.port}/env/{self.env}"

    def send(self, record: dict[str, Any]) -> None:
        """Queue ``record`` for the worker; returns at once and never raises."""
        if self._closed or time.monotonic() < self._down_until:
            self._count_dropped()
            return
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._drop_oldest()
            try:
                self._queue.put_nowait(record)
            except queue.Full:  # the queue refilled in between (another thread sending)
                self._count_dropped()

    def close(self) -> None:
        """Send what is queued, waiting at most ``close_timeout_s``, then stop the worker."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + self.close_timeout_s
        while True:
            try:
                self._queue.put(_STOP, timeout=0.05)
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    self._drop_oldest()
        self._worker.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._worker.is_alive():
            log.warning("visdom: worker still busy after %.1f s; %d queued records left unsent",
                        self.close_timeout_s, self._queue.qsize())
        log.info("visdom: %d records sent, %d dropped (%s)", self.sent, self.dropped, self.url)

    def _count_dropped(self, n: int = 1) -> None:
        with self._lock:
            self.dropped += n

    def _drop_oldest(self) -> None:
        try:
            oldest = self._queue.get_nowait()
        except queue.Empty:
            return
        if oldest is _STOP:  # never drop the stop marker
            self._queue.put_nowait(oldest)
            return
        self._count_dropped()

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            if record is _STOP:
                return
            if time.monotonic() < self._down_until:
                self._count_dropped()
                continue
            try:
                if self._plotter is None:
                    self._plotter = RecordPlotter(connect(self.server, self.port, self.env, self.timeout_s),
                                                  self.env)
                self._plotter.draw(record)
            except ConnectionError as error:
                self._count_dropped()
                self._mark_down(error)
                continue
            except Exception:  # a sink must never take training down
                self._count_dropped()
                log.exception("visdom: could not draw a %r record", record.get("kind"))
                continue
            with self._lock:
                self.sent += 1
            if self._warned:
                self._warned = False
                log.warning("visdom: server %s:%s reachable again; live plots resume", self.server, self.port)

    def _mark_down(self, error: Exception) -> None:
        self._down_until = time.monotonic() + self.retry_s
        if not self._warned:
            self._warned = True
            log.warning("visdom: server %s:%s unreachable (%s); live plots paused, metrics still go to "
                        "metrics.jsonl; retrying every %.0f s", self.server, self.port, error, self.retry_s)
