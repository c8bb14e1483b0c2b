"""
The web console in a real browser: Debian's headless Chromium, driven by
Selenium through Debian's chromedriver, against the real daemon.

An administrator logs in, sees a desktop (TCP) user come online on the
live dashboard within a second of logging in, and ends a meeting, which
REST then reports as ended; the API docs page renders the daemon's
OpenAPI document; and no page breaks its Content-Security-Policy.

Selenium's calls block (HTTP to chromedriver), so they run in a thread;
the reactor meanwhile drives the daemon's TCP client. Under ``CI`` a
missing browser fails the test; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import os
import sqlite3

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest

from tests.e2e.test_daemon import DaemonTestCase
from tests.e2e.test_rest import PASSWORD, Http
from wecompany.config import SQLITE_FILE_NAME

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--window-size=1280,1000")
#: The console promises a login on the dashboard within this many seconds.
PUSH_DEADLINE = 1.0


def browser_or_skip(testcase) -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install '.[dev]')")
    if not missing:
        return
    reason = f"the console's browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
    if os.environ.get("CI"):
        testcase.fail(reason)
    raise SkipTest(reason)


def start_browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Both paths given: Selenium Manager never looks for (or downloads) a driver or a browser.
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


class ConsoleBrowserTests(DaemonTestCase):
    timeout = 180

    async def browser(self):
        browser_or_skip(self)
        driver = await deferToThread(start_browser)
        self.addCleanup(deferToThread, driver.quit)
        return driver

    async def make_admin(self, daemon, http: Http, name: str) -> None:
        """Register ``name`` and make it an administrator in the daemon's database (stopped meanwhile)."""
        await http.register(name)
        status = await daemon.stop()
        self.assertEqual(status, 0, daemon.report())
        with sqlite3.connect(os.path.join(daemon.data_dir, SQLITE_FILE_NAME)) as db:
            self.assertEqual(db.execute("UPDATE users SET role = 'admin' WHERE username = ?", (name,)).rowcount, 1)
        db.close()
        await daemon.start()
        http.base = f"http://127.0.0.1:{daemon.http_port}"

    def csp_violations(self, driver) -> list[str]:
        return [entry["message"] for entry in driver.get_log("browser")
                if "Content Security Policy" in entry["message"] or "Refused to" in entry["message"]]

    async def test_admin_sees_a_tcp_login_at_once_and_ends_a_meeting(self) -> None:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        driver = await self.browser()
        daemon = await self.start_daemon()
        http = Http(self, daemon)
        await self.make_admin(daemon, http, "boss")
        await http.register("host")
        host = (await http.login("host"))["token"]
        code, body = await http.call("POST", "/api/v1/meetings", {"title": "Quarterly review"}, token=host)
        self.assertEqual(code, 201, body)
        meeting_id = body["data"]["meeting"]["id"]
        await http.register("desk")  # the desktop user, who logs in over TCP below

        def wait(condition, timeout: float = 10.0):
            return WebDriverWait(driver, timeout, poll_frequency=0.02).until(condition)

        def log_in() -> None:
            driver.get(f"http://127.0.0.1:{daemon.http_port}/")
            wait(ec.visibility_of_element_located((By.ID, "login-form")))
            driver.find_element(By.ID, "login-username").send_keys("boss")
            driver.find_element(By.ID, "login-password").send_keys(PASSWORD)
            driver.find_element(By.ID, "login-submit").click()
            wait(ec.text_to_be_present_in_element((By.ID, "live-status"), "live"))
            wait(ec.text_to_be_present_in_element((By.ID, "stat-online"), "0"))

        await deferToThread(log_in)
        self.assertIsNotNone(driver.execute_script("return sessionStorage.getItem('wecompany.console.session')"))

        # A desktop user logs in; the dashboard shows it within a second.
        client = await self.connect(daemon, "desk")
        result = await client.login("desk")
        self.assertTrue(result["ok"], result)
        logged_in = reactor.seconds()

        def see_the_tcp_user():
            try:
                return wait(ec.presence_of_element_located(
                    (By.CSS_SELECTOR, "#online-list tr[data-username='desk']")), PUSH_DEADLINE)
            except TimeoutException:
                self.fail(f"the TCP user was not on the dashboard within {PUSH_DEADLINE} s: "
                          f"{driver.find_element(By.ID, 'online-list').text!r}")

        row = await deferToThread(see_the_tcp_user)
        self.assertLess(reactor.seconds() - logged_in, PUSH_DEADLINE + 0.1)
        self.assertIn("tcp", row.text)
        self.assertEqual(driver.find_element(By.ID, "stat-tcp").text, "1")

        # End the meeting from the console.
        def end_the_meeting() -> None:
            driver.find_element(By.CSS_SELECTOR, "#tabs button[data-tab='meetings']").click()
            button = wait(ec.element_to_be_clickable(
                (By.CSS_SELECTOR, f"#meetings-table tr[data-meeting-id='{meeting_id}'] button.end-meeting")))
            button.click()
            wait(ec.alert_is_present()).accept()
            wait(ec.presence_of_element_located(
                (By.CSS_SELECTOR, f"#meetings-table tr[data-meeting-id='{meeting_id}'][data-status='ended']")))

        await deferToThread(end_the_meeting)
        code, body = await http.call("GET", f"/api/v1/meetings/{meeting_id}", token=host)
        self.assertEqual((code, body["data"]["status"]), (200, "ended"), body)

        # The API docs, from the same daemon, under their own policy.
        def open_the_docs() -> int:
            driver.get(f"http://127.0.0.1:{daemon.http_port}/api/docs/")
            wait(ec.presence_of_element_located((By.CSS_SELECTOR, ".opblock")), 20)
            return len(driver.find_elements(By.CSS_SELECTOR, ".opblock"))

        self.assertGreater(await deferToThread(open_the_docs), 50)
        self.assertEqual(await deferToThread(self.csp_violations, driver), [])

        # Logging out forgets the session.
        def log_out() -> None:
            driver.get(f"http://127.0.0.1:{daemon.http_port}/")
            wait(ec.element_to_be_clickable((By.ID, "logout"))).click()
            wait(ec.visibility_of_element_located((By.ID, "login-form")))

        await deferToThread(log_out)
        self.assertIsNone(driver.execute_script("return sessionStorage.getItem('wecompany.console.session')"))
        await client.close()

    async def test_a_user_sees_their_meetings_and_no_admin_tabs(self) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        driver = await self.browser()
        daemon = await self.start_daemon()
        http = Http(self, daemon)
        await http.register("alice")
        token = (await http.login("alice"))["token"]
        code, body = await http.call("POST", "/api/v1/meetings", {"title": "Alice's stand-up"}, token=token)
        self.assertEqual(code, 201, body)

        def look() -> tuple[str, bool]:
            wait = WebDriverWait(driver, 10, poll_frequency=0.02)
            driver.get(f"http://127.0.0.1:{daemon.http_port}/")
            wait.until(ec.visibility_of_element_located((By.ID, "login-form")))
            driver.find_element(By.ID, "login-username").send_keys("alice")
            driver.find_element(By.ID, "login-password").send_keys(PASSWORD)
            driver.find_element(By.ID, "login-submit").click()
            row = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#my-meetings-table tr[data-meeting-id]")))
            dashboard = driver.find_element(By.CSS_SELECTOR, "#tabs button[data-tab='dashboard']")
            return row.text, dashboard.is_displayed()

        text, dashboard_shown = await deferToThread(look)
        self.assertIn("Alice's stand-up", text)
        self.assertFalse(dashboard_shown)
        self.assertEqual(await deferToThread(self.csp_violations, driver), [])


