"""Signed, expiring JWT access tokens (HS256), shared by TCP and REST."""

from __future__ import annotations

import secrets

import jwt

from wecompany.errors import Unauthenticated

ISSUER = "wecompany"


class TokenIssuer:
    """
    Issues and verifies access tokens.

    Expiry is checked against the injected clock, not the wall clock, so
    tests can move time; PyJWT still checks the signature and the issuer.
    """

    def __init__(self, secret: bytes, clock, ttl: float = 86400.0, leeway: float = 30.0) -> None:
        if len(secret) < 32:
            raise ValueError("the token secret must be at least 32 bytes")
        self._secret = secret
        self._clock = clock
        self.ttl = ttl
        self._leeway = leeway

    def issue(self, user_id: int, username: str, email: str | None = None, version: int = 0) -> str:
        """
        A token for the user; ``version`` is the user's token version, which
        the token must still name to be accepted (see :class:`~wecompany.domain.accounts.Accounts`).
        """
        now = int(self._clock.seconds())
        claims = {
            "user_id": user_id,
            "username": username,
            "email": email or "",
            "iss": ISSUER,
            "sub": str(user_id),
            "iat": now,
            "nbf": now,
            "exp": now + int(self.ttl),
            "jti": secrets.token_hex(8),
            "typ": "access",
            "ver": version,
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> dict:
        """Return the claims of a valid token or raise :class:`Unauthenticated`."""
        if not isinstance(token, str) or not token or len(token) > 4096:
            raise Unauthenticated("invalid token")
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=["HS256"], issuer=ISSUER,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "require": ["exp", "nbf", "iat", "sub", "user_id"]})
        except jwt.InvalidTokenError:
            raise Unauthenticated("invalid token") from None
        now = self._clock.seconds()
        try:
            exp, nbf = float(claims["exp"]), float(claims["nbf"])
        except (TypeError, ValueError):
            raise Unauthenticated("invalid token") from None
        if now > exp + self._leeway:
            raise Unauthenticated("token expired")
        if now + self._leeway < nbf:
            raise Unauthenticated("token not yet valid")
        if claims.get("typ", "access") != "access" or not isinstance(claims["user_id"], int) \
                or isinstance(claims["user_id"], bool):
            raise Unauthenticated("invalid token")
        return claims
