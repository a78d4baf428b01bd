"""The topology page in a real browser (issue 19 §4): Debian's chromium, driven by Selenium
through Debian's chromium-driver (tests/browser.py), against `linkd ui` and a real stack.

What a user relies on: the picture shows the stack's containers, networks, links and
published ports; changes (a container restarting, a health change, another stack going up
or down) arrive by the event stream while the page stays open; a click shows the
container's environment with secrets masked until asked, the names it may reach as it
resolves them, and its last log lines; the way in refuses a request without the token,
under another name (DNS rebinding) or from another site's page.

A failing test leaves a screenshot of the page in test-results/screenshots/.
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import FOREIGN_NAME, alive, chromium, descendants
from tests.integration.conftest import REPO, Linkd, failed, fresh_linkd
from tests.integration.test_ui import serving_ui

SCREENSHOTS = REPO / "test-results" / "screenshots"
WAIT = 15  # seconds: the page's changes come within one; the machine is shared


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[WebDriver]:
    with chromium() as driver:
        try:
            yield driver
        finally:
            if failed(request.node):
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                shot = SCREENSHOTS / (re.sub(r"[^\w.-]", "_", request.node.name) + ".png")
                driver.save_screenshot(str(shot))
                print(f"screenshot of the page: {shot}")


def until(driver: WebDriver, what: str, condition: Callable[[WebDriver], Any]) -> Any:
    return WebDriverWait(driver, WAIT, poll_frequency=0.05).until(
        condition, f"the page did not show {what} within {WAIT} s")


# The page redraws whenever an event comes: what it shows is read in one script (an
# element found a moment before may be gone), and clicks are tried again on a fresh one.

def container_text(driver: WebDriver, name: str) -> str:
    """What the picture says of one container ("" while it is not drawn)."""
    return str(driver.execute_script("""
        const box = [...document.querySelectorAll("#picture [data-container]")]
            .find(g => g.dataset.container === arguments[0]);
        return box ? box.textContent : "";""", name))


def picture_text(driver: WebDriver) -> str:
    return str(driver.execute_script("return document.getElementById('picture').textContent"))


def click(driver: WebDriver, selector: str) -> None:
    def clicked(d: WebDriver) -> bool:
        try:
            d.find_element(By.CSS_SELECTOR, selector).click()
        except (StaleElementReferenceException, NoSuchElementException):
            return False
        return True

    until(driver, f"{selector} to click", clicked)


STACK = """
    services:
      db:
        command: sh -c 'echo db says hello; sleep 300'
        healthcheck:
          test: ["CMD", "test", "-f", "healthy"]
          interval: 0.1s
          timeout: 2s
          retries: 1
      web:
        # exits (and is restarted: on-failure) when the test drops a file named crash
        command: >-
          sh -c 'echo web says hello;
                 while [ ! -f crash ]; do sleep 0.05; done; rm crash; exit 3'
        restart: on-failure
        links: ["db:database"]
        ports: ["18080:80"]
        environment:
          MODE: test
          API_TOKEN: tok-not-shown
          GREETING: "<img src=x onerror=window.injected=1>"
