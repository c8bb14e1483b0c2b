"""ICE servers handed to meeting members, with time-limited TURN credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac

DEFAULT_STUN = ("stun:stun.l.google.com:19302",)


class IceServers:
    """
    The ``ice_servers`` list given on join and in ``room-info``; never empty.

    With a TURN secret, TURN entries carry credentials as in the TURN REST
    API convention (coturn ``use-auth-secret``): username ``expiry:user`` and
    password base64(HMAC-SHA1(secret, username)), valid for ``turn_ttl``.
    """

    def __init__(self, clock, stun_urls=DEFAULT_STUN, turn_urls=(), turn_secret: bytes | None = None,
                 turn_ttl: float = 86400.0) -> None:
        self.clock = clock
        self.stun_urls = tuple(stun_urls) or DEFAULT_STUN
        self.turn_urls = tuple(turn_urls)
        self.turn_secret = turn_secret
        self.turn_ttl = turn_ttl

    def for_user(self, user_id) -> list[dict]:
        servers = [{"urls": list(self.stun_urls)}]
        if self.turn_urls and self.turn_secret:
            username = f"{int(self.clock.seconds() + self.turn_ttl)}:{user_id}"
            digest = hmac.new(self.turn_secret, username.encode(), hashlib.sha1).digest()
            servers.append({"urls": list(self.turn_urls), "username": username,
                            "credential": base64.b64encode(digest).decode("ascii")})
        elif self.turn_urls:
            servers.append({"urls": list(self.turn_urls)})
        return servers
