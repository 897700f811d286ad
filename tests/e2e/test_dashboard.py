"""The dashboard in real headless Chromium against the real server: the page loads with no
resource from outside, a playground message streams a reply, the charts update and the alert that
request sets off appears."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.integration


def _artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("GEMMAKIT_ARTIFACTS")
    d = Path(root) if root else Path(__file__).resolve().parents[2] / "artifacts"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        d = tmp_path_factory.mktemp("artifacts")
    return d


def test_dashboard_streams_a_reply_and_updates_charts(browser, dashboard_server,
                                                      tmp_path_factory):
    server = dashboard_server
    driver = browser
    driver.get(f"{server.base_url}/dashboard")
    wait = WebDriverWait(driver, 60, poll_frequency=0.1)
    wait.until(lambda d: d.execute_script("return window.gemmakitDashboard.points") >= 1)
    assert driver.find_element(By.ID, "model").text == "gemma-3-270m"
    # Every resource the page loaded came from the server itself (no CDN).
    urls = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(server.base_url) for u in urls), urls
    assert driver.execute_script("return typeof uPlot") == "function"
    assert driver.find_element(By.ID, "alerts").text == "No active alerts"
    before = driver.execute_script("return window.gemmakitDashboard.points")

    # Watch the output grow: record every distinct text the reply shows while it streams.
    driver.execute_script("""
        window.__seen = [];
        new MutationObserver(() => window.__seen.push(document.getElementById('chat-output')
            .textContent)).observe(document.getElementById('chat-output'),
            {childList: true, characterData: true, subtree: true});""")
    box = driver.find_element(By.ID, "chat-input")
    box.clear()
    box.send_keys("The three primary colours are")
    driver.find_element(By.ID, "chat-max-tokens").clear()
    driver.find_element(By.ID, "chat-max-tokens").send_keys("24")
    driver.find_element(By.ID, "chat-send").click()
    wait.until(lambda d: d.find_element(By.ID, "chat-meta").get_attribute("data-done") == "1")
    meta = driver.find_element(By.ID, "chat-meta").text
    assert meta.startswith("done"), meta
    reply = driver.find_element(By.ID, "chat-output").text
    assert reply.strip()
    seen = [s for s in driver.execute_script("return window.__seen") if s]
    assert len(set(seen)) >= 2, seen  # it arrived in pieces, not all at once

    # The charts pick the request up on their next updates.
    wait.until(lambda d: d.execute_script(
        "const s = window.gemmakitDashboard.last; return s && s.requests >= 1"))
    wait.until(lambda d: d.execute_script("return window.gemmakitDashboard.points") >= before + 2)
    n_points = driver.execute_script(
        "return window.gemmakitDashboard.data['chart-latency'][0].length")
    assert n_points >= 3
    assert driver.find_element(By.ID, "t-requests").text != "–"
    # The alert the request set off shows on the page.
    wait.until(lambda d: "any-latency" in d.find_element(By.ID, "alerts").text)
    # What the page shows agrees with the server's own counters.
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert 'gemmakit_requests_total{model="gemma-3-270m",status="200"}' in metrics

    shot = _artifact_dir(tmp_path_factory) / "dashboard.png"
    driver.save_screenshot(str(shot))
    print(f"dashboard screenshot: {shot}")
    assert shot.stat().st_size > 10_000
