"""A real visdom server for the monitoring tests: a subprocess on a free loopback port with its own
env folder, started the way scripts/monitor.sh starts it (``run_server.main``, which never calls
visdom's CDN downloader). No part of visdom is mocked."""
from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests
import torch
import torch.nn.functional as F
from torch import nn

from datasets.core import CLASS_NAMES
from experiment.metrics import classification_metrics
from experiment.monitor import Monitor
from experiment.visdom_sink import connect

HOST = "127.0.0.1"
SERVER_URL = f"http://{HOST}"
START_TIMEOUT_S = 60.0


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class VisdomServer:
    """One running ``visdom.server`` process; use :meth:`start` as a context manager."""

    def __init__(self, process: subprocess.Popen, port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path

    @property
    def url(self) -> str:
        return f"{SERVER_URL}:{self.port}"

    @classmethod
    @contextlib.contextmanager
    def start(cls, folder: Path) -> Iterator[VisdomServer]:
        """Start a server keeping its envs under ``folder``; wait until it answers; stop it on exit."""
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        log_path = folder / "server.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", "from visdom.server.run_server import main; main()", "-port", str(port),
                 "--hostname", HOST, "-bind_local", "-env_path", str(folder / "envs"), "-logging_level", "WARNING"],
                stdout=log, stderr=subprocess.STDOUT)
        server = cls(process, port, log_path)
        try:
            server.wait_until_up()
            yield server
        finally:
            server.stop()

    def wait_until_up(self) -> None:
        """Poll the index page until it answers 200; raise with the server log if it never does."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url, timeout=1.0).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"visdom server on port {self.port} did not come up; log {self.log_path}:\n"
                           f"{self.log_path.read_text(errors='replace')[-2000:]}")

    def kill(self) -> None:
        """SIGKILL the server (a crash, not a shutdown)."""
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def windows(self, env: str) -> dict[str, dict[str, Any]]:
        """Every window of ``env`` as the server stores it, read back through visdom's own client
        (connected to ``main`` so that reading does not create ``env``)."""
        viz = connect(SERVER_URL, self.port, "main", timeout_s=10.0)
        if env not in viz.get_env_list():
            return {}
        return json.loads(viz.get_window_data(env=env))


def traces(window: dict[str, Any]) -> dict[str, list[float]]:
    """The y values of each named trace of a visdom line window."""
    return {trace["name"]: trace["y"] for trace in window["content"]["data"]}


RECORDS_PER_EPOCH = 4  # train scalars, val scalars, confusion matrix, image grid
WINDOWS = {"scalar:loss", "scalar:lr", "scalar:accuracy", "scalar:macro_f1", "confusion:val_confusion",
           "image:inputs"}


def tiny_training(monitor: Monitor, *, epochs: int, after_epoch: Callable[[int], None] | None = None) -> list[float]:
    """A real, tiny training run (a 2-layer MLP on random 3-class data) monitored like the real loops;
    returns how many seconds each monitor call took on the training thread."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(96, 16, generator=generator)
    targets = torch.randint(0, len(CLASS_NAMES), (96,), generator=generator)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, len(CLASS_NAMES)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    call_seconds: list[float] = []

    def timed(call: Callable[..., Any], *args: Any) -> None:
        start = time.perf_counter()
        call(*args)
        call_seconds.append(time.perf_counter() - start)

    step = 0
    for epoch in range(1, epochs + 1):
        for first in range(0, len(inputs), 32):
            loss = F.cross_entropy(model(inputs[first:first + 32]), targets[first:first + 32])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
        with torch.no_grad():
            logits = model(inputs)
        metrics = classification_metrics(targets.numpy(), logits.argmax(1).numpy(), CLASS_NAMES)
        grid = 255 * torch.sigmoid(inputs[:8]).repeat_interleave(4, 0).repeat_interleave(4, 1)  # 32 x 64
        timed(monitor.scalars, "train", epoch, step, {"loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]})
        timed(monitor.scalars, "val", epoch, step, {"loss": F.cross_entropy(logits, targets).item(),
                                                    "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]})
        timed(monitor.confusion, "val", epoch, step, "val_confusion", metrics["confusion_matrix"], CLASS_NAMES)
        timed(monitor.image, "train", epoch, step, "inputs", grid.to(torch.uint8).numpy())
        if after_epoch is not None:
            after_epoch(epoch)
    return call_seconds
