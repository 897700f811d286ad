"""Browser fixtures: Debian's chromium driven through its chromedriver by Selenium (installed here
with apt-get when missing; the tests skip only if that is impossible). The server is the real
`gemmakit serve` with the bundled model (fixtures shared with the integration tests)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from tests.integration.conftest import gemmakit_home, model_path, server  # noqa: F401

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
