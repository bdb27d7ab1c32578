"""Live visdom monitoring against a real visdom server on loopback: windows and points read back through
the visdom API, a server killed mid-run, an unreachable and a hung server, replay, offline assets."""
from __future__ import annotations

import importlib.util
import logging
import re
import shutil
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from visdom_server import RECORDS_PER_EPOCH, SERVER_URL, WINDOWS, VisdomServer, tiny_training, traces

from experiment.monitor import Monitor, visdom_env_name
from experiment.replay import main as replay_main
from experiment.replay import read_records, replay
from experiment.rundir import RunDir
from experiment.visdom_sink import VisdomSink


def _load_script(name: str):
    """Import ``scripts/<name>.py`` (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


visdom_assets = _load_script("visdom_assets")
EPOCHS = 3
SINK_LOGGER = "experiment.visdom_sink"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VisdomServer]:
    with VisdomServer.start(tmp_path_factory.mktemp("visdom")) as running:
        yield running


def sink_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == SINK_LOGGER and r.levelno == logging.WARNING]


def test_live_run_windows_and_points(server: VisdomServer, tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "classifier" / "tiny" / "fold0")
    env = visdom_env_name(run_dir.path)
    sink = VisdomSink(server=SERVER_URL, port=server.port, env=env, queue_size=64, timeout_s=5.0)
    monitor = Monitor(run_dir, [sink])
    tiny_training(monitor, epochs=EPOCHS)
    monitor.close()

    assert env == "classifier_tiny_fold0"
    assert (sink.sent, sink.dropped) == (EPOCHS * RECORDS_PER_EPOCH, 0)
    windows = server.windows(env)
    assert set(windows) == WINDOWS
    assert {name: len(ys) for name, ys in traces(windows["scalar:loss"]).items()} == {"train": EPOCHS, "val": EPOCHS}
    assert set(traces(windows["scalar:lr"])) == {"train"}
    assert set(traces(windows["scalar:macro_f1"])) == {"val"}
    records = run_dir.read_metrics()
    val_accuracy = [r["values"]["accuracy"] for r in records if r["kind"] == "scalars" and r["phase"] == "val"]
    assert traces(windows["scalar:accuracy"])["val"] == pytest.approx(val_accuracy)
    last_confusion = [r for r in records if r["kind"] == "confusion"][-1]
    assert windows["confusion:val_confusion"]["content"]["data"][0]["z"] == last_confusion["matrix"]
    assert windows["image:inputs"]["content"]["src"].startswith("data:image/")


def test_server_killed_mid_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=SINK_LOGGER)
    epochs, kill_after = 6, 2
    run_dir = RunDir(tmp_path / "run")
    with VisdomServer.start(tmp_path / "visdom") as doomed:
        sink = VisdomSink(server=SERVER_URL, port=doomed.port, env="killed", queue_size=64, timeout_s=1.0,
                          close_timeout_s=5.0)
        monitor = Monitor(run_dir, [sink])

        def kill_server(epoch: int) -> None:
            if epoch == kill_after:
                deadline = time.monotonic() + 10  # let the first epochs reach the server, then crash it
                while sink.sent < kill_after * RECORDS_PER_EPOCH and time.monotonic() < deadline:
                    time.sleep(0.05)
                doomed.kill()

        start = time.perf_counter()
        call_seconds = tiny_training(monitor, epochs=epochs, after_epoch=kill_server)
        monitor.close()
        elapsed = time.perf_counter() - start

    records = run_dir.read_metrics()
    assert len(records) == epochs * RECORDS_PER_EPOCH
    assert sorted({r["epoch"] for r in records}) == list(range(1, epochs + 1))
    assert max(call_seconds) < 0.5, "a monitor call waited on the dead server"
    assert elapsed < 20
    assert sink.sent == kill_after * RECORDS_PER_EPOCH
    assert sink.dropped == (epochs - kill_after) * RECORDS_PER_EPOCH
    assert len(sink_warnings(caplog)) == 1 and "unreachable" in sink_warnings(caplog)[0]


def test_unreachable_server_is_reported_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=SINK_LOGGER)
    with socket.socket() as placeholder:  # reserve a port that refuses connections
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        run_dir = RunDir(tmp_path / "run")
        sink = VisdomSink(server=SERVER_URL, port=port, env="nobody", timeout_s=1.0)
        monitor = Monitor(run_dir, [sink])
        call_seconds = tiny_training(monitor, epochs=EPOCHS)
        monitor.close()
    assert len(run_dir.read_metrics()) == EPOCHS * RECORDS_PER_EPOCH
    assert max(call_seconds) < 0.5
    assert (sink.sent, sink.dropped) == (0, EPOCHS * RECORDS_PER_EPOCH)
    assert len(sink_warnings(caplog)) == 1


def test_hung_server_times_out_and_queue_stays_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=SINK_LOGGER)
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        sink = VisdomSink(server=SERVER_URL, port=silent.getsockname()[1], env="hung", queue_size=4,
                          timeout_s=0.5, retry_s=60.0, close_timeout_s=3.0)
        send_seconds = []
        for step in range(50):
            start = time.perf_counter()
            sink.send({"kind": "scalars", "phase": "train", "epoch": 1, "step": step, "values": {"loss": 1.0}})
            send_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        sink.close()
        close_seconds = time.perf_counter() - start
    assert max(send_seconds) < 0.05
    assert close_seconds < 3.0 + 0.5
    assert sink.sent == 0 and sink.dropped == 50
    assert len(sink_warnings(caplog)) == 1 and "unreachable" in sink_warnings(caplog)[0]


def test_replay_draws_the_logged_run(server: VisdomServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = RunDir(tmp_path / "generator" / "pix2pix" / "fold1")
    tiny_training(Monitor(run_dir), epochs=EPOCHS)  # JSONL only, as if no server had been running
    with open(run_dir.metrics_path, "a", encoding="utf-8") as log:
        log.write('{"kind": "scalars", "phase": "tr')  # a kill mid-write leaves a partial last line
    assert len(read_records(run_dir.path)) == EPOCHS * RECORDS_PER_EPOCH

    for _ in range(2):  # replaying twice shows the run once
        assert replay_main([str(run_dir.path), "--port", str(server.port), "--server", SERVER_URL]) == 0
    env = visdom_env_name(run_dir.path)
    assert capsys.readouterr().out.strip().endswith(f"/env/{env}")
    windows = server.windows(env)
    assert set(windows) == WINDOWS
    assert {name: len(ys) for name, ys in traces(windows["scalar:loss"]).items()} == {"train": EPOCHS, "val": EPOCHS}

    other = replay(run_dir.path, server=SERVER_URL, port=server.port, env="replayed_copy")
    assert traces(server.windows(other)["scalar:accuracy"]) == traces(windows["scalar:accuracy"])


def test_replay_reports_missing_run_and_dead_server(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as missing:
        replay_main([str(tmp_path / "no_such_run")])
    assert missing.value.code == 2 and "no_such_run" in capsys.readouterr().err
    run_dir = RunDir(tmp_path / "run")
    tiny_training(Monitor(run_dir), epochs=1)
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        with pytest.raises(SystemExit) as dead:
            replay_main([str(run_dir.path), "--port", str(placeholder.getsockname()[1])])
    assert dead.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_every_page_asset_is_served_offline(server: VisdomServer) -> None:
    index = requests.get(server.url, timeout=10)
    assert index.status_code == 200
    assets = re.findall(r'(?:src|href)=["\']?(/static/[^"\'\s>]+)', index.text)
    assert len(assets) >= 15, index.text[:500]
    for asset in assets:
        if "/user/" in asset:  # visdom's optional per-user stylesheet (env_path/style.css)
            continue
        answer = requests.get(server.url + asset, timeout=10)
        assert answer.status_code == 200 and answer.content, asset


def test_assets_are_pinned_and_visdom_never_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    target = visdom_assets.static_dir()
    lock = visdom_assets.load_lock()
    assert visdom_assets.stale_packages(target, lock) == [], "run scripts/setup.sh to provision visdom's assets"
    assert visdom_assets.is_built(target)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"visdom tried the network: {args[1:] or kwargs}")

    monkeypatch.setattr(urllib.request.OpenerDirector, "open", no_network)
    monkeypatch.setattr(requests, "get", no_network)
    from visdom.server.build import download_scripts

    download_scripts()  # what `python -m visdom.server` runs first: must find everything in place


def test_asset_check_detects_a_tampered_file(tmp_path: Path) -> None:
    lock = visdom_assets.load_lock()
    shutil.copytree(visdom_assets.static_dir(), tmp_path / "static")
    assert visdom_assets.stale_packages(tmp_path / "static", lock) == []
    (tmp_path / "static" / "js" / "plotly-plotly.min.js").write_text("/* not plotly */")
    assert visdom_assets.stale_packages(tmp_path / "static", lock) == ["plotly.js-dist-min@2.11.1"]
    assert visdom_assets.npm_integrity(b"") == (
        "sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==")


def test_env_name_is_the_run_below_runs(tmp_path: Path) -> None:
    assert visdom_env_name(tmp_path / "runs" / "classifier" / "capsnet" / "grouped-k7" / "scratch" / "fold0") == (
        "classifier_capsnet_grouped-k7_scratch_fold0")
    assert visdom_env_name(tmp_path / "runs" / "spatiospatial" / "r3d_18" / "lr0.001") == "spatiospatial_r3d_18_lr0-001"
    assert visdom_env_name(tmp_path / "a" / "b" / "c") == "a_b_c"
