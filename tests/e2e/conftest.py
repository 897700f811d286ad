"""Browser fixtures: Debian's chromium driven through its chromedriver by Selenium (installed here
with apt-get when missing; the tests skip only if that is impossible). The server is the real
`gemmakit serve` with the bundled model (fixtures shared with the integration tests)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (  # noqa: F401
    Server,
    gemmakit_home,
    model_path,
    start_server,
    stop_server,
)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _install_chromium() -> str | None:
    """None when chromium and its driver are there (installing them if needed), else why not."""
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return None
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    if subprocess.run(cmd, capture_output=True, env=env).returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, env=env)
        r = subprocess.run(cmd, capture_output=True, env=env, text=True)
        if r.returncode != 0:
            return f"cannot install chromium: {r.stderr[-300:]}"
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    why = _install_chromium()
    if why:
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="gemmakit-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={profile}", "--window-size=1400,1500"):
        opts.add_argument(a)
    # An explicit driver path: Selenium Manager never tries to download anything.
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# An alert that fires as soon as a request has been answered (any latency is above 1 µs), so the
# page must show it once the playground has been used.
ALERTS_TOML = """
[monitoring]
evaluate_every_seconds = 0.5
[[monitoring.alerts]]
name = "any-latency"
metric = "e2e_p95_seconds"
above = 0.000001
window_seconds = 600
"""


@pytest.fixture(scope="session")
def dashboard_server(gemmakit_home: Path, model_path: Path,  # noqa: F811
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("dashboard-server")
    config = tmp / "gemmakit.toml"
    config.write_text(ALERTS_TOML)
    s = start_server(gemmakit_home, tmp, "--config", str(config))
    yield s
    stop_server(s)