class WebRootDaemonTests(DaemonTestCase):
    """--web-root on the real daemon: files read in its disk pool, the API first."""

    async def test_a_single_page_app_beside_the_api(self) -> None:
        import treq

        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "assets"))
        with open(os.path.join(root, "index.html"), "wb") as f:
            f.write(b"<!DOCTYPE html><title>family client</title>")
        with open(os.path.join(root, "assets", "app.js"), "wb") as f:
            f.write(b"console.log('family')")
        daemon = await self.start_daemon("--web-root", root)
        http = Http(self, daemon)

        async def get(path: str):
            response = await treq.get(http.base + path, pool=http.pool, allow_redirects=False, timeout=10)
            return response, await response.content()

        for path in ("/", "/meetings/42"):
            response, body = await get(path)
            self.assertEqual((response.code, body), (200, b"<!DOCTYPE html><title>family client</title>"), path)
        response, body = await get("/assets/app.js")
        self.assertEqual((response.code, response.headers.getRawHeaders("content-type")),
                         (200, ["text/javascript; charset=utf-8"]))
        response, _ = await get("/assets/../../../etc/passwd")
        self.assertEqual(response.code, 404)
        response, body = await get("/api/v1/csrf-token")
        self.assertIn(b"csrf_token", body)
        response, body = await get("/console/")
        self.assertIn(b"console.js", body)
        response, body = await get("/api/docs/swagger-ui-bundle.js")
        self.assertEqual(response.code, 200)
        self.assertGreater(len(body), 100_000)
        self.assertNotIn("Traceback", daemon.log_text())
