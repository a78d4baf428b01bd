"""A real browser for the page's tests: Debian's `chromium`, driven by Selenium through
Debian's `chromium-driver` (no browser or driver is downloaded; scripts/dev installs both).

It runs headless in the test's network namespace (the session's simulated host), with a
profile of its own in a temporary directory, and reaches the network only through the
names the test maps (`--host-resolver-rules`): `evil.example` is 127.0.0.1 under another
name, an attacker's site pointed at the page (DNS rebinding, cross-origin requests).
Closing it ends the driver and every browser process it started, checked by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FOREIGN_NAME = "evil.example"  # resolves to 127.0.0.1 in the test's browser only


def descendants(pid: int) -> set[int]:
    """Every living process under `pid` (by /proc's children lists)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    if int(child) not in found:
                        found.add(int(child))
                        todo.append(int(child))
    return found


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 800) -> Iterator[webdriver.Chrome]:
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"{binary} is missing: `scripts/dev test` installs Debian's "
                               "chromium and chromium-driver")
    profile = tempfile.mkdtemp(prefix="linkd-test-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new", "--no-sandbox",  # root, in a namespace of the test's own
        "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},{height}",
        f"--user-data-dir={profile}", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-default-apps",
        f"--host-resolver-rules=MAP {FOREIGN_NAME} 127.0.0.1",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    process = driver.service.process
    assert process is not None
    started = {process.pid} | descendants(process.pid)
    try:
        yield driver
    finally:
        started |= descendants(process.pid)
        with contextlib.suppress(Exception):
            driver.quit()
        _end(started)
        shutil.rmtree(profile, ignore_errors=True)


def _end(pids: set[int]) -> None:
    """Wait for the browser's processes to be gone; kill (by PID) those that stay."""
    deadline = time.monotonic() + 10
    while (living := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in living:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if living:
        raise AssertionError(f"browser processes outlived quit(): {sorted(living)}")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has ended; its parent (gone too, or us) reaps it