"""


def test_the_page_draws_the_stack_and_follows_its_changes(
    linkd: Linkd, browser: WebDriver
) -> None:
    linkd.write(STACK)
    linkd.up()
    with serving_ui(linkd) as (port, token):
        browser.get(f"http://127.0.0.1:{port}/ui/?token={token}")
        until(browser, "both containers", lambda d: container_text(d, "web-1")
              and container_text(d, "db-1"))
        drawn = picture_text(browser)
        assert f"stack {linkd.project}" in drawn
        assert "default" in drawn  # the stack's network, a box
        assert "database" in drawn  # the link's arrow, labelled with its alias
        assert "18080" in drawn  # the published port, at the edge
        assert re.search(r"10\.\d+\.\d+\.\d+", drawn)  # addresses on the lines
        assert re.search(r"· (starting|unhealthy)", container_text(browser, "db-1"))

        # A health change arrives by the event stream: the page is not reloaded.
        marker = browser.execute_script("window.stillThisPage = 1; return 1")
        (linkd.directory / "healthy").touch()
        until(browser, "db-1 healthy", lambda d: "· healthy" in container_text(d, "db-1"))
        # A container restarting: its restart counted.
        (linkd.directory / "crash").touch()
        until(browser, "web-1 restarted", lambda d: "1 restart" in container_text(d, "web-1"))
        assert browser.execute_script("return window.stillThisPage") == marker

        # Another stack going up appears in the list, and going down leaves it.
        with fresh_linkd() as other:
            other.write("services:\n  lone: {command: sleep 300}\n")
            other.up()
            until(browser, "the other stack", lambda d: other.project in stack_choices(d))
            other.down()
            until(browser, "the other stack gone",
                  lambda d: other.project not in stack_choices(d))
        assert browser.execute_script("return window.stillThisPage") == marker

        # The keyboard reaches a container: Tab to it, Enter opens it.
        until(browser, "db-1 opened from the keyboard", lambda d: keyboard_opens(d, "db-1"))

        # A click shows the container: its environment, its names, its last log lines.
        click(browser, '#picture [data-container="web-1"]')
        until(browser, "web-1's details", lambda d: d.execute_script(
            "return document.getElementById('container-name').textContent") == "web-1"
            and table_rows(d, "dns"))
        env = env_rows(browser)
        assert env["MODE"] == "test"
        # Values are text, never markup.
        assert env["GREETING"] == "<img src=x onerror=window.injected=1>"
        assert not browser.find_elements(By.CSS_SELECTOR, "#env img")
        assert browser.execute_script("return window.injected") is None
        assert env["API_TOKEN"] == "hidden: show"
        assert "tok-not-shown" not in browser.find_element(By.ID, "details").text
        click(browser, "#env button.reveal")
        until(browser, "the secret, asked for",
              lambda d: env_rows(d)["API_TOKEN"] == "tok-not-shown")
        names = {r[0]: r[1] for r in table_rows(browser, "dns")}
        assert re.fullmatch(r"10\.\d+\.\d+\.\d+", names["database"]), names  # its link alias
        assert names["db"] == names["database"] == names["db-1"]
        assert re.fullmatch(r"10\.\d+\.\d+\.\d+", names["web-1"])
        until(browser, "web-1's log", lambda d: "web says hello" in d.execute_script(
            "return document.getElementById('logs').textContent"))


def keyboard_opens(driver: WebDriver, container: str) -> bool:
    """One step of a keyboard user: its details shown yet? If not, Tab, and Enter when
    the focus is on its box (a redraw meanwhile only means more steps)."""
    if driver.execute_script(
            "return document.getElementById('container-name').textContent") == container:
        return True
    driver.switch_to.active_element.send_keys(Keys.TAB)
    if driver.execute_script(
            "return document.activeElement.dataset?.container === arguments[0]", container):
        driver.switch_to.active_element.send_keys(Keys.ENTER)
    return False


def stack_choices(driver: WebDriver) -> set[str]:
    return set(driver.execute_script(
        "return [...document.querySelectorAll('#stacks option')].map(o => o.value)"))


def table_rows(driver: WebDriver, table: str) -> list[list[str]]:
    return list(driver.execute_script("""
        return [...document.querySelectorAll(`#${arguments[0]} tr`)]
            .map(tr => [...tr.cells].map(td => td.innerText));""", table))


def env_rows(driver: WebDriver) -> dict[str, str]:
    return {row[0]: row[1] for row in table_rows(driver, "env")}


class _Attacker(http.server.BaseHTTPRequestHandler):
    """Another site's page: it tries to read the linkd page's API from the browser."""

    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args: object) -> None:
        pass


def test_the_browser_is_refused_without_the_token_under_another_name_or_from_another_site(
    linkd: Linkd, browser: WebDriver
) -> None:
    linkd.write("services:\n  web: {command: sleep 300}\n")
    linkd.up()
    with serving_ui(linkd) as (port, token):
        graph = f"/v1/stacks/{linkd.project}/graph?token={token}"
        # The page itself, with its token: the picture loads as an image too.
        browser.get(f"http://127.0.0.1:{port}/ui/?token={token}")
        until(browser, "web-1", lambda d: container_text(d, "web-1"))
        assert image_loads(browser, f"http://127.0.0.1:{port}{graph}") == "load"

        browser.get(f"http://127.0.0.1:{port}/ui/")  # no token
        assert "token" in browser.find_element(By.TAG_NAME, "body").text
        assert not browser.find_elements(By.ID, "picture")

        # DNS rebinding: a name of the attacker's that resolves to 127.0.0.1.
        browser.get(f"http://{FOREIGN_NAME}:{port}/ui/?token={token}")
        assert "this address only" in browser.find_element(By.TAG_NAME, "body").text
        assert not browser.find_elements(By.ID, "picture")

        # Another site's page that knows the URL, token and all.
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
        _Attacker.page = b"<!doctype html><title>elsewhere</title>"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            browser.get(f"http://{FOREIGN_NAME}:{server.server_address[1]}/")
            # An image needs no CORS: only linkd's refusal keeps it from loading.
            assert image_loads(browser, f"http://127.0.0.1:{port}{graph}") == "error"
        finally:
            server.shutdown()
            server.server_close()
            thread.join()


def image_loads(driver: WebDriver, url: str) -> str:
    """Load `url` as an <img> in the current page: "load" or "error"."""
    return str(driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const img = new Image();
        img.onload = () => done("load");
        img.onerror = () => done("error");
        img.src = arguments[0];
    """, url))


def test_a_failing_browser_test_leaves_no_browser_process() -> None:
    with pytest.raises(RuntimeError, match="the test failed"), chromium() as driver:
        process = driver.service.process
        assert process is not None
        started = {process.pid} | descendants(process.pid)
        assert len(started) >= 3  # the driver, the browser and its helpers
        raise RuntimeError("the test failed")
    assert not {pid for pid in started if alive(pid)}
