"""
The SFU in real browsers: two headless Chromiums (Debian's, through Debian's
chromedriver) against the real daemon and its media workers.

Each browser loads tests/e2e/sfu_page/ from the daemon (``--web-root``, so it
is same-origin), a minimal client of the family's SFU contract
(/work/shared/spec/sfu.md): REST login and join, signaling ``join``, then on
``room-info`` one RTCPeerConnection offered to ``/api/v1/webrtc/answer``, ICE
and renegotiation by polling. Chromium's fake camera and microphone publish;
the test waits until each browser shows the other's video, labelled with the
other's username (the msid stream id is the publisher's signaling peer id),
and decoding (``framesDecoded`` grows), then one leaves and the other's tile
for it must go.

Only loopback carries traffic: the workers gather on 127.0.0.1 alone
(``--sfu-addresses``) and ``room-info`` names a STUN server on loopback, so
Chromium never asks a public one. Selenium blocks, so its calls run in
threads while the reactor runs the daemon's HTTP client.
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlencode

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.e2e.test_console import CHROMEDRIVER, CHROMIUM, CHROMIUM_FLAGS, browser_or_skip
from tests.e2e.test_daemon import DaemonTestCase
from tests.e2e.test_rest import PASSWORD, Http

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sfu_page")
MEDIA_FLAGS = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
               "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required")
DAEMON_ARGS = ("--web-root", PAGE, "--sfu-addresses", "127.0.0.1", "--stun-servers", "stun:127.0.0.1:3478")
#: From loading the page to decoding the other's video (two browsers and a worker on a noisy 2-core machine).
CONNECT_TIMEOUT = 60.0
#: From one's leave to the other's tile for it going away.
LEAVE_TIMEOUT = 20.0
POLL = 0.25


def start_media_browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, *MEDIA_FLAGS):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


class SfuBrowserTests(DaemonTestCase):
    timeout = 240

    async def browser(self):
        driver = await deferToThread(start_media_browser)
        self.addCleanup(deferToThread, driver.quit)
        return driver

    def describe(self, driver) -> str:
        """The page's state and log and the browser console, for failures."""
        try:
            page = driver.execute_script(
                "return {state: window.sfuState, tiles: window.sfuTiles ? window.sfuTiles() : null}")
            console = [entry["message"] for entry in driver.get_log("browser")][-30:]
        except Exception as e:  # noqa: BLE001 - a failure report must not fail
            page, console = f"(page unreadable: {e!r})", []
        return f"page: {json.dumps(page, indent=1, ensure_ascii=False)}\nconsole: {json.dumps(console, indent=1)}"

    async def until(self, what: str, check, timeout: float, drivers, daemon):
        """Call ``check()`` in a thread until it returns something truthy; fail with every page's state."""
        deadline = reactor.seconds() + timeout
        while True:
            result = await deferToThread(check)
            if result:
                return result
            if reactor.seconds() >= deadline:
                reports = []
                for driver in drivers:
                    reports.append(await deferToThread(self.describe, driver))
                self.fail(f"timed out after {timeout} s waiting for {what}\n" + "\n\n".join(reports)
                          + "\n--- daemon log (tail) ---\n" + daemon.log_text()[-8000:])
            await deferLater(reactor, POLL, lambda: None)

    async def test_two_browsers_see_and_name_each_other_then_one_leaves(self) -> None:
        browser_or_skip(self)
        daemon = await self.start_daemon(*DAEMON_ARGS)
        http = Http(self, daemon)
        for name in ("alice", "bob"):
            await http.register(name)
        host = (await http.login("alice"))["token"]
        code, body = await http.call("POST", "/api/v1/meetings", {"title": "SFU in browsers"}, token=host)
        self.assertEqual(code, 201, body)
        meeting_id = body["data"]["meeting"]["id"]

        alice, bob = await self.browser(), await self.browser()
        drivers = {"alice": alice, "bob": bob}
        base = f"http://127.0.0.1:{daemon.http_port}/"

        def page(name: str, **options: str) -> str:
            # Alice's page uses encoded insertable streams (an SEI in each sent H.264 frame) as the
            # family's client does; Bob's first one is a plain WebRTC client.
            query = {"username": name, "password": PASSWORD, "meeting": meeting_id, **options}
            if name == "alice":
                query["insertable"] = "1"
            return base + "?" + urlencode(query)

        for name, driver in drivers.items():
            await deferToThread(driver.get, page(name))
        loaded = reactor.seconds()

        def tiles(driver) -> list:
            return driver.execute_script("return window.sfuTiles ? window.sfuTiles() : []")

        def frames(driver) -> dict:
            return driver.execute_script("return window.sfuFramesDecoded ? window.sfuFramesDecoded() : {}")

        def signaling_peer(driver) -> str:
            return driver.execute_script("return window.sfuState.signalingPeerId")

        # Each sees one tile: the other's, audio and video, with the other's username.
        for name, driver in drivers.items():
            other = "bob" if name == "alice" else "alice"

            def labelled(driver=driver, other=other):
                found = tiles(driver)
                if len(found) == 1 and found[0]["label"] == other and found[0]["kinds"] == ["audio", "video"]:
                    return found[0]
                return None

            tile = await self.until(f"{name}'s tile of {other}", labelled, CONNECT_TIMEOUT, drivers.values(), daemon)
            # The tile's key is the other's signaling peer id (the msid stream id the SFU sets).
            self.assertEqual(tile["key"], await deferToThread(signaling_peer, drivers[other]))

        # ... and decodes it: framesDecoded grows.
        first = {}
        for name, driver in drivers.items():
            def decoding(driver=driver):
                counts = frames(driver)
                return counts if len(counts) == 1 and list(counts.values())[0] > 0 else None

            first[name] = list((await self.until(f"{name} to decode video", decoding, CONNECT_TIMEOUT,
                                                 drivers.values(), daemon)).values())[0]
        await deferLater(reactor, 2.0, lambda: None)
        for name, driver in drivers.items():
            def more(driver=driver, name=name):
                counts = frames(driver)
                return counts if counts and list(counts.values())[0] >= first[name] + 10 else None

            counts = await self.until(f"{name}'s framesDecoded to grow", more, 20.0, drivers.values(), daemon)
            self.assertGreaterEqual(list(counts.values())[0], first[name] + 10)

        # H.264 (the client's first preference) end to end, forwarded as the publisher sent it.
        for name, driver in drivers.items():
            video = await deferToThread(driver.execute_script, "return window.sfuInboundVideo()")
            (inbound,) = video.values()
            self.assertEqual(inbound["codec"], "video/H264", video)
            self.assertGreater(inbound["width"] * inbound["height"], 0, video)
        print(f"sfu browsers: loaded to both decoding in {reactor.seconds() - loaded:.1f} s")

        # Nothing went wrong on either page on the way.
        for name, driver in drivers.items():
            errors = await deferToThread(driver.execute_script, "return window.sfuState.errors")
            self.assertEqual(errors, [], await deferToThread(self.describe, driver))

        # Bob leaves; Alice's tile of him goes away, and she stays connected.
        bob_key = await deferToThread(signaling_peer, bob)
        await deferToThread(bob.execute_script, "return window.sfuLeave()")
        self.assertEqual(await deferToThread(bob.execute_script, "return window.sfuState.status"), "left")

        def gone():
            return tiles(alice) == [] or None

        left = reactor.seconds()
        await self.until("alice's tile of bob to go", gone, LEAVE_TIMEOUT, drivers.values(), daemon)
        print(f"sfu browsers: bob's tile gone from alice's page {reactor.seconds() - left:.1f} s after his leave")
        removed = await deferToThread(alice.execute_script, "return window.sfuState.tilesRemoved")
        self.assertEqual(removed, [bob_key])
        state = await deferToThread(alice.execute_script, "return window.sfuState")
        self.assertEqual((state["connectionState"], state["connections"], state["errors"]), ("connected", 1, []),
                         await deferToThread(self.describe, alice))

        # Bob comes back (a new page: new signaling and SFU peers), with insertable streams and without
        # camera or microphone at first: he receives Alice, with the SEI her browser put in her frames
        # (the SFU forwards, it does not decode), and she has no tile of him while he sends nothing.
        await deferToThread(bob.get, page("bob", insertable="1", media="later"))
        alice_key = await deferToThread(signaling_peer, alice)

        def alice_seen():
            found = tiles(bob)
            return (len(found) == 1 and found[0]["label"] == "alice"
                    and frames(bob).get(alice_key, 0) > 0 and bob.execute_script("return window.sfuState.seiSeen"))

        seen = await self.until("bob to decode alice again", alice_seen, CONNECT_TIMEOUT, drivers.values(), daemon)
        self.assertEqual(seen, {alice_key: "wecompany:alice"})
        self.assertEqual(await deferToThread(tiles, alice), [])

        # He starts his camera and microphone (replaceTrack, no renegotiation from his side): the SFU sees
        # his media, offers it to Alice beside the m-lines of his first visit, and she shows him again.
        await deferToThread(bob.execute_script, "window.sfuStartMedia()")
        for name, driver in drivers.items():
            other = "bob" if name == "alice" else "alice"

            def back(driver=driver, other=other):
                found = tiles(driver)
                if len(found) != 1 or found[0]["label"] != other:
                    return None
                counts = frames(driver)
                return found[0] if counts.get(found[0]["key"], 0) > 0 else None

            tile = await self.until(f"{name} to decode {other} again", back, CONNECT_TIMEOUT, drivers.values(), daemon)
            self.assertEqual(tile["key"], await deferToThread(signaling_peer, drivers[other]))
        self.assertNotEqual(await deferToThread(signaling_peer, bob), bob_key)
        bob_key = await deferToThread(signaling_peer, bob)

        def bob_sei():
            return alice.execute_script("return window.sfuState.seiSeen")

        seen = await self.until("alice to read bob's SEI", bob_sei, 10.0, drivers.values(), daemon)
        self.assertEqual(seen, {bob_key: "wecompany:bob"})
        for name, driver in drivers.items():
            state = await deferToThread(driver.execute_script, "return window.sfuState")
            self.assertEqual((state["connectionState"], state["connections"], state["errors"]), ("connected", 1, []),
                             await deferToThread(self.describe, driver))
        self.assertNotIn("Traceback", daemon.log_text())
