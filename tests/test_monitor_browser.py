"""The visdom page of a monitored run, opened in real headless Chromium (Debian's chromium and
chromedriver, installed by scripts/setup.sh): a plot renders from the offline assets, and a
screenshot is kept in test-artifacts/. Missing Chromium fails the test unless ALLOW_NO_BROWSER=1 (and not in CI,
where conftest reports every skip as a failure)."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from visdom_server import SERVER_URL, VisdomServer, tiny_training

from experiment.monitor import Monitor
from experiment.rundir import RunDir
from experiment.visdom_sink import VisdomSink

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
RENDER_TIMEOUT_S = 60

pytestmark = pytest.mark.browser


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    """Headless Chromium with a fresh profile and no background networking."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        message = f"{', '.join(missing)} missing: run scripts/setup.sh (apt-get install chromium chromium-driver)"
        if os.environ.get("ALLOW_NO_BROWSER") == "1":
            pytest.skip(message)
        pytest.fail(message + "; set ALLOW_NO_BROWSER=1 to skip (outside CI)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--window-size=1400,900", f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_dashboard_renders_in_chromium(browser, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    with VisdomServer.start(tmp_path / "visdom") as server:
        env = "browser_run"
        monitor = Monitor(RunDir(tmp_path / "run"), [VisdomSink(server=SERVER_URL, port=server.port, env=env)])
        tiny_training(monitor, epochs=3)
        monitor.close()

        browser.get(f"{server.url}/env/{env}")
        # a plotly figure whose line trace has a drawn path: the plot rendered, not just its frame
        drawn_lines = "return document.querySelectorAll('.js-plotly-plot svg.main-svg path.js-line[d*=L]').length"
        WebDriverWait(browser, RENDER_TIMEOUT_S).until(lambda driver: driver.execute_script(drawn_lines) > 0)
        plots = browser.execute_script("return document.querySelectorAll('.js-plotly-plot').length")
        heatmaps = browser.execute_script("return document.querySelectorAll('.js-plotly-plot .hm').length")
        images = browser.execute_script(
            "return Array.from(document.querySelectorAll('img')).filter(i => i.src.startsWith('data:image')"
            " && i.naturalWidth > 0).length")
        failed_assets = browser.execute_script(
            "return performance.getEntriesByType('resource').filter(e => e.name.includes('/static/')"
            " && !e.name.includes('/user/') && e.responseStatus !== 200).map(e => e.name + ' ' + e.responseStatus)")
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "visdom_dashboard_test.png"
        assert browser.save_screenshot(str(screenshot))

    assert plots == 5, "loss, lr, accuracy, macro_f1 and the confusion matrix"
    assert heatmaps == 1
    assert images == 1
    assert failed_assets == []
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
