"""The demo in a real browser: ``reward-forcing serve`` (real uvicorn, tiny random model) on a free
loopback port, driven by headless Chromium through selenium: the page starts a stream, frames
arrive (FPS and first-frame latency shown), a prompt switch takes effect, a screenshot is taken
(saved over the README's docs/demo-screenshot.png only with RF_UPDATE_SCREENSHOT=1, so a test run
leaves the checkout as it was), and stop offers the recorded mp4 for download.
Skips with a reason when Debian's chromium / chromium-driver or selenium are missing."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "demo-screenshot.png"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no {CHROMIUM} (apt-get install chromium)"),
    pytest.mark.skipif(not os.path.exists(CHROMEDRIVER), reason="no chromedriver (apt-get install chromium-driver)"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


@pytest.fixture
def server(tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w+")
    cmd = [
        sys.executable,
        "-m",
        "reward_forcing.cli",
        "serve",
        "--random-model",
        "--port",
        str(port),
        "--max-streams",
        "1",
        "--recordings-dir",
        str(tmp_path / "rec"),
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if json.loads(get(url + "/health")[1])["status"] == "ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"the server did not start:\n{log.read()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="rf-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1000,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def test_browser_streams_switches_and_downloads(server, browser, tmp_path):
    browser.get(server + "/")
    wait = WebDriverWait(browser, 60, poll_frequency=0.1)
    wait.until(lambda d: d.find_element(By.ID, "start").is_enabled())
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("a red ball rolls to the left on green grass")
    browser.find_element(By.ID, "start").click()
    wait.until(lambda d: int(text(d, "frames")) >= 10)
    assert text(browser, "latency").endswith(" ms")
    assert "RANDOM model" in text(browser, "note")
    assert text(browser, "status") == "streaming"
    assert text(browser, "current") == "a red ball rolls to the left on green grass"

    prompt.clear()
    prompt.send_keys("a blue square slides to the right")
    browser.find_element(By.ID, "switch").click()
    wait.until(lambda d: text(d, "current") == "a blue square slides to the right")
    shown = int(text(browser, "frames"))
    wait.until(lambda d: int(text(d, "frames")) >= shown + 10 and text(d, "fps") != "–")
    assert float(text(browser, "fps")) > 1
    assert browser.find_element(By.ID, "message").text == ""
    assert browser.save_screenshot(str(SCREENSHOT if os.environ.get("RF_UPDATE_SCREENSHOT") else tmp_path / "demo.png"))

    browser.find_element(By.ID, "stop").click()
    wait.until(lambda d: d.find_element(By.ID, "download").is_displayed())
    assert text(browser, "status").startswith("stopped after")
    status, body = get(browser.find_element(By.ID, "download").get_attribute("href"))
    assert status == 200 and body[4:8] == b"ftyp"
    assert json.loads(get(server + "/health")[1])["active_streams"] == 0
